"""The per-piece memo (``pieces.py``) against the Rust tokenizer itself, on each pipeline it serves."""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import pytest
from tokenizers import AddedToken, Tokenizer
from transformers import PreTrainedTokenizerFast

from finetune_api.method import Stage
from finetune_trainer.data import ProcessingConfig, get_template, pieces
from finetune_trainer.data.pieces import LLAMA3_SPLIT, QWEN2_SPLIT, PieceCache, piece_cache_for
from finetune_trainer.data.processor import Encoder

TRICKY = [
    "",
    "Hello world",
    "it's they'RE we'Ve I'M you'll he'd x's 'S ''s '",
    "a   b    c\t\td \n\n\nx  \r\n\r\ny   ",
    "   leading and trailing   ",
    "\n",
    " ",
    "digits 1 12 123 1234 12345 3.14159 1,000,000 x2y3",
    "punct!!! ?? ... --- (a) [b] {c} <d> 'q' \"dq\" a.b,c;d:e",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "4<|im_end|>\n",
    "<|im_end|><|im_end|>x<|im_start|>",
    "\n\n<|im_start|>\n\n",
    "almost <|im_ special <|im_end| tokens |>",
    "tabs\tand\x0bvertical\x0cfeeds",
    "café naïve 中文 emoji 🙂 mixed with ascii",
    "control \x1c\x1d\x1e\x1f chars and \x85 next-line and \xa0 nbsp",
    "ends with spaces before a token  <|im_end|>",
]
ALPHABET = [
    "a", "Z", "word", " the", "'", "s", "t", "re", "LL", "D", " ", "  ", "\n", "\r", "\r\n", "\t",
    "0", "12", "3456", ".", ",!?", "-", "_", "(", "<|im_end|>", "<|im_start|>", "<|im_",
]  # fmt: skip
NON_ASCII = ["é", "中", "\x1c", "\x85"]


def fuzz_texts(count: int, seed: int) -> list[str]:
    """Random texts from :data:`ALPHABET`; one in ten also has a character the memo leaves to the tokenizer."""
    rng = random.Random(seed)
    texts = ["".join(rng.choices(ALPHABET, k=rng.randint(0, 40))) for _ in range(count)]
    return [t + rng.choice(NON_ASCII) + t if i % 10 == 0 else t for i, t in enumerate(texts)]


def reference(backend: Tokenizer, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]


def memo_lists(cache: PieceCache, texts: list[str]) -> list[list[int]]:
    ids, lengths = cache.encode(texts)
    assert ids.dtype == np.int32 and len(lengths) == len(texts) and int(lengths.sum()) == len(ids)
    return [row.tolist() for row in np.split(ids, np.cumsum(lengths)[:-1])] if texts else []


