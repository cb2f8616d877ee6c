"""What a reconcile sees of the cluster: the API calls it makes, the indexes it reads, the settings,
the operator's per-object memory and a clock, handed in as one :class:`Cluster`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from finetune_api.common import OutputSpec
from finetune_api.dataset import DatasetStatus
from finetune_api.resources import Dataset

from ..progress import read_progress
from ..settings import Settings
from ..status.finetunejob import ProgressRead
from ..status.observe import parse_time, rfc3339

M = TypeVar("M", bound=BaseModel)
Key = tuple[str, str]
ProgressReader = Callable[[OutputSpec, dict[str, str] | None], ProgressRead]
"""Reads a trainer's progress record under an output, with the credentials of its Secret."""


class KubeApi(Protocol):
    """The API calls reconciles make (:class:`~finetune_operator.kube.Kube` is the real one)."""

    def create_or_adopt(self, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]: ...

    def list_pods(
        self, namespace: str, selector: dict[str, str], *, cached: bool = False
    ) -> list[dict[str, Any]]: ...

    def set_job_suspend(self, namespace: str, name: str, suspend: bool) -> None: ...

    def post_event(self, involved: Mapping[str, Any], kind: str, reason: str, message: str) -> None: ...

    def evict_pod(self, namespace: str, name: str) -> None: ...

    def delete(self, kind: str, namespace: str, name: str) -> None: ...

    def node_labels(self, selector: dict[str, str]) -> list[dict[str, str]]: ...

    def secret_data(self, namespace: str, name: str) -> dict[str, str]: ...

    def read_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None: ...

    def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None: ...


class ApiMismatch(ValueError):
    """A body the API server's schema accepted but the operator's model refuses (a version skew)."""


def parse_or_raise(model: type[M], body: Mapping[str, Any]) -> M:
    """The object (without its status) as its API model.

    Raises:
        ApiMismatch: the model refuses it (the handlers make that a permanent error).
    """
    raw = {k: v for k, v in dict(body).items() if k != "status"}
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ApiMismatch(f"{body.get('kind')} does not match the operator's API: {exc}") from exc


def parse_status(model: type[M], body: Mapping[str, Any]) -> M | None:
    """The stored status as its model; None when absent or unreadable (it is then rebuilt)."""
    raw = body.get("status")
    if not raw:
        return None
    try:
        return model.model_validate(dict(raw))
    except ValidationError:
        return None


# -- what the indexes hold -------------------------------------------------------------------------
@dataclass(frozen=True)
class JobEntry:
    """What the resync needs of a FineTuneJob without reading it: its phase, TTL deadline and output."""

    uid: str
    phase: str | None
    expires_at: float | None
    """POSIX time of ttlSecondsAfterFinished after completion; None when no TTL applies (yet)."""
    output: Mapping[str, Any] | None
    """spec.output as stored (uri, endpoint, region, credentialsSecret), for progress reads."""


def compact_job(body: Mapping[str, Any]) -> dict[str, Any]:
    """A batch/v1 Job reduced to what reconciles read: names, owners, suspend and status."""
    meta = body["metadata"]
    return {
        "metadata": {
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
            "ownerReferences": meta.get("ownerReferences") or [],
        },
        "spec": {"suspend": (body.get("spec") or {}).get("suspend")},
        "status": dict(body.get("status") or {}),
    }


def job_state_key(job: Mapping[str, Any]) -> str:
    """What a status derives from in a Job (its status and suspend), as a comparable string."""
    return json.dumps([(job.get("spec") or {}).get("suspend"), job.get("status") or {}], sort_keys=True)


def job_entry(body: Mapping[str, Any]) -> JobEntry:
    """The resync's view of one FineTuneJob body."""
    spec, status = body.get("spec") or {}, body.get("status") or {}
    ttl, done = spec.get("ttlSecondsAfterFinished"), parse_time(status.get("completionTime"))
    expires = (done + timedelta(seconds=ttl)).timestamp() if ttl is not None and done else None
    output = spec.get("output")
    return JobEntry(body["metadata"]["uid"], status.get("phase"), expires, dict(output) if output else None)


