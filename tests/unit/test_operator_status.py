"""The operator's pure status logic and GPU-memory preflight."""

from __future__ import annotations

import json
from typing import Any

import pytest

from finetune_api import preflight as pf
from finetune_api.dataset import DatasetPhase
from finetune_api.export import ExportPhase
from finetune_api.finetunejob import FineTuneJobSpec, Phase
from finetune_api.pod import REFUSED_EXIT, TERMINATION_MAX
from finetune_api.resources import Dataset, Export, FineTuneJob
from finetune_operator.builders.pods import pod_failure_policy
from finetune_operator.reconcile.cluster import compact_job, job_state_key
from finetune_operator.status import reasons as r
from finetune_operator.status.conditions import Verdict
from finetune_operator.status.finetunejob import (
    build_job_status,
    dataset_gate,
    job_verdict,
)
from finetune_operator.status.observe import JobObservation, PodRead, observe_job, pod_read, stale_peers
from finetune_operator.status.tasks import dataset_status, export_gate, export_status, export_verdict

NOW = "2030-01-01T00:00:00Z"


def spec(**over: Any) -> FineTuneJobSpec:
    base: dict[str, Any] = {
        "model": {"source": "tiny://llama"},
        "datasets": [{"ref": "chats"}],
        "method": {"stage": "sft", "finetuning": "lora"},
        "output": {"uri": "s3://bucket/run"},
        "backoffLimit": 0,
    }
    base.update(over)
    return FineTuneJobSpec.model_validate(base)


def k8s_job(conditions: list[dict[str, str]] = (), suspend: bool = False, **status: Any) -> dict[str, Any]:  # type: ignore[assignment]
    return {
        "metadata": {"name": "demo-train"},
        "spec": {"suspend": suspend},
        "status": {"conditions": [{"status": "True", **c} for c in conditions], **status},
    }


def pod(
    phase: str, terminated: dict[str, Any] | None = None, waiting: dict[str, Any] | None = None
) -> dict[str, Any]:
    state = {"terminated": terminated} if terminated else {"waiting": waiting} if waiting else {"running": {}}
    return {
        "metadata": {"name": "demo-train-abc"},
        "status": {"phase": phase, "containerStatuses": [{"state": state}]},
    }


def test_oomkilled_container_fails_with_out_of_memory() -> None:
    obs = observe_job(
        k8s_job([{"type": "Failed", "reason": "BackoffLimitExceeded"}], failed=1),
        [pod("Failed", {"exitCode": 137, "reason": "OOMKilled"})],
    )
    verdict = job_verdict(spec(resources={"memory": "8Gi"}), obs)
    assert (verdict.phase, verdict.reason) == (Phase.FAILED, r.OUT_OF_MEMORY)
    assert "8Gi" in verdict.message


def test_a_trainer_refusing_another_runs_output_fails_at_once_with_its_message() -> None:
    said = "s3://bucket/run holds another run: metadata.name: rerun -> other; use --output or --overwrite"
    record = json.dumps({"phase": "Failed", "step": 0, "message": said})
    obs = observe_job(
        k8s_job([{"type": "Failed", "reason": "PodFailurePolicy"}], failed=1),
        [pod("Failed", {"exitCode": REFUSED_EXIT, "reason": "Error", "message": record})],
    )
    verdict = job_verdict(spec(backoffLimit=3), obs)
    assert (verdict.phase, verdict.reason, verdict.message) == (Phase.FAILED, r.OUTPUT_IN_USE, said)


def test_the_pod_failure_policy_fails_the_job_on_a_refusal_and_an_oom_kill() -> None:
    fail_job = [rule for rule in pod_failure_policy()["rules"] if rule["action"] == "FailJob"]
    assert [rule["onExitCodes"]["values"] for rule in fail_job] == [[REFUSED_EXIT, 137]]


