"""FineTuneJob: level-based reconcile of the ConfigMap, (Indexed) Job and Service, and the status."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Final

from finetune_api import preflight as pf
from finetune_api.cluster import job_cluster_errors
from finetune_api.common import OutputSpec
from finetune_api.finetunejob import FineTuneJobSpec, FineTuneJobStatus, Phase, dataset_paths
from finetune_api.resources import Dataset, FineTuneJob
from finetune_api.rules import job_rule_errors

from .. import metrics
from ..builders.training import (
    TRAINER,
    build_config_map,
    build_headless_service,
    build_trainer_job,
    config_map_name,
    owner_of,
    trainer_job_name,
)
from ..status import reasons as r
from ..status.conditions import Verdict
from ..status.finetunejob import TERMINAL, ProgressRead, build_job_status, dataset_gate, job_verdict
from ..status.observe import JobObservation, parse_time
from .cluster import Cluster, job_state_key, parse_or_raise, parse_status
from .common import observe, write_status

PLURAL: Final = "finetunejobs"
GPU_MEMORY_LABEL: Final = "finetune.dev/gpu-memory-gib"

log = logging.getLogger(__name__)


def _datasets(cluster: Cluster, job: FineTuneJob) -> dict[str, Dataset]:
    """The referenced Datasets as the index holds them (no API reads); absent ones are left out."""
    found = {}
    for _, name in dataset_paths(job.spec):  # training and evaluation data alike
        ds = cluster.indexes.dataset(job.metadata.namespace or "default", name)
        if ds is not None:
            found[name] = ds
    return found


def gpu_capacity(cluster: Cluster, spec: FineTuneJobSpec) -> tuple[float | None, str]:
    """GPU memory per device: the spec, else the smallest labelled node it may land on, else the setting."""
    if spec.resources.gpu_memory_gib:
        return spec.resources.gpu_memory_gib, "spec.resources.gpuMemoryGiB"
    values = []
    for labels in cluster.kube.node_labels(spec.resources.node_selector):
        try:
            values.append(float(labels[GPU_MEMORY_LABEL]))
        except (KeyError, ValueError):
            continue
    if values:
        return min(values), f"node label {GPU_MEMORY_LABEL}"
    if cluster.settings.gpu_memory_gib:
        return cluster.settings.gpu_memory_gib, "operator setting FINETUNE_GPU_MEMORY_GIB"
    return None, ""


def _expire(cluster: Cluster, job: FineTuneJob, status: FineTuneJobStatus) -> bool:
    """ttlSecondsAfterFinished: delete the children, keep the FineTuneJob and its status. True when done."""
    ttl, done = job.spec.ttl_seconds_after_finished, parse_time(status.completion_time)
    if ttl is None or done is None or cluster.clock.now() < done + timedelta(seconds=ttl):
        return False
    ns, name = job.metadata.namespace or "default", job.metadata.name
    cluster.kube.delete("Job", ns, trainer_job_name(name))
    cluster.kube.delete("Service", ns, trainer_job_name(name))
    cluster.kube.delete("ConfigMap", ns, config_map_name(name))
    return True


def _refuse(cluster: Cluster, body: Mapping[str, Any], job: FineTuneJob, old: FineTuneJobStatus | None,
            verdict: Verdict, estimate: float | None = None) -> None:  # fmt: skip
    # Nothing raised: the status, its event and log line say why, where a kopf error would repeat it as
    # an ERROR line and an Error event. A refused job is terminal (never reconciled again); one that
    # waits for its Datasets is Preparing, which the shared resync looks at again.
    status = build_job_status(
        job.spec, old, verdict, generation=job.metadata.generation, now=cluster.timestamp(),
        estimate_gib=estimate,
    )  # fmt: skip
    write_status(cluster, PLURAL, body, old, status, verdict)


def _gate(cluster: Cluster, job: FineTuneJob) -> tuple[Verdict | None, float | None]:
    """Checks before the Job exists: spec, Datasets, memory preflight. Returns the verdict that stops the
    job here (None: it may run) and the memory estimate."""
    datasets = _datasets(cluster, job)
    # The spec's own rules (the API server ran only the CEL ones), then those of running on the cluster.
    errors = job_rule_errors(job.spec) + job_cluster_errors(
        job.spec, {n: ds.spec for n, ds in datasets.items()}
    )
    if errors:
        return Verdict(Phase.FAILED, r.INVALID_SPEC, "; ".join(map(str, errors))), None
    waiting = dataset_gate(job.spec, datasets)
    if waiting:
        return waiting, None
    spec = job.spec
    capacity, source = gpu_capacity(cluster, spec) if spec.resources.gpus_per_node else (None, "")
    try:
        result = pf.preflight(spec, capacity, source)
    except ValueError as exc:
        return Verdict(Phase.FAILED, r.INVALID_SPEC, str(exc)), None
    if result.refusal:
        return Verdict(Phase.FAILED, r.INSUFFICIENT_GPU_MEMORY, result.refusal), result.estimate_gib
    return None, result.estimate_gib


def _converge(
    cluster: Cluster, body: Mapping[str, Any], job: FineTuneJob, trainer: dict[str, Any] | None
) -> tuple[dict[str, Any], JobObservation]:
    """Create what is missing (adopting what exists), propagate suspend, observe the Job and its pods.

    ``trainer`` is the Job as just seen in a Job event; otherwise the jobs index says whether it exists
    (one seen late makes the create answer 409 and adopt it: names are deterministic).
    """
    kube = cluster.kube
    ns, owner = job.metadata.namespace or "default", owner_of(job, body["metadata"]["uid"])
    trainer = trainer or cluster.indexes.job(ns, trainer_job_name(job.metadata.name))
    if trainer is None:
        datasets = list(_datasets(cluster, job).values())
        kube.create_or_adopt(build_config_map(job, datasets, owner))
        if job.spec.resources.nodes > 1:
            kube.create_or_adopt(build_headless_service(job, owner))
        trainer, _ = kube.create_or_adopt(build_trainer_job(job, datasets, owner, cluster.settings))
    suspended = bool(trainer["spec"].get("suspend"))
    # With Kueue the operator only ever suspends; admitting (un-suspending) is Kueue's job.
    if job.spec.suspend != suspended and (job.spec.suspend or not job.spec.queue_name):
        kube.set_job_suspend(ns, trainer["metadata"]["name"], job.spec.suspend)
        trainer["spec"]["suspend"] = job.spec.suspend
    selector = {**owner.labels(TRAINER), "batch.kubernetes.io/job-name": trainer["metadata"]["name"]}
    obs = observe(cluster, trainer, selector, job.spec.resources.nodes)
    # One pod of a multi-node group failed: the others restart with its replacement (evicted, they
    # cost no retry), into a fresh rendezvous from the last checkpoint.
    for pod in obs.stale_peers:
        log.info(
            "%s/%s: a peer failed; evicting %s so the group restarts together", ns, job.metadata.name, pod
        )
        kube.evict_pod(ns, pod)
    return trainer, obs


def read_job_progress(cluster: Cluster, namespace: str, output: OutputSpec | None) -> ProgressRead:
    """The trainer's progress record under ``output`` (its credentials Secret read here)."""
    if output is None:
        return ProgressRead(None)
    secret = (
        cluster.kube.secret_data(namespace, output.credentials_secret) if output.credentials_secret else None
    )
    return cluster.read_progress(output, secret)


