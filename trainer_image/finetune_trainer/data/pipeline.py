"""The data worker end to end: load → align+encode → mix → split → pack/chunk → cache.

``prepare_dataset`` is what a training recipe calls (after loading the tokenizer, before the model);
``make_collator`` gives the matching collator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from datasets import Dataset, DatasetDict, Features, IterableDataset, List, Value

from ..storage import ObjectStore
from .cache import fingerprint, load_cached, save_cached, tokenizer_fingerprint
from .collator import KtoCollator, PackedCollator, PaddingCollator, PairwiseCollator
from .config import AnyDataset, DatasetConfig, ProcessingConfig, Shape, resolve_num_proc
from .loader import AlignmentResult, align_rows, load_rows
from .mixing import mix_datasets, split_validation
from .packing import PACK_BATCH_SIZE, chunk_table, pack_table
from .processor import Encoder, encoded_features
from .shared import fetch_shared, publish_shared
from .sources import hash_files, resolve_source
from .template import ChatTemplate, get_template

_IDS = List(Value("int32"))
PACKED_FEATURES = Features({"input_ids": _IDS, "labels": _IDS, "position_ids": _IDS})
STREAM_SHUFFLE_BUFFER = 10_000


@dataclass
class DatasetSummary:
    """How one dataset went through alignment."""

    name: str
    num_rows: int | None
    """Good rows (None while streaming: not known until read)."""
    num_errors: int
    errors: list[str] = field(default_factory=list)
    """The first malformed rows, as ``row N: field 'X': problem``."""


@dataclass
class PreparedData:
    """The training (and validation) rows, ready for the collator from :func:`make_collator`."""

    train: AnyDataset
    eval: AnyDataset | None
    template: ChatTemplate
    summaries: list[DatasetSummary]
    cache_hit: bool = False
    fingerprint: str | None = None
    """Cache key (None while streaming: streams are not cached)."""
    shared_hit: bool = False
    """The prepared rows came from the shared store (another job tokenized them)."""


def check_processing(processing: ProcessingConfig) -> None:
    """Settings that cannot work together, refused before any data is read.

    Raises:
        ValueError: naming the ``training`` field at fault.
    """
    if processing.packing and processing.shape not in (Shape.TEXT, Shape.SUPERVISED):
        raise ValueError(f"training.packing: applies to stages pt and sft, not {processing.stage.value}")
    if processing.cutoff_len < 8:
        raise ValueError("training.cutoffLen: must be at least 8 tokens")
    if not 0 <= processing.response_reserve_ratio < 1:
        raise ValueError("training.responseReserveRatio: must be in [0, 1)")


def _data_hash(cfg: DatasetConfig, processing: ProcessingConfig) -> str:
    resolved = resolve_source(
        cfg.source,
        cache_dir=processing.cache_dir,
        s3_endpoint=cfg.s3_endpoint,
        credentials_dir=cfg.credentials_dir,
    )
    if resolved.hub_name:  # no content hash without the hub; the name, split and subset stand in
        return f"hf:{resolved.hub_name}:{cfg.split}:{cfg.subset}"
    return hash_files(resolved.files)


def group_rows(ds: AnyDataset, processing: ProcessingConfig) -> AnyDataset:
    """Pack (pt/sft with packing) or chunk (pt without) encoded samples into training rows."""
    shape = processing.shape
    if not processing.packing and shape is not Shape.TEXT:
        return ds
    fn = pack_table if processing.packing else chunk_table
    kwargs: dict[str, Any] = {
        "batched": True,
        "batch_size": PACK_BATCH_SIZE,
        "remove_columns": ds.column_names,
    }
    kwargs["fn_kwargs"] = {"cutoff_len": processing.cutoff_len}
    kwargs["features"] = PACKED_FEATURES if processing.packing else Features({"input_ids": _IDS})
    if isinstance(ds, Dataset):
        procs = resolve_num_proc(processing.num_proc, len(ds))
        kwargs |= {
            "num_proc": procs if procs > 1 else None,
            "desc": "packing" if processing.packing else "chunking",
        }
    # Arrow batches in and out: packing is index arithmetic on the flat token arrays.
    return ds.with_format("arrow").map(fn, **kwargs).with_format(None)


def _encode_all(
    datasets: Sequence[DatasetConfig], processing: ProcessingConfig, encoder: Encoder, key: str | None
) -> tuple[list[AnyDataset], list[DatasetSummary]]:
    parts: list[AnyDataset] = []
    summaries: list[DatasetSummary] = []
    for n, cfg in enumerate(datasets):
        rows = load_rows(cfg, cache_dir=processing.cache_dir, streaming=processing.streaming)
        result: AlignmentResult = align_rows(
            rows,
            cfg,
            processing.shape,
            num_proc=processing.num_proc,
            encoder=encoder,
            encoded_features=encoded_features(processing.shape),
            fingerprint=f"{key}-{n}" if key else None,
        )
        parts.append(result.dataset)
        summaries.append(DatasetSummary(cfg.label, result.num_rows, result.num_errors, result.errors))
    return parts, summaries


def prepare_dataset(
    datasets: Sequence[DatasetConfig],
    processing: ProcessingConfig,
    tokenizer: Any,
    *,
    shared: ObjectStore | None = None,
) -> PreparedData:
    """Load, validate, tokenise, mix, split and pack ``datasets`` for ``processing.stage``.

    Cached by fingerprint in ``processing.cache_dir`` (not when streaming): a second call with the
    same data, tokenizer and settings loads the saved result and returns ``cache_hit=True``.
    With ``shared`` (object storage), a miss is looked up there before tokenizing, and a fresh
    result is uploaded there for later jobs (``shared_hit=True`` when it came from there).

    Raises:
        ValueError: bad settings, unreadable sources, a dataset unfit for the stage, or a dataset
            whose rows are all malformed (naming the dataset and its first errors).
    """
    check_processing(processing)
    template = get_template(processing.template, tokenizer)
    encoder = Encoder(tokenizer, template, processing)
    if processing.streaming:
        return _prepare_stream(datasets, processing, encoder, template)
    key = fingerprint(
        [(cfg, _data_hash(cfg, processing)) for cfg in datasets], processing, tokenizer_fingerprint(tokenizer)
    )
    cached = load_cached(processing.cache_dir, key)
    shared_hit = cached is None and shared is not None and fetch_shared(shared, key, processing)
    if shared_hit:
        cached = load_cached(processing.cache_dir, key)
    if cached is not None:
        splits, summary = cached
        summaries = [DatasetSummary(**s) for s in summary["datasets"]]
        return PreparedData(
            splits["train"],
            splits.get("eval"),
            template,
            summaries,
            cache_hit=True,
            fingerprint=key,
            shared_hit=shared_hit,
        )
    parts, summaries = _encode_all(datasets, processing, encoder, key)
    mixed = mix_datasets(
        parts,
        weights=[cfg.weight for cfg in datasets],
        strategy=processing.mix_strategy,
        seed=processing.seed,
    )
    train, val = split_validation(mixed, val_size=processing.val_size, seed=processing.seed)
    splits = DatasetDict({"train": group_rows(train, processing)})
    if val is not None:
        splits["eval"] = group_rows(val, processing)
    splits = save_cached(processing.cache_dir, key, splits, {"datasets": [asdict(s) for s in summaries]})
    if shared is not None:
        publish_shared(shared, key, processing)
    return PreparedData(splits["train"], splits.get("eval"), template, summaries, fingerprint=key)


def _prepare_stream(
    datasets: Sequence[DatasetConfig], processing: ProcessingConfig, encoder: Encoder, template: ChatTemplate
) -> PreparedData:
    parts, summaries = _encode_all(datasets, processing, encoder, None)
    mixed = mix_datasets(
        parts,
        weights=[cfg.weight for cfg in datasets],
        strategy=processing.mix_strategy,
        seed=processing.seed,
    )
    train, val = split_validation(mixed, val_size=processing.val_size, seed=processing.seed)
    assert isinstance(train, IterableDataset)
    train = train.shuffle(seed=processing.seed, buffer_size=STREAM_SHUFFLE_BUFFER)
    return PreparedData(
        group_rows(train, processing),
        group_rows(val, processing) if val is not None else None,
        template,
        summaries,
    )


def pad_token_id(tokenizer: Any) -> int:
    """The padding id: the tokenizer's pad token, else EOS (padding is never attended or learned)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is None:
        raise ValueError("model: the tokenizer has neither a pad nor an eos token")
    return int(tokenizer.eos_token_id)


def make_collator(
    processing: ProcessingConfig,
    tokenizer: Any,
    *,
    attn_implementation: str = "sdpa",
    pad_to_multiple_of: int = 8,
) -> PaddingCollator | PackedCollator | PairwiseCollator | KtoCollator:
    """The collator for the rows :func:`prepare_dataset` produced with the same ``processing``.

    ``attn_implementation`` is the model's (``model.config._attn_implementation``): packed batches
    are flattened into one row for flash-attention, which needs batch size 1 to see sample bounds.
    """
    pad = pad_token_id(tokenizer)
    shape = processing.shape
    if shape is Shape.PAIRWISE:
        return PairwiseCollator(pad, pad_to_multiple_of)
    if shape is Shape.KTO:
        return KtoCollator(pad, pad_to_multiple_of)
    if processing.packing:
        return PackedCollator(pad, pad_to_multiple_of, flatten=attn_implementation.startswith("flash"))
    side: Literal["left", "right"] = (
        "left" if shape is Shape.PROMPT else "right"
    )  # prompts are generated from: pad before them
    return PaddingCollator(pad, pad_to_multiple_of, side)
