"""Grouping encoded samples into training rows: chunking (pt) and packing without cross-contamination.

A packed row holds whole samples back to back with ``position_ids`` restarting at 0 for each one.
transformers (5.x) turns restarting position ids into a block-diagonal causal mask for sdpa/eager
and into ``cu_seqlens`` for flash-attention when no ``attention_mask`` is passed, so a sample never
attends to its neighbours. The first label of each sample is ``IGNORE_INDEX``: after the shift
inside the loss it would be predicted from the previous sample's last token.

Both operations work on Arrow batches with numpy index arithmetic: only the bin packer looks at
samples one by one (their lengths), never at tokens.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .config import IGNORE_INDEX

PACK_BATCH_SIZE = 10_000  # samples considered together by the bin packer; larger fills rows better


def pack_lengths(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Best-fit-decreasing bin packing: indices of ``lengths`` grouped so each group sums to <= capacity.

    Raises:
        ValueError: a length above ``capacity`` (samples are truncated to the cutoff before packing).
    """
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, bin number), sorted
    for index in sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True):
        size = lengths[index]
        if size > capacity:
            raise ValueError(f"sample of {size} tokens exceeds the packing capacity {capacity}")
        slot = bisect_left(free, (size, -1))
        if slot == len(free):
            bins.append([index])
            insort(free, (capacity - size, len(bins) - 1))
        else:
            room, number = free.pop(slot)
            bins[number].append(index)
            insort(free, (room - size, number))
    return bins


def list_array(offsets: np.ndarray, values: np.ndarray) -> pa.ListArray:
    """An Arrow ``list<int32>`` column from row offsets and flat values."""
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values.astype(np.int32)))


def _flat(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Flat values and per-row start offsets (into the flat values) of a list column."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = array.offsets.to_numpy()
    values = array.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
    return values, offsets[:-1] - offsets[0]


def _pieces(lengths: np.ndarray, starts: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples longer than ``size`` cut into several (pt documents); returns (starts, lengths)."""
    counts = -(-lengths // size)
    piece_starts = np.repeat(starts, counts) + size * (
        np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    )
    ends = np.repeat(starts + lengths, counts)
    return piece_starts, np.minimum(piece_starts + size, ends) - piece_starts


def pack_table(table: pa.Table, *, cutoff_len: int) -> pa.Table:
    """Pack a batch of samples (``input_ids`` and, for sft, ``labels``) into rows of at most ``cutoff_len`` tokens."""
    ids, starts = _flat(table["input_ids"])
    labels = _flat(table["labels"])[0] if "labels" in table.column_names else ids
    lengths = pc.list_value_length(table["input_ids"]).to_numpy(zero_copy_only=False).astype(np.int64)
    starts, lengths = starts[lengths > 0], lengths[lengths > 0]
    if len(lengths) and lengths.max() > cutoff_len:
        starts, lengths = _pieces(lengths, starts, cutoff_len)
    # Rows in bin order; inside a row, samples keep the data's order.
    bins = [sorted(b) for b in pack_lengths(lengths.tolist(), cutoff_len)]
    order = np.fromiter((i for b in bins for i in b), dtype=np.int64, count=len(lengths))
    lens, total = lengths[order], int(lengths.sum())
    sample_at = np.cumsum(lens) - lens  # where each sample starts in the packed output
    within = np.arange(total) - np.repeat(sample_at, lens)
    gather = np.repeat(starts[order], lens) + within
    packed_labels = labels[gather]
    packed_labels[sample_at] = IGNORE_INDEX
    row_offsets = np.concatenate([[0], np.cumsum([lengths[b].sum() for b in bins])]).astype(np.int64)
    return pa.table(
        {
            "input_ids": list_array(row_offsets, ids[gather]),
            "labels": list_array(row_offsets, packed_labels),
            "position_ids": list_array(row_offsets, within),
        }
    )


def chunk_table(table: pa.Table, *, cutoff_len: int) -> pa.Table:
    """pt without packing: the batch's documents concatenated and cut into ``cutoff_len`` blocks.

    Attention crosses document boundaries here, as in classic LM pretraining; use packing to avoid it.
    The last, shorter block is kept (the collator pads it).
    """
    ids, _ = _flat(table["input_ids"])
    offsets = (
        np.append(np.arange(0, len(ids), cutoff_len), len(ids)) if len(ids) else np.zeros(1, dtype=np.int64)
    )
    return pa.table({"input_ids": list_array(offsets, ids)})


def pack_rows(batch: dict[str, list[Any]], *, cutoff_len: int) -> dict[str, list[Any]]:
    """:func:`pack_table` on Python lists (for tests and small callers)."""
    return pack_table(pa.table(batch), cutoff_len=cutoff_len).to_pydict()
