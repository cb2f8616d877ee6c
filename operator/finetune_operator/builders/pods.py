"""The pod template every workload (validation, training, export) runs in: hardened and non-root."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Final

from finetune_api.common import OutputSpec, ResourcesSpec
from finetune_api.pod import (
    CACHE_DIR,
    CACHE_DIR_ENV,
    CONFIG_DIR,
    METRICS_PORT,
    METRICS_PORT_ENV,
    PVC_ROOT,
    PVC_ROOT_ENV,
    REFUSED_EXIT,
    S3_CREDENTIALS_DIR_ENV,
)

from ..settings import Settings
from .common import (
    PodParts,
    container_resources,
    plain_env,
    scheduling,
    secret_env,
)

CONFIG_VOLUME = "config"

# The one container of every pod the operator creates (trainer, validator, exporter).
CONTAINER: Final = "trainer"
# A container killed by SIGKILL: the kernel's OOM killer at the memory limit (our processes exit
# 143 on SIGTERM, also as PID 1, so a deleted pod does not end this way).
SIGKILL_EXIT: Final = 137


def pod_failure_policy() -> dict[str, Any]:
    """The ``podFailurePolicy`` of every Job the operator creates: disruptions retried for free, a kill
    at the memory limit and a trainer's refusal to start never retried."""
    return {
        "rules": [
            # Preempted or evicted pods do not use up the retries: the next pod resumes from a checkpoint.
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            # Killed at its memory limit: a retry would run the same work into the same limit. Refused
            # because another run is in the output location: a retry would refuse again.
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": CONTAINER,
                    "operator": "In",
                    "values": sorted([SIGKILL_EXIT, REFUSED_EXIT]),  # the API server wants them ordered
                },
            },
        ]
    }


@dataclass(frozen=True)
class Workload:
    """One pod's worth of intent: what runs, with which config file, on what compute."""

    image: str
    command: list[str]
    config_map: str
    resources: ResourcesSpec
    labels: dict[str, str]
    parts: PodParts
    pull_secrets: tuple[str, ...] = ()
    """The spec's own imagePullSecrets, added to the operator's."""


def output_parts(parts: PodParts, output: OutputSpec) -> None:
    """Env for the output location (its URI is in the pod's manifest): the S3 endpoint and region, and
    the keys by reference."""
    parts.env += plain_env({"AWS_ENDPOINT_URL_S3": output.endpoint, "AWS_REGION": output.region})
    if output.credentials_secret:
        secret = output.credentials_secret
        parts.env += [
            secret_env("AWS_ACCESS_KEY_ID", secret, "accessKeyId"),
            secret_env("AWS_SECRET_ACCESS_KEY", secret, "secretAccessKey"),
        ]
        folder = parts.add_secret_dir(secret, "output")
        parts.env += plain_env({S3_CREDENTIALS_DIR_ENV: folder})


def source_credentials(parts: PodParts, secret: str | None, mount_as: str) -> str | None:
    """A model or dataset source's Secret: HF_TOKEN (if the key exists) and the whole Secret as files;
    returns the folder (None without a Secret)."""
    if not secret:
        return None
    if not any(e["name"] == "HF_TOKEN" for e in parts.env):
        parts.env.append(secret_env("HF_TOKEN", secret, "HF_TOKEN", optional=True))
    return parts.add_secret_dir(secret, mount_as)


def _container(work: Workload, settings: Settings) -> dict[str, Any]:
    env = plain_env(
        {
            "HOME": "/tmp",
            CACHE_DIR_ENV: CACHE_DIR,
            "HF_HOME": f"{CACHE_DIR}/hf",
            PVC_ROOT_ENV: PVC_ROOT,
            METRICS_PORT_ENV: str(METRICS_PORT),
            "PYTHONUNBUFFERED": "1",
        }
    )
    mounts = [
        {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "cache", "mountPath": CACHE_DIR},
    ]
    if work.resources.gpus_per_node:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})  # NCCL and dataloaders need more than 64Mi
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": work.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": work.command,
        "env": env + work.parts.env,
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "volumeMounts": mounts + work.parts.mounts,
        # The trainer writes its final summary here; logs stand in when it died before writing.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": copy.deepcopy(dict(settings.container_security_context)),
    }
    resources = container_resources(work.resources, settings)
    if resources:
        container["resources"] = resources
    return container


def image_pull_secrets(work: Workload, settings: Settings) -> list[dict[str, str]]:
    """The operator's pull Secrets, then the spec's, each once."""
    names = dict.fromkeys((*settings.image_pull_secrets, *work.pull_secrets))
    return [{"name": name} for name in names]


def pod_template(work: Workload, settings: Settings) -> dict[str, Any]:
    """The pod template: restartPolicy Never (the Job retries), the settings' security contexts (non-root,
    seccomp RuntimeDefault by default)."""
    volumes: list[dict[str, Any]] = [
        {"name": CONFIG_VOLUME, "configMap": {"name": work.config_map}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "cache", "emptyDir": {}},
    ]
    if work.resources.gpus_per_node:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory"}})
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "securityContext": copy.deepcopy(dict(settings.pod_security_context)),
        "containers": [_container(work, settings)],
        "volumes": volumes + work.parts.volumes,
        **scheduling(work.resources),
    }
    if settings.service_account:
        spec["serviceAccountName"] = settings.service_account
    if pull := image_pull_secrets(work, settings):
        spec["imagePullSecrets"] = pull
    # The trainer never talks to the Kubernetes API: no token in the pod.
    spec["automountServiceAccountToken"] = False
    return {"metadata": {"labels": dict(work.labels)}, "spec": spec}