def dataset_entry(body: Mapping[str, Any]) -> Dataset | None:
    """A Dataset's name, generation, spec and status, parsed once per change; None when the model
    refuses it (it then reads as absent; its own handler reports it)."""
    meta = body["metadata"]
    trimmed = {
        "metadata": {
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "generation": meta.get("generation"),
        },
        "spec": body.get("spec") or {},
    }
    try:
        ds = parse_or_raise(Dataset, trimmed)
    except ApiMismatch:
        return None
    ds.status = parse_status(DatasetStatus, body)
    return ds


class Indexes(Protocol):
    """The objects a reconcile reads from memory instead of the API."""

    def dataset(self, namespace: str, name: str) -> Dataset | None:
        """A Dataset (None when absent)."""

    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One of our Jobs, compact (:func:`compact_job`), a copy the caller may edit; None when absent."""

    def finetunejob(self, namespace: str, name: str) -> JobEntry | None:
        """A FineTuneJob's :class:`JobEntry` (None when absent)."""


def lookup(index: Any, key: Key) -> Any:
    """The one value stored under ``key`` in a kopf index (names are unique per namespace), or None."""
    store = index.get(key) if index is not None else None
    return next(iter(store), None) if store else None


@dataclass(frozen=True)
class KopfIndexes:
    """:class:`Indexes` over kopf's in-memory indexes, by handler name (see handlers/indexes.py)."""

    stores: Mapping[str, Any]

    def dataset(self, namespace: str, name: str) -> Dataset | None:
        found: Dataset | None = lookup(self.stores.get("dataset_index"), (namespace, name))
        return found

    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        job = lookup(self.stores.get("job_index"), (namespace, name))
        return None if job is None else {k: dict(v) for k, v in job.items()}

    def finetunejob(self, namespace: str, name: str) -> JobEntry | None:
        found: JobEntry | None = lookup(self.stores.get("finetunejob_index"), (namespace, name))
        return found


# -- the operator's memory of each object ------------------------------------------------------------
@dataclass
class Memory:
    """What this process remembers of each object between reconciles, by uid."""

    progress_read_at: dict[str, float] = field(default_factory=dict)
    """When (monotonic seconds) each FineTuneJob's progress record was last read."""
    applied_records: dict[str, str] = field(default_factory=dict)
    """The last progress record (as read) that made it into each FineTuneJob's status."""
    reconciled_jobs: dict[str, str] = field(default_factory=dict)
    """The training Job's state (:func:`job_state_key`) each FineTuneJob's status last came from."""
    told: dict[str, tuple[str, str]] = field(default_factory=dict)
    """The (phase, reason) each object's status was last written or found with (see write_status)."""
    progress_errors: dict[str, str] = field(default_factory=dict)
    """Why each FineTuneJob's progress record could not be read last time (absent: it could)."""
    expired: set[str] = field(default_factory=set)
    """FineTuneJobs whose children were deleted after ttlSecondsAfterFinished by this process."""

    def forget(self, uid: str) -> None:
        """Drop what is remembered of a deleted object."""
        self.progress_read_at.pop(uid, None)
        self.applied_records.pop(uid, None)
        self.reconciled_jobs.pop(uid, None)
        self.progress_errors.pop(uid, None)
        self.told.pop(uid, None)
        self.expired.discard(uid)


class Clock(Protocol):
    """Wall time (for the API's timestamps and TTLs) and monotonic time (for intervals)."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The process's clocks."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass(frozen=True)
class Cluster:
    """One reconcile's view: the API, the indexes, the settings, the per-object memory, a clock and the
    reader of progress records (object storage)."""

    kube: KubeApi
    indexes: Indexes
    settings: Settings
    memory: Memory
    clock: Clock = field(default_factory=SystemClock)
    read_progress: ProgressReader = read_progress

    def timestamp(self) -> str:
        """The current time as the API writes it."""
        return rfc3339(self.clock.now())

    def progress_due(self, uid: str) -> bool:
        """Whether the progress record is due for a read (at most once per resync interval); a due read
        counts as made from now on."""
        now = self.clock.monotonic()
        if now - self.memory.progress_read_at.get(uid, 0.0) < self.settings.resync_seconds * 0.9:
            return False
        self.memory.progress_read_at[uid] = now
        return True
