"""Export: merge, shard, quantize and upload a trained model."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import ConfigDict, Field

from .common import (
    ApiModel,
    ConditionedStatus,
    K8sName,
    OutputSpec,
    ResourcesSpec,
    ShortText,
    Uri,
    cel,
    exactly_one,
    rules,
)


class ExportQuantizationSpec(ApiModel):
    """Post-training quantization of the exported model."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.method != 'gptq' || has(self.calibrationDataset)",
                "gptq needs a calibrationDataset",
                ".calibrationDataset",
            )
        )
    )

    method: Literal["gptq", "bitsandbytes"]
    """gptq (GPU only, needs calibration data) or bitsandbytes (CPU-capable serialization)."""
    bits: Literal[4, 8]
    """Bits per weight."""
    calibration_dataset: K8sName | None = None
    """Dataset (by name) used for GPTQ calibration."""
    samples: int = Field(default=128, ge=1, le=100_000)
    """Calibration samples."""
    max_length: int = Field(default=512, ge=8, le=1_048_576)
    """Token length of each calibration sample."""


class ExportSpec(ApiModel):
    """Desired state of an Export."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            exactly_one("fineTuneJobRef", "model"),
            cel("!has(self.adapter) || has(self.model)", "adapter goes with an explicit model", ".adapter"),
            cel(
                "!has(self.quantization) || self.merge || !has(self.adapter)",
                "quantizing an adapter export needs merge: true",
                ".quantization",
            ),
            cel("self == oldSelf", "spec is immutable after creation"),
        )
    )

    fine_tune_job_ref: K8sName | None = None
    """FineTuneJob whose outputs are exported; the export waits until it succeeds."""
    model: Uri | None = None
    """Base model source, when exporting without a FineTuneJob."""
    adapter: Uri | None = None
    """Adapter to apply to model."""
    merge: bool = True
    """Merge the adapter into the base weights; otherwise the adapter is exported alone."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Data type of the merged weights; auto keeps the base model's."""
    shard_size: str = Field(default="2GB", pattern=r"^[1-9][0-9]*(KB|MB|GB)$", max_length=16)
    """Largest safetensors shard, e.g. 2GB or 500MB."""
    format: Literal["safetensors", "bin"] = "safetensors"
    """Weight file format."""
    quantization: ExportQuantizationSpec | None = None
    """Quantize the exported model."""
    output: OutputSpec
    """Where the exported model is uploaded."""
    model_card: bool = True
    """Write a README.md model card (base, method, data, hyper-parameters, metrics)."""
    ollama_modelfile: bool = False
    """Write an Ollama Modelfile with the chat template."""
    resources: ResourcesSpec = Field(default_factory=lambda: ResourcesSpec(gpus_per_node=0))
    """Compute for the export pod (CPU by default; GPTQ needs a GPU)."""
    image: Uri | None = None
    """Override of the trainer image."""
    image_pull_secrets: list[K8sName] | None = Field(default=None, max_length=8)
    """Secrets in this namespace the kubelet pulls the image with (added to the operator's own)."""


class ExportPhase(StrEnum):
    PENDING = "Pending"
    WAITING = "Waiting"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class ExportedFile(ApiModel):
    """One file of the exported model."""

    path: ShortText
    """Path relative to the output URI."""
    size: int = Field(ge=0)
    """Size in bytes."""
    sha256: ShortText
    """SHA-256 of the content."""


class ExportOutputs(ApiModel):
    """What the export wrote."""

    uri: Uri | None = None
    """Where the model is."""
    files: list[ExportedFile] = Field(default_factory=list, max_length=512)
    """Files with their sizes and hashes."""
    size_bytes: int | None = Field(default=None, ge=0)
    """Total size."""
    manifest: Uri | None = None
    """URI of manifest.json (written last: its presence marks a complete export)."""


class ExportStatus(ConditionedStatus):
    """Observed state of an Export."""

    phase: ExportPhase | None = None
    """Pending, Waiting (for its FineTuneJob), Running, Succeeded or Failed."""
    reason: ShortText | None = None
    """Why the Export waits or failed, e.g. WaitingForFineTuneJob or OutOfMemory; unset while it runs
    and once it succeeded."""
    outputs: ExportOutputs | None = None
    """What was written."""
    job_name: K8sName | None = None
    """Name of the export Job."""
    start_time: str | None = None
    """When the export started (RFC 3339)."""
    completion_time: str | None = None
    """When it finished (RFC 3339)."""
