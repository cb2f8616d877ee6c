"""In-memory indexes (kopf keeps them current from its watches): a reconcile reads Datasets and our Jobs
from here instead of the API, and the shared resync learns which FineTuneJobs need it.

Each index holds only the fields its readers use, never whole bodies: with 1000 objects the
operator's memory is the floor plus a few hundred bytes per object. What each holds is built in
``reconcile.cluster`` (:func:`dataset_entry`, :func:`compact_job`, :func:`job_entry`) and read through
:class:`~..reconcile.cluster.KopfIndexes`.
"""

from __future__ import annotations

from typing import Any, Final

import kopf

from finetune_api.resources import Dataset

from ..builders.common import MANAGED_BY, MANAGER
from ..reconcile.cluster import JobEntry, Key, compact_job, dataset_entry, job_entry

DATASETS: Final = ("finetune.dev", "v1alpha1", "datasets")
FTJ: Final = ("finetune.dev", "v1alpha1", "finetunejobs")
EXPORTS: Final = ("finetune.dev", "v1alpha1", "exports")


@kopf.index(*DATASETS)
async def dataset_index(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[Key, Dataset]:
    """(namespace, name) → the Dataset's name, generation, spec and status (parsed once per change)."""
    ds = dataset_entry(body)
    return {} if ds is None else {(namespace, name): ds}


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
