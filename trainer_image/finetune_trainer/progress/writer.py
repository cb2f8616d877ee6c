"""Writes the newest version of one small object from a background thread.

Progress records are snapshots: when storage is slow (or retrying through an outage), only the
newest one matters, so a pending older version is replaced instead of queued, and the training
loop never waits on a network round-trip.
"""

from __future__ import annotations

import logging
import threading

from ..storage import ObjectStore

log = logging.getLogger(__name__)


class LatestObjectWriter:
    """Keeps ``store/key`` up to date with the last value given to :meth:`put`."""

    def __init__(self, store: ObjectStore, key: str, *, content_type: str = "application/json") -> None:
        self.store = store
        self.key = key
        self.content_type = content_type
        self.writes = 0
        self.failures = 0
        self._cond = threading.Condition()
        self._pending: bytes | None = None
        self._busy = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"write-{key}", daemon=True)
        self._thread.start()

    def put(self, data: bytes) -> None:
        """Schedule ``data`` to be written, replacing any version not yet written."""
        with self._cond:
            if self._closed:
                raise RuntimeError(f"writer for {self.key} is closed")
            self._pending = data
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None:
                    return
                data, self._pending, self._busy = self._pending, None, True
            try:
                self.store.put_bytes(self.key, data, content_type=self.content_type)
                self.writes += 1
            except Exception as exc:  # any storage fault: the next put retries with newer data
                self.failures += 1
                log.warning("could not write %s to %s: %s", self.key, self.store.uri, exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until everything put so far has been written (or has failed); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Write what is pending, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
