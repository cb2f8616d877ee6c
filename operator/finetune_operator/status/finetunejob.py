"""A FineTuneJob's status from what was observed: gates before the Job, then the Job and its pods."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from finetune_api.common import Condition
from finetune_api.dataset import DatasetPhase
from finetune_api.finetunejob import FineTuneJobSpec, FineTuneJobStatus, JobOutputs, Phase, dataset_paths
from finetune_api.pod import REFUSED_EXIT
from finetune_api.progress import PROGRESS_KEY, ProgressRecord
from finetune_api.resources import Dataset
from finetune_api.validation import check_dataset_refs

from . import reasons as r
from .conditions import Verdict, set_conditions
from .observe import JobObservation

TERMINAL = (Phase.SUCCEEDED, Phase.FAILED)


@dataclass(frozen=True)
class ProgressRead:
    """One read of the trainer's progress record: the record (None when absent or unreadable) and,
    when it could not be read, why (shown in the ProgressUnavailable condition)."""

    record: Mapping[str, Any] | None
    error: str | None = None


def progress_condition(
    old: list[Condition], uri: str, read: ProgressRead
) -> dict[str, tuple[bool, str, str]]:
    """ProgressUnavailable: True while reading ``<uri>/progress.json`` fails; False once it works again
    (and absent for a job whose reads never failed)."""
    where = f"{uri.rstrip('/')}/{PROGRESS_KEY}"
    if read.error is not None:
        return {r.PROGRESS_UNAVAILABLE: (True, r.PROGRESS_READ_FAILED, f"cannot read {where}: {read.error}")}
    if any(c.type == r.PROGRESS_UNAVAILABLE for c in old):
        return {r.PROGRESS_UNAVAILABLE: (False, r.PROGRESS_READABLE, f"{where} is readable again")}
    return {}


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
    detail = f" ({last.said})" if last and last.said else ""
    if any(f.reason == "OOMKilled" for f in obs.failures):
        oom = next(f for f in reversed(obs.failures) if f.reason == "OOMKilled")
        limit = spec.resources.memory or "no limit"
        return Verdict(
            Phase.FAILED,
            r.OUT_OF_MEMORY,
            f"pod {oom.pod} was OOMKilled (memory {limit}); raise spec.resources.memory or lower "
            "perDeviceBatchSize/cutoffLen",
        )
    refused = next((f for f in reversed(obs.failures) if f.exit_code == REFUSED_EXIT), None)
    if refused is not None:  # the trainer's message names what differs and the ways out
        record = final_record(refused.message)
        said = record.message if record else None
        return Verdict(
            Phase.FAILED,
            r.OUTPUT_IN_USE,
            str(said or f"pod {refused.pod}: spec.output.uri holds another run; use another output"),
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
        running = f"{obs.running_pods} of {spec.resources.nodes} pod(s) running"
        return Verdict(Phase.RUNNING, r.TRAINING_RUNNING, running)
    if obs.failures:
        last = obs.failures[-1]
        retry = (
            f"retry {obs.failed} of {spec.backoff_limit} resumes from the last checkpoint"
            if obs.failed <= spec.backoff_limit
            else f"no retry left (backoffLimit {spec.backoff_limit})"
        )
        why = last.reason or f"exit code {last.exit_code}"
        return Verdict(Phase.PENDING, r.RESTARTING, f"pod {last.pod} failed ({why}); {retry}")
    return Verdict(Phase.PENDING, r.PODS_PENDING, "waiting for the training pods to start")


_NOT_RUNNING: Final = {
    Phase.PREPARING: "not started: waiting for the Datasets",
    Phase.SUCCEEDED: "training finished",
    Phase.FAILED: "training stopped: the job failed",
    Phase.SUSPENDED: "suspended: no pod runs",
}
_NOT_DONE: Final = {
    Phase.PREPARING: "not started yet",
    Phase.PENDING: "not started yet",
    Phase.RUNNING: "training in progress",
    Phase.FAILED: "the job failed",
    Phase.SUSPENDED: "suspended before the end",
}


def job_conditions(verdict: Verdict) -> dict[str, tuple[bool, str, str]]:
    """The six condition types of a FineTuneJob for one verdict, each with a message of its own.

    Every condition carries the verdict's reason (the event dedupe reads it off Running); the verdict's
    message goes on the condition it is about, the others say what they mean in this phase.
    """
    phase, why, msg = Phase(verdict.phase), verdict.reason, verdict.message
    refused = why in r.REFUSALS
    spec_refused = refused and why != r.DATASET_INVALID
    if why in (r.DATASET_INVALID, r.DATASET_NOT_READY):
        ready = (False, why, msg)
    elif spec_refused:
        ready = (False, why, "not checked: the spec was refused")
    else:
        ready = (True, r.DATASETS_READY, "every Dataset is Ready")
    if phase in (Phase.RUNNING, Phase.PENDING):
        running = (phase == Phase.RUNNING, why, msg)
    else:
        running = (False, why, _NOT_RUNNING[phase])
    if spec_refused:
        accepted = (False, why, msg)
    elif refused:
        accepted = (False, why, "refused: a Dataset does not suit this job (see Ready)")
    else:
        accepted = (True, r.SPEC_ACCEPTED, "spec validated")
    return {
        r.ACCEPTED: accepted,
        r.READY: ready,
        r.RUNNING: running,
        r.SUCCEEDED: (True, why, msg) if phase == Phase.SUCCEEDED else (False, why, _NOT_DONE[phase]),
        r.FAILED: (True, why, msg) if phase == Phase.FAILED else (False, why, "no failure"),
        r.SUSPENDED: (True, why, msg) if phase == Phase.SUSPENDED else (False, why, "spec.suspend is false"),
    }


def status_reason(phase: Phase, reason: str) -> str | None:
    """status.reason (the Reason column): why the object waits or failed; None while all goes well."""
    return None if phase in (Phase.RUNNING, Phase.SUCCEEDED) else reason or None


def parse_record(record: Mapping[str, Any]) -> ProgressRecord | None:
    """The trainer's progress record (camelCase JSON), or None when it does not parse."""
    try:
        return ProgressRecord.model_validate(record)
    except ValueError:
        return None