@pytest.mark.parametrize(
    ("condition", "reason"),
    [("BackoffLimitExceeded", r.BACKOFF_LIMIT_EXCEEDED), ("DeadlineExceeded", r.DEADLINE_EXCEEDED)],
)
def test_job_failure_reasons(condition: str, reason: str) -> None:
    obs = observe_job(
        k8s_job([{"type": "Failed", "reason": condition}]),
        [pod("Failed", {"exitCode": 1, "reason": "Error"})],
    )
    assert job_verdict(spec(), obs).reason == reason


def test_running_suspended_kueue_image_pull_and_restart() -> None:
    assert job_verdict(spec(), observe_job(k8s_job(active=1), [pod("Running")])).phase == Phase.RUNNING
    suspended = observe_job(k8s_job(suspend=True), [])
    assert job_verdict(spec(suspend=True), suspended).reason == r.SUSPENDED_BY_USER
    assert job_verdict(spec(queueName="q"), suspended).reason == r.WAITING_FOR_ADMISSION
    pull = observe_job(
        k8s_job(active=1), [pod("Pending", waiting={"reason": "ImagePullBackOff", "message": "nope"})]
    )
    assert job_verdict(spec(), pull).reason == r.IMAGE_PULL_FAILED
    retry = observe_job(k8s_job(active=1, failed=1), [pod("Failed", {"exitCode": 1, "reason": "Error"})])
    assert job_verdict(spec(backoffLimit=2), retry).reason == r.RESTARTING


def member(
    name: str, phase: str, created: str, *, finished: str | None = None, exit_code: int = 1, **extra: Any
) -> dict[str, Any]:
    """A pod of a multi-node group: created at ``created``, its container ended at ``finished``."""
    end = {"exitCode": exit_code, "finishedAt": finished} if finished else None
    p = pod(phase, end)
    p["metadata"] = {"name": name, "creationTimestamp": created, **extra.pop("metadata", {})}
    p["status"].update(extra)
    return p


def test_stale_peers_are_the_group_members_from_before_a_failure() -> None:
    t0, t1, t2 = "2030-01-01T00:00:00Z", "2030-01-01T00:05:00Z", "2030-01-01T00:05:01Z"
    job = k8s_job(active=2, failed=1)
    failed = member("w-1-a", "Failed", t0, finished=t1)
    peer = member("w-0-a", "Running", t0)
    replacement = member("w-1-b", "Pending", t2)
    assert stale_peers(job, [failed, peer, replacement], group=2) == ["w-0-a"]
    assert observe_job(job, [failed, peer, replacement], group=2).stale_peers == ["w-0-a"]
    # Nothing to restart: a single pod, no failure yet, or a finished or suspended Job.
    assert stale_peers(job, [failed, peer, replacement], group=1) == []
    assert stale_peers(job, [peer, replacement], group=2) == []
    assert stale_peers(k8s_job([{"type": "Failed"}]), [failed, peer], group=2) == []
    assert stale_peers(k8s_job(suspend=True), [failed, peer], group=2) == []
    # A peer already going (evicted, deleted) is left alone.
    going = member("w-0-a", "Running", t0, metadata={"deletionTimestamp": t2})
    assert stale_peers(job, [failed, going, replacement], group=2) == []
    # The evicted peer's own end (DisruptionTarget) restarts nothing: no eviction of the new group.
    evicted = member(
        "w-0-a", "Failed", t0, finished=t2, exit_code=143,
        conditions=[{"type": "DisruptionTarget", "status": "True"}],
    )  # fmt: skip
    new_peer = member("w-0-b", "Running", "2030-01-01T00:05:02Z")
    new_worker = member("w-1-b", "Running", t2)
    assert stale_peers(job, [evicted, new_peer, new_worker], group=2) == []
    # The failed pod's replacement, created within the same second, is never evicted.
    assert stale_peers(job, [failed, member("w-1-b", "Running", t1)], group=2) == []


