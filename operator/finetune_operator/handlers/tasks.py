"""Dataset (validation Job → status) and Export (waits for its FineTuneJob, then the export Job)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import kopf

from finetune_api.cluster import dataset_cluster_errors, export_cluster_errors
from finetune_api.dataset import DatasetPhase, DatasetStatus
from finetune_api.export import ExportPhase, ExportStatus
from finetune_api.finetunejob import FineTuneJobStatus
from finetune_api.resources import Dataset, Export, FineTuneJob
from finetune_api.rules import export_rule_errors

from .. import metrics
from ..builders.common import MANAGED_BY, MANAGER, OWNER_KIND, Owner
from ..builders.tasks import EXPORTER, VALIDATOR, build_export, build_validation
from ..kube import Kube
from ..status import reasons as r
from ..status.conditions import Verdict
from ..status.observe import JobObservation
from ..status.tasks import dataset_status, export_gate, export_status, export_verdict
from .indexes import indexed_dataset, indexed_job
from .runtime import (
    RUNTIME,
    forget_deleted,
    is_deletion,
    now,
    observe,
    parse,
    parse_status,
    run_guarded,
    write_status,
)

DATASETS: Final = ("finetune.dev", "v1alpha1", "datasets")
EXPORTS: Final = ("finetune.dev", "v1alpha1", "exports")


def _owner(kind: str, body: Mapping[str, Any]) -> Owner:
    meta = body["metadata"]
    return Owner(kind, meta["name"], meta["namespace"], meta["uid"])


def _run_job(
    kube: Kube, owner: Owner, component: str, config_map: dict[str, Any], job: dict[str, Any]
) -> JobObservation:
    """Create the ConfigMap and Job when absent (adopting on a name clash), then observe them."""
    name = job["metadata"]["name"]
    current = indexed_job(owner.namespace, name)
    if current is None:
        kube.create_or_adopt(config_map)
        current, _ = kube.create_or_adopt(job)
    selector = {**owner.labels(component), "batch.kubernetes.io/job-name": name}
    return observe(kube, current, selector)


def reconcile_dataset(body: Mapping[str, Any]) -> None:
    """Validate the Dataset's current generation once: Validating → Ready | Invalid."""
    kube = RUNTIME.api()
    ds, old = parse(Dataset, body), parse_status(DatasetStatus, body)
    generation = ds.metadata.generation
    if (
        old
        and old.observed_generation == generation
        and old.phase in (DatasetPhase.READY, DatasetPhase.INVALID)
    ):
        metrics.PHASES.set("Dataset", body["metadata"]["uid"], str(old.phase))
        return
    errors = dataset_cluster_errors(ds.spec)
    if errors:  # the validation pod could not read it either
        refusal = Verdict(DatasetPhase.INVALID, r.INVALID_SPEC, "; ".join(map(str, errors)))
        status, verdict = dataset_status(old, None, generation=generation, now=now(), refusal=refusal)
        write_status("datasets", body, old, status, verdict)
        return
    owner = _owner("Dataset", body)
    config_map, job = build_validation(ds, owner, RUNTIME.settings)
    obs = _run_job(kube, owner, VALIDATOR, config_map, job)
    status, verdict = dataset_status(old, obs, generation=generation, now=now())
    write_status("datasets", body, old, status, verdict)


def reconcile_export(body: Mapping[str, Any]) -> None:
    """Wait for the FineTuneJob to succeed, run the export Job, copy its outputs into the status."""
    kube = RUNTIME.api()
    export, old = parse(Export, body), parse_status(ExportStatus, body)
    generation = export.metadata.generation
    if old and old.phase in (ExportPhase.SUCCEEDED, ExportPhase.FAILED):
        metrics.PHASES.set("Export", body["metadata"]["uid"], str(old.phase))
        return
    source = None
    if export.spec.fine_tune_job_ref:
        raw = kube.read_custom("finetunejobs", body["metadata"]["namespace"], export.spec.fine_tune_job_ref)
        if raw is not None:
            source = parse(FineTuneJob, raw)
            source.status = parse_status(FineTuneJobStatus, raw)
    calibration = None
    quantization = export.spec.quantization
    if quantization is not None and quantization.calibration_dataset:
        calibration = indexed_dataset(body["metadata"]["namespace"], quantization.calibration_dataset)
    errors = export_rule_errors(export.spec) + export_cluster_errors(export.spec)
    refusal = Verdict(ExportPhase.FAILED, r.INVALID_SPEC, "; ".join(map(str, errors))) if errors else None
    gate = refusal or export_gate(export, source, calibration)
    if gate is not None:
        # Nothing raised: the status, its event and log line say why (a kopf error would repeat it as
        # an ERROR line and an Error event); the shared resync looks at a Waiting Export again.
        status = export_status(export, old, gate, None, generation=generation, now=now())
        write_status("exports", body, old, status, gate)
        return
    owner = _owner("Export", body)
    config_map, job = build_export(export, source, owner, RUNTIME.settings, calibration)
    obs = _run_job(kube, owner, EXPORTER, config_map, job)
    verdict = export_verdict(obs)
    write_status(
        "exports",
        body,
        old,
        export_status(export, old, verdict, obs, generation=generation, now=now()),
        verdict,
    )


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
    body = RUNTIME.api().read_custom(plural, namespace, name)
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
        parent = RUNTIME.api().read_custom(plural, body["metadata"]["namespace"], owner["name"])
        if (
            parent is not None
            and parent["metadata"]["uid"] == owner["uid"]
            and not parent["metadata"].get("deletionTimestamp")
        ):
            _run(owner["kind"], parent, permanent=False)
        else:
            RUNTIME.forget(owner["uid"])  # the owner is gone: drop what this event's lock put back
