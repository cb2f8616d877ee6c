"""What every handler shares: the process's one runtime (settings, API client, indexes, memory), the
per-object locks, and the boundary where reconcile outcomes become kopf errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import kopf

from .. import metrics
from ..kube import ApiError, Kube
from ..reconcile.cluster import ApiMismatch, Cluster, KopfIndexes, Memory, SystemClock
from ..reconcile.common import KIND_OF
from ..settings import Settings, settings_from_env


@dataclass
class Runtime:
    """The operator's process-wide state, set up by the startup handler."""

    settings: Settings = field(default_factory=settings_from_env)
    kube: Kube | None = None
    indexes: dict[str, Any] = field(default_factory=dict)
    """kopf's in-memory indexes by handler name (see indexes.py), handed over at startup."""
    memory: Memory = field(default_factory=Memory)
    """What the reconciles remember of each object (see :class:`~..reconcile.cluster.Memory`)."""
    _locks: dict[str, threading.RLock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def api_or_retry(self) -> Kube:
        """The API client; before start-up connected it, a ``kopf.TemporaryError`` (kopf retries in 1 s)."""
        if self.kube is None:
            raise kopf.TemporaryError("the operator is still starting", delay=1)
        return self.kube

    def cluster_or_retry(self) -> Cluster:
        """The reconciles' view of the cluster; ``kopf.TemporaryError`` as :meth:`api_or_retry`."""
        return Cluster(self.api_or_retry(), self.index_view(), self.settings, self.memory, SystemClock())

    def index_view(self) -> KopfIndexes:
        """kopf's indexes as the reconciles read them."""
        return KopfIndexes(self.indexes)

    @contextmanager
    def exclusive(self, uid: str) -> Iterator[None]:
        """One reconcile per object at a time (the change handler and the timer may fire together).

        Re-entrant: a Job event holds its owner's lock from its skip check through the reconcile."""
        with self._guard:
            lock = self._locks.setdefault(uid, threading.RLock())
        with lock:
            yield

    def forget(self, uid: str) -> None:
        """Drop per-object state of a deleted object."""
        with self._guard:
            self._locks.pop(uid, None)
        self.memory.forget(uid)


RUNTIME = Runtime()


def is_deletion(event: Mapping[str, Any], **_: Any) -> bool:
    """A ``when=`` filter: only the DELETED watch event (kopf logs a line for every handler it calls)."""
    return event.get("type") == "DELETED"


def forget_deleted(plural: str, event: Mapping[str, Any]) -> None:
    """On a DELETED watch event: drop the object from the phase gauge and the per-object memory.

    A watch event, not a delete handler: without a finalizer kopf calls no delete handler for an
    object that is simply gone (background deletion), only for one whose deletion waits on a finalizer.
    """
    if event.get("type") == "DELETED":
        uid = event["object"]["metadata"]["uid"]
        RUNTIME.forget(uid)
        metrics.PHASES.drop(KIND_OF[plural], uid)


@contextmanager
def measured(kind: str) -> Iterator[None]:
    """Time a reconcile and count its errors by class (a retry request counts too)."""
    started = time.perf_counter()
    try:
        yield
    except Exception as exc:
        metrics.RECONCILE_ERRORS.labels(kind=kind, error=type(exc).__name__).inc()
        raise
    finally:
        metrics.RECONCILE_SECONDS.labels(kind=kind).observe(time.perf_counter() - started)


def run_guarded(
    kind: str,
    body: Mapping[str, Any],
    reconcile: Callable[[Cluster, Mapping[str, Any]], object],
    *,
    permanent: bool,
) -> None:
    """Reconcile under the object's lock, on the process's view of the cluster. Change handlers
    (``permanent``) let kopf errors through (kopf retries or stops), a body the operator's model refuses
    as a permanent one; the timer and child events only log them, since the next resync retries anyway."""
    with RUNTIME.exclusive(body["metadata"]["uid"]), measured(kind):
        try:
            reconcile(RUNTIME.cluster_or_retry(), body)
        except ApiMismatch as exc:
            if permanent:
                raise kopf.PermanentError(str(exc)) from exc
        except (kopf.PermanentError, kopf.TemporaryError):
            if permanent:
                raise
        except ApiError as exc:
            if not exc.gone:  # the object (or its namespace) went away while we worked: nothing left to do
                raise
