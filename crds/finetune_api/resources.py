"""The three custom resources as whole objects, and what the CRDs say about each kind."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, cast

from pydantic import Field

from .common import API_VERSION, ApiModel, K8sName, ShortText
from .dataset import DatasetSpec, DatasetStatus
from .export import ExportSpec, ExportStatus
from .finetunejob import FineTuneJobSpec, FineTuneJobStatus


class ObjectMeta(ApiModel):
    """The parts of metav1.ObjectMeta that manifests carry; the API server owns the rest."""

    model_config = ApiModel.model_config | {"extra": "allow"}

    name: K8sName
    """Object name."""
    namespace: K8sName | None = None
    """Namespace."""
    labels: dict[str, ShortText] = Field(default_factory=dict)
    """Labels."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Annotations."""
    generation: int | None = None
    """Generation of the spec (set by the API server)."""


class FineTuneJob(ApiModel):
    """A fine-tuning run."""

    api_version: Literal["finetune.dev/v1alpha1"] = API_VERSION
    kind: Literal["FineTuneJob"] = "FineTuneJob"
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None


class Dataset(ApiModel):
    """A training data source."""

    api_version: Literal["finetune.dev/v1alpha1"] = API_VERSION
    kind: Literal["Dataset"] = "Dataset"
    metadata: ObjectMeta
    spec: DatasetSpec
    status: DatasetStatus | None = None


class Export(ApiModel):
    """An export of a trained model."""

    api_version: Literal["finetune.dev/v1alpha1"] = API_VERSION
    kind: Literal["Export"] = "Export"
    metadata: ObjectMeta
    spec: ExportSpec
    status: ExportStatus | None = None


Resource = FineTuneJob | Dataset | Export


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0


@dataclass(frozen=True)
class KindInfo:
    """What the CRD of one kind declares besides its schema."""

    model: type[ApiModel]
    spec: type[ApiModel]
    status: type[ApiModel]
    plural: str
    singular: str
    short_names: tuple[str, ...]
    columns: tuple[PrinterColumn, ...] = field(default_factory=tuple)


AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")

KINDS: dict[str, KindInfo] = {
    "FineTuneJob": KindInfo(
        model=FineTuneJob,
        spec=FineTuneJobSpec,
        status=FineTuneJobStatus,
        plural="finetunejobs",
        singular="finetunejob",
        short_names=("ftj",),
        columns=(
            PrinterColumn("Phase", ".status.phase", description="Lifecycle phase"),
            PrinterColumn("Stage", ".spec.method.stage", description="Training stage"),
            PrinterColumn("Model", ".spec.model.source", description="Base model"),
            PrinterColumn("Progress", ".status.progress.display.percent", description="Planned steps done"),
            PrinterColumn("Loss", ".status.progress.display.loss", description="Latest training loss"),
            PrinterColumn("ETA", ".status.progress.eta", description="Estimated time to completion"),
            PrinterColumn("Reason", ".status.reason", description="Why it waits or failed"),
            AGE,
        ),
    ),
    "Dataset": KindInfo(
        model=Dataset,
        spec=DatasetSpec,
        status=DatasetStatus,
        plural="datasets",
        singular="dataset",
        short_names=("ftds",),
        columns=(
            PrinterColumn("Phase", ".status.phase", description="Ready or Invalid"),
            PrinterColumn("Format", ".spec.format", description="Row layout"),
            PrinterColumn("Samples", ".status.samples", "integer", "Valid samples"),
            PrinterColumn("Reason", ".status.reason", description="Why it is Invalid"),
            PrinterColumn("Source", ".spec.source", description="Where the data is", priority=1),
            AGE,
        ),
    ),
    "Export": KindInfo(
        model=Export,
        spec=ExportSpec,
        status=ExportStatus,
        plural="exports",
        singular="export",
        short_names=("ftx",),
        columns=(
            PrinterColumn("Phase", ".status.phase", description="Lifecycle phase"),
            PrinterColumn("Job", ".spec.fineTuneJobRef", description="FineTuneJob exported"),
            PrinterColumn("Output", ".status.outputs.uri", description="Where the model is"),
            PrinterColumn("Reason", ".status.reason", description="Why it waits or failed"),
            PrinterColumn("Size", ".status.outputs.sizeBytes", "integer", "Bytes written", priority=1),
            AGE,
        ),
    ),
}


def kind_of(manifest: dict[str, Any]) -> KindInfo:
    """The kind info for a manifest, or a ValueError naming what is wrong."""
    api_version, kind = manifest.get("apiVersion"), manifest.get("kind")
    if api_version != API_VERSION:
        raise ValueError(f"apiVersion: expected {API_VERSION}, got {api_version!r}")
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    return KINDS[kind]


def resolved_document(obj: Resource) -> dict[str, Any]:
    """The object as a pod runs it and a run's ``job.yaml`` records it: apiVersion, kind, name and
    namespace, and the spec with every default filled in (the LoRA or freeze settings in force included),
    camelCase; no status.

    ``finetune validate`` and ``finetune run`` accept it as they accept the documents it came from.
    """
    meta = obj.metadata
    metadata: dict[str, Any] = {"name": meta.name}
    if meta.namespace:
        metadata["namespace"] = meta.namespace
    spec = obj.spec
    if isinstance(spec, FineTuneJobSpec):  # lora / freeze defaults apply when their block is unset
        spec = spec.model_copy(update={"method": spec.method.written_out()})
    return {"apiVersion": obj.api_version, "kind": obj.kind, "metadata": metadata, "spec": spec.to_wire()}


def resolved_documents(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`resolved_document` of each manifest (FineTuneJob, Dataset or Export), parsed with the API models.

    Raises:
        ValueError: a manifest of another kind, or one the models refuse.
    """
    return [resolved_document(cast(Resource, kind_of(body).model.model_validate(body))) for body in bodies]
