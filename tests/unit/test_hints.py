"""Manifest validation as strict as the API server, with "did you mean" hints derived from the models."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_api.finetunejob import FineTuneJobSpec, TrainingSpec
from finetune_api.hints import field_index, model_at, unknown_field_hint, value_hint
from finetune_api.method import LoraSpec, MethodSpec
from finetune_api.resources import FineTuneJob
from finetune_api.validation import validate_manifest


def job(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"source": "tiny://llama"},
        "datasets": [{"ref": "d"}],
        "method": {"stage": "sft", "finetuning": "lora"},
    }
    for key, value in spec.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "j"},
        "spec": base,
    }


def messages(manifest: dict[str, Any]) -> list[str]:
    return [str(e) for e in validate_manifest(manifest)]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"training": {"learning_rate": 1e-4}}, "spec.training.learning_rate: unknown field; did you mean learningRate?"),
        ({"training": {"learningRatee": 1e-4}}, "spec.training.learningRatee: unknown field; did you mean learningRate?"),
        ({"training": {"batchSize": 4}}, "spec.training.batchSize: unknown field; did you mean perDeviceBatchSize?"),
        ({"training": {"num_train_epochs": 3}}, "spec.training.num_train_epochs: unknown field; did you mean epochs?"),
        ({"model": {"trustremotecode": True}}, "spec.model.trustremotecode: unknown field; did you mean trustRemoteCode?"),
        ({"method": {"lora": {"lora_alpha": 16}}}, "spec.method.lora.lora_alpha: unknown field; did you mean alpha?"),
        ({"method": {"lora_alpha": 16}}, "spec.method.lora_alpha: unknown field; did you mean alpha under spec.method.lora?"),
        ({"training": {"lora_rank": 8}}, "spec.training.lora_rank: unknown field; did you mean rank under spec.method.lora?"),
        ({"method": {"quantization": {"bits": 4}}}, "spec.method.quantization: unknown field; quantization belongs under spec.model"),
        ({"deepspeed": "zero3"}, "spec.deepspeed: unknown field; deepspeed belongs under spec.distributed"),
    ],
)  # fmt: skip
def test_unknown_field_gets_a_hint(spec: dict[str, Any], expected: str) -> None:
    assert expected in messages(job(**spec))


def test_no_hint_when_nothing_is_close() -> None:
    assert "spec.training.zzz: unknown field" in messages(job(training={"zzz": 1}))


def test_finetuning_qlora_says_what_qlora_is() -> None:
    out = messages(job(method={"finetuning": "qlora"}))
    assert "QLoRA is finetuning: lora with model.quantization" in " ".join(out)
    assert value_hint(("spec", "method", "finetuning"), "QLoRA").startswith("QLoRA is")
    assert value_hint(("spec", "method", "finetuning"), "lora") == ""


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("epochs", "3", 'spec.training.epochs: must be a number, got the string "3"'),
        ("maxSteps", "10", 'spec.training.maxSteps: must be an integer, got the string "10"'),
        ("packing", "true", 'spec.training.packing: must be true or false, got the string "true"'),
    ],
)
def test_quoted_scalars_are_refused(field: str, value: str, expected: str) -> None:
    assert expected in messages(job(training={field: value}))


def test_json_numbers_are_accepted_as_the_api_server_does() -> None:
    # An integer is a valid number, and 4.0 a valid integer; enums are plain strings on the wire.
    assert (
        messages(job(training={"learningRate": 1, "perDeviceBatchSize": 4.0, "lrScheduler": "cosine"})) == []
    )


def test_python_names_still_build_models_in_code() -> None:
    spec = FineTuneJobSpec.model_validate(job(training={"learning_rate": 1e-4})["spec"])
    assert spec.training.learning_rate == 1e-4  # the operator and internal code are not strict
    assert TrainingSpec(learning_rate=2e-4).learning_rate == 2e-4


def test_model_at_and_field_index() -> None:
    assert model_at(FineTuneJob, ("spec", "method", "lora")) is LoraSpec
    assert model_at(FineTuneJob, ("spec", "datasets", 0)) is not None
    assert model_at(FineTuneJob, ("spec", "nope")) is None
    assert model_at(MethodSpec, ("lora",)) is LoraSpec
    index = field_index(FineTuneJob)
    assert index["quantization"] == ("spec.model",)
    assert not any(p.startswith("status") for paths in index.values() for p in paths)
    assert unknown_field_hint(FineTuneJob, ("spec", "nope", "x")) == ""
