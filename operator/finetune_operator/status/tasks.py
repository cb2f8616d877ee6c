"""Status of the short-Job kinds: a Dataset from its validation report, an Export from its Job."""

from __future__ import annotations

from typing import Final

from pydantic import ValidationError

from finetune_api.dataset import DatasetFindings, DatasetPhase, DatasetStatus
from finetune_api.export import ExportOutputs, ExportPhase, ExportStatus
from finetune_api.finetunejob import Phase
from finetune_api.reports import DatasetReport, ExportReport
from finetune_api.resources import Dataset, Export, FineTuneJob

from . import reasons as r
from .conditions import Verdict, set_conditions
from .observe import JobObservation


def dataset_status(
    old: DatasetStatus | None,
    obs: JobObservation | None,
    *,
    generation: int | None,
    now: str,
    refusal: Verdict | None = None,
) -> tuple[DatasetStatus, Verdict]:
    """A Dataset's status from its validation Job: Validating until it ends, then Ready or Invalid;
    Invalid at once with ``refusal`` (a source no pod can read: no validation Job)."""
    status = (
        DatasetStatus() if old is None or old.observed_generation != generation else old.model_copy(deep=True)
    )
    status.observed_generation = generation
    verdict = refusal or Verdict(DatasetPhase.VALIDATING, r.VALIDATING, "validating the source")
    ended = refusal is None and obs is not None and (obs.complete or obs.failed_reason)
    report: DatasetReport | None = None
    unreadable: Verdict | None = None
    if obs is not None and ended:
        try:
            report = DatasetReport.from_message(obs.last_message())
        except ValidationError as exc:
            unreadable = Verdict(
                DatasetPhase.INVALID, r.VALIDATION_FAILED, f"unreadable validation report: {exc}"
            )
    if report is not None or unreadable is not None:
        found = report or DatasetReport()  # an unreadable report clears what an older one said
        for name in DatasetFindings.model_fields:
            setattr(status, name, getattr(found, name))
    if report is not None:
        invalid = report.phase == DatasetPhase.INVALID or (obs is not None and obs.failed_reason is not None)
        message = report.message or ""
        if invalid:
            first = status.errors[0] if status.errors else None
            detail = message or (f"row {first.row}: {first.message}" if first else "the source is not usable")
            verdict = Verdict(DatasetPhase.INVALID, r.INVALID_ROWS, detail)
        else:
            verdict = Verdict(DatasetPhase.READY, r.VALID, message or f"{status.samples or 0} valid samples")
    elif refusal is None and obs is not None and obs.failed_reason:
        tail = obs.last_said() or obs.failed_message
        verdict = Verdict(DatasetPhase.INVALID, r.VALIDATION_FAILED, f"validation failed: {tail}"[:1024])
    elif unreadable is not None:
        verdict = unreadable
    status.phase = DatasetPhase(verdict.phase)
    status.reason = verdict.reason if status.phase == DatasetPhase.INVALID else None
    validated = {r.VALIDATED: (status.phase == DatasetPhase.READY, verdict.reason, verdict.message)}
    status.conditions = set_conditions(status.conditions, validated, generation, now)
    return status, verdict


def export_gate(
    export: Export, job: FineTuneJob | None, calibration: Dataset | None = None
) -> Verdict | None:
    """None when the Export may run; else why it waits (for its FineTuneJob or its calibration Dataset)
    or fails (its FineTuneJob did). ``calibration``: the calibration Dataset as found, if any."""
    quantization = export.spec.quantization
    wanted = quantization.calibration_dataset if quantization else None
    if wanted and calibration is None:
        return Verdict(ExportPhase.WAITING, r.DATASET_NOT_READY, f"calibration Dataset {wanted!r} not found")
    ref = export.spec.fine_tune_job_ref
    if ref is None:
        return None
    if job is None:
        return Verdict(ExportPhase.WAITING, r.FINETUNEJOB_NOT_FOUND, f"FineTuneJob {ref!r} not found")
    phase = job.status.phase if job.status else None
    if phase == Phase.FAILED:
        return Verdict(ExportPhase.FAILED, r.FINETUNEJOB_FAILED, f"FineTuneJob {ref!r} failed")
    if phase != Phase.SUCCEEDED:
        return Verdict(
            ExportPhase.WAITING, r.WAITING_FOR_FINETUNEJOB, f"FineTuneJob {ref!r} is {phase or 'Pending'}"
        )
    return None


