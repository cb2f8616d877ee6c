"""The reports a pod hands back in its termination message (finetune_api.reports): each renders itself
within the kubelet's limit and parses itself back, None for a message that holds no report."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from finetune_api.dataset import DatasetPhase, RowError, TokenStats
from finetune_api.export import ExportedFile
from finetune_api.pod import TERMINATION_MAX
from finetune_api.progress import ProgressRecord
from finetune_api.reports import DatasetReport, ExportReport, ExportVerification, TerminationReport


def dataset_report(previews: int = 2, errors: int = 1, message: str | None = None) -> DatasetReport:
    return DatasetReport(
        phase=DatasetPhase.INVALID if message else DatasetPhase.READY,
        samples=64,
        invalid_samples=errors,
        token_stats=TokenStats(min=3, max=40, mean=12.5, p95=30, over_cutoff=2),
        preview=[f"<|im_start|>user {i} " + "p" * 4000 for i in range(previews)],
        errors=[RowError(row=i, field="output", message="m" * 256) for i in range(errors)],
        message=message,
    )


def export_report(files: int) -> ExportReport:
    return ExportReport(
        uri="s3://b/m",
        files=[
            ExportedFile(path=f"model-{i:05d}-of-{files:05d}.safetensors", size=10, sha256="f" * 64)
            for i in range(files)
        ],
        size_bytes=10 * files,
        manifest="s3://b/m/manifest.json",
        verification=ExportVerification(
            passed=True, max_abs_diff=1e-5, tolerance=4e-4, rule="r", top1_agreement=1.0
        ),
        uploaded_files=files,
        skipped_files=0,
        peak_rss_bytes=2**30,
    )


def test_a_dataset_report_round_trips_in_camel_case() -> None:
    report = dataset_report(previews=0, errors=2, message="source has no rows")
    text = report.to_message()
    wire = json.loads(text)
    assert list(wire) == ["samples", "invalidSamples", "tokenStats", "preview", "errors", "phase", "message"]
    assert wire["tokenStats"]["overCutoff"] == 2 and wire["phase"] == "Invalid"
    assert DatasetReport.from_message(text) == report
    assert DatasetReport.from_message(f"\n  {text}\n") == report  # the kubelet's message may be padded


def test_a_big_dataset_report_fits_losing_previews_then_errors_then_the_message() -> None:
    big = dataset_report(previews=5, errors=20, message="x" * 1024)
    assert len(json.dumps(big.to_wire()).encode()) > TERMINATION_MAX
    text = big.to_message()
    assert len(text.encode()) <= TERMINATION_MAX
    fitted = DatasetReport.from_message(text)
    assert fitted is not None
    assert fitted.preview == [] and 0 < len(fitted.errors) < 20 and fitted.message == "x" * 1024
    assert fitted.errors == big.errors[: len(fitted.errors)]  # the first rows are kept
    assert (fitted.samples, fitted.token_stats, fitted.phase) == (big.samples, big.token_stats, big.phase)
    tight = DatasetReport.from_message(big.to_message(limit=300))
    assert tight is not None and tight.errors == [] and tight.message is None and tight.samples == 64


def test_a_big_export_report_fits_by_leaving_out_the_file_list() -> None:
    big = export_report(files=600)  # more than status.outputs holds: the trainer lists them all anyway
    text = big.to_message()
    assert len(text.encode()) <= TERMINATION_MAX
    fitted = ExportReport.from_message(text)
    assert fitted is not None and fitted.files == [] and fitted.verification == big.verification
    assert fitted.model_dump(exclude={"files"}) == big.model_dump(exclude={"files"})
    outputs = fitted.outputs()
    assert (outputs.uri, outputs.size_bytes, outputs.manifest) == ("s3://b/m", 6000, "s3://b/m/manifest.json")
    small = export_report(files=3)
    assert ExportReport.from_message(small.to_message()) == small
    assert small.outputs().files == small.files


@pytest.mark.parametrize(
    "message", ["", "Traceback: boom", "ValueError: no such bucket", "[1, 2]", '"done"', "{not json"]
)
@pytest.mark.parametrize("model", [DatasetReport, ExportReport, ProgressRecord])
def test_a_message_with_no_json_object_holds_no_report(message: str, model: type[TerminationReport]) -> None:
    assert model.from_message(message) is None


def test_an_object_that_is_not_the_report_is_refused_and_newer_fields_are_ignored() -> None:
    with pytest.raises(ValidationError, match="samples"):
        DatasetReport.from_message('{"samples": -1}')
    with pytest.raises(ValidationError, match="uri"):
        ExportReport.from_message('{"uri": ""}')
    newer = DatasetReport.from_message('{"phase": "Ready", "samples": 3, "languages": ["en"]}')
    assert newer == DatasetReport(phase=DatasetPhase.READY, samples=3)
    check = ExportReport.from_message(
        '{"sizeBytes": 1, "verification": {"passed": true, "rule": "r", "x": 1}}'
    )
    assert check is not None and check.verification == ExportVerification(passed=True, rule="r")


def test_the_training_pods_message_is_its_progress_record() -> None:
    record = ProgressRecord(
        step=20, total_steps=20, phase="Succeeded", message="done", last_checkpoint="s3://b/c"
    )
    assert ProgressRecord.from_message(record.to_json()) == record
    assert ProgressRecord.from_message(record.to_message()) == record