def test_pod_read_follows_what_the_jobs_counts_cannot_say() -> None:
    assert pod_read(k8s_job()) is PodRead.NONE  # just created: no pod yet
    assert pod_read(k8s_job(suspend=True)) is PodRead.NONE
    assert pod_read(k8s_job(active=1)) is PodRead.CACHED  # may not start: an image pull shows in pods
    assert pod_read(k8s_job(active=1, ready=1)) is PodRead.NONE  # every pod ready, none failed
    assert pod_read(k8s_job(active=2, ready=1), pods_wanted=2) is PodRead.CACHED  # one node short
    assert pod_read(k8s_job(active=2, ready=2), pods_wanted=2) is PodRead.NONE
    assert pod_read(k8s_job(active=1, ready=1, failed=1)) is PodRead.CACHED  # a retry: why it failed
    for done in ("Complete", "Failed"):  # the final report is in the pods: read them current
        assert pod_read(k8s_job([{"type": done}], ready=1)) is PodRead.CONSISTENT


def test_a_job_read_without_pods_runs_on_its_ready_count() -> None:
    running = observe_job(k8s_job(active=2, ready=2), [])
    assert running.running_pods == 2
    assert job_verdict(spec(resources={"nodes": 2}), running).phase == Phase.RUNNING
    assert job_verdict(spec(), observe_job(k8s_job(active=1), [])).reason == r.PODS_PENDING
    # With pods listed, they are counted: ready pods of a pod list that says Pending do not run.
    assert observe_job(k8s_job(active=1, ready=1), [pod("Pending")]).running_pods == 0


def test_job_state_key_moves_with_status_and_suspend_only() -> None:
    job = {
        **k8s_job(active=1),
        "metadata": {"name": "demo-train", "namespace": "ns", "uid": "u", "labels": {}},
    }
    key = job_state_key(job)
    assert job_state_key(compact_job(job)) == key  # an index entry and an event body agree
    assert job_state_key({**job, "metadata": {**job["metadata"], "resourceVersion": "9"}}) == key
    assert job_state_key(k8s_job(active=1, ready=1)) != key
    assert job_state_key(k8s_job(active=1, suspend=True)) != key
    assert job_state_key({"metadata": {}, "spec": {}}) == job_state_key(
        {"metadata": {}, "spec": {}, "status": {}}
    )


def test_success_status_has_outputs_progress_and_conditions() -> None:
    summary = {"step": 20, "totalSteps": 20, "percent": 100.0, "loss": 1.5, "phase": "Succeeded",
               "lastCheckpoint": "s3://bucket/run/checkpoints/checkpoint-20"}  # fmt: skip
    obs = observe_job(
        k8s_job([{"type": "Complete"}], succeeded=1, startTime="2030-01-01T00:00:00Z", completionTime=NOW),
        [pod("Succeeded", {"exitCode": 0, "reason": "Completed", "message": json.dumps(summary)})],
    )
    s = spec()
    verdict = job_verdict(s, obs)
    status = build_job_status(s, None, verdict, generation=1, now=NOW, obs=obs)
    assert status.phase == Phase.SUCCEEDED
    assert status.progress is not None and status.progress.step == 20 and status.progress.loss == 1.5
    assert status.last_checkpoint == "s3://bucket/run/checkpoints/checkpoint-20"
    assert status.outputs is not None and status.outputs.adapter == "s3://bucket/run/adapter"
    assert status.completion_time == NOW and status.observed_generation == 1
    conditions = {c.type: (c.status, c.reason) for c in status.conditions}
    assert conditions[r.SUCCEEDED] == ("True", r.TRAINING_SUCCEEDED)
    assert conditions[r.FAILED][0] == "False"
    assert conditions[r.ACCEPTED] == ("True", r.SPEC_ACCEPTED)


