"""Operator settings, read once from the environment (the Helm chart's values become these variables)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_IMAGE = "ghcr.io/finetune-operator/trainer:0.1.0"


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


def settings_from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from FINETUNE_* environment variables (defaults where unset)."""
    env = os.environ if env is None else env
    namespaces = tuple(n.strip() for n in env.get("FINETUNE_WATCH_NAMESPACES", "").split(",") if n.strip())
    return Settings(
        trainer_image=env.get("FINETUNE_TRAINER_IMAGE", DEFAULT_IMAGE),
        image_pull_policy=env.get("FINETUNE_IMAGE_PULL_POLICY", "IfNotPresent"),
        namespaces=namespaces,
        gpu_memory_gib=_optional_float(env.get("FINETUNE_GPU_MEMORY_GIB")),
        default_cpu=env.get("FINETUNE_DEFAULT_CPU") or None,
        default_memory=env.get("FINETUNE_DEFAULT_MEMORY") or None,
        service_account=env.get("FINETUNE_TRAINER_SERVICE_ACCOUNT") or None,
        resync_seconds=float(env.get("FINETUNE_RESYNC_SECONDS", "10")),
        peering_name=env.get("FINETUNE_PEERING_NAME") or None,
        metrics_port=int(env.get("FINETUNE_METRICS_PORT", "8080")),
        liveness_endpoint=env.get("FINETUNE_LIVENESS_ENDPOINT", "http://0.0.0.0:8081/healthz"),
    )
