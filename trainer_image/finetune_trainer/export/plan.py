"""What an export reads and writes, resolved from the manifests before any weight is loaded.

The export pod gets the Export followed by its FineTuneJob (with status); a local run gets the
user's files. Either way the source is a base model plus an optional adapter, and the run folder
beside the adapter (``job.yaml``, ``trainer_log.jsonl``) feeds the model card.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from finetune_api.common import OutputSpec
from finetune_api.export import ExportSpec
from finetune_api.finetunejob import FineTuneJobSpec, ModelSpec
from finetune_api.manifests import load_documents
from finetune_api.resources import Dataset, Export, FineTuneJob
from finetune_api.uris import is_local, local_path
from finetune_api.validation import validate_documents

_SIZE = re.compile(r"^([1-9][0-9]*)(KB|MB|GB)$")
_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9}
ADAPTER_DIR = "adapter"


@dataclass(frozen=True)
class ExportPlan:
    """A validated Export with its sources resolved."""

    name: str
    spec: ExportSpec
    model: ModelSpec
    """The base model (source, revision, trustRemoteCode) the adapter was trained on."""
    adapter: str | None
    """URI of the adapter (or of a fully fine-tuned model, which then replaces the base)."""
    run_uri: str | None
    """The FineTuneJob's output folder (parent of the adapter), where job.yaml and the log live."""
    job: FineTuneJob | None
    """The FineTuneJob, when it is among the documents."""
    datasets: dict[str, Dataset]
    """Datasets among the documents, by name (the GPTQ calibration set comes from here)."""

    @property
    def output(self) -> OutputSpec:
        return self.spec.output


def parse_size(text: str) -> int:
    """``shardSize`` in bytes: decimal units, as the hub writes them (``2GB`` = 2·10⁹ bytes).

    Raises:
        ValueError: not ``<n>KB``, ``<n>MB`` or ``<n>GB``.
    """
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"spec.shardSize: {text!r} must look like 500MB or 2GB")
    return int(match.group(1)) * _UNITS[match.group(2)]


def parent_uri(uri: str) -> str:
    """The folder holding ``uri`` (``s3://b/runs/x/adapter`` → ``s3://b/runs/x``)."""
    scheme, sep, rest = uri.partition("://")
    return f"{scheme}{sep}{posixpath.dirname(rest.rstrip('/'))}"


def job_output_uri(job: FineTuneJob) -> str:
    """Where the FineTuneJob wrote: ``spec.output.uri``, or ``file://./runs/<name>`` as `finetune run` does."""
    return job.spec.output.uri if job.spec.output else f"file://./runs/{job.metadata.name}"


def job_adapter_uri(job: FineTuneJob) -> str:
    """The job's final adapter: ``status.outputs.adapter`` when reported, else ``<output>/adapter``."""
    outputs = job.status.outputs if job.status else None
    if outputs is not None and outputs.adapter:
        return outputs.adapter
    return job_output_uri(job).rstrip("/") + "/" + ADAPTER_DIR


def _check_invalid(docs: Sequence[Any]) -> None:
    results = validate_documents([d.body for d in docs], allow_missing_datasets=True)
    problems = [f"{docs[i].label}: {e}" for i, errors in results.items() for e in errors]
    if problems:
        raise ValueError("invalid manifests:\n  " + "\n  ".join(problems))


def plan_export(files: Sequence[str], *, export_name: str | None = None) -> ExportPlan:
    """Read and validate the files, pick the Export and resolve its model, adapter and run folder.

    Raises:
        ValueError: invalid manifests, not exactly one Export, or its FineTuneJob missing.
    """
    docs = load_documents(files)
    _check_invalid(docs)
    bodies = [d.body for d in docs]
    exports = [Export.model_validate(b) for b in bodies if b.get("kind") == "Export"]
    if export_name is not None:
        exports = [e for e in exports if e.metadata.name == export_name]
    if len(exports) != 1:
        names = ", ".join(e.metadata.name for e in exports) or "none"
        raise ValueError(f"expected exactly one Export among the files; found {names}")
    export = exports[0]
    jobs = {
        j.metadata.name: j
        for j in (FineTuneJob.model_validate(b) for b in bodies if b.get("kind") == "FineTuneJob")
    }
    datasets = {
        d.metadata.name: d for d in (Dataset.model_validate(b) for b in bodies if b.get("kind") == "Dataset")
    }
    spec = export.spec
    ref = spec.fine_tune_job_ref
    if ref is not None:
        job = jobs.get(ref)
        if job is None:
            raise ValueError(f"spec.fineTuneJobRef: FineTuneJob {ref!r} is not among the files")
        adapter = job_adapter_uri(job)
        return ExportPlan(
            export.metadata.name, spec, job.spec.model, adapter, parent_uri(adapter), job, datasets
        )
    assert spec.model is not None  # the schema's exactly-one rule
    explicit = spec.adapter
    run_uri = parent_uri(explicit) if explicit else None
    job = _job_beside(jobs, explicit)
    return ExportPlan(
        export.metadata.name, spec, ModelSpec(source=spec.model), explicit, run_uri, job, datasets
    )


def _job_beside(jobs: dict[str, FineTuneJob], adapter: str | None) -> FineTuneJob | None:
    """The FineTuneJob among the files whose adapter is ``adapter`` (for the model card), if any."""
    if adapter is None:
        return None
    return next((j for j in jobs.values() if same_location(job_adapter_uri(j), adapter)), None)


def same_location(a: str, b: str) -> bool:
    """Whether two URIs name the same place (``file://runs/x`` and ``file://./runs/x/`` do)."""
    if is_local(a) and is_local(b):
        return local_path(a) == local_path(b)
    return a.rstrip("/") == b.rstrip("/")


def training_spec_of(plan: ExportPlan, job_yaml: str | None) -> tuple[FineTuneJobSpec | None, list[Dataset]]:
    """The FineTuneJob spec and Datasets that trained the adapter: from the documents, else ``job.yaml``."""
    import yaml

    found = [b for b in yaml.safe_load_all(job_yaml) if isinstance(b, dict)] if job_yaml else []
    datasets = [Dataset.model_validate(b) for b in found if b.get("kind") == "Dataset"]
    if plan.job is not None:
        return plan.job.spec, datasets or list(plan.datasets.values())
    job = next((b for b in found if b.get("kind") == "FineTuneJob"), None)
    return (FineTuneJobSpec.model_validate(job["spec"]) if job else None), datasets
