"""A FineTuneJob's status from what was observed: gates before the Job, then the Job and its pods."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from finetune_api.dataset import DatasetPhase
from finetune_api.finetunejob import FineTuneJobSpec, FineTuneJobStatus, JobOutputs, Phase, dataset_paths
from finetune_api.progress import ProgressRecord
from finetune_api.resources import Dataset
from finetune_api.validation import check_dataset_refs

from . import reasons as r
from .conditions import Verdict, set_conditions
from .observe import JobObservation, parse_report

TERMINAL = (Phase.SUCCEEDED, Phase.FAILED)


def dataset_gate(spec: FineTuneJobSpec, datasets: Mapping[str, Dataset]) -> Verdict | None:
    """None when every Dataset is Ready and suits the stage; else why the job waits or is refused."""
    errors = check_dataset_refs(spec, {n: d.spec for n, d in datasets.items()}, require=False)
    if errors:
        return Verdict(Phase.FAILED, r.DATASET_INVALID, "; ".join(str(e) for e in errors))
    waiting = []
    for path, name in dataset_paths(spec):
        ds = datasets.get(name)
        phase = ds.status.phase if ds and ds.status else None
        if ds is None:
            waiting.append(f"Dataset {name!r} not found")
        elif phase == DatasetPhase.INVALID:
            detail = next((c.message for c in ds.status.conditions if c.message), "") if ds.status else ""
            return Verdict(Phase.FAILED, r.DATASET_INVALID, f"{path}: Dataset {name!r} is Invalid: {detail}")
        elif (
            phase != DatasetPhase.READY
            or ds.status is None
            or ds.status.observed_generation != ds.metadata.generation
        ):
            waiting.append(f"Dataset {name!r} is {phase or 'not validated yet'}")
    if waiting:
        return Verdict(Phase.PREPARING, r.DATASET_NOT_READY, "; ".join(waiting))
    return None


def _failure_verdict(spec: FineTuneJobSpec, obs: JobObservation) -> Verdict:
    last = obs.failures[-1] if obs.failures else None
    detail = f" ({last.message})" if last and last.message else ""
    if any(f.reason == "OOMKilled" for f in obs.failures):
        oom = next(f for f in reversed(obs.failures) if f.reason == "OOMKilled")
        limit = spec.resources.memory or "no limit"
        return Verdict(
            Phase.FAILED,
            r.OUT_OF_MEMORY,
            f"pod {oom.pod} was OOMKilled (memory {limit}); raise spec.resources.memory or lower "
            "perDeviceBatchSize/cutoffLen",
        )
    if obs.failed_reason == "DeadlineExceeded":
        return Verdict(
            Phase.FAILED,
            r.DEADLINE_EXCEEDED,
            f"ran longer than activeDeadlineSeconds={spec.active_deadline_seconds}",
        )
    if obs.failed_reason == "BackoffLimitExceeded":
        code = f"exit code {last.exit_code}" if last else "failed"
        return Verdict(
            Phase.FAILED,
            r.BACKOFF_LIMIT_EXCEEDED,
            f"the trainer {code} {spec.backoff_limit + 1} time(s){detail}",
        )
    reason = obs.failed_reason if obs.failed_reason == r.POD_FAILURE_POLICY else r.JOB_FAILED
    return Verdict(Phase.FAILED, reason, (obs.failed_message or "the training Job failed") + detail)


def job_verdict(spec: FineTuneJobSpec, obs: JobObservation) -> Verdict:
    """The phase, reason and message that a training Job's state stands for."""
    if obs.complete:
        return Verdict(
            Phase.SUCCEEDED, r.TRAINING_SUCCEEDED, "training finished; the adapter is in the output location"
        )
    if obs.failed_reason:
        return _failure_verdict(spec, obs)
    if obs.suspended:
        if spec.suspend:
            return Verdict(
                Phase.SUSPENDED,
                r.SUSPENDED_BY_USER,
                "suspended: pods deleted; resuming continues from the last checkpoint",
            )
        if spec.queue_name:
            return Verdict(
                Phase.PENDING,
                r.WAITING_FOR_ADMISSION,
                f"waiting for Kueue to admit it from queue {spec.queue_name!r}",
            )
        return Verdict(Phase.PENDING, r.JOB_CREATED, "resuming")
    if obs.image_pull:
        pod, why = obs.image_pull
        return Verdict(Phase.PENDING, r.IMAGE_PULL_FAILED, f"pod {pod} cannot pull its image: {why}")
    if obs.running_pods >= spec.resources.nodes:
        return Verdict(Phase.RUNNING, r.TRAINING_RUNNING, f"{obs.running_pods} pod(s) training")
    if obs.failures:
        last = obs.failures[-1]
        return Verdict(
            Phase.PENDING, r.RESTARTING,
            f"pod {last.pod} failed ({last.reason or 'exit code ' + str(last.exit_code)}); "
            f"retry {obs.failed} of {spec.backoff_limit} resumes from the last checkpoint",
        )  # fmt: skip
    return Verdict(Phase.PENDING, r.PODS_PENDING, "waiting for the training pods to start")