def _note_progress_read(cluster: Cluster, uid: str, ref: str, read: ProgressRead) -> None:
    """Log a progress read that starts or stops failing, once (the ProgressUnavailable condition says it)."""
    errors = cluster.memory.progress_errors
    before = errors.get(uid)
    if read.error is not None and before is None:
        log.warning("%s: progress record unreadable: %s", ref, read.error)
    elif read.error is None and before is not None:
        log.info("%s: progress record readable again", ref)
    if read.error is None:
        errors.pop(uid, None)
    else:
        errors[uid] = read.error


def record_key(record: Mapping[str, Any] | None) -> str:
    """A progress record's identity, to tell whether the status already reflects it."""
    return json.dumps(record, sort_keys=True, default=str)


def reconcile_finetunejob(
    cluster: Cluster,
    body: Mapping[str, Any],
    *,
    trainer: dict[str, Any] | None = None,
    progress: ProgressRead | None = None,
) -> Verdict:
    """Observe, compute the desired state, converge, write the status; a gate that stops it (a refusal,
    Datasets not ready) writes its own. ``trainer``: the Job from a Job event; ``progress``: a read of the
    progress record just made.

    Raises:
        ApiMismatch: the body does not parse as the operator's FineTuneJob.
    """
    job, old = parse_or_raise(FineTuneJob, body), parse_status(FineTuneJobStatus, body)
    memory = cluster.memory
    uid, ns = body["metadata"]["uid"], job.metadata.namespace or "default"
    if old and old.phase in TERMINAL:
        metrics.PHASES.set("FineTuneJob", uid, str(old.phase))  # counted after an operator restart too
        if uid not in memory.expired and _expire(cluster, job, old):
            memory.expired.add(uid)
        return Verdict(old.phase, "", "")
    stop, estimate = _gate(cluster, job)
    if stop is not None:
        _refuse(cluster, body, job, old, stop, estimate)
        return stop
    trainer, obs = _converge(cluster, body, job, trainer)
    verdict = job_verdict(job.spec, obs)
    running = verdict.phase == Phase.RUNNING
    if running and progress is None and cluster.progress_due(uid):
        progress = read_job_progress(cluster, ns, job.spec.output)
    progress = progress if running else None
    status = build_job_status(
        job.spec,
        old,
        verdict,
        generation=job.metadata.generation,
        now=cluster.timestamp(),
        obs=obs,
        record=progress.record if progress else None,
        estimate_gib=estimate,
        progress_read=progress,
    )
    write_status(cluster, PLURAL, body, old, status, verdict)
    if progress is not None:
        _note_progress_read(cluster, uid, f"{ns}/{job.metadata.name}", progress)
        if progress.record is not None:
            memory.applied_records[uid] = record_key(progress.record)
    memory.reconciled_jobs[uid] = job_state_key(trainer)
    return verdict
