"""What `kubectl get` and `kubectl describe` show: conditions with their own messages, status.reason,
the formatted progress, and the ProgressUnavailable condition (pure status builders)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from finetune_api.dataset import DatasetPhase
from finetune_api.export import ExportPhase
from finetune_api.finetunejob import (
    FineTuneJobStatus,
    Phase,
    ProgressDisplay,
    TrainingProgress,
    format_loss,
)
from finetune_api.resources import Dataset, Export
from finetune_operator.status import reasons as r
from finetune_operator.status.conditions import Verdict
from finetune_operator.status.finetunejob import ProgressRead, build_job_status, job_verdict
from finetune_operator.status.observe import JobObservation, observe_job
from finetune_operator.status.tasks import dataset_status, export_gate, export_status
from tests.unit.test_operator_status import NOW, k8s_job, pod, spec

RUNNING = Verdict(Phase.RUNNING, r.TRAINING_RUNNING, "4 of 4 pod(s) running")
VERDICTS = [
    Verdict(Phase.PREPARING, r.DATASET_NOT_READY, "Dataset 'chats' is Validating"),
    Verdict(Phase.PENDING, r.PODS_PENDING, "waiting for the training pods to start"),
    RUNNING,
    Verdict(
        Phase.SUCCEEDED, r.TRAINING_SUCCEEDED, "training finished; the adapter is in the output location"
    ),
    Verdict(Phase.FAILED, r.OUT_OF_MEMORY, "pod demo-train-0 was OOMKilled (memory 8Gi)"),
    Verdict(Phase.FAILED, r.INVALID_SPEC, "spec.output: required on a cluster"),
    Verdict(Phase.FAILED, r.DATASET_INVALID, "spec.datasets[0].ref: dpo needs a ranking Dataset"),
    Verdict(Phase.SUSPENDED, r.SUSPENDED_BY_USER, "suspended: pods deleted"),
]


def _conditions(status: Any) -> dict[str, tuple[str, str, str]]:
    return {c.type: (str(c.status), c.reason, c.message) for c in status.conditions}


@pytest.mark.parametrize("verdict", VERDICTS, ids=lambda v: v.reason)
def test_each_condition_says_what_it_means(verdict: Verdict) -> None:
    status = build_job_status(spec(), None, verdict, generation=1, now=NOW)
    messages = Counter(message for _, _, message in _conditions(status).values())
    # The verdict's message is told where it belongs; no message is copied onto the six conditions.
    assert max(messages.values()) <= 2, messages
    assert messages[verdict.message] in (1, 2)


def test_condition_messages_of_a_running_job() -> None:
    obs, s = JobObservation("demo-train", active=4, running_pods=4), spec(resources={"nodes": 4})
    assert job_verdict(s, obs) == RUNNING
    status = build_job_status(s, None, RUNNING, generation=1, now=NOW, obs=obs)
    conditions = _conditions(status)
    assert conditions[r.RUNNING] == ("True", r.TRAINING_RUNNING, "4 of 4 pod(s) running")
    assert conditions[r.SUCCEEDED] == ("False", r.TRAINING_RUNNING, "training in progress")
    assert conditions[r.ACCEPTED] == ("True", r.SPEC_ACCEPTED, "spec validated")
    assert conditions[r.READY] == ("True", r.DATASETS_READY, "every Dataset is Ready")
    assert conditions[r.FAILED][::2] == ("False", "no failure")
    assert conditions[r.SUSPENDED][::2] == ("False", "spec.suspend is false")


def test_a_failure_is_told_by_failed_and_a_refusal_by_accepted_too() -> None:
    oom, invalid = VERDICTS[4], VERDICTS[5]
    failed = _conditions(build_job_status(spec(), None, oom, generation=1, now=NOW))
    assert failed[r.FAILED] == ("True", r.OUT_OF_MEMORY, oom.message)
    assert failed[r.RUNNING][::2] == ("False", "training stopped: the job failed")
    assert failed[r.ACCEPTED][0] == "True"
    refused = _conditions(build_job_status(spec(), None, invalid, generation=1, now=NOW))
    assert refused[r.ACCEPTED] == ("False", r.INVALID_SPEC, invalid.message)
    assert refused[r.READY][::2] == ("False", "not checked: the spec was refused")
    unsuited = _conditions(build_job_status(spec(), None, VERDICTS[6], generation=1, now=NOW))
    assert unsuited[r.ACCEPTED][:2] == ("False", r.DATASET_INVALID)
    assert unsuited[r.READY] == ("False", r.DATASET_INVALID, VERDICTS[6].message)


@pytest.mark.parametrize(
    ("verdict", "reason"),
    [(VERDICTS[0], r.DATASET_NOT_READY), (VERDICTS[1], r.PODS_PENDING), (RUNNING, None),
     (VERDICTS[3], None), (VERDICTS[4], r.OUT_OF_MEMORY), (VERDICTS[7], r.SUSPENDED_BY_USER)],
)  # fmt: skip
def test_status_reason_is_set_while_waiting_or_failed(verdict: Verdict, reason: str | None) -> None:
    status = build_job_status(spec(), None, verdict, generation=1, now=NOW)
    assert status.reason == reason
    assert ("reason" in status.to_wire()) is (reason is not None)


def test_progress_display_is_what_the_printer_columns_print() -> None:
    s, running = spec(), observe_job(k8s_job(active=1), [pod("Running")])
    record = {"step": 427, "totalSteps": 1000, "percent": 42.7, "loss": 1.23456789, "phase": "Running"}
    status = build_job_status(
        s, None, job_verdict(s, running), generation=1, now=NOW, obs=running, record=record
    )
    assert status.to_wire()["progress"]["display"] == {"percent": "42%", "loss": "1.235"}
    # Without a percent it comes from the steps; 99.9% is not yet 100%.
    shown = TrainingProgress(step=999, total_steps=1000, loss=0.000123456).with_display().display
    assert shown is not None and (shown.percent, shown.loss) == ("99%", "0.0001235")
    assert TrainingProgress(step=3).with_display().display == ProgressDisplay()  # nothing to show yet
    assert [format_loss(v) for v in (2.0, 12.34567, 1234.5)] == ["2", "12.35", "1234"]


def test_progress_unavailable_is_set_by_a_failed_read_and_cleared_by_a_good_one() -> None:
    s, running = spec(), observe_job(k8s_job(active=1), [pod("Running")])
    verdict = job_verdict(s, running)

    def status(old: FineTuneJobStatus | None, read: ProgressRead | None) -> FineTuneJobStatus:
        return build_job_status(s, old, verdict, generation=1, now=NOW, obs=running, progress_read=read)

    fine = status(None, ProgressRead({"step": 1}))
    assert r.PROGRESS_UNAVAILABLE not in _conditions(fine)  # never failed: no condition at all
    failing = status(fine, ProgressRead(None, "HTTP 403 AccessDenied"))
    assert _conditions(failing)[r.PROGRESS_UNAVAILABLE] == (
        "True", r.PROGRESS_READ_FAILED, "cannot read s3://bucket/run/progress.json: HTTP 403 AccessDenied",
    )  # fmt: skip
    assert _conditions(status(failing, None))[r.PROGRESS_UNAVAILABLE][0] == "True"  # no read: kept
    cleared = status(failing, ProgressRead(None))  # absent (not written yet) is a read that works
    assert _conditions(cleared)[r.PROGRESS_UNAVAILABLE] == (
        "False", r.PROGRESS_READABLE, "s3://bucket/run/progress.json is readable again",
    )  # fmt: skip


def _export(**spec: Any) -> Export:
    base = {"fineTuneJobRef": "demo", "output": {"uri": "s3://bucket/export"}, **spec}
    return Export.model_validate({"metadata": {"name": "x", "namespace": "ns"}, "spec": base})


def test_export_conditions_reason_and_calibration_wait() -> None:
    export = _export(quantization={"method": "gptq", "bits": 4, "calibrationDataset": "calib"})
    waiting = export_gate(export, None)
    assert waiting == Verdict(
        ExportPhase.WAITING, r.DATASET_NOT_READY, "calibration Dataset 'calib' not found"
    )
    status = export_status(export, None, waiting, None, generation=1, now=NOW)
    assert status.reason == r.DATASET_NOT_READY
    conditions = _conditions(status)
    assert conditions[r.RUNNING] == ("False", r.DATASET_NOT_READY, waiting.message)
    assert conditions[r.SUCCEEDED][::2] == ("False", "not started yet")
    assert conditions[r.FAILED][::2] == ("False", "no failure")
    calib = Dataset.model_validate(
        {"metadata": {"name": "calib"}, "spec": {"source": "s3://d/c.jsonl", "format": "text"}}
    )
    assert export_gate(export, None, calib) == Verdict(
        ExportPhase.WAITING, r.FINETUNEJOB_NOT_FOUND, "FineTuneJob 'demo' not found"
    )
    running = Verdict(ExportPhase.RUNNING, r.EXPORT_RUNNING, "exporting")
    assert export_status(export, status, running, None, generation=1, now=NOW).reason is None


def test_dataset_reason_names_why_it_is_invalid() -> None:
    failed = observe_job(
        k8s_job([{"type": "Failed", "reason": "BackoffLimitExceeded"}], failed=1),
        [pod("Failed", {"exitCode": 1, "message": "cannot read s3://data/x.jsonl"})],
    )
    status, _ = dataset_status(None, failed, generation=1, now=NOW)
    assert (status.phase, status.reason) == (DatasetPhase.INVALID, r.VALIDATION_FAILED)
    validating, _ = dataset_status(None, None, generation=1, now=NOW)
    assert validating.reason is None


def test_a_failed_pod_with_no_retry_left_promises_none() -> None:
    failed_pod = pod("Failed", {"exitCode": 137, "reason": "OOMKilled", "finishedAt": NOW})
    obs = observe_job(k8s_job(failed=1), [failed_pod])
    assert job_verdict(spec(backoffLimit=0), obs).message == (
        "pod demo-train-abc failed (OOMKilled); no retry left (backoffLimit 0)"
    )
    assert job_verdict(spec(backoffLimit=2), obs).message.endswith(
        "retry 1 of 2 resumes from the last checkpoint"
    )
