"""The reports a finished pod hands back in its termination message, typed.

The trainer builds these models and writes :meth:`TerminationReport.to_message`; the operator reads
them with :meth:`TerminationReport.from_message` and uses their attributes. Each report fits itself
within the kubelet's ``TERMINATION_MAX`` bytes, and what gives way first (a list's tail, a whole
field) is the model's choice, not its callers'. Unknown fields are ignored, so a newer trainer's
additions do not break an older operator. The training pod's report is the progress record
(:class:`finetune_api.progress.ProgressRecord`), a report of this kind too.
"""

from __future__ import annotations

import json
from typing import ClassVar, Self

from pydantic import ConfigDict, Field

from .common import ApiModel
from .dataset import DatasetFindings, DatasetPhase
from .export import ExportedFile, ExportOutputs
from .pod import TERMINATION_MAX, fit_report

MESSAGE_MAX = 1024
"""The longest human message a report carries."""


class TerminationReport(ApiModel):
    """Base of the reports: camelCase JSON, unknown fields ignored, one way out and one way in."""

    model_config = ConfigDict(extra="ignore")

    trim_to_fit: ClassVar[tuple[str, ...]] = ()
    """Lists (wire names) that lose items from their end, in this order, until the report fits."""
    drop_to_fit: ClassVar[tuple[str, ...]] = ()
    """Fields (wire names) then left out, in this order, until it fits."""

    @classmethod
    def from_message(cls, text: str) -> Self | None:
        """The report a termination message holds; None when it holds no JSON object (a plain line
        such as an error). An object that is not this report raises ``pydantic.ValidationError``."""
        text = text.strip()
        if not text.startswith("{"):
            return None
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return None
        return cls.model_validate(value)

    def to_message(self, limit: int = TERMINATION_MAX) -> str:
        """The report's JSON within ``limit`` bytes (:attr:`trim_to_fit`, then :attr:`drop_to_fit`)."""
        return fit_report(self.to_wire(), trim=self.trim_to_fit, drop=self.drop_to_fit, limit=limit)


class DatasetReport(DatasetFindings, TerminationReport):
    """A Dataset validation Job's report: what it found (the DatasetStatus fields it fills), the
    verdict and why.

    Too long for the message, it loses previews, then errors, then the message."""

    trim_to_fit = ("preview", "errors")
    drop_to_fit = ("message",)

    phase: DatasetPhase | None = None
    """Ready (usable) or Invalid."""
    message: str | None = Field(default=None, max_length=MESSAGE_MAX)
    """Why the source is not usable, when it is not."""


class ExportVerification(ApiModel):
    """The export's self-check, as reported."""

    model_config = ConfigDict(extra="ignore")

    passed: bool
    """Whether the reloaded export reproduced the source model's logits (or needed no check)."""
    max_abs_diff: float | None = None
    """Largest absolute logit difference over the probes."""
    tolerance: float | None = None
    """The largest difference allowed."""
    rule: str
    """The rule applied, for people, e.g. ``max|exported-adapter| <= 0.0001 * max|adapter logits|``."""
    top1_agreement: float | None = None
    """Share of positions where both models predict the same next token."""
    adapter_effect: float | None = None
    """max |adapter - base| logit: what a merge that lost the adapter would be off by."""


class ExportReport(ExportOutputs, TerminationReport):
    """An export Job's report: ExportOutputs (what the operator copies into ``status.outputs``) plus
    the self-check and the upload counts.

    Too long for the message, it loses the file list (the manifest has it all), then the check."""

    drop_to_fit = ("files", "verification")

    files: list[ExportedFile] = Field(default_factory=list)
    """Every file written, with its size and hash (no cap here: the message drops a long list)."""
    verification: ExportVerification | None = None
    """The self-check against the source model."""
    uploaded_files: int | None = Field(default=None, ge=0)
    """Files uploaded by this run."""
    skipped_files: int | None = Field(default=None, ge=0)
    """Files already in place (an interrupted export resumed), not uploaded again."""
    peak_rss_bytes: int | None = Field(default=None, ge=0)
    """The export process's own peak resident memory."""

    def outputs(self) -> ExportOutputs:
        """Only the fields of ``Export.status.outputs``."""
        return ExportOutputs.model_validate(self.model_dump(include=set(ExportOutputs.model_fields)))


class ReportMessage(TerminationReport):
    """Any report read for its human message alone (every report may carry one)."""

    message: str | None = None


def said(text: str) -> str:
    """What a termination message says to people: the report's ``message`` when the pod wrote a
    report that carries one, else the text itself; at most ``MESSAGE_MAX`` characters, from the end
    (where an error's last line is)."""
    try:
        report = ReportMessage.from_message(text)
    except ValueError:  # JSON, but its message is not a string
        report = None
    return ((report.message if report else None) or text.strip())[-MESSAGE_MAX:]
