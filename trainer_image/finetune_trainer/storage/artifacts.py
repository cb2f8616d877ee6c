"""Artifacts (checkpoints, adapters, models) in object storage, each completed by its manifest."""

from __future__ import annotations

import json
import logging
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestEntry,
    entry_for,
    iter_artifact_files,
    manifest_of,
    sha256_file,
)
from .stores import ObjectStore

log = logging.getLogger(__name__)
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# Small files go up side by side; a big file already gets multipart concurrency from boto3.
_FILE_WORKERS = 4


class IncompleteArtifactError(RuntimeError):
    """The artifact has no manifest, or its files do not match it."""


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint directory in storage."""

    step: int
    name: str
    uri: str


def _parallel(fn: Any, items: list[Any]) -> None:
    with ThreadPoolExecutor(max_workers=_FILE_WORKERS) as pool:
        for future in [pool.submit(fn, item) for item in items]:
            future.result()


def upload_with_manifest(local_dir: Path, store: ObjectStore) -> Manifest:
    """Upload every file under ``local_dir`` to ``store``, then write ``manifest.json`` last.

    An older manifest at the destination is removed first, so a half-overwritten artifact never
    looks complete.
    """
    if not local_dir.is_dir():
        raise NotADirectoryError(str(local_dir))
    store.delete(MANIFEST_NAME)

    with (
        ThreadPoolExecutor(max_workers=_FILE_WORKERS) as pool,
        ThreadPoolExecutor(max_workers=_FILE_WORKERS, thread_name_prefix="hash") as hashers,
    ):

        def hash_and_upload(item: tuple[str, Path]) -> ManifestEntry:
            # Each file is hashed while it goes up: the hash and the transfer overlap (the file's
            # pages, read twice, come from the page cache the second time).
            entry = hashers.submit(entry_for, *item)
            store.put_file(item[0], item[1])
            return entry.result()

        entries = list(pool.map(hash_and_upload, iter_artifact_files(local_dir)))
    manifest = manifest_of(entries)
    store.put_bytes(MANIFEST_NAME, manifest.to_json().encode(), content_type="application/json")
    log.info("uploaded %d files (%d bytes) to %s", len(manifest.files), manifest.total_size, store.uri)
    return manifest


def replace_artifact_file(local_dir: Path, store: ObjectStore, rel: str) -> Manifest:
    """Put ``local_dir/rel`` into the complete artifact at ``store`` (over its copy, if any) and rewrite
    the manifest with the file's new size and sha256; until then the artifact has no manifest.

    Raises:
        IncompleteArtifactError: the artifact was not complete to begin with.
    """
    old = read_manifest(store)
    entry = entry_for(rel, local_dir / rel)
    store.delete(MANIFEST_NAME)
    store.put_file(rel, local_dir / rel)
    entries = sorted([*(e for e in old.files if e.path != rel), entry], key=lambda e: e.path)
    manifest = manifest_of(entries)
    store.put_bytes(MANIFEST_NAME, manifest.to_json().encode(), content_type="application/json")
    return manifest


def read_manifest(store: ObjectStore) -> Manifest:
    """The artifact's manifest.

    Raises:
        IncompleteArtifactError: no manifest, or a malformed one.
    """
    try:
        return Manifest.from_json(store.get_bytes(MANIFEST_NAME))
    except FileNotFoundError as exc:
        raise IncompleteArtifactError(f"{store.uri} has no {MANIFEST_NAME}") from exc
    except ValueError as exc:
        raise IncompleteArtifactError(f"{store.uri}: {exc}") from exc


def verify_artifact(store: ObjectStore, *, deep: bool = False) -> Manifest:
    """Check that every file of the manifest is present with its size; ``deep`` also re-hashes
    each object (streams the whole artifact).

    Raises:
        IncompleteArtifactError: naming the first missing or mismatching file.
    """
    manifest = read_manifest(store)
    present = store.list_files()
    for entry in manifest.files:
        if present.get(entry.path) != entry.size:
            raise IncompleteArtifactError(
                f"{store.uri}: {entry.path} expected {entry.size} bytes, found {present.get(entry.path)}"
            )
        if deep and store.sha256(entry.path) != entry.sha256:
            raise IncompleteArtifactError(f"{store.uri}: sha256 of {entry.path} does not match the manifest")
    return manifest


def is_complete(store: ObjectStore, *, deep: bool = False) -> bool:
    """Whether the artifact at ``store`` is complete (see :func:`verify_artifact`)."""
    try:
        verify_artifact(store, deep=deep)
    except IncompleteArtifactError as exc:
        log.info("incomplete artifact: %s", exc)
        return False
    return True


def download_with_manifest(store: ObjectStore, local_dir: Path) -> Manifest:
    """Download the artifact at ``store`` into ``local_dir``, verifying each file's sha256.

    The manifest is copied too, so the local directory describes itself.

    Raises:
        IncompleteArtifactError: no manifest, a missing file, or a sha256 mismatch.
    """
    manifest = read_manifest(store)

    def fetch(entry: Any) -> None:
        dest = local_dir / entry.path
        try:
            store.get_file(entry.path, dest)
        except FileNotFoundError as exc:
            raise IncompleteArtifactError(f"{store.uri}: {entry.path} is missing") from exc
        if sha256_file(dest) != entry.sha256:
            dest.unlink(missing_ok=True)
            raise IncompleteArtifactError(f"{store.uri}: sha256 of {entry.path} does not match the manifest")

    local_dir.mkdir(parents=True, exist_ok=True)
    _parallel(fetch, list(manifest.files))
    (local_dir / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def list_checkpoints(store: ObjectStore) -> list[CheckpointRef]:
    """Every ``checkpoint-<step>`` directory under ``store``, oldest first, complete or not."""
    refs = []
    for name in store.list_dirs():
        match = CHECKPOINT_RE.match(name)
        if match:
            refs.append(CheckpointRef(step=int(match.group(1)), name=name, uri=str(store.uri.join(name))))
    return sorted(refs, key=lambda r: r.step)


def latest_complete_checkpoint(store: ObjectStore, *, deep: bool = False) -> CheckpointRef | None:
    """The newest checkpoint whose manifest exists and matches; ``None`` when there is none."""
    for ref in reversed(list_checkpoints(store)):
        if is_complete(store.child(ref.name), deep=deep):
            return ref
    return None


def restore_latest_checkpoint(store: ObjectStore, local_root: Path) -> tuple[CheckpointRef, Path] | None:
    """Download the newest checkpoint that verifies into ``local_root/<name>``.

    A checkpoint whose files fail verification is skipped (its local copy removed) and the next
    older one is tried, so a retry after a crash mid-upload resumes from the last good state.
    """
    for ref in reversed(list_checkpoints(store)):
        dest = local_root / ref.name
        try:
            download_with_manifest(store.child(ref.name), dest)
        except IncompleteArtifactError as exc:
            log.warning("skipping checkpoint %s: %s", ref.uri, exc)
            shutil.rmtree(dest, ignore_errors=True)
            continue
        return ref, dest
    return None


def prune_checkpoints(store: ObjectStore, keep: int) -> list[str]:
    """Enforce ``saveTotalLimit`` in storage: keep the newest ``keep`` complete checkpoints.

    Everything older than the newest complete checkpoint and not kept is deleted (including
    abandoned incomplete ones); anything newer may be an upload in flight and is left alone.
    Returns the deleted checkpoint names, oldest first.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    refs = list_checkpoints(store)
    complete = [r for r in refs if is_complete(store.child(r.name))]
    if not complete:
        return []
    kept = {r.name for r in complete[-keep:]}
    newest = complete[-1].step
    doomed = [r.name for r in refs if r.step < newest and r.name not in kept]
    for name in doomed:
        # Manifest first: a half-deleted checkpoint must not look complete to a concurrent reader.
        store.child(name).delete(MANIFEST_NAME)
        store.delete_dir(name)
    return doomed


def write_json(store: ObjectStore, key: str, value: Any) -> None:
    """Write a small JSON document."""
    data = json.dumps(value, indent=2, sort_keys=True).encode()
    store.put_bytes(key, data + b"\n", content_type="application/json")


def read_json(store: ObjectStore, key: str) -> Any:
    """Read a small JSON document; ``FileNotFoundError`` when absent."""
    return json.loads(store.get_bytes(key))


def write_text(store: ObjectStore, key: str, text: str) -> None:
    """Write a small UTF-8 text object."""
    store.put_bytes(key, text.encode(), content_type="text/plain; charset=utf-8")


def read_text(store: ObjectStore, key: str) -> str:
    """Read a small UTF-8 text object; ``FileNotFoundError`` when absent."""
    return store.get_bytes(key).decode()
