"""Packing without cross-contamination: a packed batch gives each sample the logits it gets alone."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM

from finetune_api.method import Stage
from finetune_trainer.data import (
    IGNORE_INDEX,
    DatasetConfig,
    PackedCollator,
    ProcessingConfig,
    make_collator,
    prepare_dataset,
)
from finetune_trainer.data.collator import PaddingCollator, PairwiseCollator, block_causal_mask
from finetune_trainer.data.packing import pack_lengths, pack_rows

from .helpers import tiny_llama_config

PAD = 0


def tiny_llama(attention: str) -> LlamaForCausalLM:
    config = tiny_llama_config(pad_token_id=PAD)
    torch.manual_seed(0)
    return LlamaForCausalLM._from_config(config, attn_implementation=attention, dtype=torch.float32).eval()


def samples(lengths: list[int]) -> list[list[int]]:
    rng = random.Random(1)
    return [[rng.randrange(1, 128) for _ in range(n)] for n in lengths]


def packed_features(rows: list[list[list[int]]]) -> list[dict[str, list[int]]]:
    features = []
    for row in rows:
        packed = pack_rows({"input_ids": row}, cutoff_len=64)
        assert len(packed["input_ids"]) == 1
        features.append({k: v[0] for k, v in packed.items()})
    return features


@pytest.mark.parametrize(
    ("attention", "mask_dtype", "flatten", "training"),
    [
        ("sdpa", None, False, False),
        ("sdpa", None, False, True),
        ("eager", None, False, False),
        ("sdpa", None, True, False),
        ("sdpa", torch.bool, False, False),
        ("eager", torch.float32, False, False),
    ],
)
def test_packed_logits_equal_each_sample_alone(
    attention: str, mask_dtype: torch.dtype | None, flatten: bool, training: bool
) -> None:
    model = tiny_llama(attention).train(
        training
    )  # dropout is 0: train mode only changes the cache default path
    rows = [samples([7, 13, 5]), samples([20, 9])]  # different totals: the collator pads one row
    batch = PackedCollator(PAD, mask_dtype=mask_dtype, flatten=flatten)(packed_features(rows))
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.flatten(0, 1)
        start = 0
        width = batch["input_ids"].shape[1]
        for r, row in enumerate(rows):
            start = 0 if flatten and r == 0 else (start if flatten else r * width)
            for sample in row:  # pack_rows keeps the data's order inside a row
                alone = model(input_ids=torch.tensor([sample])).logits[0]
                torch.testing.assert_close(logits[start : start + len(sample)], alone, atol=1e-5, rtol=1e-5)
                start += len(sample)


def test_packed_batch_without_use_cache_false_would_contaminate() -> None:
    """Why the collator sends use_cache=False: with the config's default cache, transformers skips the packed mask."""
    model = tiny_llama("sdpa")
    batch = PackedCollator(PAD)(packed_features([samples([7, 13])]))
    del batch["use_cache"], batch["labels"]
    with torch.no_grad():
        second = model(**batch).logits[0, 7:20]
        alone = model(input_ids=torch.tensor([samples([7, 13])[1]])).logits[0]
    assert not torch.allclose(second, alone, atol=1e-3)


def test_plain_concatenation_would_contaminate() -> None:
    """Control: the same row without restarting positions gives different logits (the test above can fail)."""
    model = tiny_llama("sdpa")
    row = samples([7, 13])
    with torch.no_grad():
        joined = model(input_ids=torch.tensor([row[0] + row[1]])).logits[0, 7:]
        alone = model(input_ids=torch.tensor([row[1]])).logits[0]
    assert not torch.allclose(joined, alone, atol=1e-3)