def test_transition_time_moves_only_when_a_condition_flips() -> None:
    s = spec()
    running = observe_job(k8s_job(active=1), [pod("Running")])
    first = build_job_status(
        s, None, job_verdict(s, running), generation=1, now="2030-01-01T00:00:00Z", obs=running
    )
    again = build_job_status(
        s, first, job_verdict(s, running), generation=1, now="2030-01-01T01:00:00Z", obs=running
    )
    assert first.conditions == again.conditions
    record = {
        "step": 5,
        "totalSteps": 10,
        "percent": 50.0,
        "loss": 2.0,
        "eta": "1m",
        "phase": "Running",
        "message": "x",
    }
    fresh = build_job_status(
        s, again, job_verdict(s, running), generation=1, now=NOW, obs=running, record=record
    )
    assert fresh.progress is not None and fresh.progress.percent == 50.0 and fresh.progress.eta == "1m"


def test_evaluation_scores_from_the_record_land_in_status() -> None:
    s = spec()
    running = observe_job(k8s_job(active=1), [pod("Running")])
    record = {
        "step": 10,
        "phase": "Running",
        "evaluation": {
            "predict": {"samples": 8, "bleu4": 35.5, "rouge1": 100.0, "rouge2": 0.0, "rougeL": 100.0},
            "results": "s3://bucket/run/eval_results.json",
        },
    }
    status = build_job_status(
        s, None, job_verdict(s, running), generation=1, now=NOW, obs=running, record=record
    )
    assert status.evaluation is not None and status.evaluation.predict is not None
    assert status.evaluation.predict.bleu4 == 35.5
    assert status.evaluation.results == "s3://bucket/run/eval_results.json"


def test_dataset_gate() -> None:
    ready = Dataset.model_validate(
        {"metadata": {"name": "chats", "generation": 1}, "spec": {"source": "s3://d/x"},
         "status": {"phase": "Ready", "observedGeneration": 1}}
    )  # fmt: skip
    assert dataset_gate(spec(), {"chats": ready}) is None
    missing = dataset_gate(spec(), {})
    assert missing is not None and missing.reason == r.DATASET_NOT_READY
    dpo = spec(method={"stage": "dpo", "finetuning": "lora", "preference": {"loss": "sigmoid"}})
    mismatch = dataset_gate(dpo, {"chats": ready})
    assert mismatch is not None and (mismatch.phase, mismatch.reason) == (Phase.FAILED, r.DATASET_INVALID)
    assert "spec.datasets[0].ref" in mismatch.message
    invalid = ready.model_copy(deep=True)
    assert invalid.status is not None
    invalid.status.phase = DatasetPhase.INVALID
    assert dataset_gate(spec(), {"chats": invalid}).reason == r.DATASET_INVALID  # type: ignore[union-attr]


def test_dataset_status_from_the_validation_report() -> None:
    report = {"phase": "Invalid", "samples": 3, "invalidSamples": 1,
              "errors": [{"row": 2, "field": "output", "message": "missing"}], "preview": ["a"]}  # fmt: skip
    obs = observe_job(
        k8s_job([{"type": "Complete"}]), [pod("Succeeded", {"exitCode": 0, "message": json.dumps(report)})]
    )
    status, verdict = dataset_status(None, obs, generation=2, now=NOW)
    assert status.phase == DatasetPhase.INVALID and verdict.reason == r.INVALID_ROWS
    assert status.errors[0].row == 2 and "row 2" in verdict.message
    ok = observe_job(
        k8s_job([{"type": "Complete"}]),
        [pod("Succeeded", {"exitCode": 0, "message": json.dumps({"samples": 9})})],
    )
    status, _ = dataset_status(None, ok, generation=2, now=NOW)
    assert status.phase == DatasetPhase.READY and status.samples == 9 and status.observed_generation == 2
    crashed = observe_job(
        k8s_job([{"type": "Failed", "reason": "BackoffLimitExceeded"}]),
        [pod("Failed", {"exitCode": 1, "message": "Traceback: boom"})],
    )
    status, verdict = dataset_status(None, crashed, generation=2, now=NOW)
    assert status.phase == DatasetPhase.INVALID and "boom" in verdict.message
    refusal = Verdict(DatasetPhase.INVALID, r.INVALID_SPEC, "spec.source: file:// is for local runs")
    status, verdict = dataset_status(None, None, generation=2, now=NOW, refusal=refusal)
    assert (status.phase, verdict) == (DatasetPhase.INVALID, refusal)
    assert status.conditions[0].reason == r.INVALID_SPEC and status.observed_generation == 2


