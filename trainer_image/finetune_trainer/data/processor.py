"""Processors: aligned rows into token ids and labels, one batched function per stage shape.

Each batch is rendered to text pairs first, then tokenised at once: by the piece memo
(``pieces.py``: each distinct word through the tokenizer once) where the tokenizer allows it,
else in ONE call of the fast tokenizer. The per-example work left in Python is list slicing and
concatenation per turn, never per token (supervised rows, the common case, not even that:
``gather.py`` assembles them with numpy).
Rows whose ``_error`` is set produce empty outputs (they are dropped right after).

Fast path: see finetune_trainer.fastpaths (its reference path and the tests that pin the two equal).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import pyarrow as pa
from datasets import Features, List, Value
from transformers import PreTrainedTokenizerFast

from .config import IGNORE_INDEX, ProcessingConfig, Shape
from .gather import flat_ids, supervised_columns
from .pieces import PieceCache, piece_cache_for
from .template import ChatTemplate, Message
from .threads import encode_batch

Pair = tuple[list[int], list[int]]
OUTPUT_COLUMNS: dict[Shape, tuple[str, ...]] = {
    Shape.TEXT: ("input_ids",),
    Shape.SUPERVISED: ("input_ids", "labels"),
    Shape.PAIRWISE: ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"),
    Shape.KTO: ("input_ids", "labels", "kl_input_ids", "kl_labels", "kto_tags"),
    Shape.PROMPT: ("input_ids", "labels", "prompt"),
}


_IDS = List(Value("int32"))


def encoded_features(shape: Shape) -> Features:
    """Arrow types of a shape's encoded columns plus ``_error`` (int32 ids: half the disk of int64)."""
    types: dict[str, Any] = {name: _IDS for name in OUTPUT_COLUMNS[shape]}
    if shape is Shape.KTO:
        types["kto_tags"] = Value("bool")
    if shape is Shape.PROMPT:
        types["prompt"] = Value("string")
    return Features({**types, "_error": Value("string")})


ID_COLUMNS = frozenset(c for cols in OUTPUT_COLUMNS.values() for c in cols) - {"kto_tags", "prompt"}


