"""In-memory indexes (kopf keeps them current from its watches): a reconcile reads Datasets and our Jobs
from here instead of the API, and the shared resync learns which FineTuneJobs need it.

Each index holds only the fields its readers use, never whole bodies: with 1000 objects the
operator's memory is the floor plus a few hundred bytes per object.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

import kopf

from finetune_api.dataset import DatasetStatus
from finetune_api.resources import Dataset

from ..builders.common import MANAGED_BY, MANAGER
from ..status.observe import parse_time
from .runtime import RUNTIME, parse, parse_status

DATASETS: Final = ("finetune.dev", "v1alpha1", "datasets")
FTJ: Final = ("finetune.dev", "v1alpha1", "finetunejobs")
EXPORTS: Final = ("finetune.dev", "v1alpha1", "exports")
Key = tuple[str, str]


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


@kopf.index(*DATASETS)
async def dataset_index(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[Key, Dataset]:
    """(namespace, name) → the Dataset's name, generation, spec and status (parsed once per change)."""
    meta = body["metadata"]
    trimmed = {
        "metadata": {"name": name, "namespace": namespace, "generation": meta.get("generation")},
        "spec": body.get("spec") or {},
    }
    try:
        ds = parse(Dataset, trimmed)
    except kopf.PermanentError:  # a Dataset the model refuses reads as absent; its own handler reports it
        return {}
    ds.status = parse_status(DatasetStatus, body)
    return {(namespace, name): ds}


@kopf.index("batch", "v1", "jobs", labels={MANAGED_BY: MANAGER})
async def job_index(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[Key, dict[str, Any]]:
    """(namespace, name) → our Job, compact (training, validation and export Jobs alike)."""
    return {(namespace, name): compact_job(body)}


@kopf.index(*FTJ)
async def finetunejob_index(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[Key, JobEntry]:
    """(namespace, name) → the FineTuneJob's :class:`JobEntry`."""
    return {(namespace, name): job_entry(body)}


@kopf.index(*EXPORTS)
async def export_index(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[Key, str | None]:
    """(namespace, name) → the Export's phase (the resync follows the ones in flight)."""
    return {(namespace, name): (body.get("status") or {}).get("phase")}


INDEXES: Final = ("dataset_index", "job_index", "finetunejob_index", "export_index")


def lookup(index: Any, key: Key) -> Any:
    """The one value stored under ``key`` (names are unique per namespace), or None."""
    store = index.get(key) if index is not None else None
    return next(iter(store), None) if store else None


def indexed_dataset(namespace: str, name: str) -> Dataset | None:
    """A Dataset from the index (None when absent)."""
    found: Dataset | None = lookup(RUNTIME.indexes.get("dataset_index"), (namespace, name))
    return found


def indexed_job(namespace: str, name: str) -> dict[str, Any] | None:
    """One of our Jobs from the index, compact (None when absent or not seen yet)."""
    job = lookup(RUNTIME.indexes.get("job_index"), (namespace, name))
    return None if job is None else {k: dict(v) for k, v in job.items()}  # callers may edit their copy