def test_a_validation_report_that_does_not_read_makes_the_dataset_invalid() -> None:
    def ended(condition: str, message: str) -> JobObservation:
        exit_code = 0 if condition == "Complete" else 1
        reason = {} if condition == "Complete" else {"reason": "BackoffLimitExceeded"}
        phase = "Succeeded" if condition == "Complete" else "Failed"
        return observe_job(
            k8s_job([{"type": condition, **reason}]),
            [pod(phase, {"exitCode": exit_code, "message": message})],
        )

    earlier, _ = dataset_status(None, ended("Complete", json.dumps({"samples": 9})), generation=2, now=NOW)
    garbled = json.dumps({"phase": "Ready", "samples": -1})
    status, verdict = dataset_status(earlier, ended("Complete", garbled), generation=2, now=NOW)
    assert (status.phase, verdict.reason) == (DatasetPhase.INVALID, r.VALIDATION_FAILED)
    assert verdict.message.startswith("unreadable validation report: ") and "samples" in verdict.message
    assert status.samples is None  # what the earlier report said is gone with it
    status, verdict = dataset_status(earlier, ended("Failed", garbled), generation=2, now=NOW)
    assert (status.phase, verdict.message) == (DatasetPhase.INVALID, f"validation failed: {garbled}")


def test_an_export_report_that_does_not_read_leaves_the_outputs_where_the_spec_says() -> None:
    export = Export.model_validate({"metadata": {"name": "m"}, "spec": {"output": {"uri": "s3://b/m/"}}})
    for message in (json.dumps({"uri": "", "sizeBytes": 10}), "export finished"):
        obs = observe_job(
            k8s_job([{"type": "Complete"}]), [pod("Succeeded", {"exitCode": 0, "message": message})]
        )
        status = export_status(export, None, export_verdict(obs), obs, generation=1, now=NOW)
        assert status.outputs is not None and status.outputs.size_bytes is None and status.outputs.files == []
        assert (status.outputs.uri, status.outputs.manifest) == ("s3://b/m", "s3://b/m/manifest.json")


def test_export_waits_for_its_job_then_reports_outputs() -> None:
    export = Export.model_validate(
        {"metadata": {"name": "m"}, "spec": {"fineTuneJobRef": "demo", "output": {"uri": "s3://b/m"}}}
    )
    assert export_gate(export, None).reason == r.FINETUNEJOB_NOT_FOUND  # type: ignore[union-attr]
    job = FineTuneJob.model_validate(
        {"metadata": {"name": "demo"}, "spec": spec().to_wire(), "status": {"phase": "Running"}}
    )
    assert export_gate(export, job).phase == ExportPhase.WAITING  # type: ignore[union-attr]
    assert job.status is not None
    job.status.phase = Phase.SUCCEEDED
    assert export_gate(export, job) is None
    report = {"files": [{"path": "model.safetensors", "size": 10, "sha256": "ab"}], "sizeBytes": 10}
    obs = observe_job(
        k8s_job([{"type": "Complete"}]), [pod("Succeeded", {"exitCode": 0, "message": json.dumps(report)})]
    )
    status = export_status(export, None, export_verdict(obs), obs, generation=1, now=NOW)
    assert status.phase == ExportPhase.SUCCEEDED
    assert status.outputs is not None and status.outputs.size_bytes == 10
    assert status.outputs.manifest == "s3://b/m/manifest.json"


