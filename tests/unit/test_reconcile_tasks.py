"""Every branch of the Dataset and Export reconciles on an in-memory cluster (tests/unit/memory_cluster.py):
a Dataset validated once per generation, refused by a cluster rule, Ready from its report; an Export that
waits for its FineTuneJob and calibration Dataset, fails with it or on its own rules, then runs its Job.
The same behaviour against a real API server: tests/e2e/test_operator_*.py."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from finetune_operator.reconcile.cluster import ApiMismatch
from finetune_operator.reconcile.tasks import reconcile_dataset, reconcile_export
from finetune_operator.status import reasons as r
from finetune_operator.status.observe import rfc3339
from tests.unit.memory_cluster import START, World

DATASET = {"source": "s3://data/chats.jsonl", "format": "alpaca"}
EXPORT = {"fineTuneJobRef": "demo", "output": {"uri": "s3://bucket/merged"}}
FINETUNEJOB = {
    "model": {"source": "tiny://llama"},
    "datasets": [{"ref": "chats"}],
    "method": {"stage": "sft", "finetuning": "lora"},
    "output": {"uri": "s3://bucket/run"},
}
DONE = START + timedelta(minutes=3)


def finish(world: World, job: str, message: dict[str, Any], *, failed: bool = False) -> None:
    """The Job's one pod ended with ``message`` as its termination message; the Job says so."""
    end = {"exitCode": 1 if failed else 0, "reason": "Error" if failed else "Completed",
           "message": json.dumps(message), "finishedAt": rfc3339(DONE)}  # fmt: skip
    world.kube.pod(job, f"{job}-a", "Failed" if failed else "Succeeded", terminated=end)
    condition = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"} if failed else {
        "type": "Complete", "status": "True"}  # fmt: skip
    world.kube.set_job_status(job, completionTime=rfc3339(DONE), conditions=[condition])


def status(world: World, plural: str, name: str) -> tuple[str, str | None]:
    found = world.kube.status(plural, name)
    return found["phase"], found.get("reason")


# -- Dataset --------------------------------------------------------------------------------------------
def validate(world: World, name: str = "chats") -> None:
    reconcile_dataset(world.cluster, world.kube.body("datasets", name))


@pytest.mark.parametrize("phase", ["Ready", "Invalid"])
def test_a_dataset_whose_generation_was_validated_is_left_alone(phase: str) -> None:
    world = World()
    world.kube.add("datasets", "chats", DATASET, {"phase": phase, "observedGeneration": 2}, generation=2)
    validate(world)
    assert (world.kube.created, world.kube.patches, world.kube.events) == ([], [], [])


def test_a_changed_spec_is_validated_anew() -> None:
    world = World()
    world.kube.add("datasets", "chats", DATASET, {"phase": "Ready", "observedGeneration": 1}, generation=2)
    validate(world)
    assert world.kube.created == [("ConfigMap", "chats-validate-g2"), ("Job", "chats-validate-g2")]
    assert status(world, "datasets", "chats") == ("Validating", None)


def test_a_source_no_pod_can_read_is_invalid_without_a_job() -> None:
    world = World()
    world.kube.add("datasets", "chats", {"source": "file://examples/data/alpaca.jsonl", "format": "alpaca"})
    validate(world)
    assert world.kube.created == []
    assert status(world, "datasets", "chats") == ("Invalid", r.INVALID_SPEC)
    (validated,) = world.kube.status("datasets", "chats")["conditions"]
    assert (
        "spec.source: 'file://examples/data/alpaca.jsonl': file:// is for local runs" in validated["message"]
    )
    assert [e[1:3] for e in world.kube.events] == [("Warning", r.INVALID_SPEC)]


def test_a_new_dataset_gets_its_validation_job_and_is_validating() -> None:
    world = World()
    world.kube.add("datasets", "chats", DATASET)
    validate(world)
    assert world.kube.created == [("ConfigMap", "chats-validate-g1"), ("Job", "chats-validate-g1")]
    assert status(world, "datasets", "chats") == ("Validating", None)
    assert [e[1:3] for e in world.kube.events] == [("Normal", r.VALIDATING)]
    validate(world)  # the Job exists (the index holds it): not created again, nothing new to say
    assert len(world.kube.created) == 2 and len(world.kube.events) == 1


def test_a_completed_validation_job_with_its_report_makes_the_dataset_ready() -> None:
    world = World()
    world.kube.add("datasets", "chats", DATASET)
    validate(world)
    finish(world, "chats-validate-g1", {"phase": "Ready", "samples": 120, "invalidSamples": 2})
    validate(world)
    assert world.kube.pod_lists == [False]  # the report is read once the Job finished, consistently
    found = world.kube.status("datasets", "chats")
    assert (found["phase"], found["samples"], found["invalidSamples"]) == ("Ready", 120, 2)
    assert [e[1:3] for e in world.kube.events][-1] == ("Normal", r.VALID)


def test_a_failed_validation_job_makes_the_dataset_invalid() -> None:
    world = World()
    world.kube.add("datasets", "chats", DATASET)
    validate(world)
    finish(world, "chats-validate-g1", {"phase": "Invalid", "message": "no usable rows"}, failed=True)
    validate(world)
    assert status(world, "datasets", "chats") == ("Invalid", r.INVALID_ROWS)
    assert world.kube.events[-1][1:] == ("Warning", r.INVALID_ROWS, "Invalid: no usable rows")


