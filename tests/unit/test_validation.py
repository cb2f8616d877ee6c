"""Semantic validation: every error, with its field path; examples valid; each invalid example fails as stated."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from finetune_api.manifests import load_documents
from finetune_api.validation import validate_documents, validate_manifest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
INVALID = sorted((ROOT / "examples" / "invalid").glob("*.yaml"))


def _expectation(path: Path) -> str:
    match = re.search(r"^# expect: (.+)$", path.read_text(), re.MULTILINE)
    assert match, f"{path} states no '# expect:' message"
    return match.group(1).strip()


def _job(**spec: object) -> dict[str, object]:
    base: dict[str, object] = {
        "model": {"source": "tiny://llama"},
        "datasets": [{"ref": "d"}],
        "method": {"stage": "sft"},
    }
    base.update(spec)
    return {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "j"},
        "spec": base,
    }


def test_there_are_enough_invalid_examples() -> None:
    assert len(INVALID) >= 20


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_valid(path: Path) -> None:
    docs = load_documents([path])
    assert docs
    results = validate_documents([d.body for d in docs])
    assert all(not errors for errors in results.values()), results


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_example_fails_with_its_message(path: Path) -> None:
    docs = load_documents([path])
    cluster = "\n# validate: --cluster" in path.read_text()  # valid locally, refused for a cluster
    results = validate_documents([d.body for d in docs], cluster=cluster)
    messages = [str(e) for errors in results.values() for e in errors]
    assert any(_expectation(path) in m for m in messages), messages
    if cluster:
        local = validate_documents([d.body for d in docs])
        assert not any(_expectation(path) in str(e) for errors in local.values() for e in errors)


def test_every_error_is_reported_not_just_the_first() -> None:
    job = _job(
        model={"source": "ftp://x", "quantization": {"bits": 4}},
        method={"stage": "sft", "finetuning": "full", "lora": {"rank": 0}},
        training={"learningRate": -1, "bogus": 1},
    )
    paths = {e.path for e in validate_manifest(job)}
    assert {
        "spec.model.source",
        "spec.model.quantization",
        "spec.method.lora",
        "spec.method.lora.rank",
        "spec.training.learningRate",
        "spec.training.bogus",
    } <= paths


def test_valid_job_has_no_errors() -> None:
    assert validate_manifest(_job()) == []


def test_spec_is_immutable_except_suspend() -> None:
    old = _job()
    assert validate_manifest(_job(suspend=True), old=old) == []
    changed = validate_manifest(_job(training={"epochs": 1}), old=old)
    assert [str(e) for e in changed] == ["spec: spec is immutable after creation, except suspend"]
    added_optional = validate_manifest(_job(queueName="q"), old=old)
    assert added_optional, "adding an optional field after creation must be refused too"


def test_defaults_are_applied_before_rules() -> None:
    # finetuning defaults to lora, so quantization alone is a valid QLoRA job
    assert validate_manifest(_job(model={"source": "tiny://llama", "quantization": {"bits": 4}})) == []


def test_dataset_refs_checked_against_stage() -> None:
    dataset = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "d"},
        "spec": {"source": "file://x.jsonl", "format": "text"},
    }
    results = validate_documents([_job(), dataset])
    assert [str(e) for e in results[0]] == [
        "spec.datasets[0].ref: stage sft needs conversations; 'd' is plain text (stage pt)"
    ]
    missing = validate_documents([_job()])
    assert [str(e) for e in missing[0]] == ["spec.datasets[0].ref: Dataset 'd' not found"]
    assert validate_documents([_job()], allow_missing_datasets=True)[0] == []


def test_evaluation_datasets_must_exist_too() -> None:
    job = _job(evaluation={"benchmark": {"dataset": "mmlu"}})
    dataset = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "d"},
        "spec": {"source": "file://x.jsonl", "format": "alpaca"},
    }
    missing = validate_documents([job, dataset])
    assert [str(e) for e in missing[0]] == ["spec.evaluation: Dataset 'mmlu' not found"]


def test_quantization_and_an_adapter_need_lora_tuning() -> None:
    """Each by its field, whichever other tuning is asked (one example per rule is in examples/invalid/)."""
    for finetuning in ("full", "freeze"):
        quantized = validate_manifest(
            _job(model={"source": "tiny://llama", "quantization": {"bits": 8}},
                 method={"stage": "sft", "finetuning": finetuning})
        )  # fmt: skip
        assert [e.path for e in quantized] == ["spec.model.quantization"], quantized
        adapter = validate_manifest(
            _job(model={"source": "tiny://llama", "adapter": "s3://b/adapter"},
                 method={"stage": "sft", "finetuning": finetuning})
        )  # fmt: skip
        assert [str(e) for e in adapter] == [
            f"spec.model.adapter: continuing an adapter needs method.finetuning: lora, not {finetuning}"
        ]
