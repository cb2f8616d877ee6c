"""Uploads in a background thread, so saving a checkpoint does not stall training."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path

from .artifacts import prune_checkpoints, upload_with_manifest
from .stores import ObjectStore

log = logging.getLogger(__name__)
_STOP = object()


class UploadError(RuntimeError):
    """A background upload failed; ``__cause__`` holds the original error."""


class BackgroundUploader:
    """A single worker thread draining a FIFO of upload jobs.

    Jobs run in submission order (checkpoint N is complete before N+1 starts), and each job's
    transfer is itself parallel. The first failure is kept: :meth:`wait`, :meth:`close` and any
    later :meth:`submit` raise it as :class:`UploadError`.
    """

    def __init__(self, *, name: str = "checkpoint-uploader") -> None:
        self._queue: queue.Queue[object] = queue.Queue()
        self._error: BaseException | None = None
        self._error_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is _STOP:
                    return
                if self._error is None:  # after a failure, later jobs are dropped, not run
                    assert callable(job)
                    job()
            except BaseException as exc:
                log.exception("background upload failed")
                with self._error_lock:
                    self._error = self._error or exc
            finally:
                self._queue.task_done()

    def _raise_if_failed(self) -> None:
        with self._error_lock:
            error = self._error
        if error is not None:
            raise UploadError(f"background upload failed: {error}") from error

    def submit(self, job: Callable[[], object]) -> None:
        """Queue any callable (an upload, a pruning) to run after the jobs before it."""
        if self._closed:
            raise RuntimeError("uploader is closed")
        self._raise_if_failed()
        self._queue.put(job)

    def submit_checkpoint(self, local_dir: Path, store: ObjectStore, *, keep: int | None = None) -> None:
        """Queue ``local_dir`` for upload with its manifest to ``store.child(local_dir.name)``,
        then prune the parent ``store`` down to ``keep`` checkpoints when given.

        The caller must leave ``local_dir`` untouched until :meth:`wait` returns.
        """

        def job() -> None:
            upload_with_manifest(local_dir, store.child(local_dir.name))
            if keep is not None:
                pruned = prune_checkpoints(store, keep)
                if pruned:
                    log.info("pruned checkpoints %s from %s", pruned, store.uri)

        self.submit(job)

    def pending(self) -> int:
        """Jobs queued or running (approximate)."""
        return self._queue.unfinished_tasks

    def wait(self) -> None:
        """Block until every queued job has finished; raise the first failure."""
        self._queue.join()
        self._raise_if_failed()

    def close(self) -> None:
        """Finish the queued jobs, stop the thread, raise the first failure."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join()
        self._raise_if_failed()

    def __enter__(self) -> BackgroundUploader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
