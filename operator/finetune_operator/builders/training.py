"""A FineTuneJob's children: the ConfigMap with the resolved spec, the (Indexed) Job, the headless Service."""

from __future__ import annotations

import json
from typing import Any, Final

import yaml

from finetune_api.pod import CONFIG_DIR, DATASET_CREDENTIALS_ENV, JOB_FILE
from finetune_api.resources import Dataset, FineTuneJob, resolved_document

from ..settings import Settings
from .common import QUEUE_LABEL, Owner, PodParts, child_name, plain_env
from .pods import Workload, output_parts, pod_failure_policy, pod_template, source_credentials

MASTER_PORT: Final = 29500
TRAINER: Final = "trainer"


def owner_of(job: FineTuneJob, uid: str) -> Owner:
    """The FineTuneJob as the owner of its children."""
    return Owner("FineTuneJob", job.metadata.name, job.metadata.namespace or "default", uid)


def trainer_job_name(name: str) -> str:
    """Name of the batch/v1 Job of FineTuneJob ``name`` (deterministic: a retry finds, never duplicates)."""
    return child_name(name, "train")


def config_map_name(name: str) -> str:
    """Name of the ConfigMap holding the resolved spec."""
    return child_name(name, "spec")


def resolved_spec_yaml(job: FineTuneJob, datasets: list[Dataset]) -> str:
    """The multi-document YAML the trainer runs: the FineTuneJob, then every Dataset it references."""
    return yaml.safe_dump_all(
        [resolved_document(job), *(resolved_document(d) for d in datasets)], sort_keys=False
    )


def build_config_map(job: FineTuneJob, datasets: list[Dataset], owner: Owner) -> dict[str, Any]:
    """The ConfigMap mounted at /etc/finetune: job.yaml with the FineTuneJob and its resolved Datasets."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": owner.metadata(config_map_name(job.metadata.name), TRAINER),
        "data": {JOB_FILE: resolved_spec_yaml(job, datasets)},
    }


def trainer_command(job: FineTuneJob) -> list[str]:
    """`finetune run` for one process; torchrun for several GPUs or nodes (node rank = completion index)."""
    res = job.spec.resources
    config = f"{CONFIG_DIR}/{JOB_FILE}"
    if res.nodes == 1 and res.gpus_per_node <= 1:
        return ["finetune", "run", config]
    nproc = str(max(res.gpus_per_node, 1))
    if res.nodes == 1:
        return ["torchrun", "--standalone", "--nproc-per-node", nproc, "-m", "finetune_trainer.run", config]
    return [
        "torchrun",
        "--nnodes", str(res.nodes),
        "--nproc-per-node", nproc,
        "--node-rank", "$(JOB_COMPLETION_INDEX)",  # expanded by the kubelet from the Job's env
        "--master-addr", "$(MASTER_ADDR)",
        "--master-port", str(MASTER_PORT),
        "-m", "finetune_trainer.run", config,
    ]  # fmt: skip


def _pod_parts(job: FineTuneJob, datasets: list[Dataset]) -> PodParts:
    spec = job.spec
    parts = PodParts()
    if spec.output:
        output_parts(parts, spec.output)
    source_credentials(parts, spec.model.credentials_secret, "model")
    parts.add_pvc(spec.model.source)
    if spec.model.adapter:
        parts.add_pvc(spec.model.adapter)
    dataset_dirs = {}
    for ds in datasets:
        folder = source_credentials(
            parts, ds.spec.credentials_secret, child_name("dataset", ds.metadata.name, 40)
        )
        if folder:
            dataset_dirs[ds.metadata.name] = folder
        parts.add_pvc(ds.spec.source)
    if dataset_dirs:  # the trainer reads each Dataset with its own keys
        parts.env += plain_env({DATASET_CREDENTIALS_ENV: json.dumps(dataset_dirs, sort_keys=True)})
    if spec.resources.nodes > 1:
        master = f"{trainer_job_name(job.metadata.name)}-0.{trainer_job_name(job.metadata.name)}"
        parts.env += plain_env(
            {
                "MASTER_ADDR": master,
                "MASTER_PORT": str(MASTER_PORT),
                "FINETUNE_NNODES": str(spec.resources.nodes),
                "FINETUNE_NPROC_PER_NODE": str(max(spec.resources.gpus_per_node, 1)),
            }
        )
    return parts


def build_trainer_job(
    job: FineTuneJob, datasets: list[Dataset], owner: Owner, settings: Settings
) -> dict[str, Any]:
    """The batch/v1 Job that trains: Indexed with one pod per node when ``nodes > 1``.

    With a Kueue queue the Job is created suspended: Kueue admits it by un-suspending it.
    """
    spec = job.spec
    name = trainer_job_name(job.metadata.name)
    queue = {QUEUE_LABEL: spec.queue_name} if spec.queue_name else {}
    labels = owner.labels(TRAINER)
    work = Workload(
        image=spec.image or settings.trainer_image,
        command=trainer_command(job),
        config_map=config_map_name(job.metadata.name),
        resources=spec.resources,
        labels=labels,
        parts=_pod_parts(job, datasets),
        pull_secrets=tuple(spec.image_pull_secrets or ()),
    )
    template = pod_template(work, settings)
    nodes = spec.resources.nodes
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "completions": nodes,
        "parallelism": nodes,
        "suspend": spec.suspend or bool(spec.queue_name),
        "podFailurePolicy": pod_failure_policy(),
        "template": template,
    }
    if spec.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if nodes > 1:
        job_spec["completionMode"] = "Indexed"
        template["spec"]["subdomain"] = name
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": owner.metadata(name, TRAINER, queue),
        "spec": job_spec,
    }


def build_headless_service(job: FineTuneJob, owner: Owner) -> dict[str, Any]:
    """The headless Service giving pod 0 the stable name ``<job>-0.<job>`` that torchrun's master uses."""
    name = trainer_job_name(job.metadata.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owner.metadata(name, TRAINER),
        "spec": {
            "clusterIP": "None",
            # Workers rendezvous before anything is Ready.
            "publishNotReadyAddresses": True,
            "selector": owner.labels(TRAINER),
            "ports": [{"name": "rendezvous", "port": MASTER_PORT, "targetPort": MASTER_PORT}],
        },
    }