def ids_array(rows: list[list[int]]) -> pa.ListArray:
    """Token-id lists as one Arrow ``list<int32>`` column, copied at C speed.

    datasets' own conversion of Python lists checks every value; for token ids that is most of the
    time spent writing the prepared table.
    """
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.fromiter(chain.from_iterable(rows), dtype=np.int32, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def ids_to_arrow(out: dict[str, Any]) -> dict[str, Any]:
    """An encoder's output with its token-id columns as Arrow arrays (ones that already are, kept)."""
    return {
        name: ids_array(values) if name in ID_COLUMNS and isinstance(values, list) else values
        for name, values in out.items()
    }


def batch_encode(
    tokenizer: Any, texts: list[str], *, add_special_tokens: bool = False, threads: bool | None = None
) -> list[list[int]]:
    """Token ids of ``texts`` in one batched call (the Rust tokenizer directly when there is one).

    ``threads``: run the Rust tokenizer on all cores (True) or on this thread only (False) for this
    call (see ``threads.py``); None leaves ``TOKENIZERS_PARALLELISM`` as it is.
    """
    if not texts:
        return []
    if isinstance(tokenizer, PreTrainedTokenizerFast):
        return encode_batch(
            tokenizer.backend_tokenizer, texts, add_special_tokens=add_special_tokens, threads=threads
        )
    return list(tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"])


def fit_turn(source_len: int, target_len: int, budget: int, reserve_ratio: float) -> tuple[int, int]:
    """Lengths kept of a (prompt, answer) turn within ``budget`` tokens.

    The answer keeps at least ``reserve_ratio`` of the budget (or all of itself if shorter); the
    prompt gets the rest, and any room the answer does not need.
    """
    if source_len + target_len <= budget:
        return source_len, target_len
    reserved = max(1, int(budget * reserve_ratio))
    target = min(target_len, max(reserved, budget - source_len))
    return min(source_len, budget - target), target


def build_supervised(
    pairs: Sequence[Pair], cfg: ProcessingConfig, *, eos_id: int | None = None, efficient_eos: bool = False
) -> tuple[list[int], list[int]]:
    """Input ids and labels of a multi-turn conversation, truncated to ``cfg.cutoff_len``.

    Prompt tokens are labelled ``IGNORE_INDEX`` unless ``train_on_prompt``; with ``mask_history``
    only the last answer is learned, and the last turns get the length budget first.
    A truncated prompt keeps its end (the answer header); a truncated answer keeps its start.
    """
    total = 1 if efficient_eos else 0
    order = list(enumerate(pairs))
    if cfg.mask_history:
        order.reverse()
    last = len(pairs) - 1
    pieces: list[tuple[list[int], list[int]]] = []
    for turn, (source, target) in order:
        budget = cfg.cutoff_len - total
        if budget <= 0:
            break
        s_len, t_len = fit_turn(len(source), len(target), budget, cfg.response_reserve_ratio)
        source, target = source[len(source) - s_len :], target[:t_len]
        total += s_len + t_len
        if cfg.train_on_prompt:
            source_labels = source
        elif efficient_eos and turn and s_len:
            source_labels = [eos_id or 0] + [IGNORE_INDEX] * (s_len - 1)
        else:
            source_labels = [IGNORE_INDEX] * s_len
        target_labels = [IGNORE_INDEX] * t_len if cfg.mask_history and turn != last else target
        pieces.append((source + target, source_labels + target_labels))
    if cfg.mask_history:
        pieces.reverse()
    input_ids = list(chain.from_iterable(ids for ids, _ in pieces))
    labels = list(chain.from_iterable(lab for _, lab in pieces))
    if efficient_eos and eos_id is not None:
        input_ids.append(eos_id)
        labels.append(eos_id)
    return input_ids, labels


@dataclass
class Encoder:
    """A ``datasets.map(batched=True)`` function from aligned rows to model inputs for one stage shape."""

    tokenizer: Any
    template: ChatTemplate
    cfg: ProcessingConfig
    arrow: bool = False
    """Return token-id columns as Arrow ``list<int32>`` arrays (``Dataset.map``), else Python lists."""
    threads: bool | None = None
    """The Rust tokenizer's thread pool: on when the map runs in this process, off in forked map
    workers (each has its core already); None leaves ``TOKENIZERS_PARALLELISM`` as it is."""
    eos_id: int | None = field(init=False)
    """Read once: every attribute read on a transformers tokenizer goes through its ``__getattr__``."""
    pieces: PieceCache | None = field(init=False)
    """Each distinct word encoded once, where the tokenizer allows it (``pieces.py``)."""

    def __post_init__(self) -> None:
        self.eos_id = self.tokenizer.eos_token_id
        self.pieces = piece_cache_for(self.tokenizer)

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, Any]:
        out = self._encode(batch)
        if self.arrow:
            return ids_to_arrow(out)
        return {name: v.to_pylist() if isinstance(v, pa.Array) else v for name, v in out.items()}

    def _encode(self, batch: dict[str, list[Any]]) -> dict[str, Any]:
        """The encoded batch; supervised id columns come as Arrow arrays, the others as lists."""
        good = [not e for e in batch.get("_error", [""] * len(batch["_prompt"]))]
        shape = self.cfg.shape
        if shape is Shape.TEXT:
            return self._text(batch, good)
        rendered = [self._render(batch, i, ok) for i, ok in enumerate(good)]
        flat = [text for example in rendered for pair in example for text in pair]
        if shape is Shape.SUPERVISED:
            turns = np.fromiter(map(len, rendered), dtype=np.int64, count=len(rendered))
            input_ids, labels = supervised_columns(
                *self._encode_flat(flat),
                turns,
                self.cfg,
                eos_id=self.eos_id,
                efficient_eos=self.template.efficient_eos,
            )
            return {"input_ids": input_ids, "labels": labels}
        ids = iter(self._encode_lists(flat))
        encoded = [[(next(ids), next(ids)) for _ in example] for example in rendered]
        if shape is Shape.PAIRWISE:
            return self._pairwise(encoded)
        if shape is Shape.KTO:
            return self._kto(encoded, batch["_kto_tag"])
        return self._prompt_only(encoded, rendered, batch)

    def _encode_flat(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids of ``texts`` (no special tokens added): all ids flat (int32) and each text's count."""
        if self.pieces is not None:
            return self.pieces.encode(texts, threads=self.threads)
        return flat_ids(batch_encode(self.tokenizer, texts, threads=self.threads))

    def _encode_lists(self, texts: list[str]) -> list[list[int]]:
        """Token ids of ``texts`` (no special tokens added), one list per text."""
        if self.pieces is None:
            return batch_encode(self.tokenizer, texts, threads=self.threads)
        ids, lengths = self.pieces.encode(texts, threads=self.threads)
        values, ends = ids.tolist(), np.cumsum(lengths).tolist()
        return [values[end - n : end] for end, n in zip(ends, lengths.tolist(), strict=True)]

    def _render(self, batch: dict[str, list[Any]], i: int, ok: bool) -> list[tuple[str, str]]:
        """Text pairs of row ``i``; pairwise rows render the rejected answer as one extra pair."""
        if not ok:
            return []
        prompt: list[Message] = batch["_prompt"][i]
        response: list[Message] = batch["_response"][i]
        system, tools = batch["_system"][i] or "", batch["_tools"][i] or ""
        shape = self.cfg.shape
        if shape is Shape.PROMPT and not response:
            response = [{"role": "assistant", "content": ""}]
        pairs = self.template.render_pairs(prompt + response[:1], system, tools)
        if shape is Shape.PAIRWISE:
            rejected = self.template.render_pairs(prompt + response[1:2], system, tools)
            pairs.append(("", rejected[-1][1]))
        if shape is Shape.KTO:
            pairs.append(("", ""))  # placeholder; the KL answer comes from another row
        return pairs

    def _text(self, batch: dict[str, list[Any]], good: list[bool]) -> dict[str, list[Any]]:
        eos = self.tokenizer.eos_token or ""
        texts = [p[0]["content"] + eos if ok else "" for p, ok in zip(batch["_prompt"], good, strict=True)]
        ids = batch_encode(self.tokenizer, texts, add_special_tokens=True, threads=self.threads)
        return {"input_ids": [x if ok else [] for x, ok in zip(ids, good, strict=True)]}

    def _build(self, pairs: Sequence[Pair]) -> tuple[list[int], list[int]]:
        return build_supervised(
            pairs, self.cfg, eos_id=self.eos_id, efficient_eos=self.template.efficient_eos
        )

    def _prompt_of(self, pairs: list[Pair]) -> list[int]:
        """All turns before the last answer, as one prompt."""
        return list(chain.from_iterable(chain.from_iterable(pairs[:-1]))) + pairs[-1][0]

    def _pairwise(self, encoded: list[list[Pair]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {name: [] for name in OUTPUT_COLUMNS[Shape.PAIRWISE]}
        for pairs in encoded:
            if not pairs:
                for column in out.values():
                    column.append([])
                continue
            prompt, chosen, rejected = self._prompt_of(pairs[:-1]), pairs[-2][1], pairs[-1][1]
            s_len, t_len = fit_turn(
                len(prompt),
                max(len(chosen), len(rejected)),
                self.cfg.cutoff_len,
                self.cfg.response_reserve_ratio,
            )
            prompt = prompt[len(prompt) - s_len :]
            prompt_labels = prompt if self.cfg.train_on_prompt else [IGNORE_INDEX] * s_len
            for name, answer in (("chosen", chosen[:t_len]), ("rejected", rejected[:t_len])):
                out[f"{name}_input_ids"].append(prompt + answer)
                out[f"{name}_labels"].append(prompt_labels + answer)
        return out

    def _kto(self, encoded: list[list[Pair]], tags: list[bool | None]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {name: [] for name in OUTPUT_COLUMNS[Shape.KTO]}
        rows = [i for i, pairs in enumerate(encoded) if pairs]
        # The KL term pairs each prompt with another row's answer (the next good row, cyclically).
        kl_source = {row: rows[(k + 1) % len(rows)] for k, row in enumerate(rows)}
        for i, pairs in enumerate(encoded):
            if not pairs:
                for column in out.values():
                    column.append([] if column is not out["kto_tags"] else False)
                continue
            turns = pairs[:-1]  # drop the placeholder
            ids, labels = self._build(turns)
            other_answer = encoded[kl_source[i]][-2][1]
            kl_ids, kl_labels = self._build([*turns[:-1], (turns[-1][0], other_answer)])
            out["input_ids"].append(ids)
            out["labels"].append(labels)
            out["kl_input_ids"].append(kl_ids)
            out["kl_labels"].append(kl_labels)
            out["kto_tags"].append(bool(tags[i]))
        return out

    def _prompt_only(
        self, encoded: list[list[Pair]], rendered: list[list[tuple[str, str]]], batch: dict[str, list[Any]]
    ) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"input_ids": [], "labels": [], "prompt": []}
        for pairs, texts, response in zip(encoded, rendered, batch["_response"], strict=True):
            if not pairs:
                out["input_ids"].append([])
                out["labels"].append([])
                out["prompt"].append("")
                continue
            prompt, answer = self._prompt_of(pairs), pairs[-1][1] if response else []
            s_len, t_len = fit_turn(
                len(prompt), len(answer), self.cfg.cutoff_len, self.cfg.response_reserve_ratio
            )
            out["input_ids"].append(prompt[len(prompt) - s_len :])
            out["labels"].append(answer[:t_len])
            out["prompt"].append("".join(a + b for a, b in texts[:-1]) + texts[-1][0])
        return out
