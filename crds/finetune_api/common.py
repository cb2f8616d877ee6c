"""Shared building blocks of the API: the base model, CEL rules, conditions and small shared specs.

Every model here is the single source of truth for three things at once: parsing (pydantic),
the CRD schema (``crdgen``) and the CEL rules the API server enforces (``validation`` evaluates
the very same rules in Python, so the CLI and the trainer reject what the API server would).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from .uris import STORAGE_SCHEMES

GROUP: Final = "finetune.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = "finetune.dev/v1alpha1"

# Kubernetes object names (RFC 1123 subdomain) and label-like names.
K8sName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
]
# Kubernetes quantities such as "16Gi", "500m", "2".
Quantity = Annotated[
    str, StringConstraints(max_length=64, pattern=r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
]
ShortText = Annotated[str, StringConstraints(max_length=256)]
Uri = Annotated[str, StringConstraints(min_length=1, max_length=2048)]

CEL_KEY = "x-kubernetes-validations"


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One CEL validation rule as the CRD schema spells it (``x-kubernetes-validations`` entry).

    ``field_path`` (e.g. ``.quantization``) names the field the error points at, relative to the
    object the rule is attached to.
    """
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def exactly_one(*fields: str) -> dict[str, str]:
    """The CEL rule for a union: exactly one of ``fields`` is set."""
    has = ", ".join(f"has(self.{f})" for f in fields)
    return cel(f"[{has}].filter(x, x).size() == 1", f"exactly one of {', '.join(fields)} must be set")


def at_most_one(*fields: str) -> dict[str, str]:
    """The CEL rule for an optional union: at most one of ``fields`` is set."""
    has = ", ".join(f"has(self.{f})" for f in fields)
    return cel(f"[{has}].filter(x, x).size() <= 1", f"at most one of {', '.join(fields)} may be set")


def rules(*entries: dict[str, str]) -> dict[str, Any]:
    """``json_schema_extra`` carrying CEL rules for a model."""
    return {CEL_KEY: list(entries)}


class ApiModel(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields refused, docstrings as descriptions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_assignment=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """One condition in the shape of metav1.Condition."""

    type: Annotated[str, StringConstraints(max_length=316)]
    """Type of condition in CamelCase, e.g. Running or Succeeded."""
    status: ConditionStatus
    """Status of the condition: True, False or Unknown."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The .metadata.generation the condition was set for."""
    last_transition_time: str | None = None
    """When the condition last changed status (RFC 3339)."""
    reason: Annotated[str, StringConstraints(max_length=1024)] = ""
    """A CamelCase reason for the last transition, e.g. OutOfMemory."""
    message: Annotated[str, StringConstraints(max_length=32768)] = ""
    """A human-readable message with details about the transition."""


class ConditionedStatus(ApiModel):
    """What every status carries: conditions keyed by type, and the generation they describe."""

    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Conditions in the shape of metav1.Condition, one per type, with CamelCase reasons."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The generation this status describes."""


class SecretRef(ApiModel):
    """A Secret in the object's namespace."""

    name: K8sName
    """Name of the Secret."""


class OutputSpec(ApiModel):
    """Where artifacts are written."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.uri.matches('^(" + "|".join(STORAGE_SCHEMES) + ")://.+')",
                "uri must be s3://bucket/prefix or file://path",
                ".uri",
            )
        )
    )

    uri: Uri
    """Destination of checkpoints, adapters and exported models: s3://bucket/prefix, or file://path for local runs."""
    endpoint: Annotated[str, StringConstraints(max_length=2048)] | None = None
    """S3 endpoint URL for S3-compatible stores (MinIO, SeaweedFS, GCS interop); AWS when unset."""
    region: ShortText | None = None
    """S3 region; the endpoint's default when unset."""
    credentials_secret: K8sName | None = None
    """Secret with keys accessKeyId and secretAccessKey (optionally sessionToken), mounted into the pods."""


class Toleration(ApiModel):
    """A pod toleration (core/v1 Toleration)."""

    key: ShortText | None = None
    """Taint key the toleration applies to; empty with operator Exists matches all taints."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists tolerates any value; Equal requires the value to match."""
    value: ShortText | None = None
    """Taint value to match with operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; all effects when unset."""
    toleration_seconds: int | None = Field(default=None, ge=0)
    """How long a NoExecute taint is tolerated before eviction."""


class ResourcesSpec(ApiModel):
    """Compute for the training (or export) pods."""

    nodes: int = Field(default=1, ge=1, le=256)
    """Number of nodes (pods); more than one gives an Indexed Job with a headless Service and torchrun."""
    gpus_per_node: int = Field(default=1, ge=0, le=16)
    """GPUs requested per node; 0 runs on CPU (smoke tests)."""
    gpu_resource_name: Annotated[str, StringConstraints(max_length=253)] = "nvidia.com/gpu"
    """Extended resource name of the GPU, e.g. nvidia.com/gpu or amd.com/gpu."""
    gpu_memory_gib: float | None = Field(default=None, gt=0, le=4096, alias="gpuMemoryGiB")
    """Memory of one GPU in GiB, for the memory preflight; taken from the node label or chart value when unset."""
    cpu: Quantity | None = None
    """CPU request and limit per pod, e.g. "8"."""
    memory: Quantity | None = None
    """Memory request and limit per pod, e.g. "64Gi"."""
    node_selector: dict[str, ShortText] = Field(default_factory=dict)
    """Node labels the pods must match."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    """Tolerations for tainted (e.g. GPU) nodes."""
    affinity: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """Pod affinity rules, as core/v1 Affinity."""
    priority_class_name: K8sName | None = None
    """PriorityClass of the pods."""
