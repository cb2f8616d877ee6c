"""One shared periodic resync instead of a timer per object.

Job events drive the status (tasks.py, finetunejob.py); what no event announces is looked at here,
every ``resync_seconds``: progress records of running FineTuneJobs, pods of pending ones (an image
that cannot be pulled changes no Job), TTL expiry, a child Job that disappeared, and Datasets and
Exports still in flight. The indexes say which objects need it, so an idle object costs nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from functools import partial
from typing import Any

from finetune_api.common import OutputSpec
from finetune_api.dataset import DatasetPhase
from finetune_api.export import ExportPhase
from finetune_api.finetunejob import Phase

from ..builders.tasks import validation_name
from ..builders.training import trainer_job_name
from ..reconcile.cluster import Cluster, JobEntry
from ..reconcile.finetunejob import read_job_progress, record_key
from ..status.observe import has_pods
from .finetunejob import resync_finetunejob
from .runtime import RUNTIME
from .tasks import resync_task

log = logging.getLogger(__name__)
Work = Callable[[], None]
# Reconciles run in threads (they block on the API); a few at a time keeps a burst of due objects
# from starving kopf's own handlers on a small machine.
CONCURRENCY = 4


def _progress_work(cluster: Cluster, namespace: str, name: str, entry: JobEntry) -> Work | None:
    if entry.output is None or not cluster.progress_due(entry.uid):
        return None
    output = OutputSpec.model_validate(entry.output)

    def work() -> None:
        read = read_job_progress(cluster, namespace, output)
        applied = cluster.memory.applied_records.get(entry.uid)
        new_record = read.record is not None and record_key(read.record) != applied
        # A read that starts or stops failing moves the ProgressUnavailable condition.
        if new_record or read.error != cluster.memory.progress_errors.get(entry.uid):
            resync_finetunejob(namespace, name, entry.uid, read)

    return work


def finetunejob_work(cluster: Cluster, namespace: str, name: str, entry: JobEntry, now: float) -> Work | None:
    """What one FineTuneJob needs from this resync, if anything (pure but for the view's reads)."""
    full: Work = partial(resync_finetunejob, namespace, name, entry.uid)
    if entry.phase in (Phase.SUCCEEDED, Phase.FAILED):
        due = (
            entry.expires_at is not None
            and entry.expires_at <= now
            and entry.uid not in cluster.memory.expired
        )
        return full if due else None
    if entry.phase == Phase.PREPARING:
        return full  # its Datasets may be Ready now (the gate reads them from the index)
    if entry.phase not in (Phase.PENDING, Phase.RUNNING):
        return None  # Suspended and new objects wait for an event
    job = cluster.indexes.job(namespace, trainer_job_name(name))
    if job is None or (entry.phase == Phase.PENDING and has_pods(job)):
        return full  # recreate a deleted Job; look at pods that may not start
    return _progress_work(cluster, namespace, name, entry) if entry.phase == Phase.RUNNING else None


def _pending_work(now: float) -> Iterator[tuple[str, Work]]:
    """(the object, as ``Kind namespace/name`` for the log, and its work) for each object due."""
    # Snapshots: the indexes change under kopf's event loop, which is also where this runs.
    cluster = RUNTIME.cluster_or_retry()  # started: the resync starts once the client is connected
    for (ns, name), store in list(RUNTIME.indexes.get("finetunejob_index", {}).items()):
        for entry in list(store):
            work = finetunejob_work(cluster, ns, name, entry, now)
            if work is not None:
                yield f"FineTuneJob {ns}/{name}", work
    for (ns, name), store in list(RUNTIME.indexes.get("dataset_index", {}).items()):
        for ds in list(store):
            done = ds.status is not None and ds.status.phase in (DatasetPhase.READY, DatasetPhase.INVALID)
            if not (done and ds.status.observed_generation == ds.metadata.generation):
                job = cluster.indexes.job(ns, validation_name(ds))
                if job is None or has_pods(job):
                    yield f"Dataset {ns}/{name}", partial(resync_task, "Dataset", ns, name)
    for (ns, name), store in list(RUNTIME.indexes.get("export_index", {}).items()):
        for phase in list(store):
            if phase not in (ExportPhase.SUCCEEDED, ExportPhase.FAILED):
                yield f"Export {ns}/{name}", partial(resync_task, "Export", ns, name)


async def _run_all(works: list[tuple[str, Work]], executor: Executor | None) -> None:
    gate, loop = asyncio.Semaphore(CONCURRENCY), asyncio.get_running_loop()

    async def one(ref: str, work: Work) -> None:
        async with gate:
            try:
                await loop.run_in_executor(executor, work)
            except Exception:  # one object's failure must not end the resync of the others
                log.exception("resync of %s failed", ref)

    await asyncio.gather(*(one(ref, w) for ref, w in works))


def _libc_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    library = ctypes.CDLL(name) if name else None
    return getattr(library, "malloc_trim", None)  # glibc only (musl has no such call)


_MALLOC_TRIM = _libc_malloc_trim()


def release_freed_memory() -> None:
    """Hand the heap pages freed since the last call back to the OS.

    A burst of events leaves glibc's heaps full of freed chunks it keeps for reuse, so RSS stays at the
    burst's peak; an operator watching thousands of objects is sized by that figure.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


async def resync_forever(interval: float, executor: Executor | None) -> None:
    """Every ``interval`` seconds, resync what needs it; runs until the operator stops (cancelled)."""
    while True:
        await asyncio.sleep(interval)
        await _run_all(list(_pending_work(time.time())), executor)
        release_freed_memory()


def start(interval: float, executor: Executor | None) -> asyncio.Task[Any]:
    """Start the resync loop on the running event loop; reconciles run on ``executor`` (kopf's threads)."""
    return asyncio.get_running_loop().create_task(resync_forever(interval, executor), name="finetune-resync")
