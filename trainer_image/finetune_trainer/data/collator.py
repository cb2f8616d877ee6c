"""Collators: lists of encoded rows into padded tensors, one per row layout."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, Literal

import torch

from .config import IGNORE_INDEX

Features = Sequence[dict[str, Any]]


def _padded_length(longest: int, multiple: int) -> int:
    return -(-longest // multiple) * multiple if multiple > 1 else longest


def pad_sequences(
    rows: Sequence[Sequence[int]], value: int, length: int, *, side: Literal["right", "left"] = "right"
) -> torch.Tensor:
    """``rows`` as one ``(len(rows), length)`` long tensor, padded with ``value`` on ``side``."""
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            values = torch.as_tensor(row, dtype=torch.long)
            if side == "right":
                out[i, : len(row)] = values
            else:
                out[i, length - len(row) :] = values
    return out


def pad_batch(
    input_ids: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]] | None,
    *,
    pad_token_id: int,
    pad_to_multiple_of: int = 8,
    side: Literal["right", "left"] = "right",
) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask`` and (if given) ``labels`` padded to a common length."""
    length = _padded_length(max((len(r) for r in input_ids), default=0), pad_to_multiple_of)
    batch = {
        "input_ids": pad_sequences(input_ids, pad_token_id, length, side=side),
        "attention_mask": pad_sequences([[1] * len(r) for r in input_ids], 0, length, side=side),
    }
    if labels is not None:
        batch["labels"] = pad_sequences(labels, IGNORE_INDEX, length, side=side)
    return batch


@dataclass
class PaddingCollator:
    """sft/pt/ppo rows: pad to a multiple of 8; pt rows without labels learn every real token."""

    pad_token_id: int
    pad_to_multiple_of: int = 8
    padding_side: Literal["right", "left"] = "right"

    def __call__(self, features: Features) -> dict[str, torch.Tensor]:
        ids = [f["input_ids"] for f in features]
        labels = [f["labels"] if "labels" in f else f["input_ids"] for f in features]
        return pad_batch(
            ids,
            labels,
            pad_token_id=self.pad_token_id,
            pad_to_multiple_of=self.pad_to_multiple_of,
            side=self.padding_side,
        )


def block_causal_mask(position_ids: torch.Tensor, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """A 4D ``(batch, 1, q, kv)`` causal mask that keeps each packed sample to itself.

    Samples are found where ``position_ids`` restart at 0. ``bool`` gives True where attention is
    allowed (sdpa); a float dtype gives 0 / the dtype's minimum, added to the scores (eager).
    """
    seq = (position_ids == 0).cumsum(-1)
    length = position_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()
    allowed = (seq[:, :, None] == seq[:, None, :]) & causal
    if dtype == torch.bool:
        return allowed[:, None]
    blocked = torch.zeros(allowed.shape, dtype=dtype, device=position_ids.device)
    blocked.masked_fill_(~allowed, torch.finfo(dtype).min)
    return blocked[:, None]


@dataclass
class PackedCollator:
    """Packed rows: ``input_ids``, ``labels``, ``position_ids``, NO ``attention_mask``, and ``use_cache=False``.

    transformers 5.x derives the block-diagonal mask (sdpa/eager) from restarting position ids only
    when there is no attention mask AND no KV cache; models default to ``use_cache=True`` (from
    their config), which silently disables the detection, hence the explicit ``use_cache=False``.
    Rows shorter than the longest are padded with a separate dummy sample (position ids from 0,
    labels ignored), so padding never joins a real sample.
    ``flatten`` concatenates the whole batch into one row: flash-attention finds sample boundaries
    from position ids only at batch size 1. ``mask_dtype`` adds an explicit 4D mask for models
    that do not read position ids this way (bool for sdpa, a float dtype for eager).
    """

    pad_token_id: int
    pad_to_multiple_of: int = 8
    mask_dtype: torch.dtype | None = None
    flatten: bool = False

    def __call__(self, features: Features) -> dict[str, Any]:
        if self.flatten:
            features = [
                {
                    key: list(chain.from_iterable(f[key] for f in features))
                    for key in ("input_ids", "labels", "position_ids")
                }
            ]
        length = _padded_length(max(len(f["input_ids"]) for f in features), self.pad_to_multiple_of)
        positions = [list(f["position_ids"]) + list(range(length - len(f["position_ids"]))) for f in features]
        batch: dict[str, Any] = {
            "input_ids": pad_sequences([f["input_ids"] for f in features], self.pad_token_id, length),
            "labels": pad_sequences(
                [f["labels"] if "labels" in f else f["input_ids"] for f in features], IGNORE_INDEX, length
            ),
            "position_ids": torch.as_tensor(positions, dtype=torch.long),
            "use_cache": False,
        }
        if self.mask_dtype is not None:
            batch["attention_mask"] = block_causal_mask(batch["position_ids"], self.mask_dtype)
        return batch


@dataclass
class PairwiseCollator:
    """rm/dpo/orpo/simpo rows: the chosen sequences, then the rejected ones, in one padded batch."""

    pad_token_id: int
    pad_to_multiple_of: int = 8

    def __call__(self, features: Features) -> dict[str, torch.Tensor]:
        ids = [f["chosen_input_ids"] for f in features] + [f["rejected_input_ids"] for f in features]
        labels = [f["chosen_labels"] for f in features] + [f["rejected_labels"] for f in features]
        return pad_batch(
            ids, labels, pad_token_id=self.pad_token_id, pad_to_multiple_of=self.pad_to_multiple_of
        )


@dataclass
class KtoCollator:
    """kto rows: the completions, their mismatched KL pairs (``kl_`` prefix) and the desirable tags."""

    pad_token_id: int
    pad_to_multiple_of: int = 8

    def __call__(self, features: Features) -> dict[str, torch.Tensor]:
        main = pad_batch(
            [f["input_ids"] for f in features],
            [f["labels"] for f in features],
            pad_token_id=self.pad_token_id,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
        kl = pad_batch(
            [f["kl_input_ids"] for f in features],
            [f["kl_labels"] for f in features],
            pad_token_id=self.pad_token_id,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
        return {
            **main,
            **{f"kl_{k}": v for k, v in kl.items()},
            "kto_tags": torch.tensor([bool(f["kto_tags"]) for f in features]),
        }
