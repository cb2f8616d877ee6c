"""What every reconcile shares: observing a Job and its pods, writing a status and telling its transitions."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from finetune_api.common import ApiModel
from finetune_api.resources import KINDS

from .. import metrics
from ..kube import ApiError
from ..status.conditions import Verdict
from ..status.observe import JobObservation, PodRead, observe_job, pod_read
from .cluster import Cluster

WARNING_PHASES = ("Failed", "Invalid")
KIND_OF: Final = {info.plural: kind for kind, info in KINDS.items()}
"""A kind by its plural: FineTuneJob for finetunejobs (the one spelling of metrics' kind label)."""

log = logging.getLogger(__name__)


def observe(
    cluster: Cluster, job: Mapping[str, Any], selector: dict[str, str], pods_wanted: int = 1
) -> JobObservation:
    """A Job and as much of its pods (``selector``) as its state calls for (:func:`pod_read`);
    ``pods_wanted`` pods run as one group."""
    read = pod_read(job, pods_wanted)
    namespace = job["metadata"]["namespace"]
    pods = (
        []
        if read is PodRead.NONE
        else cluster.kube.list_pods(namespace, selector, cached=read is PodRead.CACHED)
    )
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


def write_status(
    cluster: Cluster,
    plural: str,
    body: Mapping[str, Any],
    old: ApiModel | None,
    new: ApiModel,
    verdict: Verdict,
) -> None:
    """Patch the status when it changed; post an event and log a line when the phase or reason did.

    Only a transition is told (against the stored status, re-read by every path but kopf's change
    handlers, whose body is the event's own), so a reconcile that repeats finds nothing to say."""
    meta, told = body["metadata"], cluster.memory.told
    metrics.PHASES.set(KIND_OF[plural], meta["uid"], str(verdict.phase))
    # What this process last wrote or found wins over ``old``: a body read just before another
    # reconcile of the object wrote its status would tell that transition again.
    now_told = (str(verdict.phase), verdict.reason)
    before = told.get(meta["uid"]) or _phase_reason(old)
    old_wire = old.to_wire() if old else {}
    new_wire = new.to_wire()
    if old_wire == new_wire:
        told[meta["uid"]] = now_told
        return
    # Fields that disappeared are removed explicitly (a merge patch keeps what it is not told about).
    patch: dict[str, Any] = {k: None for k in old_wire if k not in new_wire}
    patch.update(new_wire)
    cluster.kube.patch_status(plural, meta["namespace"], meta["name"], patch)
    told[meta["uid"]] = now_told
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
            cluster.kube.post_event(body, kind, verdict.reason, message)
        except ApiError as exc:  # an event is worth a try, never a failed reconcile
            log.warning("%s: event %s not posted: %s", ref, verdict.reason, exc)