def final_record(message: str) -> ProgressRecord | None:
    """The trainer's record from a training pod's termination message, or None (a plain line such
    as an error, or an object that is no record)."""
    try:
        return ProgressRecord.from_message(message)
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
    progress_read: ProgressRead | None = None,
) -> FineTuneJobStatus:
    """The new status: ``old`` updated with the verdict, the Job's facts and the trainer's record
    (``progress_read``: the outcome of a read of it made for this status, if any)."""
    status = old.model_copy(deep=True) if old else FineTuneJobStatus()
    status.phase = Phase(verdict.phase)
    status.reason = status_reason(status.phase, verdict.reason)
    status.observed_generation = generation
    desired = job_conditions(verdict)
    if progress_read is not None and spec.output is not None:
        desired |= progress_condition(status.conditions, spec.output.uri, progress_read)
    status.conditions = set_conditions(status.conditions, desired, generation, now)
    if estimate_gib is not None:
        status.gpu_memory_estimate = f"{estimate_gib:.1f}Gi"
    parsed = parse_record(record) if record else None
    if obs is not None:
        status.job_name = obs.name
        status.start_time = status.start_time or obs.start_time
        status.restarts = max(obs.failed - (1 if obs.failed_reason else 0), 0)
        if status.phase in TERMINAL:  # the record the pod ended with is the newest
            parsed = final_record(obs.last_message()) or parsed
    if parsed is not None:
        status.progress = parsed.progress().with_display()
        status.last_checkpoint = parsed.last_checkpoint or status.last_checkpoint
        status.evaluation = parsed.evaluation or status.evaluation
    if status.phase in TERMINAL:
        status.completion_time = status.completion_time or (obs.completion_time if obs else None) or now
    if spec.output and status.phase in (Phase.RUNNING, *TERMINAL) and obs is not None:
        status.outputs = outputs_for(spec.output.uri, status.phase)
    return status
