"""Short Jobs: a Dataset's validation and an Export's merge/shard/upload."""

from __future__ import annotations

from typing import Any, Final

import yaml

from finetune_api.common import ResourcesSpec
from finetune_api.pod import CONFIG_DIR, DATASET_FILE, EXPORT_FILE, S3_CREDENTIALS_DIR_ENV
from finetune_api.resources import Dataset, Export, FineTuneJob
from finetune_api.uris import Scheme, scheme_of

from ..settings import Settings
from .common import Owner, PodParts, child_name, plain_env
from .pods import Workload, output_parts, pod_failure_policy, pod_template, source_credentials

VALIDATOR: Final = "validator"
EXPORTER: Final = "exporter"
VALIDATION_DEADLINE_S: Final = 3600
# The result is copied into the Dataset status within seconds; the Job only stays for its logs.
VALIDATION_TTL_S: Final = 3600


def validation_name(ds: Dataset) -> str:
    """Validation Job (and ConfigMap) of the Dataset's current generation: a spec change validates anew."""
    return child_name(ds.metadata.name, f"validate-g{ds.metadata.generation or 1}")


def _config_map(
    name: str, owner: Owner, component: str, key: str, docs: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": owner.metadata(name, component),
        "data": {key: yaml.safe_dump_all(docs, sort_keys=False)},
    }


def _job(name: str, owner: Owner, component: str, template: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": owner.metadata(name, component),
        "spec": {"template": template, "podFailurePolicy": pod_failure_policy(), **spec},
    }


def build_validation(ds: Dataset, owner: Owner, settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """ConfigMap + Job running `finetune validate-data`; the report comes back as the termination message."""
    name = validation_name(ds)
    doc = {"apiVersion": ds.api_version, "kind": ds.kind, "metadata": {"name": ds.metadata.name,
           "namespace": ds.metadata.namespace}, "spec": ds.spec.to_wire()}  # fmt: skip
    parts = PodParts()
    parts.env += plain_env({"AWS_ENDPOINT_URL_S3": ds.spec.endpoint})
    source_credentials(parts, ds.spec.credentials_secret, "dataset")
    if ds.spec.credentials_secret and scheme_of(ds.spec.source) is Scheme.S3:
        parts.env += plain_env(
            {S3_CREDENTIALS_DIR_ENV: parts.add_secret_dir(ds.spec.credentials_secret, "dataset")}
        )
    parts.add_pvc(ds.spec.source)
    work = Workload(
        image=settings.trainer_image,
        # A usable Dataset with a few bad rows is Ready (its status lists them), not a failed pod.
        command=["finetune", "validate-data", "--allow-invalid-rows", f"{CONFIG_DIR}/{DATASET_FILE}"],
        config_map=name,
        resources=ResourcesSpec(
            gpus_per_node=0, cpu=settings.validation_cpu, memory=settings.validation_memory
        ),
        labels=owner.labels(VALIDATOR),
        parts=parts,
    )
    job = _job(
        name, owner, VALIDATOR, pod_template(work, settings),
        backoffLimit=1, activeDeadlineSeconds=VALIDATION_DEADLINE_S, ttlSecondsAfterFinished=VALIDATION_TTL_S,
    )  # fmt: skip
    return _config_map(name, owner, VALIDATOR, DATASET_FILE, [doc]), job


def export_name(export: Export) -> str:
    """Name of the export Job and its ConfigMap."""
    return child_name(export.metadata.name, "export")


def build_export(
    export: Export,
    source_job: FineTuneJob | None,
    owner: Owner,
    settings: Settings,
    calibration: Dataset | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """ConfigMap (export.yaml: the Export, then its FineTuneJob with status, then the GPTQ calibration
    Dataset) + Job running `finetune export`."""
    name = export_name(export)
    docs: list[dict[str, Any]] = [
        {"apiVersion": export.api_version, "kind": export.kind,
         "metadata": {"name": export.metadata.name, "namespace": export.metadata.namespace},
         "spec": export.spec.to_wire()}
    ]  # fmt: skip
    parts = PodParts()
    output_parts(parts, export.spec.output)
    if source_job is not None:
        status = source_job.status.to_wire() if source_job.status else {}
        docs.append(
            {"apiVersion": source_job.api_version, "kind": source_job.kind,
             "metadata": {"name": source_job.metadata.name, "namespace": source_job.metadata.namespace},
             "spec": source_job.spec.to_wire(), "status": status}
        )  # fmt: skip
        source_credentials(parts, source_job.spec.model.credentials_secret, "model")
        parts.add_pvc(source_job.spec.model.source)
    if calibration is not None:
        docs.append(
            {"apiVersion": calibration.api_version, "kind": calibration.kind,
             "metadata": {"name": calibration.metadata.name, "namespace": calibration.metadata.namespace},
             "spec": calibration.spec.to_wire()}
        )  # fmt: skip
        parts.add_pvc(calibration.spec.source)
    for uri in (export.spec.model, export.spec.adapter):
        if uri:
            parts.add_pvc(uri)
    work = Workload(
        image=export.spec.image or settings.trainer_image,
        command=["finetune", "export", f"{CONFIG_DIR}/{EXPORT_FILE}"],
        config_map=name,
        resources=export.spec.resources,
        labels=owner.labels(EXPORTER),
        parts=parts,
        pull_secrets=tuple(export.spec.image_pull_secrets or ()),
    )
    job = _job(name, owner, EXPORTER, pod_template(work, settings), backoffLimit=2)
    return _config_map(name, owner, EXPORTER, EXPORT_FILE, docs), job
