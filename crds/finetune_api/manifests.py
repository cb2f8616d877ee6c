"""Reading manifests (multi-document YAML) from files."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


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
    """Every non-empty document of every file; a ValueError names a file that is not YAML objects."""
    docs = []
    for raw in paths:
        path = Path(raw)
        try:
            bodies = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from exc
        for i, body in enumerate(b for b in bodies if b is not None):
            if not isinstance(body, dict):
                raise ValueError(
                    f"{path}[{i}]: expected a mapping (a Kubernetes object), got {type(body).__name__}"
                )
            docs.append(Document(path, i, body))
    return docs
