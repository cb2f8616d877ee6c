"""Every branch of the FineTuneJob reconcile on an in-memory cluster (tests/unit/memory_cluster.py):
terminal phases and TTL expiry, the gate (spec and cluster rules, Datasets, memory preflight), converging
the ConfigMap, Job and Service, suspend, group restarts, retries, progress reads and status writes.
The same behaviour against a real API server: tests/e2e/test_operator_finetunejob.py."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from finetune_api.finetunejob import Phase
from finetune_operator.reconcile.cluster import ApiMismatch, Memory
from finetune_operator.reconcile.finetunejob import reconcile_finetunejob
from finetune_operator.settings import Settings
from finetune_operator.status import reasons as r
from finetune_operator.status.finetunejob import ProgressRead
from finetune_operator.status.observe import rfc3339
from tests.unit.memory_cluster import START, World

READY = {"phase": "Ready", "observedGeneration": 1}
RECORD = {"step": 4, "totalSteps": 10, "loss": 1.25, "lastCheckpoint": "s3://bucket/run/checkpoints/step-4"}


def job_spec(**over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"source": "tiny://llama"},
        "datasets": [{"ref": "chats"}],
        "method": {"stage": "sft", "finetuning": "lora"},
        "training": {"maxSteps": 10},
        "output": {"uri": "s3://bucket/run"},
    }
    spec.update(over)
    return spec


def world_with_dataset(status: dict[str, Any] | None = READY, source: str = "s3://data/chats.jsonl") -> World:
    world = World()
    world.kube.add("datasets", "chats", {"source": source, "format": "alpaca"}, status)
    return world


def reconcile(world: World, name: str = "demo", **kwargs: Any) -> Any:
    """Reconcile the FineTuneJob as stored now (as a resync reads it)."""
    return reconcile_finetunejob(world.cluster, world.kube.body("finetunejobs", name), **kwargs)


def condition(world: World, name: str, kind: str) -> dict[str, Any]:
    found = [c for c in world.kube.status("finetunejobs", name)["conditions"] if c["type"] == kind]
    assert len(found) == 1, found
    return dict(found[0])


def phase_reason(world: World, name: str = "demo") -> tuple[str, str]:
    status = world.kube.status("finetunejobs", name)
    return status["phase"], condition(world, name, r.RUNNING)["reason"]


# -- terminal phases and TTL --------------------------------------------------------------------------
def test_a_finished_job_is_left_alone() -> None:
    world = world_with_dataset()
    world.kube.add(
        "finetunejobs", "demo", job_spec(), {"phase": "Succeeded", "completionTime": rfc3339(START)}
    )
    verdict = reconcile(world)
    assert verdict.phase == Phase.SUCCEEDED
    assert (world.kube.created, world.kube.patches, world.kube.deletions) == ([], [], [])
    assert world.memory.expired == set()  # no TTL: nothing to delete, ever


def test_ttl_deletes_the_children_once_after_the_deadline_and_not_before() -> None:
    world = world_with_dataset()
    done = {"phase": "Failed", "completionTime": rfc3339(START)}
    body = world.kube.add("finetunejobs", "demo", job_spec(ttlSecondsAfterFinished=60), done)
    world.clock.advance(59)
    reconcile(world)
    assert world.kube.deletions == []
    world.clock.advance(1)
    assert reconcile(world).phase == Phase.FAILED
    assert world.kube.deletions == [
        ("Job", "demo-train"),
        ("Service", "demo-train"),
        ("ConfigMap", "demo-spec"),
    ]
    assert world.memory.expired == {body["metadata"]["uid"]}
    world.clock.advance(600)
    reconcile(world)
    assert len(world.kube.deletions) == 3  # once per process
    assert world.kube.patches == []  # the status is kept as it was


# -- the gate: rules, Datasets, preflight -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("over", "field", "words"),
    [
        (
            {"method": {"stage": "ppo", "finetuning": "lora", "ppo": {"rewardModel": "s3://models/rm"}},
             "training": {"maxSteps": 10, "optimizer": "adamw_8bit"}},
            "spec.training.optimizer",
            "stage ppo trains with adamw_torch only, not adamw_8bit",
        ),
        (
            {"model": {"source": "tiny://llama", "adapter": "s3://models/sft-adapter"},
             "method": {"stage": "sft", "finetuning": "full"}},
            "spec.model.adapter",
            "continuing an adapter needs method.finetuning: lora, not full",
        ),
        (
            {"output": {"uri": "file://runs/demo"}},
            "spec.output.uri",
            "is local to a workstation; use s3://bucket/prefix on a cluster",
        ),
    ],
    ids=["spec-rule-ppo-optimizer", "spec-rule-adapter-needs-lora", "cluster-rule-file-output"],
)  # fmt: skip
def test_a_spec_or_cluster_rule_fails_the_job_as_invalid_spec_before_any_child(
    over: dict[str, Any], field: str, words: str
) -> None:
    world = world_with_dataset()
    world.kube.add("finetunejobs", "demo", job_spec(**over))
    verdict = reconcile(world)
    assert (verdict.phase, verdict.reason) == (Phase.FAILED, r.INVALID_SPEC)
    assert f"{field}: " in verdict.message and words in verdict.message
    assert world.kube.created == []
    assert world.kube.status("finetunejobs", "demo")["reason"] == r.INVALID_SPEC
    failed = condition(world, "demo", r.FAILED)
    assert (failed["status"], failed["message"]) == ("True", verdict.message)
    assert [e[1:3] for e in world.kube.events] == [("Warning", r.INVALID_SPEC)]


def test_a_dataset_read_from_file_is_a_cluster_rule_refusal() -> None:
    world = world_with_dataset(source="file://examples/data/alpaca.jsonl")
    world.kube.add("finetunejobs", "demo", job_spec())
    verdict = reconcile(world)
    assert (verdict.phase, verdict.reason) == (Phase.FAILED, r.INVALID_SPEC)
    assert "spec.datasets[0].ref: Dataset 'chats' reads 'file://" in verdict.message
    assert world.kube.created == []


@pytest.mark.parametrize(
    ("status", "waiting"),
    [
        (None, "Dataset 'chats' is not validated yet"),
        ({"phase": "Validating", "observedGeneration": 1}, "Dataset 'chats' is Validating"),
        ({"phase": "Ready", "observedGeneration": 0}, "Dataset 'chats' is Ready"),  # an older generation
    ],
)
def test_a_dataset_not_ready_keeps_the_job_preparing_without_children(
    status: dict[str, Any] | None, waiting: str
) -> None:
    world = world_with_dataset(status)
    world.kube.add("finetunejobs", "demo", job_spec())
    verdict = reconcile(world)
    assert (verdict.phase, verdict.reason, verdict.message) == (Phase.PREPARING, r.DATASET_NOT_READY, waiting)
    assert world.kube.created == []
    assert world.kube.status("finetunejobs", "demo")["phase"] == "Preparing"


def test_a_missing_dataset_keeps_the_job_preparing_until_it_is_ready() -> None:
    world = World()
    world.kube.add("finetunejobs", "demo", job_spec())
    verdict = reconcile(world)
    assert (verdict.phase, verdict.message) == (Phase.PREPARING, "Dataset 'chats' not found")
    assert world.kube.created == []
    world.kube.add("datasets", "chats", {"source": "s3://data/chats.jsonl", "format": "alpaca"}, READY)
    assert reconcile(world).phase == Phase.PENDING
    assert ("Job", "demo-train") in world.kube.created


def test_an_invalid_dataset_fails_the_job() -> None:
    world = world_with_dataset({"phase": "Invalid", "observedGeneration": 1})
    world.kube.add("finetunejobs", "demo", job_spec())
    verdict = reconcile(world)
    assert (verdict.phase, verdict.reason) == (Phase.FAILED, r.DATASET_INVALID)
    assert world.kube.created == []


def test_preflight_refuses_a_model_that_cannot_fit_with_its_estimate() -> None:
    world = world_with_dataset()
    big = "tiny://llama?layers=32&hidden=4096&intermediate=14336&heads=32&kv_heads=8&vocab=128256"
    spec = job_spec(
        model={"source": big},
        method={"stage": "sft", "finetuning": "full"},
        resources={"gpusPerNode": 1, "gpuMemoryGiB": 8},
    )
    world.kube.add("finetunejobs", "demo", spec)
    verdict = reconcile(world)
    assert (verdict.phase, verdict.reason) == (Phase.FAILED, r.INSUFFICIENT_GPU_MEMORY)
    assert "8 GiB" in verdict.message
    estimate = world.kube.status("finetunejobs", "demo")["gpuMemoryEstimate"]
    assert float(estimate.removesuffix("Gi")) > 8
    assert world.kube.created == []


def test_preflight_reads_gpu_memory_from_the_smallest_labelled_node() -> None:
    world = world_with_dataset()
    world.kube.nodes = [{"finetune.dev/gpu-memory-gib": "80"}, {"finetune.dev/gpu-memory-gib": "4"}, {}]
    big = "tiny://llama?layers=32&hidden=4096&intermediate=14336&heads=32&kv_heads=8&vocab=128256"
    world.kube.add("finetunejobs", "demo", job_spec(model={"source": big}, resources={"gpusPerNode": 1}))
    verdict = reconcile(world)
    assert verdict.reason == r.INSUFFICIENT_GPU_MEMORY
    assert "node label finetune.dev/gpu-memory-gib" in verdict.message and "4 GiB" in verdict.message


# -- converge ----------------------------------------------------------------------------------------------
def test_the_first_reconcile_creates_config_map_and_job_and_writes_pending() -> None:
    world = world_with_dataset()
    world.kube.add("finetunejobs", "demo", job_spec())
    verdict = reconcile(world)
    assert (verdict.phase, verdict.reason) == (Phase.PENDING, r.PODS_PENDING)
    assert world.kube.created == [("ConfigMap", "demo-spec"), ("Job", "demo-train")]
    status = world.kube.status("finetunejobs", "demo")
    assert (status["phase"], status["jobName"], status["reason"]) == ("Pending", "demo-train", r.PODS_PENDING)
    assert world.kube.pod_lists == []  # a Job that counts no pod needs no pod list
    assert [e[1:3] for e in world.kube.events] == [("Normal", r.PODS_PENDING)]


def test_a_multi_node_job_gets_a_headless_service() -> None:
    world = world_with_dataset()
    world.kube.add(
        "finetunejobs", "demo", job_spec(resources={"nodes": 2, "gpusPerNode": 1, "gpuMemoryGiB": 80})
    )
    reconcile(world)
    assert world.kube.created == [
        ("ConfigMap", "demo-spec"),
        ("Service", "demo-train"),
        ("Job", "demo-train"),
    ]
    assert world.kube.job("demo-train")["spec"]["completionMode"] == "Indexed"


@pytest.mark.parametrize("lagging", [False, True], ids=["indexed", "not-indexed-yet"])
def test_an_existing_job_is_adopted_and_its_state_read(lagging: bool) -> None:
    """A Job the index holds is not created again; one it has not seen yet clashes on its name and is used."""
    world = world_with_dataset()
    world.kube.add("finetunejobs", "demo", job_spec())
    reconcile(world)
    world.kube.created.clear()
    world.kube.set_job_status("demo-train", active=1, ready=1, startTime=rfc3339(START))
    world.lagging = lagging
    verdict = reconcile(world)
    assert (verdict.phase, verdict.reason) == (Phase.RUNNING, r.TRAINING_RUNNING)
    assert world.kube.created == []
    assert world.kube.status("finetunejobs", "demo")["startTime"] == rfc3339(START)


def test_suspend_propagates_to_the_job_both_ways() -> None:
    world = world_with_dataset()
    world.kube.add("finetunejobs", "demo", job_spec(suspend=True))
    verdict = reconcile(world)
    assert world.kube.job("demo-train")["spec"]["suspend"] is True  # created suspended
    assert world.kube.suspends == []
    assert (verdict.phase, verdict.reason) == (Phase.SUSPENDED, r.SUSPENDED_BY_USER)
    world.kube.customs[("finetunejobs", "team", "demo")]["spec"]["suspend"] = False
    verdict = reconcile(world)
    assert world.kube.suspends == [("demo-train", False)]
    assert (verdict.phase, verdict.reason) == (Phase.PENDING, r.PODS_PENDING)  # the Job runs again
    world.kube.customs[("finetunejobs", "team", "demo")]["spec"]["suspend"] = True
    reconcile(world)
    assert world.kube.suspends == [("demo-train", False), ("demo-train", True)]


def test_with_a_queue_the_operator_suspends_but_never_admits() -> None:
    world = world_with_dataset()
    world.kube.add("finetunejobs", "demo", job_spec(queueName="gpus"))
    verdict = reconcile(world)
    assert world.kube.job("demo-train")["spec"]["suspend"] is True  # Kueue admits it
    assert world.kube.suspends == []
    assert (verdict.phase, verdict.reason) == (Phase.PENDING, r.WAITING_FOR_ADMISSION)
    world.kube.job("demo-train")["spec"]["suspend"] = False  # admitted
    world.kube.customs[("finetunejobs", "team", "demo")]["spec"]["suspend"] = True
    reconcile(world)
    assert world.kube.suspends == [("demo-train", True)]  # the user's suspend still goes through


def _failed_end(at: Any, code: int = 1, reason: str = "Error") -> dict[str, Any]:
    return {"exitCode": code, "reason": reason, "finishedAt": rfc3339(at)}


def test_a_failed_peer_of_a_group_evicts_the_peers_that_started_before_it() -> None:
    world = world_with_dataset()
    spec = job_spec(resources={"nodes": 2, "gpusPerNode": 1, "gpuMemoryGiB": 80}, backoffLimit=3)
    world.kube.add("finetunejobs", "demo", spec)
    reconcile(world)
    failed_at = START + timedelta(minutes=5)
    world.kube.pod("demo-train", "demo-train-0-a", "Failed", terminated=_failed_end(failed_at))
    world.kube.pod("demo-train", "demo-train-1-a", "Running")  # started with it: stale
    world.kube.pod("demo-train", "demo-train-0-b", "Pending", created=failed_at + timedelta(seconds=2))
    world.kube.set_job_status("demo-train", active=2, ready=1, failed=1)
    verdict = reconcile(world)
    assert world.kube.evictions == ["demo-train-1-a"]
    assert world.kube.pod_lists == [True]  # from the API server's cache: a pod failed
    assert (verdict.phase, verdict.reason) == (Phase.PENDING, r.RESTARTING)
    assert "pod demo-train-0-a failed (Error); retry 1 of 3" in verdict.message


def test_a_single_pod_job_evicts_nothing() -> None:
    world = world_with_dataset()
    world.kube.add("finetunejobs", "demo", job_spec(backoffLimit=2))
    reconcile(world)
    world.kube.pod(
        "demo-train", "demo-train-a", "Failed", terminated=_failed_end(START + timedelta(minutes=1))
    )
    world.kube.pod("demo-train", "demo-train-b", "Running")
    world.kube.set_job_status("demo-train", active=1, failed=1)
    verdict = reconcile(world)
    assert world.kube.evictions == []
    assert (verdict.phase, verdict.reason) == (Phase.RUNNING, r.TRAINING_RUNNING)
    assert world.kube.status("finetunejobs", "demo")["restarts"] == 1


@pytest.mark.parametrize(
    ("failed", "backoff", "retry"),
    [(1, 2, "retry 1 of 2 resumes from the last checkpoint"), (3, 2, "no retry left (backoffLimit 2)")],
)
def test_a_failed_pod_counts_a_restart_and_says_what_retry_follows(
    failed: int, backoff: int, retry: str
) -> None:
    world = world_with_dataset()
    world.kube.add("finetunejobs", "demo", job_spec(backoffLimit=backoff))
    reconcile(world)
    world.kube.pod("demo-train", "demo-train-a", "Failed", terminated=_failed_end(START, 2, ""))
    world.kube.pod("demo-train", "demo-train-b", "Pending")
    world.kube.set_job_status("demo-train", active=1, failed=failed)
    verdict = reconcile(world)
    assert (verdict.phase, verdict.reason) == (Phase.PENDING, r.RESTARTING)
    assert verdict.message == f"pod demo-train-a failed (exit code 2); {retry}"
    assert world.kube.status("finetunejobs", "demo")["restarts"] == failed


def test_a_completed_job_succeeds_with_its_final_report_and_outputs() -> None:
    world = world_with_dataset()
    world.kube.add("finetunejobs", "demo", job_spec())
    reconcile(world)
    report = '{"phase": "Succeeded", "step": 10, "totalSteps": 10, "loss": 0.5}'
    done = START + timedelta(minutes=9)
    world.kube.pod("demo-train", "demo-train-a", "Succeeded",
                   terminated={"exitCode": 0, "reason": "Completed", "message": report, "finishedAt": rfc3339(done)})  # fmt: skip
    world.kube.set_job_status("demo-train", succeeded=1, completionTime=rfc3339(done),
                              conditions=[{"type": "Complete", "status": "True"}])  # fmt: skip
    verdict = reconcile(world)
    assert (verdict.phase, verdict.reason) == (Phase.SUCCEEDED, r.TRAINING_SUCCEEDED)
    assert world.kube.pod_lists == [False]  # a finished Job's pods are read consistently
    status = world.kube.status("finetunejobs", "demo")
    assert (status["progress"]["step"], status["progress"]["loss"]) == (10, 0.5)
    assert (status["completionTime"], status["outputs"]["adapter"]) == (
        rfc3339(done),
        "s3://bucket/run/adapter",
    )
    assert world.progress.reads == []  # the report, not progress.json


# -- progress, status writes and events -------------------------------------------------------------------
def _running(world: World, **spec: Any) -> None:
    world.kube.add("finetunejobs", "demo", job_spec(**spec))
    reconcile(world)
    world.kube.set_job_status("demo-train", active=1, ready=1)


def test_progress_is_read_when_due_and_copied_into_the_status() -> None:
    world = world_with_dataset()
    world.kube.secrets[("team", "s3")] = {"accessKeyId": "id", "secretAccessKey": "key"}
    _running(world, output={"uri": "s3://bucket/run", "credentialsSecret": "s3"})
    assert world.progress.reads == []  # Pending: nothing to read yet
    world.progress.records["s3://bucket/run"] = ProgressRead(RECORD)
    uid = world.kube.body("finetunejobs", "demo")["metadata"]["uid"]
    assert reconcile(world).phase == Phase.RUNNING
    assert world.progress.reads == [("s3://bucket/run", {"accessKeyId": "id", "secretAccessKey": "key"})]
    status = world.kube.status("finetunejobs", "demo")
    assert (status["progress"]["step"], status["lastCheckpoint"]) == (4, RECORD["lastCheckpoint"])
    assert uid in world.memory.applied_records
    reconcile(world)
    assert len(world.progress.reads) == 1  # not due again within the resync interval
    world.clock.advance(10)
    reconcile(world)
    assert len(world.progress.reads) == 2


def test_a_read_made_by_the_resync_is_used_as_given() -> None:
    world = world_with_dataset()
    _running(world)
    reconcile(world, progress=ProgressRead(RECORD))
    assert world.progress.reads == []
    assert world.kube.status("finetunejobs", "demo")["progress"]["step"] == 4


def test_an_unreadable_progress_record_sets_progress_unavailable_until_it_reads_again() -> None:
    world = world_with_dataset()
    _running(world)
    uid = world.kube.body("finetunejobs", "demo")["metadata"]["uid"]
    reconcile(world, progress=ProgressRead(None, "HTTP 403 AccessDenied"))
    unavailable = condition(world, "demo", r.PROGRESS_UNAVAILABLE)
    assert (unavailable["status"], unavailable["reason"]) == ("True", r.PROGRESS_READ_FAILED)
    assert "HTTP 403 AccessDenied" in unavailable["message"]
    assert world.memory.progress_errors == {uid: "HTTP 403 AccessDenied"}
    reconcile(world, progress=ProgressRead(RECORD))
    assert condition(world, "demo", r.PROGRESS_UNAVAILABLE)["status"] == "False"
    assert world.memory.progress_errors == {}


def test_an_event_is_posted_only_on_a_phase_or_reason_transition() -> None:
    world = world_with_dataset()
    _running(world)
    assert [e[2] for e in world.kube.events] == [r.PODS_PENDING]
    reconcile(world)
    assert [e[2] for e in world.kube.events] == [r.PODS_PENDING, r.TRAINING_RUNNING]
    patches = len(world.kube.patches)
    reconcile(world)  # nothing changed: no write, no event
    assert (len(world.kube.patches), len(world.kube.events)) == (patches, 2)
    reconcile(world, progress=ProgressRead(RECORD))  # a new status in the same phase: written, not told
    assert (len(world.kube.patches), len(world.kube.events)) == (patches + 1, 2)
    assert phase_reason(world) == ("Running", r.TRAINING_RUNNING)


def test_a_transition_told_by_this_process_is_not_told_again_from_a_stale_body() -> None:
    world = world_with_dataset()
    world.kube.add("finetunejobs", "demo", job_spec())
    stale = world.kube.body("finetunejobs", "demo")  # read before the first reconcile wrote its status
    reconcile(world)
    reconcile_finetunejob(world.cluster, stale)
    assert [e[2] for e in world.kube.events] == [r.PODS_PENDING]


def test_an_event_the_api_refuses_does_not_fail_the_reconcile() -> None:
    world = world_with_dataset()
    world.kube.events_fail = True
    world.kube.add("finetunejobs", "demo", job_spec())
    assert reconcile(world).phase == Phase.PENDING
    assert world.kube.status("finetunejobs", "demo")["phase"] == "Pending"


def test_the_job_state_a_status_derives_from_is_remembered() -> None:
    world = world_with_dataset()
    _running(world)
    uid = world.kube.body("finetunejobs", "demo")["metadata"]["uid"]
    reconcile(world)
    assert '"ready": 1' in world.memory.reconciled_jobs[uid]


def test_a_body_the_model_refuses_raises_api_mismatch() -> None:
    world = world_with_dataset()
    world.kube.add("finetunejobs", "demo", {**job_spec(), "unknownField": 1})
    with pytest.raises(ApiMismatch, match="FineTuneJob does not match the operator's API"):
        reconcile(world)
    assert world.kube.created == [] and world.kube.patches == []


def test_memory_forgets_a_deleted_object() -> None:
    memory = Memory(told={"u": ("Running", "")}, expired={"u"}, progress_errors={"u": "x"})
    memory.forget("u")
    assert (memory.told, memory.expired, memory.progress_errors) == ({}, set(), {})


def test_the_operator_setting_gives_gpu_memory_when_nothing_else_does() -> None:
    world = world_with_dataset()
    world.settings = Settings(gpu_memory_gib=2.0)
    big = "tiny://llama?layers=32&hidden=4096&intermediate=14336&heads=32&kv_heads=8&vocab=128256"
    world.kube.add("finetunejobs", "demo", job_spec(model={"source": big}, resources={"gpusPerNode": 1}))
    verdict = reconcile(world)
    assert verdict.reason == r.INSUFFICIENT_GPU_MEMORY
    assert "FINETUNE_GPU_MEMORY_GIB" in verdict.message
