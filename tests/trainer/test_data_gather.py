"""The batched supervised builder (numpy gathers) against the straightforward one (``build_supervised``)."""

from __future__ import annotations

import random
from itertools import product
from typing import Any

import numpy as np
import pytest

from finetune_api.method import Stage
from finetune_trainer.data import ProcessingConfig, get_template
from finetune_trainer.data.gather import flat_ids, supervised_columns
from finetune_trainer.data.processor import Encoder, batch_encode, build_supervised

Pair = tuple[list[int], list[int]]


def random_batch(seed: int) -> list[list[Pair]]:
    """Rows of 0-4 turns (0: a skipped row) with prompts/answers from empty to longer than any cutoff."""
    rng = random.Random(seed)
    rows: list[list[Pair]] = []
    for _ in range(60):
        turns = rng.choice([0, 1, 1, 1, 2, 3, 4])
        rows.append(
            [
                (
                    [rng.randrange(5, 9000) for _ in range(rng.choice([0, 1, 3, 20, 70, 300]))],
                    [rng.randrange(5, 9000) for _ in range(rng.choice([0, 1, 4, 30, 90, 400]))],
                )
                for _ in range(turns)
            ]
        )
    return rows


def reference(
    rows: list[list[Pair]], cfg: ProcessingConfig, eos_id: int | None, efficient_eos: bool
) -> tuple[list[list[int]], list[list[int]]]:
    built = [
        build_supervised(pairs, cfg, eos_id=eos_id, efficient_eos=efficient_eos) if pairs else ([], [])
        for pairs in rows
    ]
    return [ids for ids, _ in built], [labels for _, labels in built]


@pytest.mark.parametrize(
    ("cutoff", "ratio", "train_on_prompt", "mask_history", "efficient_eos", "eos_id"),
    [
        (cutoff, ratio, top, mask, eff, eos)
        for cutoff, ratio, top, mask, (eff, eos) in product(
            (8, 57, 256, 4096),
            (0.0, 0.25, 0.6),
            (False, True),
            (False, True),
            ((False, 2), (True, 2), (True, 0), (True, None)),
        )
    ],
)
def test_batched_builder_matches_the_reference_on_every_setting(
    cutoff: int,
    ratio: float,
    train_on_prompt: bool,
    mask_history: bool,
    efficient_eos: bool,
    eos_id: int | None,
) -> None:
    cfg = ProcessingConfig(
        cutoff_len=cutoff,
        response_reserve_ratio=ratio,
        train_on_prompt=train_on_prompt,
        mask_history=mask_history,
    )
    rows = random_batch(seed=cutoff + int(ratio * 10))
    encoded = [ids for pairs in rows for pair in pairs for ids in pair]
    turns = np.array([len(pairs) for pairs in rows], dtype=np.int64)
    input_ids, labels = supervised_columns(
        *flat_ids(encoded), turns, cfg, eos_id=eos_id, efficient_eos=efficient_eos
    )
    want_ids, want_labels = reference(rows, cfg, eos_id, efficient_eos)
    assert input_ids.to_pylist() == want_ids
    assert labels.to_pylist() == want_labels
    assert str(input_ids.type) == "list<item: int32>"


def test_batched_builder_on_an_empty_batch() -> None:
    ids, labels = supervised_columns(*flat_ids([]), np.zeros(0, dtype=np.int64), ProcessingConfig())
    assert len(ids) == 0 and len(labels) == 0


CONVERSATION = [
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "first answer"},
    {"role": "observation", "content": "a tool said {content} and {eos}"},
    {"role": "function", "content": "call()"},
    {"role": "user", "content": "second question " * 30},
    {"role": "assistant", "content": "second answer " * 40},
]


def mixed_batch() -> dict[str, list[Any]]:
    """Single- and multi-turn rows, system prompts and tools, long rows to cut, and skipped rows."""
    rows = [
        (CONVERSATION[:1], CONVERSATION[1:2], "", "", ""),
        (CONVERSATION[:5], CONVERSATION[5:], "be brief", "", ""),
        ([], [], "", "", "row 2: field 'output': missing"),
        (CONVERSATION[:3], CONVERSATION[3:4], "", '[{"name": "call"}]', ""),
        ([{"role": "user", "content": "word " * 500}], CONVERSATION[1:2], "", "", ""),
        ([], [], "", "", "row 5: field 'instruction': is empty"),
    ]
    return {
        "_prompt": [r[0] for r in rows],
        "_response": [r[1] for r in rows],
        "_system": [r[2] for r in rows],
        "_tools": [r[3] for r in rows],
        "_kto_tag": [None] * len(rows),
        "_error": [r[4] for r in rows],
    }


@pytest.mark.parametrize("template", ["chatml", "llama3", "mistral", "alpaca", "auto"])
@pytest.mark.parametrize("cutoff", [64, 2048])
def test_encoder_matches_render_then_build_per_row(data_tokenizer: Any, template: str, cutoff: int) -> None:
    cfg = ProcessingConfig(stage=Stage.SFT, template=template, cutoff_len=cutoff, mask_history=cutoff == 64)
    chat = get_template(template, data_tokenizer)
    batch = mixed_batch()
    out = Encoder(data_tokenizer, chat, cfg)(batch)
    arrow_out = Encoder(data_tokenizer, chat, cfg, arrow=True)(batch)
    for i, error in enumerate(batch["_error"]):
        if error:
            want: tuple[list[int], list[int]] = ([], [])
        else:
            messages = batch["_prompt"][i] + batch["_response"][i]
            texts = chat.render_pairs(messages, batch["_system"][i], batch["_tools"][i])
            flat = batch_encode(data_tokenizer, [t for pair in texts for t in pair])
            pairs = [(flat[k], flat[k + 1]) for k in range(0, len(flat), 2)]
            want = build_supervised(pairs, cfg, eos_id=data_tokenizer.eos_token_id)
        assert (out["input_ids"][i], out["labels"][i]) == want
        assert arrow_out["input_ids"][i].as_py() == want[0] and arrow_out["labels"][i].as_py() == want[1]
    if cutoff == 64:  # the long rows were cut, so the truncation rule was exercised
        assert len(out["input_ids"][1]) == len(out["input_ids"][4]) == 64