def job_conditions(verdict: Verdict) -> dict[str, tuple[bool, str, str]]:
    """The six condition types of a FineTuneJob for one verdict."""
    refused = verdict.reason in r.REFUSALS
    preparing = verdict.phase == Phase.PREPARING
    phase, why, msg = verdict.phase, verdict.reason, verdict.message
    return {
        r.ACCEPTED: (False, why, msg) if refused else (True, r.SPEC_ACCEPTED, "the spec is valid"),
        r.READY: (False, why, msg)
        if refused or preparing
        else (True, r.DATASETS_READY, "every Dataset is Ready"),
        r.RUNNING: (phase == Phase.RUNNING, why, msg),
        r.SUCCEEDED: (phase == Phase.SUCCEEDED, why, msg),
        r.FAILED: (phase == Phase.FAILED, why, msg),
        r.SUSPENDED: (phase == Phase.SUSPENDED, why, msg),
    }


def parse_record(record: Mapping[str, Any]) -> ProgressRecord | None:
    """The trainer's progress record (camelCase JSON), or None when it does not parse."""
    try:
        return ProgressRecord.model_validate(record)
    except ValueError:
        return None


def outputs_for(uri: str, phase: Phase) -> JobOutputs:
    """Where the trainer writes, under ``uri``; the adapter and loss plot once it succeeded."""
    base = uri.rstrip("/")
    done = phase == Phase.SUCCEEDED
    return JobOutputs(
        adapter=f"{base}/adapter" if done else None,
        checkpoints=f"{base}/checkpoints",
        loss_plot=f"{base}/loss.png" if done else None,
        metrics=f"{base}/trainer_log.jsonl",
    )


def build_job_status(
    spec: FineTuneJobSpec,
    old: FineTuneJobStatus | None,
    verdict: Verdict,
    *,
    generation: int | None,
    now: str,
    obs: JobObservation | None = None,
    record: Mapping[str, Any] | None = None,
    estimate_gib: float | None = None,
) -> FineTuneJobStatus:
    """The new status: ``old`` updated with the verdict, the Job's facts and the trainer's record."""
    status = old.model_copy(deep=True) if old else FineTuneJobStatus()
    status.phase = Phase(verdict.phase)
    status.observed_generation = generation
    status.conditions = set_conditions(status.conditions, job_conditions(verdict), generation, now)
    if estimate_gib is not None:
        status.gpu_memory_estimate_gib = estimate_gib
    if obs is not None:
        status.job_name = obs.name
        status.start_time = status.start_time or obs.start_time
        status.restarts = max(obs.failed - (1 if obs.failed_reason else 0), 0)
        final = parse_report(obs.last_message()) if status.phase in TERMINAL else None
        record = final or record
    parsed = parse_record(record) if record else None
    if parsed is not None:
        status.progress = parsed.progress()
        status.last_checkpoint = parsed.last_checkpoint or status.last_checkpoint
        status.evaluation = parsed.evaluation or status.evaluation
    if status.phase in TERMINAL:
        status.completion_time = status.completion_time or (obs.completion_time if obs else None) or now
    if spec.output and status.phase in (Phase.RUNNING, *TERMINAL) and obs is not None:
        status.outputs = outputs_for(spec.output.uri, status.phase)
    return status
