"""Dataset validation on its own: counts, first errors, token lengths and a preview, no model needed.

The operator runs this for a Dataset's status; the trainer gets the same checks from
``prepare_dataset`` (which raises where this reports).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset

from finetune_api.dataset import DatasetSpec
from finetune_api.method import Stage

from .aligner import RowProblem
from .config import STAGE_SHAPE, DatasetConfig, ProcessingConfig, Shape, default_cache_dir, resolve_num_proc
from .from_api import dataset_config
from .loader import MalformedDatasetError, align_rows, load_rows
from .processor import Encoder, encoded_features
from .template import get_template

PREVIEW_CHARS = 4096
# A stage per shape, to measure token lengths when the Dataset's consumer is unknown.
SHAPE_STAGE = {
    Shape.TEXT: Stage.PT,
    Shape.SUPERVISED: Stage.SFT,
    Shape.PAIRWISE: Stage.DPO,
    Shape.KTO: Stage.KTO,
    Shape.PROMPT: Stage.PPO,
}
UNLIMITED = 1 << 30


@dataclass
class TokenStats:
    """Token lengths of the formatted samples (prompt + response; chosen for pairs)."""

    min: int
    max: int
    mean: float
    p95: int
    over_cutoff: int | None = None


@dataclass
class DatasetReport:
    """What a Dataset's status shows."""

    name: str
    valid: bool
    num_samples: int = 0
    num_errors: int = 0
    errors: list[RowProblem] = field(default_factory=list)
    token_stats: TokenStats | None = None
    preview: list[str] = field(default_factory=list)
    problem: str = ""
    """Why the dataset as a whole is unusable (empty when valid)."""


def infer_shape(cfg: DatasetConfig) -> Shape:
    """The row shape a Dataset is meant for, when no stage is given."""
    if cfg.format == "text":
        return Shape.TEXT
    if cfg.ranking:
        return Shape.PAIRWISE
    if cfg.resolved_columns().kto_tag:
        return Shape.KTO
    return Shape.SUPERVISED


def _plain(row: dict[str, Any]) -> str:
    lines = [f"system: {row['_system']}"] if row["_system"] else []
    lines += [f"{m['role']}: {m['content']}" for m in row["_prompt"] + row["_response"][:1]]
    return "\n".join(lines)


def _preview(rows: Dataset, shape: Shape, tokenizer: Any, template_name: str) -> list[str]:
    template = get_template(template_name, tokenizer) if tokenizer is not None else None
    out = []
    for row in rows:
        if shape is Shape.TEXT:
            text = row["_prompt"][0]["content"]
        elif template is None:
            text = _plain(row)
        else:
            answer = row["_response"][:1] or [{"role": "assistant", "content": ""}]
            pairs = template.render_pairs(row["_prompt"] + answer, row["_system"] or "", row["_tools"] or "")
            text = "".join(a + b for a, b in pairs)
        if shape is Shape.PAIRWISE:
            text += f"\n[rejected] {row['_response'][1]['content']}"
        out.append(text[:PREVIEW_CHARS])
    return out


def _token_stats(
    aligned: Dataset,
    shape: Shape,
    tokenizer: Any,
    template_name: str,
    cutoff_len: int | None,
    num_proc: int | None,
) -> TokenStats:
    cfg = ProcessingConfig(stage=SHAPE_STAGE[shape], template=template_name, cutoff_len=UNLIMITED)
    encoder = Encoder(tokenizer, get_template(template_name, tokenizer), cfg)
    features = encoded_features(shape)
    procs = resolve_num_proc(num_proc, len(aligned))
    encoded = aligned.map(
        encoder,
        batched=True,
        remove_columns=aligned.column_names,
        features=features,
        num_proc=procs if procs > 1 else None,
    )
    column = "chosen_input_ids" if shape is Shape.PAIRWISE else "input_ids"
    lengths = pc.list_value_length(encoded.with_format("arrow")[column]).to_numpy(zero_copy_only=False)
    return TokenStats(
        min=int(lengths.min()),
        max=int(lengths.max()),
        mean=round(float(lengths.mean()), 2),
        p95=int(np.percentile(lengths, 95)),
        over_cutoff=int((lengths > cutoff_len).sum()) if cutoff_len else None,
    )


def validate_dataset(
    spec: DatasetConfig | DatasetSpec,
    *,
    name: str = "",
    tokenizer: Any = None,
    template: str = "auto",
    stage: Stage | None = None,
    cutoff_len: int | None = None,
    preview_rows: int = 3,
    cache_dir: Path | None = None,
    num_proc: int | None = None,
) -> DatasetReport:
    """Load and check a dataset; never raises for bad data (the report says what is wrong).

    Token statistics need ``tokenizer`` (and ``template``); ``stage`` picks the row shape to check
    for (default: from the Dataset's format, ranking and ktoTag; plain chat data as sft).
    """
    cfg = spec if isinstance(spec, DatasetConfig) else dataset_config(spec, name=name)
    shape = STAGE_SHAPE[stage] if stage is not None else infer_shape(cfg)
    report = DatasetReport(name=cfg.label, valid=False)
    try:
        rows = load_rows(cfg, cache_dir=cache_dir or default_cache_dir())
        result = align_rows(rows, cfg, shape, num_proc=num_proc)
    except MalformedDatasetError as exc:
        report.num_errors, report.errors, report.problem = (
            exc.num_errors,
            [RowProblem.parse(e) for e in exc.errors],
            str(exc),
        )
        return report
    except (ValueError, OSError) as exc:
        report.problem = str(exc)
        return report
    aligned = result.dataset
    assert isinstance(aligned, Dataset)
    report.valid, report.num_samples, report.num_errors = True, len(aligned), result.num_errors
    report.errors = [RowProblem.parse(e) for e in result.errors]
    report.preview = _preview(
        aligned.select(range(min(preview_rows, len(aligned)))), shape, tokenizer, template
    )
    if tokenizer is not None:
        report.token_stats = _token_stats(aligned, shape, tokenizer, template, cutoff_len, num_proc)
    return report
