"""Operator settings, read once from the environment (the Helm chart's values become these variables)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_IMAGE = "ghcr.io/finetune-operator/trainer:0.1.0"
# The trainer image's own user (Dockerfile: uid/gid 10001); fsGroup makes mounted Secrets readable to it.
POD_SECURITY_CONTEXT: Mapping[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 10001,
    "runAsGroup": 10001,
    "fsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
# The pods write only to their emptyDir volumes, so the root filesystem can stay read-only.
CONTAINER_SECURITY_CONTEXT: Mapping[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}


@dataclass(frozen=True)
class Settings:
    """Everything the operator does not learn from the objects it reconciles."""

    trainer_image: str = DEFAULT_IMAGE
    """Image of the trainer pods (validation, training, export) unless a spec overrides it."""
    image_pull_policy: str = "IfNotPresent"
    """Pull policy of that image."""
    namespaces: tuple[str, ...] = ()
    """Namespaces watched; every namespace (cluster-wide) when empty."""
    gpu_memory_gib: float | None = None
    """Memory of one GPU when neither the spec nor a node label says (chart value)."""
    default_cpu: str | None = None
    """CPU request/limit of pods whose spec sets none."""
    default_memory: str | None = None
    """Memory request/limit of pods whose spec sets none."""
    service_account: str | None = None
    """ServiceAccount of the trainer pods (the namespace's default when unset)."""
    image_pull_secrets: tuple[str, ...] = ()
    """Secrets (in each job's namespace) the kubelet pulls the trainer image with; a spec's own are added."""
    validation_cpu: str = "1"
    """CPU request/limit of a Dataset's validation pod."""
    validation_memory: str = "4Gi"
    """Memory request/limit of a Dataset's validation pod."""
    pod_security_context: Mapping[str, Any] = field(default_factory=lambda: dict(POD_SECURITY_CONTEXT))
    """securityContext of every pod the operator creates (e.g. without runAsUser where OpenShift assigns it)."""
    container_security_context: Mapping[str, Any] = field(
        default_factory=lambda: dict(CONTAINER_SECURITY_CONTEXT)
    )
    """securityContext of the container of every pod the operator creates."""
    resync_seconds: float = 10.0
    """Interval of the level-based resync (and of progress reads while running): progress is fresh within 30 s."""
    peering_name: str | None = None
    """kopf peering object; unset means standalone (one replica)."""
    metrics_port: int = 8080
    """Port of the Prometheus /metrics endpoint; 0 disables it."""
    liveness_endpoint: str = "http://0.0.0.0:8081/healthz"
    """kopf's liveness probe endpoint; empty disables it."""


def _optional_float(value: str | None) -> float | None:
    return float(value) if value else None


def _names(value: str | None) -> tuple[str, ...]:
    return tuple(n.strip() for n in (value or "").split(",") if n.strip())


def _json_object(env: Mapping[str, str], name: str, default: Mapping[str, Any]) -> Mapping[str, Any]:
    """A JSON object from ``env[name]`` (the chart writes it with toJson); ``default`` when unset."""
    raw = env.get(name)
    if not raw:
        return dict(default)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object, not {type(value).__name__}")
    return value


def settings_from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from FINETUNE_* environment variables (defaults where unset).

    Raises:
        ValueError: a security context variable is not a JSON object.
    """
    env = os.environ if env is None else env
    namespaces = _names(env.get("FINETUNE_WATCH_NAMESPACES"))
    return Settings(
        trainer_image=env.get("FINETUNE_TRAINER_IMAGE", DEFAULT_IMAGE),
        image_pull_policy=env.get("FINETUNE_IMAGE_PULL_POLICY", "IfNotPresent"),
        namespaces=namespaces,
        gpu_memory_gib=_optional_float(env.get("FINETUNE_GPU_MEMORY_GIB")),
        default_cpu=env.get("FINETUNE_DEFAULT_CPU") or None,
        default_memory=env.get("FINETUNE_DEFAULT_MEMORY") or None,
        service_account=env.get("FINETUNE_TRAINER_SERVICE_ACCOUNT") or None,
        image_pull_secrets=_names(env.get("FINETUNE_IMAGE_PULL_SECRETS")),
        validation_cpu=env.get("FINETUNE_VALIDATION_CPU") or "1",
        validation_memory=env.get("FINETUNE_VALIDATION_MEMORY") or "4Gi",
        pod_security_context=_json_object(env, "FINETUNE_POD_SECURITY_CONTEXT", POD_SECURITY_CONTEXT),
        container_security_context=_json_object(
            env, "FINETUNE_CONTAINER_SECURITY_CONTEXT", CONTAINER_SECURITY_CONTEXT
        ),
        resync_seconds=float(env.get("FINETUNE_RESYNC_SECONDS", "10")),
        peering_name=env.get("FINETUNE_PEERING_NAME") or None,
        metrics_port=int(env.get("FINETUNE_METRICS_PORT", "8080")),
        liveness_endpoint=env.get("FINETUNE_LIVENESS_ENDPOINT", "http://0.0.0.0:8081/healthz"),
    )
