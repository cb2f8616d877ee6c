"""The operator end to end on the real control plane: FineTuneJob lifecycle, status, events, metrics.

The fake kubelet plays the trainer pods; the test writes the progress record the trainer would
write to the real S3 server, and ends pods with the trainer's exit code and termination message.
"""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from finetune_api.manifests import load_documents
from tests.e2e.operator_harness import Harness, OperatorProcess, job_spec, operator_fixture  # noqa: F401 (fixture)
from tests.fixtures.cluster import Cluster, wait_until
from tests.fixtures.s3 import S3Server

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def h(cluster: Cluster, namespace: str, operator_process: OperatorProcess) -> Harness:
    return Harness(cluster, namespace)


def test_happy_path_runs_to_succeeded_with_live_progress(
    h: Harness, s3_server: S3Server, s3_bucket: str
) -> None:
    h.s3_secret(s3_server)
    h.ready_dataset()
    h.create("finetunejobs", "demo", job_spec(s3_bucket, s3_server), "FineTuneJob")

    h.running_pods("demo-train")
    running = h.wait_phase("finetunejobs", "demo", "Running")
    assert running["status"]["jobName"] == "demo-train"
    assert h.condition(running, "Running")["status"] == "True"
    record = {"step": 5, "totalSteps": 10, "epoch": 0.5, "percent": 50.0, "loss": 1.23, "learningRate": 1e-4,
              "tokensPerSecond": 900.0, "etaSeconds": 30, "eta": "30s", "updatedAt": "2030-01-01T00:00:00Z",
              "phase": "Running", "lastCheckpoint": f"s3://{s3_bucket}/runs/demo/checkpoints/checkpoint-5"}  # fmt: skip
    s3_server.client().put_object(
        Bucket=s3_bucket, Key="runs/demo/progress.json", Body=json.dumps(record).encode()
    )

    def progressed() -> dict[str, Any] | None:
        status = h.get("finetunejobs", "demo")["status"]
        return status if (status.get("progress") or {}).get("step") == 5 else None

    status = wait_until(progressed, 30, "status.progress from progress.json", interval_s=0.2)
    assert status["progress"]["loss"] == 1.23 and status["progress"]["eta"] == "30s"
    assert status["lastCheckpoint"].endswith("checkpoint-5")

    summary = {**record, "step": 10, "percent": 100.0, "loss": 0.9, "phase": "Succeeded"}
    h.finish_job_pods("demo-train", 0, message=json.dumps(summary))
    done = h.wait_phase("finetunejobs", "demo", "Succeeded")["status"]
    assert done["progress"]["step"] == 10 and done["progress"]["loss"] == 0.9
    assert done["outputs"]["adapter"] == f"s3://{s3_bucket}/runs/demo/adapter"
    assert done["completionTime"] and done["observedGeneration"] == 1
    assert {c["type"]: c["status"] for c in done["conditions"]}["Succeeded"] == "True"
    reasons = wait_until(
        lambda: {e.reason for e in h.events_for("demo")} >= {"TrainingRunning", "TrainingSucceeded"} or None,
        30, "transition events",
    )  # fmt: skip
    assert reasons
    everything = json.dumps(done) + " ".join(e.message or "" for e in h.events_for("demo"))
    assert s3_server.secret_key not in everything


def test_semantic_errors_fail_with_a_reason_and_no_job(
    h: Harness, s3_server: S3Server, s3_bucket: str
) -> None:
    h.ready_dataset()
    no_output = job_spec(s3_bucket, s3_server)
    del no_output["output"]
    h.create("finetunejobs", "no-output", no_output, "FineTuneJob")
    dpo = job_spec(
        s3_bucket, s3_server, method={"stage": "dpo", "finetuning": "lora", "preference": {"loss": "sigmoid"}}
    )
    h.create("finetunejobs", "dpo-on-sft", dpo, "FineTuneJob")

    failed = h.wait_phase("finetunejobs", "no-output", "Failed")
    assert h.condition(failed, "Failed")["reason"] == "InvalidSpec"
    assert "spec.output" in h.condition(failed, "Failed")["message"]
    mismatch = h.wait_phase("finetunejobs", "dpo-on-sft", "Failed")
    accepted = h.condition(mismatch, "Accepted")
    assert (accepted["status"], accepted["reason"]) == ("False", "DatasetInvalid")
    assert "spec.datasets[0].ref" in h.condition(mismatch, "Failed")["message"]
    assert h.job("no-output-train") is None and h.job("dpo-on-sft-train") is None


