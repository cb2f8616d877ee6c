"""The streaming export path: when it applies, and the export it runs (merge, write, self-check).

It applies to a LoRA/DoRA adapter on a base stored as safetensors, and to a whole model (a full or
freeze fine-tune: re-sharded and cast tensor by tensor), exported unquantized as safetensors.
Everything else (a .bin base or export, quantization, a reward model's head, PiSSA-style or other
LoRA variants, remote code, checkpoints whose names the model renames at load) takes the
model-based merge of :mod:`.merge`; :func:`streaming_plan` says why.

The twins chosen between here, and the tests that pin them equal: see finetune_trainer.fastpaths.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoConfig, GenerationConfig, PreTrainedModel
from transformers.conversion_mapping import get_model_conversion_mapping

from .adapter import ADAPTER_CONFIG, LoraAdapter, read_adapter, unsupported_reason
from .layerwise import layerwise_logits, with_adapter
from .merge import SourceModel
from .plan import ExportPlan, parse_size
from .shards import savable_state_dict, write_model_metadata
from .stream import meta_model, missing_tensors, weight_files, write_streamed_shards
from .upload import ExportUploader
from .verify import LogitsCheck, compare_logits, probe_inputs, rtol_for

log = logging.getLogger(__name__)


@dataclass
class StreamPlan:
    """What the streaming path reads: the base's files by tensor name, the adapter, the model's skeleton."""

    files: dict[str, Path]
    adapter: LoraAdapter | None
    """``None`` for a whole model (nothing to merge)."""
    skeleton: PreTrainedModel


def local_weights(base_path: str, revision: str | None) -> Path | None:
    """The folder holding the base's safetensors: the path itself, or the hub snapshot (fetched if needed)."""
    path = Path(base_path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:  # the files from_pretrained would download anyway
        patterns = ["*.safetensors", "*.safetensors.index.json"]
        return Path(snapshot_download(base_path, revision=revision, allow_patterns=patterns))
    except Exception as exc:  # no hub access, no such repo: the model-based merge reports it
        log.info("cannot fetch the weights of %s for streaming: %s", base_path, exc)
        return None


def streaming_plan(plan: ExportPlan, source: SourceModel) -> StreamPlan | str:
    """A :class:`StreamPlan` when the streaming merge applies, else the reason it does not."""
    spec = plan.spec
    if spec.quantization is not None:
        return "a quantized export (the quantizer loads the merged model)"
    if spec.format != "safetensors":
        return f"format {spec.format}"
    if source.trust_remote_code:
        return "trustRemoteCode (remote modelling code may rename weights at load)"
    if source.adapter_path is not None:
        reason = unsupported_reason(_adapter_config(source.adapter_path))
        if reason is not None:
            return f"adapter: {reason}"
    folder = local_weights(source.base_path, source.revision)
    files = weight_files(folder) if folder is not None else {}
    if not files:
        return "the base has no safetensors weights"
    adapter = None
    if source.adapter_path is not None:
        try:
            adapter = read_adapter(source.adapter_path)
        except ValueError as exc:
            return f"adapter: {exc}"
    skeleton = meta_model(source.auto_class, source.config, source.dtype)
    if get_model_conversion_mapping(skeleton, add_legacy=False):
        return f"{source.config.model_type} checkpoints are renamed at load"
    if len(source.tokenizer) > skeleton.get_input_embeddings().weight.shape[0]:
        return "the tokenizer needs larger embeddings (resized at load)"
    if adapter is not None:
        names = savable_state_dict(skeleton)
        strays = [f"{m}.weight" for m in adapter.modules if f"{m}.weight" not in names]
        strays += [n for n in adapter.replacements if n not in names]
        if strays:
            return f"adapter tensors for weights the export does not write: {strays[:3]}"
    missing = missing_tensors(skeleton, files, adapter)
    if missing:
        return f"the base files lack {missing[:3]}"
    return StreamPlan(files, adapter, skeleton)


def _adapter_config(path: str) -> dict[str, Any]:
    return dict(json.loads((Path(path) / ADAPTER_CONFIG).read_text()))


def _generation_config(source: SourceModel) -> GenerationConfig | None:
    """The base's generation_config.json, as ``from_pretrained`` attaches it (``None``: the config's defaults)."""
    try:
        return GenerationConfig.from_pretrained(source.base_path, revision=source.revision)
    except (OSError, ValueError):
        return None


def export_streamed(
    plan: ExportPlan, source: SourceModel, stream: StreamPlan, out: Path, uploader: ExportUploader
) -> LogitsCheck:
    """Reference logits (the adapter model, or the whole model, block by block), the streaming merge
    into ``out``, then the export's logits read back block by block from the written shards: one
    block in memory at a time."""
    inputs = probe_inputs(source.tokenizer)
    model = meta_model(source.auto_class, source.config, source.dtype)
    base = None
    if source.adapter_path is None:
        reference = layerwise_logits(model, stream.files, source.dtype, inputs)
    else:
        model = with_adapter(model, source.adapter_path)
        reference = layerwise_logits(model, stream.files, source.dtype, inputs)
        with model.disable_adapter():
            base = layerwise_logits(model, stream.files, source.dtype, inputs)
    del model
    skeleton = stream.skeleton
    generation = _generation_config(source)
    if generation is not None:
        skeleton.generation_config = generation
    write_model_metadata(skeleton, source.tokenizer, out, on_file=uploader.submit)
    write_streamed_shards(
        skeleton, stream.files, stream.adapter, out,
        max_shard_size=parse_size(plan.spec.shard_size), on_file=uploader.submit,
    )  # fmt: skip
    if stream.adapter is None:
        log.info("re-sharded the whole %s model tensor by tensor (%s)", source.method, source.dtype)
    else:
        log.info("merged the %s adapter into the base tensor by tensor (%s)", source.method, source.dtype)
    # The check reads the export back as a user would: its own config.json and shards.
    exported_config = AutoConfig.from_pretrained(out)
    reloaded = meta_model(source.auto_class, exported_config, source.dtype)
    exported = layerwise_logits(reloaded, weight_files(out), source.dtype, inputs)
    return compare_logits(reference, exported, rtol=rtol_for(source.dtype, None), base=base)
