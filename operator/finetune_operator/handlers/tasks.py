"""Dataset and Export handlers: register with kopf, pick what to reconcile, delegate to reconcile.tasks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import kopf

from ..builders.common import MANAGED_BY, MANAGER, OWNER_KIND
from ..reconcile.tasks import reconcile_dataset, reconcile_export
from .runtime import RUNTIME, forget_deleted, is_deletion, run_guarded

DATASETS: Final = ("finetune.dev", "v1alpha1", "datasets")
EXPORTS: Final = ("finetune.dev", "v1alpha1", "exports")


def _run(kind: str, body: Mapping[str, Any], permanent: bool) -> None:
    reconcile = reconcile_dataset if kind == "Dataset" else reconcile_export
    run_guarded(kind, body, reconcile, permanent=permanent)


@kopf.on.resume(*DATASETS)
@kopf.on.create(*DATASETS)
@kopf.on.update(*DATASETS, field="spec")
def dataset_changed(body: kopf.Body, **_: Any) -> None:
    """A Dataset appeared or its spec changed: validate that generation."""
    _run("Dataset", body, permanent=True)


@kopf.on.resume(*EXPORTS)
@kopf.on.create(*EXPORTS)
def export_changed(body: kopf.Body, **_: Any) -> None:
    """An Export appeared (its spec is immutable) or the operator restarted."""
    _run("Export", body, permanent=True)


def resync_task(kind: str, namespace: str, name: str) -> None:
    """The shared resync's entry for a Dataset or an Export: read it and reconcile it."""
    plural = "datasets" if kind == "Dataset" else "exports"
    body = RUNTIME.api_or_retry().read_custom(plural, namespace, name)
    if body is not None and not body["metadata"].get("deletionTimestamp"):
        _run(kind, body, permanent=False)


@kopf.on.event(*DATASETS, when=is_deletion)
async def dataset_event(event: Mapping[str, Any], **_: Any) -> None:
    """A Dataset is gone: its validation Job goes with it (ownerReferences), only our memory is left."""
    forget_deleted("datasets", event)


@kopf.on.event(*EXPORTS, when=is_deletion)
async def export_event(event: Mapping[str, Any], **_: Any) -> None:
    """An Export is gone: its Job goes with it (ownerReferences), only our memory is left."""
    forget_deleted("exports", event)


def _task_owned(value: str | None, **_: Any) -> bool:
    return value in ("dataset", "export")


# Only validation and export Jobs: a training Job's events never reach this handler (nor a thread).
@kopf.on.event("batch", "v1", "jobs", labels={MANAGED_BY: MANAGER, OWNER_KIND: _task_owned})
def task_job_event(event: Mapping[str, Any], body: kopf.Body, **_: Any) -> None:
    """A validation or export Job changed: reconcile its owner now rather than at the next resync."""
    owner = next(
        (o for o in body["metadata"].get("ownerReferences") or [] if o.get("kind") in ("Dataset", "Export")),
        None,
    )
    if owner is None or event.get("type") == "DELETED":
        return
    plural = "datasets" if owner["kind"] == "Dataset" else "exports"
    with RUNTIME.exclusive(
        owner["uid"]
    ):  # read under the lock: no other reconcile replaces its status meanwhile
        parent = RUNTIME.api_or_retry().read_custom(plural, body["metadata"]["namespace"], owner["name"])
        if (
            parent is not None
            and parent["metadata"]["uid"] == owner["uid"]
            and not parent["metadata"].get("deletionTimestamp")
        ):
            _run(owner["kind"], parent, permanent=False)
        else:
            RUNTIME.forget(owner["uid"])  # the owner is gone: drop what this event's lock put back
