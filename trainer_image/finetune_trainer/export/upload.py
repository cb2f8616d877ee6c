"""Upload an export while it is being written: each file as soon as it lands, the manifest last.

Files go up four at a time, each one multipart with concurrent parts (boto3's managed transfer).
A file already at the destination with the same size and sha256 (left by an interrupted earlier
attempt) is skipped, so a re-run continues the upload instead of starting over.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ..storage import MANIFEST_NAME, Manifest, ManifestEntry, ObjectStore
from ..storage.manifest import iter_artifact_files, sha256_file
from ..storage.resume import put_file_resumable, write_manifest

log = logging.getLogger(__name__)
FILE_WORKERS = 4


@dataclass(frozen=True)
class UploadResult:
    """The manifest written, and which files went up versus were found intact."""

    manifest: Manifest
    uploaded: tuple[str, ...]
    skipped: tuple[str, ...]


class ExportUploader:
    """Uploads the files of ``root`` to ``store`` as they are submitted; :meth:`finish` writes the manifest.

    Any older manifest is deleted first, so until :meth:`finish` the destination never looks complete.
    """

    def __init__(self, store: ObjectStore, root: Path, *, workers: int = FILE_WORKERS) -> None:
        self.store = store
        self.root = root
        store.delete(MANIFEST_NAME)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="export-upload")
        self._jobs: dict[str, Future[tuple[ManifestEntry, bool]]] = {}

    def submit(self, path: Path) -> None:
        """Queue one finished file (below ``root``) for upload."""
        rel = path.relative_to(self.root).as_posix()
        if rel not in self._jobs:
            self._jobs[rel] = self._pool.submit(self._upload, rel, path)

    def _upload(self, rel: str, path: Path) -> tuple[ManifestEntry, bool]:
        entry = ManifestEntry(path=rel, size=path.stat().st_size, sha256=sha256_file(path))
        return entry, put_file_resumable(self.store, rel, path, size=entry.size, sha256=entry.sha256)

    def finish(self) -> UploadResult:
        """Upload whatever under ``root`` was not submitted yet, wait for all, then write the manifest.

        Raises:
            Exception: the first upload error; the manifest is then not written.
        """
        for _rel, path in iter_artifact_files(self.root):
            self.submit(path)
        results = [self._jobs[rel].result() for rel in sorted(self._jobs)]
        self._pool.shutdown()
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        manifest = Manifest(files=tuple(entry for entry, _ in results), created_at=stamp)
        write_manifest(self.store, manifest)
        uploaded = tuple(e.path for e, went_up in results if went_up)
        skipped = tuple(e.path for e, went_up in results if not went_up)
        log.info(
            "uploaded %d files, skipped %d already there, %d bytes in all, manifest at %s",
            len(uploaded), len(skipped), manifest.total_size, self.store.uri.join(MANIFEST_NAME),
        )  # fmt: skip
        return UploadResult(manifest, uploaded, skipped)

    def abort(self) -> None:
        """Stop: queued uploads are cancelled, running ones finish; no manifest is written."""
        self._pool.shutdown(wait=True, cancel_futures=True)
