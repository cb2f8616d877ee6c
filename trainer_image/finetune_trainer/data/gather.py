"""Supervised rows of a whole batch at once: the truncation plan from lengths, the tokens by one gather.

:func:`~.processor.build_supervised` builds one conversation with Python list slicing; here the
same rule runs over a batch as numpy arrays: each turn's kept lengths come from its token counts
(turn by turn, across all rows at once), then ``input_ids`` and ``labels`` are gathered from the
flat token array and handed to Arrow without a Python list per row. The two must agree token for
token (``tests/trainer/test_data_gather.py`` pins it).

Fast path: see finetune_trainer.fastpaths (its reference path and the tests that pin the two equal).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

import numpy as np
import pyarrow as pa

from .config import IGNORE_INDEX, ProcessingConfig

IntArray = np.ndarray


def fit_turns(
    source_len: IntArray, target_len: IntArray, budget: IntArray, reserve_ratio: float
) -> tuple[IntArray, IntArray]:
    """:func:`~.processor.fit_turn` over arrays; a turn with no budget left keeps nothing."""
    fits = source_len + target_len <= budget
    # int() of a float truncates toward zero, as astype does; the budget is positive wherever it matters.
    reserved = np.maximum(1, (budget * reserve_ratio).astype(np.int64))
    target = np.minimum(target_len, np.maximum(reserved, budget - source_len))
    source = np.minimum(source_len, budget - target)
    dead = budget <= 0
    return (
        np.where(dead, 0, np.where(fits, source_len, source)),
        np.where(dead, 0, np.where(fits, target_len, target)),
    )


def _kept_lengths(
    source_len: IntArray, target_len: IntArray, turns: IntArray, cfg: ProcessingConfig, reserve_eos: bool
) -> tuple[IntArray, IntArray, IntArray, IntArray]:
    """Kept (source, target) lengths per turn, the row of each turn and its index within the row.

    Turns get the budget in order (last turn first with ``mask_history``), as in ``build_supervised``;
    each row has one turn at each depth, so a depth is one vectorised step over all rows.
    """
    turn_row = np.repeat(np.arange(len(turns)), turns)
    first_turn = np.cumsum(turns) - turns
    index = np.arange(len(turn_row)) - first_turn[turn_row]
    depth = turns[turn_row] - 1 - index if cfg.mask_history else index
    keep_source, keep_target = np.zeros_like(source_len), np.zeros_like(target_len)
    total = np.full(len(turns), 1 if reserve_eos else 0, dtype=np.int64)
    for level in range(int(turns.max(initial=0))):
        at = np.flatnonzero(depth == level)
        rows = turn_row[at]
        budget = cfg.cutoff_len - total[rows]
        s, t = fit_turns(source_len[at], target_len[at], budget, cfg.response_reserve_ratio)
        keep_source[at], keep_target[at] = s, t
        total[rows] += s + t
    return keep_source, keep_target, turn_row, index


def flat_ids(encoded: Sequence[list[int]]) -> tuple[IntArray, IntArray]:
    """Lists of token ids as one flat int32 array and the length of each list."""
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    return np.fromiter(chain.from_iterable(encoded), dtype=np.int32, count=int(lengths.sum())), lengths


def supervised_columns(
    flat: IntArray,
    lengths: IntArray,
    turns: IntArray,
    cfg: ProcessingConfig,
    *,
    eos_id: int | None = None,
    efficient_eos: bool = False,
) -> tuple[pa.ListArray, pa.ListArray]:
    """``input_ids`` and ``labels`` (Arrow ``list<int32>``) of a batch of conversations.

    ``flat`` holds the token ids (int32) of every turn's prompt and answer, row after row
    (``prompt₀, answer₀, prompt₁, answer₁, …``), ``lengths`` the number of ids of each of those
    texts (:func:`flat_ids` makes both from lists); ``turns`` the number of turns of each row
    (0: a skipped row, output empty). Same result as ``build_supervised`` on each row.
    """
    starts = np.cumsum(lengths) - lengths
    source_len, target_len = lengths[0::2], lengths[1::2]
    keep_s, keep_t, turn_row, index = _kept_lengths(source_len, target_len, turns, cfg, efficient_eos)

    # Pieces in output order: each turn's prompt (its end kept), then its answer (its start kept).
    piece_start = np.empty(2 * len(keep_s), dtype=np.int64)
    piece_start[0::2] = starts[0::2] + source_len - keep_s
    piece_start[1::2] = starts[1::2]
    piece_len = np.empty_like(piece_start)
    piece_len[0::2], piece_len[1::2] = keep_s, keep_t
    out_start = np.cumsum(piece_len) - piece_len
    gather = np.repeat(piece_start - out_start, piece_len) + np.arange(int(piece_len.sum()))
    input_ids = flat[gather]

    masked = np.empty(len(piece_len), dtype=bool)
    masked[0::2] = not cfg.train_on_prompt
    is_last = index == turns[turn_row] - 1
    masked[1::2] = ~is_last if cfg.mask_history else False
    labels = np.where(np.repeat(masked, piece_len), np.int32(IGNORE_INDEX), input_ids)
    if efficient_eos and not cfg.train_on_prompt:
        # Later prompts learn the EOS that closed the answer before them (EOS is not in the answer format).
        opens = out_start[0::2][(index > 0) & (keep_s > 0)]
        labels[opens] = eos_id or 0

    row_len = np.bincount(turn_row, weights=keep_s + keep_t, minlength=len(turns)).astype(np.int64)
    if efficient_eos and eos_id is not None:
        ends = np.cumsum(row_len)[turns > 0]
        input_ids, labels = np.insert(input_ids, ends, eos_id), np.insert(labels, ends, eos_id)
        row_len += turns > 0
    offsets = pa.array(np.concatenate(([0], np.cumsum(row_len))).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(input_ids)), pa.ListArray.from_arrays(
        offsets, pa.array(labels)
    )
