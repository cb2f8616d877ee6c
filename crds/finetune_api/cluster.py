"""Rules for running on a cluster, beyond what a local run needs: run by `finetune validate --cluster`
and by the operator before any Job exists (one copy, here).

A pod cannot read the user's workstation: no ``file://`` data or models; and a cluster job has no
default output (a local run writes to ``file://./runs/<name>``), it needs an ``s3://`` location.
``tiny://`` models are built inside the pod, so they are fine anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping

from .common import OutputSpec
from .dataset import DatasetSpec
from .errors import FieldError
from .export import ExportSpec
from .finetunejob import FineTuneJobSpec, dataset_paths
from .uris import Scheme, scheme_of


def _output_errors(output: OutputSpec | None, path: str) -> list[FieldError]:
    if output is None:
        return [FieldError(path, "required on a cluster (an s3:// location for checkpoints and the adapter)")]
    if scheme_of(output.uri) is not Scheme.S3:
        return [
            FieldError(
                f"{path}.uri",
                f"{output.uri!r} is local to a workstation; use s3://bucket/prefix on a cluster",
            )
        ]
    return []


def _reachable(uri: str | None, path: str) -> list[FieldError]:
    """A URI a pod reads: never file:// (the workstation's files are not in the pod)."""
    if uri is None or scheme_of(uri) is not Scheme.FILE:
        return []
    return [
        FieldError(path, f"{uri!r}: file:// is for local runs; a pod reaches hf://, s3://, pvc:// or tiny://")
    ]


def dataset_cluster_errors(spec: DatasetSpec, path: str = "spec") -> list[FieldError]:
    """A Dataset's source must be reachable from the validation and trainer pods."""
    return _reachable(spec.source, f"{path}.source")


def job_cluster_errors(spec: FineTuneJobSpec, datasets: Mapping[str, DatasetSpec]) -> list[FieldError]:
    """What the schema allows but a cluster cannot run: the output, and every model and Dataset the pod
    reads (``datasets``: the referenced Datasets known by name; absent ones are checked elsewhere)."""
    errors = _output_errors(spec.output, "spec.output")
    errors += _reachable(spec.model.source, "spec.model.source")
    errors += _reachable(spec.model.adapter, "spec.model.adapter")
    method = spec.method
    if method.preference is not None:
        errors += _reachable(method.preference.reference_model, "spec.method.preference.referenceModel")
    if method.ppo is not None:
        errors += _reachable(method.ppo.reward_model, "spec.method.ppo.rewardModel")
    if method.grpo is not None:
        errors += _reachable(method.grpo.reward_model, "spec.method.grpo.rewardModel")
    for path, name in dataset_paths(spec):  # training and evaluation data alike
        ds = datasets.get(name)
        if ds is not None and scheme_of(ds.source) is Scheme.FILE:
            errors.append(
                FieldError(
                    path,
                    f"Dataset {name!r} reads {ds.source!r}: file:// is for local runs; "
                    "a pod reaches s3://, hf://, https:// or pvc://",
                )
            )
    return errors


def export_cluster_errors(spec: ExportSpec) -> list[FieldError]:
    """An Export's output and the models it reads, as for a FineTuneJob."""
    errors = _output_errors(spec.output, "spec.output")
    errors += _reachable(spec.model, "spec.model")
    errors += _reachable(spec.adapter, "spec.adapter")
    return errors
