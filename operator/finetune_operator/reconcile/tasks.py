"""Dataset (validation Job → status) and Export (waits for its FineTuneJob, then the export Job)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from finetune_api.cluster import dataset_cluster_errors, export_cluster_errors
from finetune_api.dataset import DatasetPhase, DatasetStatus
from finetune_api.export import ExportPhase, ExportStatus
from finetune_api.finetunejob import FineTuneJobStatus
from finetune_api.resources import Dataset, Export, FineTuneJob
from finetune_api.rules import export_rule_errors

from .. import metrics
from ..builders.common import Owner
from ..builders.tasks import EXPORTER, VALIDATOR, build_export, build_validation
from ..status import reasons as r
from ..status.conditions import Verdict
from ..status.observe import JobObservation
from ..status.tasks import dataset_status, export_gate, export_status, export_verdict
from .cluster import Cluster, parse_or_raise, parse_status
from .common import observe, write_status


def _owner(kind: str, body: Mapping[str, Any]) -> Owner:
    meta = body["metadata"]
    return Owner(kind, meta["name"], meta["namespace"], meta["uid"])


def _run_job(
    cluster: Cluster, owner: Owner, component: str, config_map: dict[str, Any], job: dict[str, Any]
) -> JobObservation:
    """Create the ConfigMap and Job when absent (adopting on a name clash), then observe them."""
    name = job["metadata"]["name"]
    current = cluster.indexes.job(owner.namespace, name)
    if current is None:
        cluster.kube.create_or_adopt(config_map)
        current, _ = cluster.kube.create_or_adopt(job)
    selector = {**owner.labels(component), "batch.kubernetes.io/job-name": name}
    return observe(cluster, current, selector)


def reconcile_dataset(cluster: Cluster, body: Mapping[str, Any]) -> None:
    """Validate the Dataset's current generation once: Validating → Ready | Invalid.

    Raises:
        ApiMismatch: the body does not parse as the operator's Dataset.
    """
    ds, old = parse_or_raise(Dataset, body), parse_status(DatasetStatus, body)
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
        status, verdict = dataset_status(
            old, None, generation=generation, now=cluster.timestamp(), refusal=refusal
        )
        write_status(cluster, "datasets", body, old, status, verdict)
        return
    owner = _owner("Dataset", body)
    config_map, job = build_validation(ds, owner, cluster.settings)
    obs = _run_job(cluster, owner, VALIDATOR, config_map, job)
    status, verdict = dataset_status(old, obs, generation=generation, now=cluster.timestamp())
    write_status(cluster, "datasets", body, old, status, verdict)


def reconcile_export(cluster: Cluster, body: Mapping[str, Any]) -> None:
    """Wait for the FineTuneJob to succeed, run the export Job, copy its outputs into the status.

    Raises:
        ApiMismatch: the body, or that of its FineTuneJob, does not parse as the operator's model.
    """
    export, old = parse_or_raise(Export, body), parse_status(ExportStatus, body)
    generation, namespace = export.metadata.generation, body["metadata"]["namespace"]
    if old and old.phase in (ExportPhase.SUCCEEDED, ExportPhase.FAILED):
        metrics.PHASES.set("Export", body["metadata"]["uid"], str(old.phase))
        return
    source = None
    if export.spec.fine_tune_job_ref:
        raw = cluster.kube.read_custom("finetunejobs", namespace, export.spec.fine_tune_job_ref)
        if raw is not None:
            source = parse_or_raise(FineTuneJob, raw)
            source.status = parse_status(FineTuneJobStatus, raw)
    calibration = None
    quantization = export.spec.quantization
    if quantization is not None and quantization.calibration_dataset:
        calibration = cluster.indexes.dataset(namespace, quantization.calibration_dataset)
    errors = export_rule_errors(export.spec) + export_cluster_errors(export.spec)
    refusal = Verdict(ExportPhase.FAILED, r.INVALID_SPEC, "; ".join(map(str, errors))) if errors else None
    gate = refusal or export_gate(export, source, calibration)
    if gate is not None:
        # Nothing raised: the status, its event and log line say why (a kopf error would repeat it as
        # an ERROR line and an Error event); the shared resync looks at a Waiting Export again.
        status = export_status(export, old, gate, None, generation=generation, now=cluster.timestamp())
        write_status(cluster, "exports", body, old, status, gate)
        return
    owner = _owner("Export", body)
    config_map, job = build_export(export, source, owner, cluster.settings, calibration)
    obs = _run_job(cluster, owner, EXPORTER, config_map, job)
    verdict = export_verdict(obs)
    status = export_status(export, old, verdict, obs, generation=generation, now=cluster.timestamp())
    write_status(cluster, "exports", body, old, status, verdict)
