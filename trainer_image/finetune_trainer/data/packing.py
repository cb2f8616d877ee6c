"""Grouping encoded samples into training rows: chunking (pt) and packing without cross-contamination.

A packed row holds whole samples back to back with ``position_ids`` restarting at 0 for each one.
transformers (5.x) turns restarting position ids into a block-diagonal causal mask for sdpa/eager
and into ``cu_seqlens`` for flash-attention when no ``attention_mask`` is passed, so a sample never
attends to its neighbours. The first label of each sample is ``IGNORE_INDEX``: after the shift
inside the loss it would be predicted from the previous sample's last token.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Sequence
from itertools import chain
from typing import Any

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


def split_long(ids: list[int], size: int) -> list[list[int]]:
    """``ids`` cut into pieces of at most ``size`` tokens."""
    return [ids[i : i + size] for i in range(0, len(ids), size)] if ids else []


def chunk_text(batch: dict[str, list[Any]], *, cutoff_len: int) -> dict[str, list[Any]]:
    """pt without packing: the batch's documents concatenated and cut into ``cutoff_len`` blocks.

    Attention crosses document boundaries here, as in classic LM pretraining; use packing to avoid it.
    The last, shorter block is kept (the collator pads it).
    """
    joined = list(chain.from_iterable(batch["input_ids"]))
    return {"input_ids": split_long(joined, cutoff_len)}


def pack_rows(batch: dict[str, list[Any]], *, cutoff_len: int) -> dict[str, list[Any]]:
    """Pack samples (``input_ids`` and, for sft, ``labels``) into rows of at most ``cutoff_len`` tokens."""
    samples: list[list[int]] = batch["input_ids"]
    labels: list[list[int]] = batch.get("labels") or samples
    if any(len(s) > cutoff_len for s in samples):  # pt documents: longer ones become several samples
        samples, labels = _split_samples(samples, labels, cutoff_len)
    out: dict[str, list[Any]] = {"input_ids": [], "labels": [], "position_ids": []}
    nonempty = [i for i, s in enumerate(samples) if s]
    samples, labels = [samples[i] for i in nonempty], [labels[i] for i in nonempty]
    for group in pack_lengths([len(s) for s in samples], cutoff_len):
        group.sort()  # keep the data's order inside a row
        out["input_ids"].append(list(chain.from_iterable(samples[i] for i in group)))
        row_labels: list[int] = []
        for i in group:
            row_labels.append(IGNORE_INDEX)
            row_labels.extend(labels[i][1:])
        out["labels"].append(row_labels)
        out["position_ids"].append(list(chain.from_iterable(range(len(samples[i])) for i in group)))
    return out


def _split_samples(
    samples: list[list[int]], labels: list[list[int]], size: int
) -> tuple[list[list[int]], list[list[int]]]:
    pieces = [
        (ids, lab)
        for s, l in zip(samples, labels, strict=True)
        for ids, lab in zip(split_long(s, size), split_long(l, size), strict=True)
    ]
    return [p[0] for p in pieces], [p[1] for p in pieces]