def with_pipeline(tokenizer: PreTrainedTokenizerFast, **parts: Any) -> PreTrainedTokenizerFast:
    """A copy of ``tokenizer`` with parts of its ``tokenizer.json`` replaced (same vocabulary and merges)."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state.update(parts)
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(state)),
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
    )


def split_then_bytes(pattern: str) -> dict[str, Any]:
    """The pre-tokenizer of the Llama 3 / Qwen2 tokenizer.json files, with ``pattern``."""
    return {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        ],
    }


PIPELINES: dict[str, dict[str, Any]] = {
    "gpt2": {},
    "llama3": {"pre_tokenizer": split_then_bytes(LLAMA3_SPLIT), "normalizer": None},
    "qwen2": {"pre_tokenizer": split_then_bytes(QWEN2_SPLIT), "normalizer": {"type": "NFC"}},
}


@pytest.mark.parametrize("family", sorted(PIPELINES))
def test_memo_gives_the_tokenizers_ids(data_tokenizer: Any, family: str) -> None:
    tokenizer = with_pipeline(data_tokenizer, **PIPELINES[family])
    cache = piece_cache_for(tokenizer)
    assert cache is not None
    backend = tokenizer.backend_tokenizer
    texts = TRICKY + fuzz_texts(400, seed=len(family))
    assert memo_lists(cache, texts) == reference(backend, texts)
    # A second batch reuses the pieces learnt from the first.
    again = fuzz_texts(200, seed=99)
    assert memo_lists(cache, again) == reference(backend, again)


def test_memo_cuts_at_normalized_added_tokens_after_special_ones(data_tokenizer: Any) -> None:
    tokenizer = with_pipeline(data_tokenizer)
    backend = tokenizer.backend_tokenizer
    # "q<" starts before the special "<x|" and overlaps it: the special one is cut first.
    backend.add_special_tokens([AddedToken("<x|", normalized=False)])
    backend.add_tokens([AddedToken("q<", normalized=True), AddedToken("tool", normalized=True)])
    cache = piece_cache_for(tokenizer)
    assert cache is not None
    texts = ["q<x|tool b", "aq<x|tool|tool", "tool q< q<x", "x|tool", " tool  tools"]
    assert memo_lists(cache, texts) == reference(backend, texts)


def test_memo_starts_again_past_its_limit(data_tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pieces, "MAX_PIECES", 50)
    cache = piece_cache_for(data_tokenizer)
    assert cache is not None
    backend = data_tokenizer.backend_tokenizer
    for seed in range(3):
        texts = fuzz_texts(100, seed=seed)
        assert memo_lists(cache, texts) == reference(backend, texts)


def test_empty_batch(data_tokenizer: Any) -> None:
    cache = piece_cache_for(data_tokenizer)
    assert cache is not None
    ids, lengths = cache.encode([])
    assert len(ids) == 0 and len(lengths) == 0


@pytest.mark.parametrize(
    "parts",
    [
        {
            "pre_tokenizer": {
                "type": "ByteLevel",
                "add_prefix_space": True,
                "trim_offsets": True,
                "use_regex": True,
            }
        },
        {"pre_tokenizer": split_then_bytes(r"\s+|\w+|[^\s\w]+")},
        {"pre_tokenizer": {"type": "Whitespace"}},
        {"normalizer": {"type": "Lowercase"}},
        {"truncation": {"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0}},
    ],
    ids=["prefix-space", "other-regex", "whitespace", "lowercase", "truncation"],
)
def test_pipelines_it_cannot_reproduce_are_left_to_the_tokenizer(
    data_tokenizer: Any, parts: dict[str, Any]
) -> None:
    assert piece_cache_for(with_pipeline(data_tokenizer, **parts)) is None


def test_added_tokens_with_strip_rules_are_left_to_the_tokenizer(data_tokenizer: Any) -> None:
    tokenizer = with_pipeline(data_tokenizer)
    tokenizer.backend_tokenizer.add_special_tokens([AddedToken("<mask>", lstrip=True)])
    assert piece_cache_for(tokenizer) is None


def test_bpe_dropout_is_left_to_the_tokenizer(data_tokenizer: Any) -> None:
    state = json.loads(data_tokenizer.backend_tokenizer.to_str())
    state["model"]["dropout"] = 0.1
    assert piece_cache_for(with_pipeline(data_tokenizer, model=state["model"])) is None


def stage_batch(stage: Stage) -> dict[str, list[Any]]:
    """Rows for ``stage``: multi-turn, a system prompt, non-ASCII text, and a skipped row."""
    turns = [
        {"role": "user", "content": "What's 12+30?"},
        {"role": "assistant", "content": "It's 42.\n\n"},
        {"role": "user", "content": "Und auf Deutsch, bitte: zweiundvierzig?"},
    ]
    answers = [{"role": "assistant", "content": "Ja — 42 ✓"}, {"role": "assistant", "content": "no idea"}]
    responses = {Stage.DPO: answers, Stage.GRPO: []}.get(stage, answers[:1])
    rows = [(turns, responses, "Be brief.", ""), (turns[:1], responses, "", ""), ([], [], "", "row 2: bad")]
    return {
        "_prompt": [r[0] for r in rows],
        "_response": [r[1] for r in rows],
        "_system": [r[2] for r in rows],
        "_tools": [""] * len(rows),
        "_kto_tag": [True, False, None],
        "_error": [r[3] for r in rows],
    }


@pytest.mark.parametrize("stage", [Stage.SFT, Stage.DPO, Stage.KTO, Stage.GRPO])
def test_encoder_rows_are_the_same_with_and_without_the_memo(data_tokenizer: Any, stage: Stage) -> None:
    cfg = ProcessingConfig(stage=stage, template="chatml", cutoff_len=40)
    memo = Encoder(data_tokenizer, get_template("chatml", data_tokenizer), cfg)
    plain = Encoder(data_tokenizer, get_template("chatml", data_tokenizer), cfg)
    plain.pieces = None
    assert memo.pieces is not None
    batch = stage_batch(stage)
    assert memo(batch) == plain(batch)


def test_special_tokens_split_as_text_are_left_to_the_tokenizer(data_tokenizer: Any) -> None:
    tokenizer = with_pipeline(data_tokenizer)
    tokenizer.backend_tokenizer.encode_special_tokens = True  # transformers' split_special_tokens
    assert piece_cache_for(tokenizer) is None
