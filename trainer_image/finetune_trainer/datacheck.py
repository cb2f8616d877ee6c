"""`finetune validate-data`: check a Dataset before any GPU is spent, for its status.

Runs in the operator's short validation Job (and locally). Each Dataset's report is DatasetStatus-shaped
JSON, printed on stdout keyed by the Dataset's name; the report also goes into the container's
termination message, which the operator copies into the status.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from finetune_api.dataset import DatasetPhase, DatasetStatus, RowError, TokenStats
from finetune_api.manifests import load_documents
from finetune_api.pod import TERMINATION_MAX, fit_report, write_termination_message
from finetune_api.resources import Dataset
from finetune_api.validation import validate_documents


def report_document(report: Any) -> dict[str, Any]:
    """A data-worker DatasetReport as the DatasetStatus fields (plus a message) the operator reads."""
    stats = report.token_stats
    status = DatasetStatus(
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
    )
    document = status.to_wire()
    document.pop("conditions", None)
    if report.problem:
        document["message"] = report.problem[:1024]
    return document


def fit(document: dict[str, Any], limit: int = TERMINATION_MAX) -> str:
    """The JSON of ``document``, shortened to ``limit`` bytes by dropping previews, then errors."""
    return fit_report(document, trim=("preview", "errors"), drop=("message",), limit=limit)


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
        report = validate_dataset(ds.spec, name=name, tokenizer=tokenizer, cutoff_len=cutoff_len)
        last = fit(report_document(report))
        reports[name] = json.loads(last)
        print(f"{name}: {summary(reports[name])}", file=sys.stderr)
        failed |= not report.valid or (report.num_errors > 0 and not allow_invalid_rows)
    print(json.dumps(reports, indent=2))
    write_termination_message(last)  # one Dataset per validation Job: its status-shaped report
    return 1 if failed else 0


def summary(document: dict[str, Any]) -> str:
    """One line for people: the phase, the samples, and the first problem."""
    if document.get("phase") == DatasetPhase.INVALID:
        return f"Invalid: {document.get('message') or 'not usable'}"
    line = f"Ready, {document.get('samples', 0)} samples"
    bad, errors = document.get("invalidSamples", 0), document.get("errors") or []
    if bad:
        first = (
            f" (first: row {errors[0]['row']} {errors[0]['field']}: {errors[0]['message']})" if errors else ""
        )
        line += f"; {bad} invalid row(s) left out{first}"
    return line


def _tokenizer(model: str) -> Any:
    from finetune_api.finetunejob import ModelSpec

    from .model.loader import load_tokenizer
    from .model.sources import fetch_source

    spec = ModelSpec(source=model)
    return load_tokenizer(fetch_source(model, field="--model"), spec=spec)
