"""The artifact manifest: every file's relative path, size and sha256.

An artifact (checkpoint, adapter, exported model) is complete only when its ``manifest.json``
exists and every file it lists is present with that size and digest. Uploaders write it last.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ManifestEntry:
    """One file of an artifact; ``path`` is relative, slash-separated."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """The list of files that make up a complete artifact."""

    files: tuple[ManifestEntry, ...]
    created_at: str

    @property
    def total_size(self) -> int:
        """Sum of all file sizes in bytes."""
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        """The manifest as stored next to the artifact (camelCase, sorted by path)."""
        doc = {
            "version": MANIFEST_VERSION,
            "createdAt": self.created_at,
            "totalSize": self.total_size,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
        }
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse a stored manifest.

        Raises:
            ValueError: malformed document, or a path that is absolute or escapes the artifact.
        """
        try:
            doc: Any = json.loads(text)
            entries = tuple(
                ManifestEntry(path=str(f["path"]), size=int(f["size"]), sha256=str(f["sha256"]))
                for f in doc["files"]
            )
            created = str(doc.get("createdAt", ""))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"malformed {MANIFEST_NAME}: {exc}") from exc
        for entry in entries:
            check_relative_path(entry.path)
        return cls(files=entries, created_at=created)


def check_relative_path(path: str) -> None:
    """Refuse absolute paths and ``..``: a manifest must never write outside its directory."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts or path == MANIFEST_NAME:
        raise ValueError(f"invalid artifact file path {path!r}")


def sha256_stream(stream: BinaryIO | Iterable[bytes]) -> str:
    """Hex sha256 of a binary stream or an iterable of byte chunks, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    chunks: Iterable[bytes] = iter(lambda: stream.read(_CHUNK), b"") if hasattr(stream, "read") else stream
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a local file."""
    with path.open("rb") as fh:
        return sha256_stream(fh)


def iter_artifact_files(root: Path) -> Iterator[tuple[str, Path]]:
    """Every regular file under ``root`` as (relative posix path, path), sorted, manifest excluded."""
    found: list[tuple[str, Path]] = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            full = Path(dirpath, name)
            rel = full.relative_to(root).as_posix()
            if rel != MANIFEST_NAME and full.is_file():
                found.append((rel, full))
    yield from sorted(found)


def build_manifest(root: Path, *, now: datetime | None = None) -> Manifest:
    """Hash every file under ``root`` (a local directory) into a manifest.

    Raises:
        NotADirectoryError: ``root`` is not a directory.
    """
    if not root.is_dir():
        raise NotADirectoryError(str(root))
    return manifest_of([entry_for(rel, full) for rel, full in iter_artifact_files(root)], now=now)


def entry_for(rel: str, full: Path) -> ManifestEntry:
    """The manifest entry of one file: its path relative to the artifact, size and sha256."""
    return ManifestEntry(path=rel, size=full.stat().st_size, sha256=sha256_file(full))


def manifest_of(entries: list[ManifestEntry], *, now: datetime | None = None) -> Manifest:
    """A manifest of ``entries``, stamped now."""
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Manifest(files=tuple(entries), created_at=stamp)