# The invalid examples the API server accepts because CEL cannot say them: finetune_api.rules.
SPEC_RULE_EXAMPLES = [
    p for p in sorted((ROOT / "examples" / "invalid").glob("*.yaml"))
    if "# apiserver: accepts (a spec rule" in p.read_text()
]  # fmt: skip


def test_every_spec_rule_has_an_invalid_example() -> None:
    from finetune_api.rules import EXPORT_RULES, JOB_RULES

    assert len(SPEC_RULE_EXAMPLES) >= len(JOB_RULES) + len(EXPORT_RULES)


@pytest.mark.parametrize("path", SPEC_RULE_EXAMPLES, ids=lambda p: p.name)
def test_a_spec_rule_fails_the_object_before_any_job(h: Harness, path: Path) -> None:
    """What `finetune validate` refuses with the same words (tests/unit/test_validation.py), as applied."""
    expected = re.search(r"^# expect: (.+)$", path.read_text(), re.MULTILINE)
    assert expected is not None
    doc = next(d.body for d in load_documents([path]) if d.body["kind"] in ("FineTuneJob", "Export"))
    plural, name = f"{doc['kind'].lower()}s", doc["metadata"]["name"]
    h.create(plural, name, doc["spec"], doc["kind"])
    failed = h.wait_phase(plural, name, "Failed")
    assert h.condition(failed, "Failed")["reason"] == "InvalidSpec"
    assert expected.group(1).strip() in h.condition(failed, "Failed")["message"]
    child = "train" if doc["kind"] == "FineTuneJob" else "export"
    assert h.job(f"{name}-{child}") is None


def test_cluster_rules_refuse_what_validate_cluster_refuses_before_any_job(
    h: Harness, s3_server: S3Server, s3_bucket: str
) -> None:
    # The very example `finetune validate --cluster` refuses (tests/unit/test_cli.py), as applied.
    example = ROOT / "examples" / "invalid" / "cluster-output-file.yaml"
    expected = re.search(r"^# expect: (.+)$", example.read_text(), re.MULTILINE)
    assert expected is not None
    job = next(d.body for d in load_documents([example]) if d.body["kind"] == "FineTuneJob")
    h.ready_dataset(job["spec"]["datasets"][0]["ref"])
    h.create("finetunejobs", job["metadata"]["name"], job["spec"], "FineTuneJob")
    h.create("datasets", "laptop-data", {"source": "file://examples/data/alpaca.jsonl"}, "Dataset")
    h.create(
        "finetunejobs",
        "local-data",
        job_spec(s3_bucket, s3_server, datasets=[{"ref": "laptop-data"}]),
        "FineTuneJob",
    )

    failed = h.wait_phase("finetunejobs", job["metadata"]["name"], "Failed")
    assert h.condition(failed, "Failed")["reason"] == "InvalidSpec"
    assert expected.group(1).strip() in h.condition(failed, "Failed")["message"]
    laptop = h.wait_phase("datasets", "laptop-data", "Invalid")
    assert h.condition(laptop, "Validated")["reason"] == "InvalidSpec"
    assert (
        "spec.source: 'file://examples/data/alpaca.jsonl': file:// is for local runs"
        in (h.condition(laptop, "Validated")["message"])
    )
    assert h.job("laptop-data-validate-g1") is None  # no pod is started for a source it cannot read
    local = h.wait_phase("finetunejobs", "local-data", "Failed")
    assert h.condition(local, "Failed")["reason"] == "InvalidSpec"
    assert (
        "spec.datasets[0].ref: Dataset 'laptop-data' reads 'file://"
        in h.condition(local, "Failed")["message"]
    )
    assert h.job(f"{job['metadata']['name']}-train") is None and h.job("local-data-train") is None


