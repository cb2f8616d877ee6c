"""Token ids memoised per pre-tokenized piece: the Rust tokenizer's model runs once per distinct word.

A byte-level BPE tokenizer (the GPT-2, Llama 3 and Qwen2 families) cuts a text at its added tokens,
cuts each segment into pieces with one regex, and encodes every piece on its own: a text's ids are
its pieces' ids, one after another. Natural text repeats its words (Zipf), and the Rust tokenizer
spends most of its time per piece (allocations, the BPE cache, one ``Token`` per id). Here the cuts
run in Python's ``re`` (C), each distinct piece is encoded once by the tokenizer's own model, and a
batch's ids are gathered with numpy.

Exact by construction, within bounds checked up front: :func:`piece_cache_for` serves only
tokenizers whose pipeline is exactly that (a known split regex, Unicode normalization or none, BPE
without dropout, added tokens without strip/word rules), and :meth:`PieceCache.encode` cuts only
texts in printable ASCII plus tab, newline and CR, where the regex classes (``\\p{L}``, ``\\p{N}``,
``\\s``) mean the same in Oniguruma and in ``re`` and every Unicode normalization form is the
identity. Other texts go to the tokenizer as they are. ``tests/trainer/test_data_pieces.py``
compares both ways on each family's pipeline.

Fast path: see finetune_trainer.fastpaths (its reference path and the tests that pin the two equal).
"""

from __future__ import annotations

import json
import re
from array import array
from itertools import chain, repeat
from typing import Any

import numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers

from .threads import encode_batch

GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
"""``ByteLevel(use_regex=True)``'s own regex (GPT-2 and the tokenizers trained like it)."""
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
KNOWN_SPLITS = (GPT2_SPLIT, LLAMA3_SPLIT, QWEN2_SPLIT)
UNICODE_NORMALIZERS = frozenset({"NFC", "NFD", "NFKC", "NFKD"})
"""The identity on ASCII text."""
ASCII_TEXT = re.compile(r"[\t\n\r\x20-\x7e]*")
SEPARATOR = "\x00"
"""Joins the texts of a batch, to cut them all in one pass."""
MAX_PIECES = 200_000
"""Distinct pieces kept (a few tens of MB); past it the memo starts again, common words first back."""

IntArray = np.ndarray


def ascii_split(pattern: str) -> re.Pattern[str]:
    """One of :data:`KNOWN_SPLITS` for ``re`` on ASCII text: letters and digits spelled out."""
    in_classes = re.sub(
        r"\[[^\]]*\]", lambda m: m[0].replace(r"\p{L}", "A-Za-z").replace(r"\p{N}", "0-9"), pattern
    )
    return re.compile(in_classes.replace(r"\p{L}", "[A-Za-z]").replace(r"\p{N}", "[0-9]"))


def _state(component: Any) -> dict[str, Any] | None:
    return None if component is None else dict(json.loads(component.__getstate__()))


def _normalizer_is_identity(state: dict[str, Any] | None) -> bool:
    if state is None:
        return True
    if state["type"] == "Sequence":
        return all(_normalizer_is_identity(s) for s in state["normalizers"])
    return state["type"] in UNICODE_NORMALIZERS


def _split_pattern(state: dict[str, Any] | None) -> str | None:
    """The pre-tokenizer's split regex, if it is a byte-level split this module reproduces."""
    if state is None:
        return None
    if state["type"] == "ByteLevel":
        return GPT2_SPLIT if state["use_regex"] and not state["add_prefix_space"] else None
    if state["type"] != "Sequence" or len(state["pretokenizers"]) != 2:
        return None
    split, byte_level = state["pretokenizers"]
    if (
        split["type"] != "Split"
        or split["behavior"] != "Isolated"
        or split["invert"]
        or byte_level["type"] != "ByteLevel"
        or byte_level["use_regex"]
        or byte_level["add_prefix_space"]
    ):
        return None
    pattern = split["pattern"].get("Regex")
    return pattern if pattern in KNOWN_SPLITS else None


