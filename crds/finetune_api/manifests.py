"""Reading manifests (multi-document YAML) from files or stdin, and `key=value` overrides of a spec."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

STDIN = "-"
# `training.learningRate=1e-4`, `datasets[0].weight=2`: a dotted path of camelCase names and indexes.
OVERRIDE = re.compile(
    r"^(?P<path>[A-Za-z_][\w-]*(?:\[\d+\])*(?:\.[A-Za-z_][\w-]*(?:\[\d+\])*)*)=(?P<value>.*)$", re.S
)
PATH_PART = re.compile(r"([A-Za-z_][\w-]*)|\[(\d+)\]")


class ManifestLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers as kubectl does: ``1e-4`` is a float there (YAML 1.2),
    a string in YAML 1.1, and the strict validation would refuse it as a quoted number."""


ManifestLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$"),  # go-yaml's float syntax
    list("-+.0123456789"),
)


def load_yaml(text: str) -> Any:
    """One YAML document, read as kubectl reads manifests."""
    return yaml.load(text, Loader=ManifestLoader)


@dataclass(frozen=True)
class Document:
    """One YAML document and where it came from."""

    path: Path
    index: int
    body: dict[str, Any]

    @property
    def label(self) -> str:
        kind = self.body.get("kind", "?")
        name = (self.body.get("metadata") or {}).get("name", "?")
        return f"{self.path}[{self.index}] {kind}/{name}"


def load_documents(paths: Iterable[str | Path]) -> list[Document]:
    """Every non-empty document of every file (``-``: stdin); a ValueError names a file that is not
    YAML objects."""
    docs = []
    for raw in paths:
        stdin = str(raw) == STDIN
        path = Path("<stdin>") if stdin else Path(raw)
        try:
            bodies = list(
                yaml.load_all(sys.stdin.read() if stdin else path.read_text(), Loader=ManifestLoader)
            )
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from exc
        for i, body in enumerate(b for b in bodies if b is not None):
            if not isinstance(body, dict):
                raise ValueError(
                    f"{path}[{i}]: expected a mapping (a Kubernetes object), got {type(body).__name__}"
                )
            docs.append(Document(path, i, body))
    return docs


def split_overrides(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """Command-line arguments as (files, ``key=value`` overrides): an argument is an override when it
    reads as ``path=value`` and names no existing file (a file may have ``=`` in its name)."""
    files: list[str] = []
    overrides: list[str] = []
    for arg in args:
        is_override = OVERRIDE.match(arg) is not None and not Path(arg).exists()
        (overrides if is_override else files).append(arg)
    return files, overrides


def _parts(path: str) -> list[str | int]:
    return [name if name else int(index) for name, index in PATH_PART.findall(path)]


def apply_overrides(spec: dict[str, Any], overrides: Sequence[str]) -> None:
    """Set each ``path=value`` (relative to the spec, camelCase; the value read as YAML) in ``spec``,
    creating the objects on the way; an empty value or ``null`` removes the field (its default applies).

    The spec is validated afterwards like any manifest, so a misspelt path is an unknown field there.

    Raises:
        ValueError: an override that is not ``path=value``, or a path through a value that is not an
            object (or a list index out of range).
    """
    for override in overrides:
        match = OVERRIDE.match(override)
        if match is None:
            raise ValueError(f"override {override!r}: expected path=value, e.g. training.learningRate=1e-4")
        try:
            value = load_yaml(match["value"])
        except yaml.YAMLError as exc:
            raise ValueError(f"override {override!r}: the value is not YAML: {exc}") from exc
        _set(spec, _parts(match["path"]), value, override)


def _set(spec: dict[str, Any], parts: list[str | int], value: Any, override: str) -> None:
    node: Any = spec
    for depth, part in enumerate(parts):
        fits = (
            isinstance(node, list) and part < len(node) if isinstance(part, int) else isinstance(node, dict)
        )
        if not fits:
            where = "spec" + "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in parts[:depth])
            wanted = f"a list with an item [{part}]" if isinstance(part, int) else "an object"
            raise ValueError(f"override {override!r}: {where} is not {wanted}")
        if depth == len(parts) - 1:
            break
        if isinstance(part, str) and node.get(part) is None:
            node[part] = {}  # `method.lora.rank=16` without a lora block: the block is created
        node = node[part]
    if value is None and isinstance(node, dict):
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value
