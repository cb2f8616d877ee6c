"""`finetune validate-data`: check a Dataset before any GPU is spent, for its status.

Runs in the operator's short validation Job (and locally). Each Dataset's report is a
``finetune_api.reports.DatasetReport`` (DatasetStatus-shaped JSON), printed on stdout keyed by the
Dataset's name; the report also goes into the container's termination message, which the operator
reads with the same model and copies into the status.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from finetune_api.dataset import DatasetPhase, RowError, TokenStats
from finetune_api.manifests import load_documents
from finetune_api.pod import write_termination_message
from finetune_api.reports import MESSAGE_MAX, DatasetReport
from finetune_api.resources import Dataset
from finetune_api.validation import validate_documents


def dataset_report(report: Any) -> DatasetReport:
    """A data worker's findings as the report the operator reads (the DatasetStatus fields, the
    verdict and the problem, if any)."""
    stats = report.token_stats
    return DatasetReport(
        phase=DatasetPhase.READY if report.valid else DatasetPhase.INVALID,
        samples=report.num_samples,
        invalid_samples=report.num_errors,
        token_stats=TokenStats(
            min=stats.min, max=stats.max, mean=stats.mean, p95=stats.p95, over_cutoff=stats.over_cutoff
        )
        if stats
        else None,
        preview=[p[:4096] for p in report.preview[:5]],
        errors=[
            RowError(row=max(e.row, 0), field=e.field[:256], message=e.message[:256])
            for e in report.errors[:20]
        ],
        message=report.problem[:MESSAGE_MAX] if report.problem else None,
    )


def validate_data_from_files(
    files: Sequence[str],
    *,
    model: str | None = None,
    cutoff_len: int | None = None,
    allow_invalid_rows: bool = False,
) -> int:
    """Validate every Dataset in ``files``: JSON reports by name on stdout, one line per Dataset on
    stderr. Exit 1 when a Dataset is unusable or (unless ``allow_invalid_rows``) has an invalid row.
    ``model`` gives token statistics."""
    from .data import validate_dataset  # the data stack: only here

    docs = load_documents(files)
    results = validate_documents([d.body for d in docs], allow_missing_datasets=True)
    problems = [f"{docs[i].label}: {e}" for i, errors in results.items() for e in errors]
    if problems:
        print("error: invalid manifests:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    datasets = [Dataset.model_validate(d.body) for d in docs if d.body.get("kind") == "Dataset"]
    if not datasets:
        print("error: no Dataset among the files", file=sys.stderr)
        return 1
    tokenizer = _tokenizer(model) if model else None
    failed = False
    reports: dict[str, Any] = {}
    last = ""
    for ds in datasets:
        name = ds.metadata.name
        found = validate_dataset(ds.spec, name=name, tokenizer=tokenizer, cutoff_len=cutoff_len)
        report = dataset_report(found)
        last = report.to_message()
        reports[name] = json.loads(last)
        print(f"{name}: {summary(report)}", file=sys.stderr)
        failed |= not found.valid or (found.num_errors > 0 and not allow_invalid_rows)
    print(json.dumps(reports, indent=2))
    write_termination_message(last)  # one Dataset per validation Job: its status-shaped report
    return 1 if failed else 0


def summary(report: DatasetReport) -> str:
    """One line for people: the phase, the samples, and the first problem."""
    if report.phase == DatasetPhase.INVALID:
        return f"Invalid: {report.message or 'not usable'}"
    line = f"Ready, {report.samples or 0} samples"
    if report.invalid_samples:
        first = report.errors[0] if report.errors else None
        where = f" (first: row {first.row} {first.field}: {first.message})" if first else ""
        line += f"; {report.invalid_samples} invalid row(s) left out{where}"
    return line


def _tokenizer(model: str) -> Any:
    from finetune_api.finetunejob import ModelSpec

    from .model.loader import load_tokenizer
    from .model.sources import fetch_source

    spec = ModelSpec(source=model)
    return load_tokenizer(fetch_source(model, field="--model"), spec=spec)
