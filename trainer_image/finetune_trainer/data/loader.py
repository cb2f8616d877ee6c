"""Loading: files (json, jsonl, csv, parquet, arrow, txt) or hub datasets into ``datasets`` objects,
then alignment into the standard form with malformed rows counted and skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Features, IterableDataset, Value, load_dataset
from datasets.exceptions import DatasetGenerationError

from .aligner import ALIGNED_FEATURES, RAW_COLUMN, check_columns, make_batch_aligner
from .config import AnyDataset, DatasetConfig, Shape, resolve_num_proc
from .processor import Encoder
from .sources import ResolvedSource, resolve_source

FILE_TYPE_BUILDER = {
    "json": "json",
    "jsonl": "json",
    "csv": "csv",
    "parquet": "parquet",
    "arrow": "arrow",
    "txt": "text",
}
SUFFIX_BUILDER = {
    ".jsonl": "json",
    ".json": "json",
    ".gz": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".txt": "text",
}
MAX_REPORTED_ERRORS = 20
STREAM_PEEK_ROWS = 256  # rows checked up front in streaming mode, to fail fast on unusable data


@dataclass
class AlignmentResult:
    """Aligned rows (malformed ones removed) and what was wrong with the others."""

    dataset: AnyDataset
    num_rows: int | None  # None while streaming: unknown until read
    num_errors: int
    errors: list[str] = field(default_factory=list)


def file_builder(files: tuple[Path, ...], declared: str) -> str:
    """The ``datasets`` builder for the files: the declared fileType, else by extension.

    Raises:
        ValueError: the extension says nothing and no fileType was given, or files of mixed types.
    """
    if declared != "auto":
        return FILE_TYPE_BUILDER[declared]
    builders = {SUFFIX_BUILDER.get(p.suffix.lower()) for p in files}
    if None in builders or len(builders) != 1:
        names = ", ".join(p.name for p in files[:5])
        raise ValueError(f"fileType: cannot tell the file type of {names}; set fileType explicitly")
    return builders.pop()  # type: ignore[return-value]


def _file_split(split: str) -> str:
    # Local files form a single "train" split; keep any slice the user asked for ("train[:10%]").
    return split if split.startswith("train") else "train"


def _raw_json_rows(files: list[str], stamp: str) -> Iterator[dict[str, str]]:
    """One JSON document per row, unparsed: for files whose rows do not share one schema."""
    del stamp  # only part of the cache key, so edited files are re-read
    for name in files:
        with open(name, encoding="utf-8") as fh:
            is_array = fh.read(4096).lstrip().startswith("[")
            fh.seek(0)
            if is_array:
                yield from ({RAW_COLUMN: json.dumps(row, ensure_ascii=False)} for row in json.load(fh))
                continue
            yield from ({RAW_COLUMN: line} for line in (raw.strip() for raw in fh) if line)


def _load_raw_json(files: tuple[Path, ...], *, streaming: bool, cache_dir: Path) -> AnyDataset:
    names = [str(p) for p in files]
    stamp = ";".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    kwargs = {"files": names, "stamp": stamp}
    features = Features({RAW_COLUMN: Value("string")})
    if streaming:
        return IterableDataset.from_generator(_raw_json_rows, features=features, gen_kwargs=kwargs)
    return Dataset.from_generator(
        _raw_json_rows, features=features, gen_kwargs=kwargs, cache_dir=str(cache_dir)
    )


def load_rows(cfg: DatasetConfig, *, cache_dir: Path, streaming: bool = False) -> AnyDataset:
    """Load one dataset's rows as they are in the source (before alignment); ``maxSamples`` applied.

    Raises:
        ValueError: the source cannot be found or read.
    """
    resolved: ResolvedSource = resolve_source(
        cfg.source, cache_dir=cache_dir, s3_endpoint=cfg.s3_endpoint, credentials_dir=cfg.credentials_dir
    )
    hf_cache = str(cache_dir / "hf")
    if resolved.hub_name:
        ds = load_dataset(
            resolved.hub_name, name=cfg.subset, split=cfg.split, streaming=streaming, cache_dir=hf_cache
        )
    else:
        builder = file_builder(resolved.files, cfg.file_type)
        files = [str(p) for p in resolved.files]
        if builder == "json" and streaming:
            # Lines are parsed by the aligner, so one odd row cannot stop the stream.
            ds = _load_raw_json(resolved.files, streaming=True, cache_dir=Path(hf_cache))
        else:
            try:
                ds = load_dataset(
                    builder,
                    data_files=files,
                    split=_file_split(cfg.split),
                    streaming=streaming,
                    cache_dir=hf_cache,
                )
            except (DatasetGenerationError, pa.ArrowException, ValueError) as exc:
                if builder != "json":
                    raise ValueError(
                        f"dataset {cfg.label!r}: cannot read {cfg.source}: {exc.__cause__ or exc}"
                    ) from exc
                # pyarrow needs one schema for the whole file; rows that disagree are reported one by one instead.
                ds = _load_raw_json(resolved.files, streaming=False, cache_dir=Path(hf_cache))
    if cfg.max_samples is not None:
        if isinstance(ds, IterableDataset):
            ds = ds.take(cfg.max_samples)
        else:
            ds = ds.select(range(min(cfg.max_samples, len(ds))))
    return ds


class MalformedDatasetError(ValueError):
    """Every row of a dataset is malformed; ``errors`` holds the first ones."""

    def __init__(self, label: str, errors: list[str], num_errors: int, total: int | str) -> None:
        shown = "; ".join(errors[:5])
        super().__init__(f"dataset {label!r}: all {total} rows are malformed; first errors: {shown}")
        self.errors, self.num_errors = errors, num_errors


def _all_malformed(cfg: DatasetConfig, errors: list[str], total: int | str) -> MalformedDatasetError:
    count = total if isinstance(total, int) else len(errors)
    return MalformedDatasetError(cfg.label, errors, count, total)


@dataclass
class AlignThenEncode:
    """Alignment and encoding fused into one ``map`` pass (no intermediate table of messages)."""

    align: Callable[[dict[str, list[Any]], list[int]], dict[str, list[Any]]]
    encoder: Encoder
    arrow: bool = True
    """Return an Arrow table (fast to write; ``Dataset.map`` only, streams want dicts)."""
    threads: bool | None = None
    """The Rust tokenizer's thread pool (``Encoder.threads``)."""

    def __post_init__(self) -> None:
        self.encoder = replace(self.encoder, arrow=self.arrow, threads=self.threads)

    def __call__(self, batch: dict[str, list[Any]], indices: list[int]) -> pa.Table | dict[str, list[Any]]:
        aligned = self.align(batch, indices)
        encoded = {**self.encoder(aligned), "_error": aligned["_error"]}
        return pa.table(encoded) if self.arrow else encoded