def test_preflight_refuses_full_finetuning_of_8b_on_a_24gib_gpu() -> None:
    full = spec(
        model={"source": "hf://meta-llama/Llama-3.1-8B"}, method={"stage": "sft", "finetuning": "full"}
    )
    result = pf.preflight(full, 24.0, "spec.resources.gpuMemoryGiB")
    assert result.refusal is not None and result.estimate_gib is not None and result.estimate_gib > 100
    assert "24 GiB" in result.refusal and "spec.resources.gpuMemoryGiB" in result.refusal


def test_preflight_numbers_move_the_right_way() -> None:
    def gib(**over: Any) -> float:
        over.setdefault("model", {"source": "hf://Qwen/Qwen2.5-7B"})
        estimate = pf.preflight(spec(**over), None).estimate_gib
        assert estimate is not None
        return estimate

    lora = gib()
    assert gib(model={"source": "hf://Qwen/Qwen2.5-7B", "quantization": {"bits": 4}}) < lora
    assert gib(method={"stage": "sft", "finetuning": "full"}) > 3 * lora
    full_zero3 = gib(
        method={"stage": "sft", "finetuning": "full"},
        resources={"gpusPerNode": 8},
        distributed={"deepspeed": "zero3"},
    )
    assert full_zero3 < gib(method={"stage": "sft", "finetuning": "full"}, resources={"gpusPerNode": 8})
    assert gib(training={"perDeviceBatchSize": 16}) > lora
    assert 10 < lora < 40


def test_preflight_tiny_models_fit_and_unknown_sizes_are_skipped() -> None:
    tiny = pf.preflight(spec(), 2.0, "x")
    assert tiny.refusal is None and tiny.estimate_gib is not None and tiny.estimate_gib < 2.0
    assert pf.preflight(spec(model={"source": "s3://models/mine"}), 1.0).estimate_gib is None
    with pytest.raises(ValueError, match="tiny://"):
        pf.preflight(spec(model={"source": "tiny://llama?layers=x"}), None)


def test_a_report_longer_than_a_message_still_reads() -> None:
    """The kubelet keeps 4 KiB of termination message; a report is read whole, not its last KiB."""
    preview = ["x" * 700, "y" * 700, "z" * 700]
    report = {"phase": "Ready", "samples": 3, "invalidSamples": 0, "preview": preview}
    message = json.dumps(report)
    assert 2048 < len(message) <= TERMINATION_MAX
    obs = observe_job(
        k8s_job([{"type": "Complete"}]), [pod("Succeeded", {"exitCode": 0, "message": message})]
    )
    status, verdict = dataset_status(None, obs, generation=1, now=NOW)
    assert (status.phase, verdict.reason, status.preview) == (DatasetPhase.READY, r.VALID, preview)


def test_a_failed_trainer_is_quoted_by_its_records_message_not_its_json() -> None:
    record = json.dumps({"phase": "Failed", "step": 3, "message": "ValueError: row 7 has no output"})
    obs = observe_job(
        k8s_job([{"type": "Failed", "reason": "BackoffLimitExceeded"}], failed=1),
        [pod("Failed", {"exitCode": 1, "reason": "Error", "message": record})],
    )
    verdict = job_verdict(spec(), obs)
    assert verdict.reason == r.BACKOFF_LIMIT_EXCEEDED
    assert verdict.message.endswith("(ValueError: row 7 has no output)") and "{" not in verdict.message
    plain = observe_job(
        k8s_job([{"type": "Failed", "reason": "BackoffLimitExceeded"}], failed=1),
        [pod("Failed", {"exitCode": 1, "reason": "Error", "message": "x" * 3000 + " boom"})],
    )
    said = job_verdict(spec(), plain).message
    assert said.endswith("boom)") and len(said) < 1200