# -- Export ---------------------------------------------------------------------------------------------
def export(world: World, name: str = "merged") -> None:
    reconcile_export(world.cluster, world.kube.body("exports", name))


def exported(spec: dict[str, Any] = EXPORT, phase: str | None = "Succeeded", *, source: bool = True) -> World:
    """A cluster with the FineTuneJob ``demo`` in ``phase`` (none when not ``source``) and the Export
    ``merged``, reconciled once."""
    world = World()
    if source:
        world.kube.add("finetunejobs", "demo", FINETUNEJOB, {"phase": phase} if phase else None)
    world.kube.add("exports", "merged", spec)
    export(world)
    return world


def test_an_export_waits_for_its_finetunejob_to_exist() -> None:
    world = exported(source=False)
    assert status(world, "exports", "merged") == ("Waiting", r.FINETUNEJOB_NOT_FOUND)
    assert world.kube.created == []


@pytest.mark.parametrize("phase", [None, "Pending", "Running"])
def test_an_export_waits_for_its_finetunejob_to_succeed(phase: str | None) -> None:
    world = exported(phase=phase)
    assert status(world, "exports", "merged") == ("Waiting", r.WAITING_FOR_FINETUNEJOB)
    assert f"FineTuneJob 'demo' is {phase or 'Pending'}" in world.kube.events[0][3]
    assert world.kube.created == []


def test_an_export_fails_with_its_finetunejob() -> None:
    world = exported(phase="Failed")
    assert status(world, "exports", "merged") == ("Failed", r.FINETUNEJOB_FAILED)
    assert world.kube.created == []
    patches = len(world.kube.patches)
    export(world)  # a failed Export is final
    assert len(world.kube.patches) == patches


def test_an_export_waits_for_its_calibration_dataset() -> None:
    world = exported({**EXPORT, "quantization": {"method": "gptq", "bits": 4, "calibrationDataset": "calib"}})
    assert status(world, "exports", "merged") == ("Waiting", r.DATASET_NOT_READY)
    assert world.kube.created == []
    world.kube.add("datasets", "calib", DATASET)
    export(world)
    assert ("Job", "merged-export") in world.kube.created


def test_an_export_rule_fails_it_as_invalid_spec_before_any_job() -> None:
    world = exported({**EXPORT, "format": "bin", "quantization": {"method": "bitsandbytes", "bits": 4}})
    assert status(world, "exports", "merged") == ("Failed", r.INVALID_SPEC)
    assert (
        "spec.format: quantized exports are written as safetensors; drop format: bin"
        in world.kube.events[0][3]
    )
    assert world.kube.created == []


def test_an_export_cluster_rule_fails_it_as_invalid_spec() -> None:
    world = exported({"model": "tiny://llama", "output": {"uri": "file://runs/merged"}}, source=False)
    assert status(world, "exports", "merged") == ("Failed", r.INVALID_SPEC)
    assert world.kube.created == []


def test_an_export_runs_its_job_once_the_finetunejob_succeeded_and_then_succeeds() -> None:
    world = exported()
    assert world.kube.created == [("ConfigMap", "merged-export"), ("Job", "merged-export")]
    assert status(world, "exports", "merged") == ("Pending", r.PODS_PENDING)
    config = world.kube.children[("ConfigMap", "team", "merged-export")]["data"]
    assert "phase: Succeeded" in next(iter(config.values()))  # the FineTuneJob with its status
    world.kube.set_job_status("merged-export", active=1, ready=1)
    export(world)
    assert status(world, "exports", "merged") == ("Running", None)
    files = [{"path": "model.safetensors", "size": 1024, "sha256": "ab" * 32}]
    report = {"uri": "s3://bucket/merged", "files": files, "sizeBytes": 1024}
    finish(world, "merged-export", report)
    export(world)
    found = world.kube.status("exports", "merged")
    assert (found["phase"], found["outputs"]["files"], found["outputs"]["sizeBytes"]) == (
        "Succeeded", files, 1024,
    )  # fmt: skip
    assert found["outputs"]["manifest"] == "s3://bucket/merged/manifest.json"
    assert found["completionTime"] == rfc3339(DONE)
    assert [e[2] for e in world.kube.events] == [r.PODS_PENDING, r.EXPORT_RUNNING, r.EXPORT_SUCCEEDED]
    patches = len(world.kube.patches)
    export(world)  # a succeeded Export is final
    assert len(world.kube.patches) == patches


def test_an_export_without_a_finetunejob_runs_at_once() -> None:
    spec = {"model": "tiny://llama", "adapter": "s3://models/a", "output": {"uri": "s3://b/m"}}
    world = exported(spec, source=False)
    assert world.kube.created == [("ConfigMap", "merged-export"), ("Job", "merged-export")]


def test_a_finetunejob_the_model_refuses_raises_api_mismatch_for_its_export() -> None:
    world = World()
    world.kube.add("finetunejobs", "demo", {**FINETUNEJOB, "unknownField": 1}, {"phase": "Succeeded"})
    world.kube.add("exports", "merged", EXPORT)
    with pytest.raises(ApiMismatch, match="FineTuneJob does not match"):
        export(world)
    assert world.kube.created == [] and world.kube.patches == []
