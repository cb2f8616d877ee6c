"""The progress record: what the trainer (rank 0) writes to ``<output.uri>/progress.json``.

A training pod cannot write to the Kubernetes API, so the operator reads this object with the
output credentials and copies its progress fields into ``FineTuneJob.status.progress``. The
record is ``TrainingProgress`` (the status model itself, so the two can never drift) plus the
trainer's own phase, a message and the newest complete checkpoint. Both sides parse it with this
one model. The training pod's termination message is this record too (the operator reads it with
:meth:`~finetune_api.reports.TerminationReport.from_message`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from .evaluation import EvaluationStatus
from .finetunejob import TrainingProgress
from .reports import MESSAGE_MAX, TerminationReport

PROGRESS_KEY = "progress.json"
TrainerPhase = Literal["Running", "Succeeded", "Failed"]


class ProgressRecord(TrainingProgress, TerminationReport):
    """``status.progress`` plus the trainer's phase, message and last checkpoint (camelCase JSON)."""

    # A newer trainer may add fields; an older operator still reads the ones it knows.
    model_config = ConfigDict(extra="ignore")

    phase: TrainerPhase = "Running"
    """Running while training; Succeeded or Failed once the trainer has finished."""
    message: str | None = Field(default=None, max_length=MESSAGE_MAX)
    """A human summary, e.g. the error that ended the run."""
    last_checkpoint: str | None = None
    """URI of the newest checkpoint uploaded with its manifest."""
    evaluation: EvaluationStatus | None = None
    """Scores of spec.evaluation once computed; the operator copies them to status.evaluation."""

    def to_json(self) -> str:
        """The record as stored: camelCase, unset fields left out."""
        return self.model_dump_json(by_alias=True, exclude_none=True)

    def progress(self) -> TrainingProgress:
        """Only the fields of ``FineTuneJob.status.progress``."""
        return TrainingProgress.model_validate(self.model_dump(include=set(TrainingProgress.model_fields)))