def test_invalid_dataset_reports_rows_and_fails_its_jobs(
    h: Harness, s3_server: S3Server, s3_bucket: str
) -> None:
    h.create("datasets", "chats", {"source": "s3://data/bad.jsonl"}, "Dataset")
    h.create("finetunejobs", "waits", job_spec(s3_bucket, s3_server), "FineTuneJob")
    waiting = h.wait_phase("finetunejobs", "waits", "Preparing")
    assert h.condition(waiting, "Ready")["reason"] == "DatasetNotReady"

    report = {"phase": "Invalid", "samples": 1, "invalidSamples": 2,
              "errors": [{"row": 1, "field": "output", "message": "missing column output"}]}  # fmt: skip
    h.finish_job_pods("chats-validate-g1", 0, message=json.dumps(report))

    ds = h.wait_phase("datasets", "chats", "Invalid")["status"]
    assert ds["errors"][0] == {"row": 1, "field": "output", "message": "missing column output"}
    assert ds["invalidSamples"] == 2
    job = h.wait_phase("finetunejobs", "waits", "Failed")
    assert h.condition(job, "Failed")["reason"] == "DatasetInvalid"
    assert h.job("waits-train") is None


def test_oomkilled_trainer_fails_at_once_with_out_of_memory(
    h: Harness, s3_server: S3Server, s3_bucket: str
) -> None:
    # Retries left, but a retry would run the same batches into the same memory limit.
    h.submit_job("oom", s3_server, s3_bucket, backoffLimit=2)
    h.running_pods("oom-train")

    h.finish_job_pods("oom-train", 137, reason="OOMKilled")

    failed = h.wait_phase("finetunejobs", "oom", "Failed")
    assert h.condition(failed, "Failed")["reason"] == "OutOfMemory"
    assert "8Gi" in h.condition(failed, "Failed")["message"]
    job = h.job("oom-train")
    assert job is not None and job.status.failed == 1
    assert [c.reason for c in job.status.conditions if c.type == "Failed"] == ["PodFailurePolicy"]
    assert len(h.pods("oom-train")) == 1  # no retry pod


def test_retry_after_a_pod_failure_counts_a_restart(h: Harness, s3_server: S3Server, s3_bucket: str) -> None:
    h.s3_secret(s3_server)
    h.ready_dataset()
    h.create("finetunejobs", "retry", job_spec(s3_bucket, s3_server, backoffLimit=1), "FineTuneJob")
    (first,) = h.running_pods("retry-train")

    h.finish_job_pods("retry-train", 1, message="CUDA error: an illegal memory access")
    wait_until(
        lambda: [p for p in h.running_pods("retry-train") if p.metadata.name != first.metadata.name],
        60, "a second trainer pod",
    )  # fmt: skip
    wait_until(lambda: h.get("finetunejobs", "retry")["status"].get("restarts") == 1, 30, "restarts == 1")
    h.finish_job_pods("retry-train", 0, message=json.dumps({"step": 10, "phase": "Succeeded"}))

    done = h.wait_phase("finetunejobs", "retry", "Succeeded")
    assert done["status"]["restarts"] == 1


def test_an_evicted_or_deleted_trainer_pod_is_replaced_not_failed(
    h: Harness, s3_server: S3Server, s3_bucket: str
) -> None:
    h.submit_job("moved", s3_server, s3_bucket, backoffLimit=1)
    seen: set[str] = set()

    def replaced() -> client.V1Pod:
        def fresh() -> client.V1Pod | None:
            return next((p for p in h.running_pods("moved-train") if p.metadata.name not in seen), None)

        pod = wait_until(fresh, 60, "a new trainer pod")
        seen.add(pod.metadata.name)
        return pod

    # Eviction (a drained node, node pressure): the pod gets DisruptionTarget and costs no retry.
    first = replaced()
    h.core.create_namespaced_pod_eviction(
        first.metadata.name, h.ns, {"metadata": {"name": first.metadata.name, "namespace": h.ns}}
    )
    replaced()
    job = h.job("moved-train")
    assert job is not None and not job.status.failed
    # A deleted pod (kubectl delete pod): the trainer exits 143 on SIGTERM, a failure that is retried,
    # not the 137 of a kill at the memory limit that would fail the job at once.
    second = next(p for p in h.running_pods("moved-train") if p.metadata.name in seen)
    h.core.delete_namespaced_pod(second.metadata.name, h.ns)
    replaced()
    wait_until(lambda: (h.job("moved-train").status.failed or 0) == 1 or None, 30, "one failure counted")
    status = h.wait_phase("finetunejobs", "moved", "Running")["status"]
    assert status.get("restarts") == 1


