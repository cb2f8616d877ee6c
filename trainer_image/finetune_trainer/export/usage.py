"""The model card's "How to use": loading the folder with transformers / PEFT, and exporting a run's adapter.

Every snippet names real places (the base by its source, the folder by its URI), so it runs as written
where the folder is local.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from finetune_api.common import API_VERSION
from finetune_api.uris import Scheme, hf_repo, is_local, local_path, scheme_of

from .plan import parent_uri


def _folder_line(uri: str | None) -> str:
    """``folder = "..."``: the local path of a file:// URI (or a plain path), else a placeholder naming the stored copy."""
    if uri is not None and is_local(uri):
        return f"folder = {json.dumps(str(local_path(uri)))}"
    return f'folder = "path/to/a/local/copy"  # of {uri or "this folder"}'


def _base_expression(base: str) -> tuple[list[str], str, str]:
    """(extra imports, the Python expression of the base's hub id or path, a comment) for ``base``."""
    if (repo := hf_repo(base)) is not None:
        return [], json.dumps(repo), ""
    if is_local(base):
        return [], json.dumps(str(local_path(base))), ""
    if scheme_of(base) is Scheme.TINY:  # built on the fly and cached by the trainer package
        imports = ["from finetune_trainer.model.tiny import tiny_model_path"]
        return imports, f"tiny_model_path({json.dumps(base)})", ""
    return [], '"path/to/the/base"', f"a local copy of {base}"


def load_snippet(*, base: str, folder_uri: str | None, is_adapter: bool) -> str:
    """Python that loads the model of the card's folder (PEFT on top of its base for an adapter)."""
    lines = ["from transformers import AutoModelForCausalLM, AutoTokenizer"]
    if is_adapter:
        imports, expression, comment = _base_expression(base)
        lines = ["from peft import PeftModel", *lines, *imports, "", _folder_line(folder_uri)]
        lines.append(
            f"base = AutoModelForCausalLM.from_pretrained({expression})"
            + (f"  # {comment}" if comment else "")
        )
        lines.append("model = PeftModel.from_pretrained(base, folder)")
    else:
        lines += ["", _folder_line(folder_uri), "model = AutoModelForCausalLM.from_pretrained(folder)"]
    return "\n".join([*lines, "tokenizer = AutoTokenizer.from_pretrained(folder)"])


def export_manifest(*, name: str, base: str, folder_uri: str, is_adapter: bool) -> dict[str, Any]:
    """An Export of a run's adapter/ folder: merged into its base (an adapter) or re-sharded (a whole model)."""
    spec: dict[str, Any] = {"model": base, "adapter": folder_uri} if is_adapter else {"model": folder_uri}
    spec |= {"merge": True, "output": {"uri": f"{parent_uri(folder_uri)}/merged"}}
    return {"apiVersion": API_VERSION, "kind": "Export", "metadata": {"name": f"{name}-merged"}, "spec": spec}


def usage_lines(
    *, name: str, base: str, folder_uri: str | None, is_adapter: bool, exported: bool
) -> list[str]:
    """The "How to use" section: load with transformers / PEFT; for a run's own folder, how to export it."""
    lines = ["", "## How to use", "", "With transformers" + (" and PEFT:" if is_adapter else ":"), ""]
    lines += ["```python", load_snippet(base=base, folder_uri=folder_uri, is_adapter=is_adapter), "```"]
    if exported or folder_uri is None:
        return lines
    export = export_manifest(name=name, base=base, folder_uri=folder_uri, is_adapter=is_adapter)
    lines += [
        "",
        f"To {'merge it into its base, cast' if is_adapter else 're-shard, cast'} or quantize it, save this as"
        " `export.yaml` and run `finetune export export.yaml` (or apply it on the cluster):",
        "",
        "```yaml",
        yaml.safe_dump(export, sort_keys=False).rstrip(),
        "```",
    ]
    return lines
