"""The operator end to end: Job shapes (multi-node, Kueue), Export chaining, and a restart mid-run."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.operator_harness import Harness, OperatorProcess, operator_fixture  # noqa: F401 (fixture)
from tests.e2e.test_operator_finetunejob import job_spec
from tests.fixtures.cluster import Cluster, wait_until
from tests.fixtures.s3 import S3Server

pytestmark = pytest.mark.e2e


@pytest.fixture
def h(cluster: Cluster, namespace: str, operator_process: OperatorProcess) -> Harness:
    return Harness(cluster, namespace)


def test_multi_node_job_is_indexed_with_a_headless_service(
    h: Harness, s3_server: S3Server, s3_bucket: str
) -> None:
    h.s3_secret(s3_server)
    h.ready_dataset()
    spec = job_spec(
        s3_bucket, s3_server, resources={"nodes": 2, "gpusPerNode": 4}, distributed={"deepspeed": "zero2"}
    )
    h.create("finetunejobs", "wide", spec, "FineTuneJob")

    pods = h.running_pods("wide-train", count=2)
    job = h.batch.read_namespaced_job("wide-train", h.ns)
    assert job.spec.completion_mode == "Indexed" and job.spec.completions == 2
    service = h.core.read_namespaced_service("wide-train", h.ns)
    assert service.spec.cluster_ip == "None"
    assert {p.spec.hostname for p in pods} == {"wide-train-0", "wide-train-1"}
    assert {p.spec.subdomain for p in pods} == {"wide-train"}
    command = pods[0].spec.containers[0].command
    assert command[:3] == ["torchrun", "--nnodes", "2"] and "$(JOB_COMPLETION_INDEX)" in command
    assert pods[0].spec.containers[0].resources.limits["nvidia.com/gpu"] == "4"
    h.wait_phase("finetunejobs", "wide", "Running")


def test_a_failed_node_restarts_the_whole_group(h: Harness, s3_server: S3Server, s3_bucket: str) -> None:
    h.submit_job("group", s3_server, s3_bucket, resources={"nodes": 2, "gpusPerNode": 1}, backoffLimit=2)
    first = {p.metadata.annotations["batch.kubernetes.io/job-completion-index"]: p.metadata.name
             for p in h.running_pods("group-train", count=2)}  # fmt: skip

    # Node 1 fails after training a while (the peers to restart are the pods created before the
    # failure, to the second: a failure within a pod's first second restarts only that pod).
    h.finish_pod(first["1"], 1, message="NCCL error: unhandled system error", run_seconds=2)

    def new_group() -> list[Any] | None:
        running = [
            p for p in h.pods("group-train")
            if p.status.phase == "Running" and not p.metadata.deletion_timestamp and p.metadata.name not in first.values()
        ]  # fmt: skip
        return running if len(running) == 2 else None

    # Node 0 did not fail, but its rendezvous is gone: it is evicted and both indexes start afresh.
    fresh = wait_until(new_group, 60, "both indexes replaced")
    assert {p.metadata.annotations["batch.kubernetes.io/job-completion-index"] for p in fresh} == {"0", "1"}
    assert all(p.metadata.name != first["0"] for p in h.pods("group-train") if p.status.phase == "Running")
    job = h.batch.read_namespaced_job("group-train", h.ns)
    assert job.status.failed == 1  # the real failure; the evicted peer cost no retry
    status = h.wait_phase("finetunejobs", "group", "Running")["status"]
    assert status.get("restarts") == 1


def test_kueue_queue_label_created_suspended_until_admitted(
    h: Harness, s3_server: S3Server, s3_bucket: str
) -> None:
    h.s3_secret(s3_server)
    h.ready_dataset()
    h.create("finetunejobs", "queued", job_spec(s3_bucket, s3_server, queueName="gpu-queue"), "FineTuneJob")

    pending = h.wait_phase("finetunejobs", "queued", "Pending")
    assert h.condition(pending, "Running")["reason"] == "WaitingForAdmission"
    job = h.batch.read_namespaced_job("queued-train", h.ns)
    assert job.metadata.labels["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job.spec.suspend is True and not h.pods("queued-train")

    # What Kueue does on admission; the operator must not suspend it again.
    h.batch.patch_namespaced_job("queued-train", h.ns, {"spec": {"suspend": False}})
    h.running_pods("queued-train")
    h.wait_phase("finetunejobs", "queued", "Running")
    assert h.batch.read_namespaced_job("queued-train", h.ns).spec.suspend is False


def test_export_waits_for_its_job_then_runs(h: Harness, s3_server: S3Server, s3_bucket: str) -> None:
    h.s3_secret(s3_server)
    h.ready_dataset()
    export: dict[str, Any] = {"fineTuneJobRef": "base", "merge": True,
                              "output": {"uri": f"s3://{s3_bucket}/merged", "credentialsSecret": "s3-creds"}}  # fmt: skip
    h.create("exports", "merged", export, "Export")
    waiting = h.wait_phase("exports", "merged", "Waiting")
    assert h.condition(waiting, "Running")["reason"] == "FineTuneJobNotFound"

    h.create("finetunejobs", "base", job_spec(s3_bucket, s3_server), "FineTuneJob")
    h.wait_phase("exports", "merged", "Waiting")
    assert h.job("merged-export") is None
    h.finish_job_pods("base-train", 0, message=json.dumps({"step": 10, "phase": "Succeeded"}))
    h.wait_phase("finetunejobs", "base", "Succeeded")

    report = {"uri": f"s3://{s3_bucket}/merged", "sizeBytes": 12,
              "files": [{"path": "model.safetensors", "size": 12, "sha256": "0" * 64}]}  # fmt: skip
    h.finish_job_pods("merged-export", 0, message=json.dumps(report))
    done = h.wait_phase("exports", "merged", "Succeeded")["status"]
    assert done["outputs"]["files"][0]["path"] == "model.safetensors"
    assert done["outputs"]["manifest"] == f"s3://{s3_bucket}/merged/manifest.json"
    cm = h.core.read_namespaced_config_map("merged-export", h.ns)
    assert "kind: FineTuneJob" in cm.data["export.yaml"]


def test_an_export_to_a_workstation_path_fails_before_any_job(h: Harness) -> None:
    # The rule `finetune validate --cluster` applies (finetune_api.cluster): a pod cannot write file://.
    h.create("exports", "local", {"fineTuneJobRef": "base", "output": {"uri": "file://out"}}, "Export")
    failed = h.wait_phase("exports", "local", "Failed")
    assert h.condition(failed, "Failed")["reason"] == "InvalidSpec"
    assert (
        "spec.output.uri: 'file://out' is local to a workstation" in h.condition(failed, "Failed")["message"]
    )
    assert h.job("local-export") is None


def test_operator_killed_then_restarted_makes_no_duplicates(
    h: Harness,
    operator_process: OperatorProcess,
    s3_server: S3Server,
    s3_bucket: str,
) -> None:
    h.s3_secret(s3_server)
    h.ready_dataset()
    h.create("finetunejobs", "first", job_spec(s3_bucket, s3_server), "FineTuneJob")
    h.running_pods("first-train")
    operator_process.kill()
    # While it is down: a job whose ConfigMap was created just before the crash (an orphan by name).
    h.create("finetunejobs", "second", job_spec(s3_bucket, s3_server), "FineTuneJob")
    h.core.create_namespaced_config_map(
        h.ns, {"metadata": {"name": "second-spec"}, "data": {"job.yaml": "stale"}}
    )

    operator_process.start()

    h.wait_phase("finetunejobs", "first", "Running")
    h.running_pods("second-train")
    h.wait_phase("finetunejobs", "second", "Running")
    jobs = h.batch.list_namespaced_job(h.ns, label_selector="app.kubernetes.io/component=trainer").items
    assert sorted(j.metadata.name for j in jobs) == ["first-train", "second-train"]
    assert len(h.pods("first-train")) == 1
    adopted = h.core.read_namespaced_config_map("second-spec", h.ns)
    second_uid = h.get("finetunejobs", "second")["metadata"]["uid"]
    assert [o.uid for o in adopted.metadata.owner_references] == [second_uid]
    assert "kind: FineTuneJob" in adopted.data["job.yaml"], (
        "an adopted ConfigMap converges to the desired content"
    )
    wait_until(lambda: h.get("finetunejobs", "first")["status"]["phase"] == "Running", 10, "status kept")
