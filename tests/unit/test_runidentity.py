"""The run identity (run.json): which spec differences count, which keep checkpoints resumable, the message."""

from __future__ import annotations

from typing import Any

from finetune_api.dataset import DatasetSpec
from finetune_api.finetunejob import FineTuneJobSpec
from finetune_api.runidentity import RunIdentity, conflict_message, diff_identities

DATA = DatasetSpec.model_validate({"source": "file://data.jsonl", "format": "alpaca"})


def spec(**overrides: Any) -> FineTuneJobSpec:
    body: dict[str, Any] = {
        "model": {"source": "tiny://llama"},
        "datasets": [{"ref": "data"}],
        "method": {"stage": "sft", "finetuning": "lora"},
        "training": {"maxSteps": 20, "learningRate": 0.0005},
    }
    for path, value in overrides.items():
        *parents, leaf = path.split(".")
        node = body
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return FineTuneJobSpec.model_validate(body)


def identity(name: str = "job", data: DatasetSpec = DATA, **overrides: Any) -> RunIdentity:
    return RunIdentity.of(name, spec(**overrides), {"data": data})


def test_the_same_spec_is_the_same_run_whatever_its_lifecycle_and_placement() -> None:
    retry = identity(
        suspend=True,
        image="registry.example/trainer:2",
        resources={"gpusPerNode": 4, "memory": "64Gi"},
        output={"uri": "s3://elsewhere/run", "endpoint": "http://minio:9000"},
        backoffLimit=7,
        activeDeadlineSeconds=3600,
        ttlSecondsAfterFinished=60,
        queueName="team-a",
    )
    assert diff_identities(identity(), retry) == []


def test_an_explicit_default_lora_block_is_no_difference() -> None:
    assert diff_identities(identity(), identity(**{"method.lora": {"rank": 8}})) == []


def test_a_changed_learning_rate_is_named_and_resumable() -> None:
    (difference,) = diff_identities(identity(), identity(**{"training.learningRate": 0.001}))
    assert str(difference) == "spec.training.learningRate: 0.0005 -> 0.001"
    assert difference.compatible


def test_changes_to_what_a_checkpoint_holds_are_never_resumable() -> None:
    cases = {
        "method.lora": ({"rank": 16}, "spec.method.lora.rank"),
        "model.source": ("tiny://qwen2", "spec.model.source"),
        "method.finetuning": ("full", "spec.method.finetuning"),
        "distributed.deepspeed": ("zero2", "spec.distributed.deepspeed"),
    }
    for field, (value, path) in cases.items():
        differences = diff_identities(identity(), identity(**{field: value}))
        assert path in [d.path for d in differences], (field, differences)
        assert not all(d.compatible for d in differences), field


def test_the_job_name_and_its_datasets_count_too() -> None:
    other_data = DatasetSpec.model_validate({"source": "file://other.jsonl", "format": "alpaca"})
    differences = diff_identities(identity(), identity("other", other_data))
    assert [str(d) for d in differences] == [
        "metadata.name: job -> other",
        "Dataset/data.spec.source: file://data.jsonl -> file://other.jsonl",
    ]
    assert all(d.compatible for d in differences)


def test_a_field_set_on_one_side_only_reads_unset() -> None:
    (difference,) = diff_identities(identity(), identity(**{"training.neftuneAlpha": 5.0}))
    assert str(difference) == "spec.training.neftuneAlpha: (unset) -> 5.0"


def test_the_message_names_the_ways_out() -> None:
    compatible = diff_identities(identity(), identity(**{"training.learningRate": 0.001}))
    message = conflict_message("file:///runs/job", compatible)
    assert "file:///runs/job" in message and "spec.training.learningRate: 0.0005 -> 0.001" in message
    assert "--resume" in message and "--overwrite" in message and "--output" in message

    incompatible = diff_identities(
        identity(), identity(**{"method.lora": {"rank": 16}, "training.learningRate": 0.001})
    )
    message = conflict_message("file:///runs/job", incompatible, resume_refused=True)
    assert "spec.method.lora.rank: 8 -> 16  (checkpoints incompatible)" in message
    assert "--resume is refused" in message and "never be resumed with spec.method.lora.rank" in message
    assert "Use --resume" not in message and "--overwrite" in message


def test_the_record_round_trips_through_json() -> None:
    record = identity(**{"training.learningRate": 0.001})
    assert RunIdentity.model_validate_json(record.to_json()) == record
