"""Attention per packed sample (packed_sdpa): the masked SDPA path's results, without its wasted FLOPs."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from transformers import LlamaForCausalLM, Qwen2Config

from finetune_api.finetunejob import Attention, ModelSpec
from finetune_trainer.data import PackedCollator
from finetune_trainer.data.collator import pad_batch
from finetune_trainer.model import load_model_and_tokenizer
from finetune_trainer.model.loader import resolve_attention
from finetune_trainer.model.packed_attention import (
    PACKED_SDPA,
    packed_sdpa_mask,
    packed_segments,
    register_packed_sdpa,
    supports_packed_sdpa,
)

from .helpers import tiny_llama_config

PAD = 0
# fp32 throughout: the per-sample and masked kernels sum in different orders; 1e-5 is ~100 ulps at these magnitudes.
TOL = {"atol": 1e-5, "rtol": 1e-5}
CONFIG = tiny_llama_config(pad_token_id=PAD)  # grouped-query attention, as in the benchmark's model


def twin_models() -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    """The same random weights with masked SDPA and with packed_sdpa (each with its own config)."""
    register_packed_sdpa()
    torch.manual_seed(0)
    sdpa = LlamaForCausalLM._from_config(
        copy.deepcopy(CONFIG), attn_implementation="sdpa", dtype=torch.float32
    )
    packed = LlamaForCausalLM._from_config(
        copy.deepcopy(CONFIG), attn_implementation=PACKED_SDPA, dtype=torch.float32
    )
    packed.load_state_dict(sdpa.state_dict())
    assert packed.config._attn_implementation == PACKED_SDPA and sdpa.config._attn_implementation == "sdpa"
    return sdpa, packed


def packed_batch(rows: list[list[int]], *, seed: int = 1) -> dict[str, torch.Tensor]:
    """A PackedCollator batch whose rows hold samples of the given lengths (labels on every token)."""
    rng = random.Random(seed)
    features = []
    for lengths in rows:
        ids = [rng.randrange(1, 128) for _ in range(sum(lengths))]
        positions = [p for n in lengths for p in range(n)]
        features.append({"input_ids": ids, "labels": ids, "position_ids": positions})
    batch = PackedCollator(PAD)(features)
    del batch["labels"]
    return batch


ROWS = [[7, 13, 5, 1], [20, 9], [33]]  # one-token samples, a padded row, a row of a single sample


def test_packed_segments_follow_restarting_positions() -> None:
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1], [0, 1, 2, 3, 4, 5, 6, 7]])
    assert packed_segments(positions) == [[0, 3, 5, 6, 8], [0, 8]]
    assert packed_segments(torch.arange(8)[None]) is None  # nothing packed: plain SDPA
    assert packed_segments(torch.tensor([[3, 4, 5, 0, 1]])) == [[0, 3, 5]]  # transformers' rule: any jump


@pytest.mark.parametrize("training", [False, True])
def test_packed_logits_and_gradients_equal_masked_sdpa(training: bool) -> None:
    sdpa, packed = twin_models()
    batch = packed_batch(ROWS)
    outputs = []
    for model in (sdpa, packed):
        model.train(training).zero_grad()
        logits = model(**batch).logits
        (logits * torch.linspace(-1, 1, logits.shape[-1])).sum().backward()  # a loss that weighs every logit
        outputs.append((logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (logits_sdpa, grads_sdpa), (logits_packed, grads_packed) = outputs
    torch.testing.assert_close(logits_packed, logits_sdpa, **TOL)
    for name, grad in grads_sdpa.items():
        torch.testing.assert_close(grads_packed[name], grad, atol=1e-4, rtol=1e-4, msg=name)


def test_packed_logits_equal_each_sample_alone() -> None:
    """No cross-contamination: every sample of a packed batch gets the logits it gets alone."""
    _, packed = twin_models()
    batch = packed_batch(ROWS)
    with torch.no_grad():
        logits = packed(**batch).logits
        for r, lengths in enumerate(ROWS):
            start = 0
            for n in lengths:
                alone = packed(input_ids=batch["input_ids"][r : r + 1, start : start + n]).logits[0]
                torch.testing.assert_close(logits[r, start : start + n], alone, **TOL)
                start += n


def test_padded_batches_and_generation_fall_back_to_sdpa() -> None:
    sdpa, packed = twin_models()
    batch = pad_batch([[5, 6, 7, 8, 9], [5, 6]], None, pad_token_id=PAD, side="left")
    with torch.no_grad():
        masked = [m(**batch, use_cache=False).logits for m in (sdpa, packed)]
        real = batch["attention_mask"].bool()
        torch.testing.assert_close(masked[1][real], masked[0][real], **TOL)
        generated = [
            m.generate(**batch, max_new_tokens=6, do_sample=False, pad_token_id=PAD) for m in (sdpa, packed)
        ]
    assert torch.equal(generated[0], generated[1])


def test_mask_builder_leaves_out_only_the_packed_causal_mask() -> None:
    common = {"batch_size": 1, "q_length": 4, "kv_length": 4}
    assert packed_sdpa_mask(**common) is None
    padded = packed_sdpa_mask(**common, attention_mask=torch.tensor([[False, True, True, True]]))
    assert padded is not None and padded.shape == (1, 1, 4, 4)
    with_cache = packed_sdpa_mask(batch_size=1, q_length=2, kv_length=6, q_offset=4, kv_offset=0)
    assert with_cache is not None and with_cache.shape == (1, 1, 2, 6)
    sliding = Qwen2Config(use_sliding_window=True, sliding_window=2, max_window_layers=0, num_hidden_layers=2)
    assert not supports_packed_sdpa(sliding)
    # Delegated to SDPA's builder (which, told not to skip, materialises the mask); ours would return None.
    assert packed_sdpa_mask(**common, config=sliding, allow_is_causal_skip=False) is not None
    assert packed_sdpa_mask(**common, config=CONFIG, allow_is_causal_skip=False) is None
    assert supports_packed_sdpa(Qwen2Config(num_hidden_layers=2)) and supports_packed_sdpa(CONFIG)


def test_auto_attention_packs_on_cpu_only() -> None:
    assert resolve_attention(Attention.AUTO, cuda=False, dtype=torch.float32, packing=True) == PACKED_SDPA
    assert resolve_attention(Attention.AUTO, cuda=False, dtype=torch.float32) == "sdpa"
    assert resolve_attention(Attention.SDPA, cuda=False, dtype=torch.float32, packing=True) == "sdpa"
    assert resolve_attention(Attention.AUTO, cuda=True, dtype=torch.float32, packing=True) == "sdpa"


def test_loader_uses_packed_sdpa_when_packing(model_cache_dir: object) -> None:
    spec = ModelSpec.model_validate({"source": "tiny://llama?layers=2"})
    loaded = load_model_and_tokenizer(spec, packing=True)
    assert loaded.attention == PACKED_SDPA == loaded.model.config._attn_implementation
    assert load_model_and_tokenizer(spec).attention == "sdpa"
