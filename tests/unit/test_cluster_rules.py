"""The rules of running in a pod (finetune_api.cluster), shared by `finetune validate --cluster` and the operator."""

from __future__ import annotations

from typing import Any

from finetune_api.cluster import dataset_cluster_errors, export_cluster_errors, job_cluster_errors
from finetune_api.dataset import DatasetSpec
from finetune_api.export import ExportSpec
from tests.unit.test_operator_status import spec

S3_DATA = {"chats": DatasetSpec(source="s3://data/chats.jsonl")}


def paths(errors: list[Any]) -> list[str]:
    return [e.path for e in errors]


def test_a_cluster_ready_job_passes() -> None:
    assert job_cluster_errors(spec(), S3_DATA) == []
    assert job_cluster_errors(spec(), {}) == []  # a missing Dataset is the reference check's business


def test_output_is_required_and_must_be_s3() -> None:
    assert paths(job_cluster_errors(spec(output=None), S3_DATA)) == ["spec.output"]
    local = job_cluster_errors(spec(output={"uri": "file://runs/x"}), S3_DATA)
    assert [str(e) for e in local] == [
        "spec.output.uri: 'file://runs/x' is local to a workstation; use s3://bucket/prefix on a cluster"
    ]


def test_models_and_data_must_be_reachable_from_a_pod() -> None:
    local_model = spec(model={"source": "file:///models/m", "adapter": "file://a"})
    assert paths(job_cluster_errors(local_model, S3_DATA)) == ["spec.model.source", "spec.model.adapter"]
    local_data = {"chats": DatasetSpec(source="file://examples/data/alpaca.jsonl")}
    errors = job_cluster_errors(spec(), local_data)
    assert paths(errors) == ["spec.datasets[0].ref"] and "file://" in errors[0].message
    ppo = spec(method={"stage": "ppo", "finetuning": "lora", "ppo": {"rewardModel": "file://rm"}})
    assert paths(job_cluster_errors(ppo, S3_DATA)) == ["spec.method.ppo.rewardModel"]


def test_dataset_and_export_rules() -> None:
    assert paths(dataset_cluster_errors(DatasetSpec(source="file://x.jsonl"))) == ["spec.source"]
    assert dataset_cluster_errors(DatasetSpec(source="hf://org/data")) == []
    export = ExportSpec.model_validate({"fineTuneJobRef": "j", "output": {"uri": "file://out"}})
    assert paths(export_cluster_errors(export)) == ["spec.output.uri"]