def align_rows(
    ds: AnyDataset,
    cfg: DatasetConfig,
    shape: Shape,
    *,
    num_proc: int | None = None,
    encoder: Encoder | None = None,
    encoded_features: Features | None = None,
    fingerprint: str | None = None,
) -> AlignmentResult:
    """Align ``ds`` into the standard columns (then encode, if ``encoder`` is given), dropping malformed
    rows and keeping their errors.

    Raises:
        ValueError: a dataset-level mistake (stage vs. data, missing column), or every row malformed.
    """
    check_columns(cfg, shape, ds.column_names)
    fn: Any = make_batch_aligner(cfg, shape)
    features = ALIGNED_FEATURES
    streaming = isinstance(ds, IterableDataset)
    procs = 1 if streaming else resolve_num_proc(num_proc, len(ds))
    if encoder is not None and encoded_features is not None:
        # In this process the tokenizer gets every core; forked workers get one each. Streams
        # keep the caller's setting: they may be read from forked dataloader workers.
        threads = None if streaming else procs == 1
        fn, features = AlignThenEncode(fn, encoder, arrow=not streaming, threads=threads), encoded_features
    if isinstance(ds, IterableDataset):
        return _align_stream(ds, cfg, fn, features)
    aligned = ds.map(
        fn,
        batched=True,
        with_indices=True,
        remove_columns=ds.column_names,
        features=features,
        num_proc=procs if procs > 1 else None,
        new_fingerprint=fingerprint,
        desc=f"preparing {cfg.label}",
    )
    column = aligned.with_format("arrow")["_error"]
    bad = pc.not_equal(column, "").to_numpy(zero_copy_only=False)
    num_errors = int(bad.sum())
    errors = (
        pc.filter(column, pc.not_equal(column, "")).slice(0, MAX_REPORTED_ERRORS).to_pylist()
        if num_errors
        else []
    )
    if len(aligned) and num_errors == len(aligned):
        raise _all_malformed(cfg, errors, num_errors)
    if len(aligned) == 0:
        raise ValueError(f"dataset {cfg.label!r}: no rows in {cfg.source}")
    good = aligned.select(np.flatnonzero(~bad)) if num_errors else aligned
    return AlignmentResult(good.remove_columns("_error"), len(good), num_errors, errors)


def _align_stream(ds: IterableDataset, cfg: DatasetConfig, fn: Any, features: Features) -> AlignmentResult:
    aligned = ds.map(fn, batched=True, with_indices=True, features=features)
    aligned = aligned.select_columns(list(features))
    peek = [row["_error"] for row in aligned.take(STREAM_PEEK_ROWS)]
    errors = [e for e in peek if e][:MAX_REPORTED_ERRORS]
    if not peek:
        raise ValueError(f"dataset {cfg.label!r}: no rows in {cfg.source}")
    if len(errors) == len(peek):
        raise _all_malformed(cfg, errors, f"{len(peek)} first")
    good = aligned.filter(lambda errs: [not e for e in errs], input_columns="_error", batched=True)
    return AlignmentResult(good.remove_columns("_error"), None, len(errors), errors)