def test_suspend_deletes_pods_and_resume_brings_them_back(
    h: Harness, s3_server: S3Server, s3_bucket: str
) -> None:
    h.s3_secret(s3_server)
    h.ready_dataset()
    h.create("finetunejobs", "pausable", job_spec(s3_bucket, s3_server), "FineTuneJob")
    h.running_pods("pausable-train")
    h.wait_phase("finetunejobs", "pausable", "Running")

    h.patch_spec("finetunejobs", "pausable", {"suspend": True})
    suspended = h.wait_phase("finetunejobs", "pausable", "Suspended")
    assert h.condition(suspended, "Suspended")["status"] == "True"
    assert h.batch.read_namespaced_job("pausable-train", h.ns).spec.suspend is True
    wait_until(lambda: not h.pods("pausable-train"), 60, "pods deleted on suspend")

    h.patch_spec("finetunejobs", "pausable", {"suspend": False})
    h.running_pods("pausable-train")
    resumed = h.wait_phase("finetunejobs", "pausable", "Running")
    assert h.condition(resumed, "Suspended")["status"] == "False"


def test_deleting_a_running_job_stops_its_pods(h: Harness, s3_server: S3Server, s3_bucket: str) -> None:
    h.s3_secret(s3_server)
    h.ready_dataset()
    h.create("finetunejobs", "doomed", job_spec(s3_bucket, s3_server), "FineTuneJob")
    h.running_pods("doomed-train")

    h.custom.delete_namespaced_custom_object("finetune.dev", "v1alpha1", h.ns, "finetunejobs", "doomed")

    wait_until(lambda: h.job("doomed-train") is None, 60, "Job garbage-collected")
    wait_until(lambda: not h.pods("doomed-train"), 60, "pods gone")
    with pytest.raises(ApiException) as missing:
        h.get("finetunejobs", "doomed")
    assert missing.value.status == 404


def test_ttl_deletes_children_and_keeps_the_status(h: Harness, s3_server: S3Server, s3_bucket: str) -> None:
    h.s3_secret(s3_server)
    h.ready_dataset()
    h.create(
        "finetunejobs", "short", job_spec(s3_bucket, s3_server, ttlSecondsAfterFinished=0), "FineTuneJob"
    )
    h.finish_job_pods("short-train", 0, message=json.dumps({"step": 10, "phase": "Succeeded"}))

    h.wait_phase("finetunejobs", "short", "Succeeded")
    wait_until(lambda: h.job("short-train") is None, 60, "Job deleted after the TTL")
    assert h.get("finetunejobs", "short")["status"]["phase"] == "Succeeded"


def test_preflight_refuses_a_job_that_cannot_fit(h: Harness, s3_server: S3Server, s3_bucket: str) -> None:
    h.ready_dataset()
    # The example `finetune validate` refuses (tests/unit/test_validation.py), as applied.
    example = next(d.body for d in load_documents([ROOT / "examples" / "invalid" / "full-8b-on-24gib.yaml"]))
    big = job_spec(s3_bucket, s3_server, **{k: example["spec"][k] for k in ("model", "method", "resources")})
    h.create("finetunejobs", "too-big", big, "FineTuneJob")

    failed = h.wait_phase("finetunejobs", "too-big", "Failed")
    assert h.condition(failed, "Failed")["reason"] == "InsufficientGPUMemory"
    assert "24 GiB" in h.condition(failed, "Failed")["message"]
    estimate = failed["status"]["gpuMemoryEstimate"]
    assert estimate.endswith("Gi") and float(estimate.removesuffix("Gi")) > 24, estimate
    assert h.job("too-big-train") is None


def test_metrics_and_liveness(h: Harness, operator_process: OperatorProcess) -> None:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{operator_process.health_port}/healthz", timeout=5
    ) as resp:
        assert resp.status == 200
    h.create("datasets", "chats", {"source": "s3://data/x.jsonl"}, "Dataset")
    h.wait_phase("datasets", "chats", "Validating")
    with urllib.request.urlopen(
        f"http://127.0.0.1:{operator_process.metrics_port}/metrics", timeout=5
    ) as resp:
        text = resp.read().decode()
    assert 'finetune_operator_reconcile_duration_seconds_count{kind="Dataset"}' in text
    assert 'finetune_operator_api_calls_total{code="201",resource="jobs",verb="create"}' in text
    assert 'finetune_operator_objects{kind="Dataset",phase="Validating"}' in text