def piece_cache_for(tokenizer: Any) -> PieceCache | None:
    """A :class:`PieceCache` for a transformers fast tokenizer, or None where its pipeline is not one it reproduces."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not isinstance(backend, Tokenizer) or backend.truncation or backend.padding:
        return None
    model = backend.model
    if not isinstance(model, models.BPE) or model.dropout:
        return None
    pattern = _split_pattern(_state(backend.pre_tokenizer))
    if pattern is None or not _normalizer_is_identity(_state(backend.normalizer)):
        return None
    added = backend.get_added_tokens_decoder()
    if backend.encode_special_tokens or any(
        t.lstrip or t.rstrip or t.single_word or SEPARATOR in t.content for t in added.values()
    ):
        return None
    return PieceCache(backend, ascii_split(pattern), {t.content: i for i, t in added.items() if t.content})


def _alternation(words: list[str]) -> re.Pattern[str]:
    # Longest first: at a given position re takes the first alternative that matches, as the
    # tokenizer's leftmost-longest matcher does.
    return re.compile("(" + "|".join(map(re.escape, sorted(words, key=len, reverse=True))) + ")")


class PieceCache:
    """Encodes texts piece by piece, each distinct piece once (see the module docstring).

    Build it with :func:`piece_cache_for`.
    """

    def __init__(self, backend: Tokenizer, split: re.Pattern[str], added: dict[str, int]) -> None:
        self._backend = backend
        self._findall = split.findall
        normalized = {t.content for t in backend.get_added_tokens_decoder().values() if t.normalized}
        # The tokenizer cuts at added tokens in two passes: those matched on the raw text, then those
        # matched on the normalized text (the same text here). The texts of a batch are joined by
        # SEPARATOR, cut in the first pass too: it is in no ASCII text, nor in any added token.
        later = [w for w in added if w in normalized]
        self._cutters = [_alternation([*(w for w in added if w not in normalized), SEPARATOR])]
        if later:
            self._cutters.append(_alternation(later))
        self._added = added
        self._byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        self._reset()

    def _reset(self) -> None:
        # Added tokens are pieces of their own: no cut segment contains one, so no piece equals one.
        self._index: dict[str, int] = {}
        self._ids = array("i")
        self._starts = array("q")
        self._lengths = array("q")
        for word, token_id in self._added.items():
            self._store(word, [token_id])
        self._store(SEPARATOR, [])

    def _store(self, piece: str, ids: list[int]) -> None:
        self._index[piece] = len(self._starts)
        self._starts.append(len(self._ids))
        self._lengths.append(len(ids))
        self._ids.extend(ids)

    def _learn(self, pieces: list[str]) -> None:
        """Encode new pieces with the tokenizer's model, as its pipeline does for each piece."""
        model = self._backend.model
        for piece in pieces:
            ((mapped, _),) = self._byte_level.pre_tokenize_str(piece)
            self._store(piece, [token.id for token in model.tokenize(mapped)])

    def _pieces(self, text: str) -> list[str]:
        """The pieces of ``text`` (added tokens and separators included), in order."""
        # After each pass: segments at even places, added tokens (or separators) at odd ones.
        parts = self._cutters[0].split(text)
        if len(self._cutters) == 2:
            cut = self._cutters[1].split
            parts = [p for k, part in enumerate(parts) for p in (cut(part) if k % 2 == 0 else (part,))]
        found = list(map(self._findall, parts[0::2]))
        list(map(list.append, found, parts[1::2]))  # each added token after the segment before it
        return list(chain.from_iterable(found))

    def encode(self, texts: list[str], *, threads: bool | None = None) -> tuple[IntArray, IntArray]:
        """Token ids of ``texts`` (no special tokens added): all ids flat (int32) and each text's count.

        ``threads`` is for the texts handed to the tokenizer as they are (``batch_encode``).
        """
        if not texts:
            return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
        if len(self._index) > MAX_PIECES:
            self._reset()
        ascii_only = list(map(ASCII_TEXT.fullmatch, texts))
        whole = [i for i, match in enumerate(ascii_only) if match is None]  # for the tokenizer
        if whole:
            texts_cut = [text if match else "" for text, match in zip(texts, ascii_only, strict=True)]
        pieces = self._pieces(SEPARATOR.join(texts_cut if whole else texts))
        index = np.fromiter(map(self._index.get, pieces, repeat(-1)), dtype=np.int64, count=len(pieces))
        missing = np.flatnonzero(index < 0).tolist()
        if missing:
            new = list(map(pieces.__getitem__, missing))
            self._learn(list(dict.fromkeys(new)))
            index[missing] = list(map(self._index.__getitem__, new))
        ids, lengths = self._gather(index)
        if whole:
            ids, lengths = self._merge_whole(texts, whole, ids, lengths, threads)
        return ids, lengths

    def _gather(self, index: IntArray) -> tuple[IntArray, IntArray]:
        """The pieces' ids, flat, and the number of ids per text (texts end at each separator)."""
        piece_len = np.frombuffer(self._lengths, dtype=np.int64)[index]
        piece_start = np.frombuffer(self._starts, dtype=np.int64)[index]
        ends = np.cumsum(piece_len)
        total = int(ends[-1]) if len(ends) else 0
        out_start = ends - piece_len
        flat = np.frombuffer(self._ids, dtype=np.int32)[
            np.repeat(piece_start - out_start, piece_len) + np.arange(total)
        ]
        text_ends = np.append(ends[index == self._index[SEPARATOR]], total)
        return flat, np.diff(text_ends, prepend=0)

    def _merge_whole(
        self, texts: list[str], whole: list[int], ids: IntArray, lengths: IntArray, threads: bool | None
    ) -> tuple[IntArray, IntArray]:
        encoded = encode_batch(self._backend, [texts[i] for i in whole], threads=threads)
        rows = np.split(ids, np.cumsum(lengths)[:-1])
        for i, row in zip(whole, encoded, strict=True):
            rows[i] = np.array(row, dtype=np.int32)
            lengths[i] = len(row)
        return np.concatenate(rows).astype(np.int32, copy=False), lengths
