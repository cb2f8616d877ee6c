"""Pieces every child object shares: deterministic names, labels, owner references, the pod shell.

Everything here is pure: dicts in the shape the API server stores, built from the typed API models.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Final

from finetune_api.common import ResourcesSpec
from finetune_api.pod import PVC_ROOT
from finetune_api.uris import pvc_claim

from ..settings import Settings

MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGER: Final = "finetune-operator"
COMPONENT: Final = "app.kubernetes.io/component"
PART_OF: Final = "app.kubernetes.io/part-of"
OWNER_KIND: Final = "finetune.dev/owner-kind"
OWNER_NAME: Final = "finetune.dev/owner"
QUEUE_LABEL: Final = "kueue.x-k8s.io/queue-name"
SECRETS_DIR: Final = "/var/run/secrets/finetune"
# A pod's hostname is "<job>-<index>" (a 63-character DNS label), so Job names leave room for it.
MAX_CHILD_NAME: Final = 52


def child_name(owner: str, suffix: str, limit: int = MAX_CHILD_NAME) -> str:
    """``<owner>-<suffix>`` as a DNS-1035 label of at most ``limit`` characters, the same on every call.

    Dots become dashes (pod hostnames cannot hold them); a name that must be shortened keeps a
    hash of the full name so two long owners never collide; a leading digit gets an ``x`` (Services
    must start with a letter).
    """
    base = re.sub(r"[^a-z0-9-]", "-", owner.lower())
    name = f"{base}-{suffix}"
    if not name[0].isalpha():
        name = f"x{name}"
    if len(name) > limit:
        digest = hashlib.sha256(f"{owner}/{suffix}".encode()).hexdigest()[:8]
        keep = limit - len(suffix) - len(digest) - 2
        name = f"{name[:keep].rstrip('-')}-{digest}-{suffix}"
    return name


def label_value(value: str) -> str:
    """A label value (63 characters at most) standing for ``value``: itself, or a prefix plus a hash."""
    if len(value) <= 63:
        return value
    return f"{value[:54].rstrip('-.')}-{hashlib.sha256(value.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class Owner:
    """The custom resource that owns a child: enough for labels and an ownerReference."""

    kind: str
    name: str
    namespace: str
    uid: str
    api_version: str = "finetune.dev/v1alpha1"

    def reference(self) -> dict[str, Any]:
        """A controller ownerReference: the garbage collector deletes the child with its owner."""
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def labels(self, component: str) -> dict[str, str]:
        """Labels of every child: who manages it, who owns it, what it is."""
        return {
            MANAGED_BY: MANAGER,
            PART_OF: "finetune",
            COMPONENT: component,
            OWNER_KIND: self.kind.lower(),
            OWNER_NAME: label_value(self.name),
        }

    def metadata(
        self, name: str, component: str, extra_labels: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """ObjectMeta of a child called ``name``."""
        return {
            "name": name,
            "namespace": self.namespace,
            "labels": {**self.labels(component), **(extra_labels or {})},
            "ownerReferences": [self.reference()],
        }


def secret_env(env_name: str, secret: str, key: str, optional: bool = False) -> dict[str, Any]:
    """An env var from a Secret key (the value never appears in any object the operator writes)."""
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": env_name, "valueFrom": {"secretKeyRef": ref}}


def plain_env(values: dict[str, str | None]) -> list[dict[str, Any]]:
    """Env vars for the values that are set."""
    return [{"name": k, "value": v} for k, v in values.items() if v is not None]


@dataclass
class PodParts:
    """What a workload adds to the pod shell: env and volumes beyond the common ones."""

    env: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)

    def add_secret_dir(self, secret: str, mount_as: str) -> str:
        """Mount ``secret`` read-only under /var/run/secrets/finetune/<mount_as>; returns the folder."""
        path = f"{SECRETS_DIR}/{mount_as}"
        volume = f"secret-{mount_as}"
        if not any(v["name"] == volume for v in self.volumes):
            self.volumes.append({"name": volume, "secret": {"secretName": secret, "defaultMode": 0o440}})
            self.mounts.append({"name": volume, "mountPath": path, "readOnly": True})
        return path

    def add_pvc(self, uri: str) -> None:
        """Mount the claim of a ``pvc://claim/path`` URI read-only under /mnt/pvc/<claim>."""
        claim = pvc_claim(uri)
        if claim is None:
            return
        volume = child_name("pvc", claim, 63)
        if any(v["name"] == volume for v in self.volumes):
            return
        self.volumes.append({"name": volume, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        self.mounts.append({"name": volume, "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True})


def container_resources(resources: ResourcesSpec, settings: Settings) -> dict[str, Any]:
    """Requests = limits (Guaranteed QoS for whole GPUs); GPUs as the extended resource named in the spec."""
    limits: dict[str, str] = {}
    cpu = resources.cpu or settings.default_cpu
    memory = resources.memory or settings.default_memory
    if cpu:
        limits["cpu"] = cpu
    if memory:
        limits["memory"] = memory
    if resources.gpus_per_node:
        limits[resources.gpu_resource_name] = str(resources.gpus_per_node)
    return {"requests": dict(limits), "limits": limits} if limits else {}


def scheduling(resources: ResourcesSpec) -> dict[str, Any]:
    """nodeSelector, tolerations, affinity and priorityClassName from the spec, where set."""
    out: dict[str, Any] = {}
    if resources.node_selector:
        out["nodeSelector"] = dict(resources.node_selector)
    if resources.tolerations:
        out["tolerations"] = [t.to_wire() for t in resources.tolerations]
    if resources.affinity:
        out["affinity"] = resources.affinity
    if resources.priority_class_name:
        out["priorityClassName"] = resources.priority_class_name
    return out
