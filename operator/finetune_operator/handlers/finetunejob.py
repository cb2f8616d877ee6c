"""FineTuneJob handlers: register with kopf, pick what to reconcile, delegate to reconcile.finetunejob."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import kopf

from ..builders.common import MANAGED_BY, MANAGER, OWNER_KIND
from ..reconcile.cluster import JobEntry, compact_job, job_state_key
from ..reconcile.finetunejob import PLURAL, reconcile_finetunejob
from ..status.finetunejob import TERMINAL, ProgressRead
from .runtime import RUNTIME, forget_deleted, is_deletion, run_guarded

FTJ: Final = ("finetune.dev", "v1alpha1", "finetunejobs")
OWNED_JOBS: Final = {MANAGED_BY: MANAGER, OWNER_KIND: "finetunejob"}


def _run(
    body: Mapping[str, Any],
    permanent: bool,
    trainer: dict[str, Any] | None = None,
    progress: ProgressRead | None = None,
) -> None:
    run_guarded(
        "FineTuneJob",
        body,
        lambda cluster, b: reconcile_finetunejob(cluster, b, trainer=trainer, progress=progress),
        permanent=permanent,
    )


@kopf.on.resume(*FTJ)
@kopf.on.create(*FTJ)
@kopf.on.update(*FTJ, field="spec")
def finetunejob_changed(body: kopf.Body, **_: Any) -> None:
    """Spec created or changed (suspend is the one mutable field), or the operator (re)started."""
    _run(body, permanent=True)


def resync_finetunejob(namespace: str, name: str, uid: str, progress: ProgressRead | None = None) -> None:
    """The shared resync's entry: read FineTuneJob ``uid`` and reconcile it (``progress``: a read just made).

    Read under the object's lock, so that the status it starts from is not one that a Job event's
    reconcile is replacing meanwhile."""
    with RUNTIME.exclusive(uid):
        body = RUNTIME.api_or_retry().read_custom(PLURAL, namespace, name)
        if body is None or body["metadata"]["uid"] != uid or body["metadata"].get("deletionTimestamp"):
            return
        _run(body, permanent=False, progress=progress)


@kopf.on.event("batch", "v1", "jobs", labels=OWNED_JOBS)
def trainer_job_event(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
    """A training Job changed: derive its FineTuneJob's status from this Job now (no re-read of the Job)."""
    owner = next(
        (o for o in body["metadata"].get("ownerReferences") or [] if o.get("kind") == "FineTuneJob"), None
    )
    if owner is None or event.get("type") == "DELETED":
        return
    ns = body["metadata"]["namespace"]
    entry = RUNTIME.index_view().finetunejob(ns, owner["name"])
    if entry is not None and (entry.uid != owner["uid"] or _settled(entry)):
        return  # another object of that name, or a finished job with nothing left to do
    with RUNTIME.exclusive(owner["uid"]):  # the create handler may be deriving the status from this Job now
        if RUNTIME.memory.reconciled_jobs.get(owner["uid"]) == job_state_key(body):
            return  # the status already derives from this very state (e.g. the ADDED event of our own create)
        parent = RUNTIME.api_or_retry().read_custom(PLURAL, ns, owner["name"])
        if parent is None or parent["metadata"]["uid"] != owner["uid"]:
            RUNTIME.forget(owner["uid"])  # the owner is gone: drop what this event's lock put back
            return
        if not parent["metadata"].get("deletionTimestamp"):
            _run(parent, permanent=False, trainer=compact_job(body))


def _settled(entry: JobEntry) -> bool:
    """A finished FineTuneJob whose children need no TTL deletion from this process."""
    if entry.phase not in TERMINAL:
        return False
    return entry.expires_at is None or entry.uid in RUNTIME.memory.expired


@kopf.on.event(*FTJ, when=is_deletion)
async def finetunejob_event(event: Mapping[str, Any], **_: Any) -> None:
    """A FineTuneJob is gone: children go with their owner (ownerReferences), only our memory is left."""
    forget_deleted(PLURAL, event)
