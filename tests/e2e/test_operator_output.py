"""What people read on the real control plane: `kubectl get` columns, the ProgressUnavailable
condition, the operator's log (waiting is no error, lines name the object, probes are not logged)
and the phase gauge after a deletion."""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

import pytest

from tests.e2e.operator_harness import Harness, OperatorProcess, job_spec, operator_fixture  # noqa: F401 (fixture)
from tests.fixtures.cluster import Cluster, wait_until
from tests.fixtures.s3 import S3Server

pytestmark = pytest.mark.e2e


@pytest.fixture
def h(cluster: Cluster, namespace: str, operator_process: OperatorProcess) -> Harness:
    return Harness(cluster, namespace)


def _metrics(proc: OperatorProcess) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{proc.metrics_port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def _sample(proc: OperatorProcess, series: str) -> float:
    found = re.search(rf"^{re.escape(series)} (\S+)$", _metrics(proc), re.M)
    return float(found.group(1)) if found else 0.0


def _columns(cluster: Cluster, h: Harness, plural: str, name: str) -> dict[str, str]:
    """`kubectl get PLURAL NAME` as header → cell (the server's Table, printed by kubectl)."""
    out = cluster.kubectl("get", plural, name, "-n", h.ns).stdout.splitlines()
    spans = [m.span() for m in re.finditer(r"\S+(?: \S+)*", out[0])]
    cells = [
        out[1][a : (spans[i + 1][0] if i + 1 < len(spans) else None)].strip()
        for i, (a, _) in enumerate(spans)
    ]
    return dict(zip((out[0][a:b] for a, b in spans), cells, strict=True))


def _put_record(s3: S3Server, bucket: str, run: str, **record: Any) -> None:
    body = json.dumps({"phase": "Running", **record}).encode()
    s3.client().put_object(Bucket=bucket, Key=f"runs/{run}/progress.json", Body=body)


def test_kubectl_get_prints_percent_loss_and_reason(
    h: Harness, cluster: Cluster, s3_server: S3Server, s3_bucket: str
) -> None:
    h.s3_secret(s3_server)
    h.create("finetunejobs", "waits", job_spec(s3_bucket, s3_server, run="waits"), "FineTuneJob")
    h.wait_phase("finetunejobs", "waits", "Preparing")
    assert _columns(cluster, h, "ftj", "waits")["REASON"] == "DatasetNotReady"

    h.ready_dataset()
    h.create("finetunejobs", "demo", job_spec(s3_bucket, s3_server), "FineTuneJob")
    h.running_pods("demo-train")
    h.wait_phase("finetunejobs", "demo", "Running")
    _put_record(
        s3_server, s3_bucket, "demo", step=427, totalSteps=1000, percent=42.7, loss=1.23456789, eta="5m"
    )
    wait_until(lambda: (h.get("finetunejobs", "demo")["status"].get("progress") or {}).get("step") == 427,
               30, "progress in status", interval_s=0.2)  # fmt: skip
    row = _columns(cluster, h, "ftj", "demo")
    assert (row["PHASE"], row["PROGRESS"], row["LOSS"], row["ETA"]) == ("Running", "42%", "1.235", "5m")
    assert row["REASON"] in ("", "<none>")

    h.finish_job_pods("demo-train", 1, reason="OOMKilled", message="killed")
    h.wait_phase("finetunejobs", "demo", "Failed")
    assert _columns(cluster, h, "ftj", "demo")["REASON"] == "OutOfMemory"
    # `kubectl describe` lists one event per transition, in the order they happened.
    reasons = wait_until(lambda: _described_events(cluster, h, "demo")[-1:] == ["OutOfMemory"] and
                         _described_events(cluster, h, "demo"), 30, "the OutOfMemory event")  # fmt: skip
    order = ["JobCreated", "PodsPending", "TrainingRunning", "Restarting", "OutOfMemory"]
    assert set(reasons) <= set(order) and "TrainingRunning" in reasons, reasons
    assert reasons == sorted(set(reasons), key=order.index), reasons  # each once, in order


def _described_events(cluster: Cluster, h: Harness, name: str) -> list[str]:
    """The Reason column of the Events in `kubectl describe ftj NAME`, top to bottom."""
    text = cluster.kubectl("describe", "ftj", name, "-n", h.ns).stdout
    rows = text.split("\nEvents:", 1)[-1].splitlines()[3:]
    return [row.split()[1] for row in rows if row.strip()]


def test_a_progress_read_failure_is_a_condition_until_reads_work(
    h: Harness, s3_server: S3Server, s3_bucket: str, operator_process: OperatorProcess
) -> None:
    h.ready_dataset()
    bad = {"accessKeyId": s3_server.access_key, "secretAccessKey": "not-the-secret-key"}
    h.core.create_namespaced_secret(h.ns, {"metadata": {"name": "s3-creds"}, "stringData": bad})
    h.create("finetunejobs", "blind", job_spec(s3_bucket, s3_server, run="blind"), "FineTuneJob")
    h.running_pods("blind-train")
    _put_record(s3_server, s3_bucket, "blind", step=3, totalSteps=10, percent=30.0, loss=2.0)

    def condition(status: str) -> dict[str, Any] | None:
        obj = h.get("finetunejobs", "blind")
        found = [
            c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "ProgressUnavailable"
        ]
        return found[0] if found and found[0]["status"] == status else None

    failing = wait_until(lambda: condition("True"), 30, "ProgressUnavailable True", interval_s=0.2)
    assert failing["reason"] == "ProgressReadFailed"
    assert failing["message"] == (
        f"cannot read s3://{s3_bucket}/runs/blind/progress.json: HTTP 403 SignatureDoesNotMatch"
    )

    h.core.patch_namespaced_secret(
        "s3-creds", h.ns, {"stringData": {"secretAccessKey": s3_server.secret_key}}
    )
    cleared = wait_until(lambda: condition("False"), 30, "ProgressUnavailable False", interval_s=0.2)
    assert cleared["reason"] == "ProgressReadable"
    assert h.get("finetunejobs", "blind")["status"]["progress"]["step"] == 3
    everything = json.dumps(h.get("finetunejobs", "blind")) + operator_process.log_path.read_text()
    assert "not-the-secret-key" not in everything and s3_server.secret_key not in everything


def test_waiting_is_logged_once_as_info_and_probes_are_not_logged(
    h: Harness, s3_server: S3Server, s3_bucket: str, operator_process: OperatorProcess
) -> None:
    start = len(operator_process.log_path.read_text())
    for _ in range(3):
        with urllib.request.urlopen(f"http://127.0.0.1:{operator_process.health_port}/healthz", timeout=5):
            pass
    h.s3_secret(s3_server)
    reconciles = 'finetune_operator_reconcile_duration_seconds_count{kind="FineTuneJob"}'
    before = _sample(operator_process, reconciles)
    h.create("finetunejobs", "patient", job_spec(s3_bucket, s3_server, run="patient"), "FineTuneJob")
    h.wait_phase("finetunejobs", "patient", "Preparing")
    # Several resyncs (1 s each in the harness) look at the waiting job before the Dataset comes.
    wait_until(lambda: _sample(operator_process, reconciles) >= before + 4, 30, "resyncs of a waiting job")
    h.ready_dataset()
    h.running_pods("patient-train")

    log = operator_process.log_path.read_text()[start:]
    # kopf's own lines (e.g. a handler that "failed temporarily") start with [namespace/name].
    errors = [
        line for line in log.splitlines() if " ERROR " in line and (h.ns in line or "temporarily" in line)
    ]
    assert not errors and "Traceback" not in log, "\n".join(errors)
    ours = [line for line in log.splitlines() if f"{h.ns}/patient" in line]
    waiting = [line for line in ours if "Preparing:" in line]
    assert len(waiting) == 1 and " INFO " in waiting[0], "\n".join(ours)
    assert f"FineTuneJob {h.ns}/patient: Preparing: Dataset 'chats'" in waiting[0]
    events = [(e.type, e.reason) for e in h.events_for("patient")]
    assert events.count(("Normal", "DatasetNotReady")) == 1 and not [e for e in events if e[0] == "Error"]
    assert "/healthz" not in log


def test_the_phase_gauge_drops_a_deleted_object(h: Harness, operator_process: OperatorProcess) -> None:
    series = 'finetune_operator_objects{kind="Dataset",phase="Validating"}'
    before = _sample(operator_process, series)
    h.create("datasets", "short-lived", {"source": "s3://data/x.jsonl"}, "Dataset")
    h.wait_phase("datasets", "short-lived", "Validating")
    wait_until(lambda: _sample(operator_process, series) == before + 1, 30, "the Dataset counted")
    h.custom.delete_namespaced_custom_object("finetune.dev", "v1alpha1", h.ns, "datasets", "short-lived")
    wait_until(
        lambda: _sample(operator_process, series) == before, 30, "the deleted Dataset no longer counted"
    )
