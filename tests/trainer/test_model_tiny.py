"""tiny:// models: URI parsing (pure), deterministic builds, and the saved folder behaving like a real model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune_trainer.model.tiny import (
    IM_END,
    IM_START,
    TINY_VERSION,
    TinySpec,
    cache_name,
    cache_root,
    tiny_model_path,
)

from .helpers import weights_sha256

# ---- pure ----------------------------------------------------------------------------------------


# Parsing tiny:// URIs is the API's: tests/unit/test_tiny_uri.py.


def test_cache_name_keys_by_arch_version_and_changed_fields_only() -> None:
    assert cache_name(TinySpec(arch="llama")) == f"llama-v{TINY_VERSION}"
    assert cache_name(TinySpec(arch="qwen2", layers=4, seed=0)) == f"qwen2-v{TINY_VERSION}-layers4"


def test_cache_root_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.delenv("FINETUNE_CACHE_DIR")
    assert cache_root() == Path.home() / ".cache" / "finetune-operator"


# ---- builds --------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_build_is_deterministic_and_loads_as_a_normal_hf_folder(arch: str, tmp_path: Path) -> None:
    first = tiny_model_path(f"tiny://{arch}", root=tmp_path / "a")
    second = tiny_model_path(f"tiny://{arch}", root=tmp_path / "b")
    assert first != second
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()
    model_a = AutoModelForCausalLM.from_pretrained(first)
    model_b = AutoModelForCausalLM.from_pretrained(second)
    assert weights_sha256(model_a) == weights_sha256(model_b)
    assert model_a.config.model_type == arch
    tokenizer = AutoTokenizer.from_pretrained(first)
    assert model_a.config.vocab_size == len(tokenizer)
    # A different seed is a different model.
    other = AutoModelForCausalLM.from_pretrained(
        tiny_model_path(f"tiny://{arch}?seed=1", root=tmp_path / "a")
    )
    assert weights_sha256(other) != weights_sha256(model_a)


def test_build_is_cached_and_leaves_no_staging_folders(tmp_path: Path) -> None:
    path = tiny_model_path("tiny://llama", root=tmp_path)
    marker = path / "config.json"
    mtime = marker.stat().st_mtime_ns
    assert tiny_model_path("tiny://llama", root=tmp_path) == path
    assert marker.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == [f"llama-v{TINY_VERSION}"]


def test_overrides_shape_the_model(tmp_path: Path) -> None:
    path = tiny_model_path(
        "tiny://llama?layers=3&hidden=96&heads=6&kv_heads=3&intermediate=160", root=tmp_path
    )
    config = AutoModelForCausalLM.from_pretrained(path).config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (3, 96, 6)
    assert (config.num_key_value_heads, config.intermediate_size) == (3, 160)


def test_tokenizer_has_special_tokens_and_a_chatml_template(tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path("tiny://qwen2", root=tmp_path))
    assert {tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token} == {
        "<|begin_of_text|>",
        "<|endoftext|>",
        "<|pad|>",
    }
    text = "The model trains the weights."
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text) / 2, "BPE merges should compress ordinary words"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert tokenizer.decode(out["input_ids"]) == (
        f"{IM_START}user\nhi{IM_END}\n{IM_START}assistant\nhello{IM_END}\n"
    )
    # The assistant mask covers exactly "hello<|im_end|>".
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(masked) == f"hello{IM_END}"
    for token in (IM_START, IM_END):
        assert len(tokenizer(token)["input_ids"]) == 1


def test_tiny_model_generates_and_round_trips_save_pretrained(tmp_path: Path) -> None:
    path = tiny_model_path("tiny://llama", root=tmp_path / "cache")
    model = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer("The cat reads", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, ids["input_ids"].shape[1] + 4)
    model.save_pretrained(tmp_path / "copy")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "copy")
    assert weights_sha256(reloaded) == weights_sha256(model)
    assert torch.equal(reloaded(**ids).logits, model(**ids).logits)


def test_benchmark_size_variant_reaches_its_vocabulary(tmp_path: Path) -> None:
    uri = "tiny://qwen2?layers=4&hidden=256&intermediate=688&heads=4&kv_heads=2&vocab=4096"
    path = tiny_model_path(uri, root=tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert len(tokenizer) == model.config.vocab_size == 4096
    assert 4_000_000 < sum(p.numel() for p in model.parameters()) < 6_000_000
