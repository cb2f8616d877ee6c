"""What every handler shares: settings, the API client, per-object locks, status writes, events."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import kopf
from pydantic import BaseModel, ValidationError

from finetune_api.common import ApiModel
from finetune_api.resources import KINDS

from .. import metrics
from ..kube import ApiError, Kube
from ..settings import Settings, settings_from_env
from ..status.conditions import Verdict
from ..status.observe import JobObservation, PodRead, observe_job, pod_read, rfc3339

M = TypeVar("M", bound=BaseModel)
WARNING_PHASES = ("Failed", "Invalid")
KIND_OF: Final = {info.plural: kind for kind, info in KINDS.items()}
"""A kind by its plural: FineTuneJob for finetunejobs (the one spelling of metrics' kind label)."""

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """The operator's process-wide state, set up by the startup handler."""

    settings: Settings = field(default_factory=settings_from_env)
    kube: Kube | None = None
    _locks: dict[str, threading.RLock] = field(default_factory=dict)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    progress_read_at: dict[str, float] = field(default_factory=dict)
    indexes: dict[str, Any] = field(default_factory=dict)
    """kopf's in-memory indexes by handler name (see indexes.py), handed over at startup."""
    applied_records: dict[str, str] = field(default_factory=dict)
    """The last progress record (as read) that made it into each FineTuneJob's status."""
    reconciled_jobs: dict[str, str] = field(default_factory=dict)
    """The training Job's state (:func:`~.indexes.job_state_key`) each FineTuneJob's status last came from."""
    told: dict[str, tuple[str, str]] = field(default_factory=dict)
    """The (phase, reason) each object's status was last written or found with (see :func:`write_status`)."""
    progress_errors: dict[str, str] = field(default_factory=dict)
    """Why each FineTuneJob's progress record could not be read last time (absent: it could)."""
    expired: set[str] = field(default_factory=set)
    """FineTuneJobs whose children were deleted after ttlSecondsAfterFinished by this process."""

    def api(self) -> Kube:
        if self.kube is None:
            raise kopf.TemporaryError("the operator is still starting", delay=1)
        return self.kube

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
        self.progress_read_at.pop(uid, None)
        self.applied_records.pop(uid, None)
        self.reconciled_jobs.pop(uid, None)
        self.progress_errors.pop(uid, None)
        self.told.pop(uid, None)
        self.expired.discard(uid)

    def progress_due(self, uid: str) -> bool:
        """Whether the progress record is due for a read (at most once per resync interval)."""
        now = time.monotonic()
        if now - self.progress_read_at.get(uid, 0.0) < self.settings.resync_seconds * 0.9:
            return False
        self.progress_read_at[uid] = now
        return True


RUNTIME = Runtime()


def now() -> str:
    """The current time as the API writes it."""
    return rfc3339(datetime.now(UTC))


def parse(model: type[M], body: Mapping[str, Any]) -> M:
    """The object as its API model, parsed once at the handler boundary.

    A body the schema accepted but the model refuses (a version skew) is a permanent error.
    """
    raw = {k: v for k, v in dict(body).items() if k != "status"}
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise kopf.PermanentError(f"{body.get('kind')} does not match the operator's API: {exc}") from exc


def parse_status(model: type[M], body: Mapping[str, Any]) -> M | None:
    """The stored status as its model; None when absent or unreadable (it is then rebuilt)."""
    raw = body.get("status")
    if not raw:
        return None
    try:
        return model.model_validate(dict(raw))
    except ValidationError:
        return None


def write_status(
    plural: str, body: Mapping[str, Any], old: ApiModel | None, new: ApiModel, verdict: Verdict
) -> None:
    """Patch the status when it changed; post an event and log a line when the phase or reason did.

    Only a transition is told (against the stored status, re-read by every path but kopf's change
    handlers, whose body is the event's own), so a reconcile that repeats finds nothing to say."""
    meta = body["metadata"]
    metrics.PHASES.set(KIND_OF[plural], meta["uid"], str(verdict.phase))
    # What this process last wrote or found wins over ``old``: a body read just before another
    # reconcile of the object wrote its status would tell that transition again.
    now_told = (str(verdict.phase), verdict.reason)
    before = RUNTIME.told.get(meta["uid"]) or _phase_reason(old)
    old_wire = old.to_wire() if old else {}
    new_wire = new.to_wire()
    if old_wire == new_wire:
        RUNTIME.told[meta["uid"]] = now_told
        return
    # Fields that disappeared are removed explicitly (a merge patch keeps what it is not told about).
    patch: dict[str, Any] = {k: None for k in old_wire if k not in new_wire}
    patch.update(new_wire)
    RUNTIME.api().patch_status(plural, meta["namespace"], meta["name"], patch)
    RUNTIME.told[meta["uid"]] = now_told
    if before != now_told:
        kind = (
            "Warning"
            if str(verdict.phase) in WARNING_PHASES or verdict.reason.endswith("Failed")
            else "Normal"
        )
        message = f"{verdict.phase}: {verdict.message}"[:1024]
        ref = f"{KIND_OF[plural]} {meta['namespace']}/{meta['name']}"
        log.log(
            logging.WARNING if kind == "Warning" else logging.INFO,
            "%s: %s (%s)",
            ref,
            message,
            verdict.reason,
        )
        try:
            RUNTIME.api().post_event(body, kind, verdict.reason, message)
        except ApiError as exc:  # an event is worth a try, never a failed reconcile
            log.warning("%s: event %s not posted: %s", ref, verdict.reason, exc)


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


def observe(
    kube: Kube, job: Mapping[str, Any], selector: dict[str, str], pods_wanted: int = 1
) -> JobObservation:
    """A Job and as much of its pods (``selector``) as its state calls for (:func:`pod_read`);
    ``pods_wanted`` pods run as one group."""
    read = pod_read(job, pods_wanted)
    namespace = job["metadata"]["namespace"]
    pods = [] if read is PodRead.NONE else kube.list_pods(namespace, selector, cached=read is PodRead.CACHED)
    return observe_job(job, pods, group=pods_wanted)


def _phase_reason(status: ApiModel | None) -> tuple[str, str] | None:
    if status is None:
        return None
    phase = getattr(status, "phase", None)
    # Every verdict's reason lands on the Running (Validated for Datasets) condition, true or false.
    reason = next(
        (c.reason for c in getattr(status, "conditions", []) if c.type in ("Running", "Validated")), ""
    )
    return (str(phase), reason)


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
    kind: str, body: Mapping[str, Any], reconcile: Callable[[Mapping[str, Any]], object], *, permanent: bool
) -> None:
    """Reconcile under the object's lock. Change handlers (``permanent``) let kopf errors through (kopf
    retries or stops); the timer and child events only log them, since the next resync retries anyway."""
    with RUNTIME.exclusive(body["metadata"]["uid"]), measured(kind):
        try:
            reconcile(body)
        except (kopf.PermanentError, kopf.TemporaryError):
            if permanent:
                raise
        except ApiError as exc:
            if not exc.gone:  # the object (or its namespace) went away while we worked: nothing left to do
                raise