def export_verdict(obs: JobObservation) -> Verdict:
    """The phase an export Job's state stands for."""
    if obs.complete:
        return Verdict(ExportPhase.SUCCEEDED, r.EXPORT_SUCCEEDED, "export finished")
    if obs.failed_reason:
        if any(f.reason == "OOMKilled" for f in obs.failures):
            return Verdict(
                ExportPhase.FAILED,
                r.OUT_OF_MEMORY,
                "the export pod was OOMKilled; raise spec.resources.memory",
            )
        return Verdict(
            ExportPhase.FAILED, r.EXPORT_FAILED, obs.last_said() or obs.failed_message or "export failed"
        )
    if obs.running_pods:
        return Verdict(ExportPhase.RUNNING, r.EXPORT_RUNNING, "exporting")
    return Verdict(ExportPhase.PENDING, r.PODS_PENDING, "waiting for the export pod to start")


_EXPORT_NOT_RUNNING: Final = {
    ExportPhase.SUCCEEDED: "export finished",
    ExportPhase.FAILED: "export stopped: it failed",
}
_EXPORT_NOT_DONE: Final = {
    ExportPhase.PENDING: "not started yet",
    ExportPhase.WAITING: "not started yet",
    ExportPhase.RUNNING: "export in progress",
    ExportPhase.FAILED: "the export failed",
}


def export_conditions(verdict: Verdict) -> dict[str, tuple[bool, str, str]]:
    """Running, Succeeded and Failed of an Export, each with its own message (and the verdict's reason)."""
    phase, why, msg = ExportPhase(verdict.phase), verdict.reason, verdict.message
    return {
        r.RUNNING: (True, why, msg)
        if phase == ExportPhase.RUNNING
        else (False, why, _EXPORT_NOT_RUNNING.get(phase, msg)),
        r.SUCCEEDED: (True, why, msg)
        if phase == ExportPhase.SUCCEEDED
        else (False, why, _EXPORT_NOT_DONE[phase]),
        r.FAILED: (True, why, msg) if phase == ExportPhase.FAILED else (False, why, "no failure"),
    }


def export_status(
    export: Export,
    old: ExportStatus | None,
    verdict: Verdict,
    obs: JobObservation | None,
    *,
    generation: int | None,
    now: str,
) -> ExportStatus:
    """The new Export status: phase, Succeeded/Failed conditions, outputs from the Job's report."""
    status = old.model_copy(deep=True) if old else ExportStatus()
    status.phase = ExportPhase(verdict.phase)
    quiet = (ExportPhase.RUNNING, ExportPhase.SUCCEEDED)
    status.reason = None if status.phase in quiet else verdict.reason
    status.observed_generation = generation
    status.conditions = set_conditions(status.conditions, export_conditions(verdict), generation, now)
    if obs is not None:
        status.job_name = obs.name
        status.start_time = status.start_time or obs.start_time
    if status.phase == ExportPhase.SUCCEEDED and obs is not None:
        base = export.spec.output.uri.rstrip("/")
        try:
            report = ExportReport.from_message(obs.last_message())
            outputs = report.outputs() if report else ExportOutputs()
        except ValidationError:  # a report that does not read: the outputs are where the spec says
            outputs = ExportOutputs()
        outputs.uri = outputs.uri or base
        outputs.manifest = outputs.manifest or f"{base}/manifest.json"
        status.outputs = outputs
    if status.phase in (ExportPhase.SUCCEEDED, ExportPhase.FAILED):
        status.completion_time = status.completion_time or (obs.completion_time if obs else None) or now
    return status