def test_pack_lengths_fills_rows_without_overflow() -> None:
    rng = random.Random(0)
    lengths = [rng.randrange(1, 65) for _ in range(500)]
    bins = pack_lengths(lengths, 64)
    assert sorted(i for b in bins for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    lower_bound = -(-sum(lengths) // 64)
    assert len(bins) <= lower_bound * 1.05 + 1
    with pytest.raises(ValueError, match="exceeds"):
        pack_lengths([65], 64)


def test_pack_rows_restarts_positions_and_hides_boundaries() -> None:
    batch = {
        "input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9]],
        "labels": [[-100, 2, 3], [-100, 5], [6, 7, 8, 9]],
    }
    out = pack_rows(batch, cutoff_len=9)
    assert out["input_ids"] == [[1, 2, 3, 4, 5, 6, 7, 8, 9]]
    assert out["position_ids"] == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert out["labels"] == [[-100, 2, 3, -100, 5, -100, 7, 8, 9]]
    long_doc = pack_rows({"input_ids": [list(range(1, 11))]}, cutoff_len=4)  # pt: documents cut to the cutoff
    assert sorted(len(r) for r in long_doc["input_ids"]) == [2, 4, 4]


def test_block_causal_mask_shape_and_blocks() -> None:
    mask = block_causal_mask(torch.tensor([[0, 1, 0, 1, 2]]))
    assert mask.shape == (1, 1, 5, 5)
    assert mask[0, 0].tolist() == [
        [True, False, False, False, False],
        [True, True, False, False, False],
        [False, False, True, False, False],
        [False, False, True, True, False],
        [False, False, True, True, True],
    ]


def test_collators_pad_to_multiple_of_8_with_ignored_labels() -> None:
    batch = PaddingCollator(PAD)(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5] * 9, "labels": [5] * 9}]
    )
    assert batch["input_ids"].shape == (2, 16)
    assert batch["attention_mask"][0].tolist() == [1, 1, 1] + [0] * 13
    assert batch["labels"][0].tolist() == [-100, 6, 7] + [-100] * 13
    left = PaddingCollator(PAD, padding_side="left")([{"input_ids": [5, 6]}])
    assert left["input_ids"][0].tolist() == [0] * 6 + [5, 6]
    pairs = PairwiseCollator(PAD)(
        [
            {
                "chosen_input_ids": [1, 2],
                "chosen_labels": [-100, 2],
                "rejected_input_ids": [1, 3, 3],
                "rejected_labels": [-100, 3, 3],
            }
        ]
    )
    assert pairs["input_ids"].tolist() == [[1, 2, 0, 0, 0, 0, 0, 0], [1, 3, 3, 0, 0, 0, 0, 0]]
    packed = PackedCollator(PAD)(
        [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "position_ids": [0, 1, 0]}]
    )
    assert packed["position_ids"].tolist() == [[0, 1, 0, 0, 1, 2, 3, 4]]  # padding is a sample of its own
    assert "attention_mask" not in packed


def test_prepare_dataset_with_packing(tmp_path: Path, data_cache_dir: Path, data_tokenizer: Any) -> None:
    path = tmp_path / "sft.jsonl"
    rows = [{"instruction": f"question number {i}", "output": "answer " * (1 + i % 7)} for i in range(60)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    processing = ProcessingConfig(
        stage=Stage.SFT, template="chatml", cutoff_len=128, packing=True, cache_dir=data_cache_dir
    )
    prepared = prepare_dataset([DatasetConfig(source=str(path))], processing, data_tokenizer)
    train = prepared.train
    assert 60 > len(train) >= 10
    starts = sum(r["position_ids"].count(0) for r in train)
    assert starts == 60  # every sample exactly once
    for row in train:
        assert len(row["input_ids"]) <= 128
        assert all(row["labels"][i] == IGNORE_INDEX for i, p in enumerate(row["position_ids"]) if p == 0)
    collator = make_collator(processing, data_tokenizer)
    assert isinstance(collator, PackedCollator)
    batch = collator([train[0], train[1]])
    assert batch["input_ids"].shape[1] % 8 == 0
