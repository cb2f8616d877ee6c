"""``tiny://<arch>`` models: small random LLaMA / Qwen2 models with a locally trained tokenizer.

They exist for smoke tests, offline demos and benchmarks: built in seconds from a config and a
fixed seed (so two builds are identical), cached on disk as a normal Hugging Face folder, so
every later path (loading, PEFT, saving, export) treats them exactly like a downloaded model.

``tiny://llama?layers=4&hidden=256`` overrides the defaults; e.g.
``tiny://llama?layers=8&hidden=512&intermediate=1408&heads=8&kv_heads=4&vocab=8192`` is a ~25M
parameter model for throughput benchmarks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from finetune_api.pod import CACHE_DIR_ENV
from finetune_api.tiny import TinySpec, parse_tiny_uri

from ..files import new_staging_dir
from .corpus import corpus_lines

# Bump when the corpus, tokenizer recipe or default shapes change: it is part of the cache key.
TINY_VERSION = 2

BOS, EOS, PAD = "<|begin_of_text|>", "<|endoftext|>", "<|pad|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, IM_START, IM_END]

# ChatML; the {% generation %} markers let transformers return an assistant-token mask.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def cache_name(spec: TinySpec) -> str:
    """Folder name: arch, version, and only the fields that differ from the defaults."""
    defaults = TinySpec(arch=spec.arch)
    changed = [
        f"{f.name}{getattr(spec, f.name)}"
        for f in dataclasses.fields(spec)
        if f.name != "arch" and getattr(spec, f.name) != getattr(defaults, f.name)
    ]
    return "-".join([spec.arch, f"v{TINY_VERSION}", *changed])


def cache_root() -> Path:
    """Root of the trainer's on-disk cache: ``$FINETUNE_CACHE_DIR`` or ``~/.cache/finetune-operator``."""
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env) if env else Path.home() / ".cache" / "finetune-operator"


def tiny_model_path(uri: str, *, root: Path | None = None) -> Path:
    """The local folder of ``uri``'s tiny model, building and caching it first if needed.

    Concurrent builders are safe: each builds in a temporary sibling folder and renames it into
    place; the loser of the race discards its copy.
    """
    spec = parse_tiny_uri(uri)
    base = (root or cache_root()) / "tiny"
    target = base / cache_name(spec)
    if (target / "config.json").is_file():
        return target
    base.mkdir(parents=True, exist_ok=True)
    staging = new_staging_dir(base, f".{cache_name(spec)}-")
    try:
        save_tiny_model(spec, staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def save_tiny_model(spec: TinySpec, folder: Path) -> None:
    """Build the tokenizer and model of ``spec`` and save both into ``folder`` (HF layout)."""
    tokenizer = build_tiny_tokenizer(spec)
    model = build_tiny_model(spec, tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "tiny.json").write_text(
        json.dumps({"version": TINY_VERSION, **dataclasses.asdict(spec)}) + "\n"
    )


def build_tiny_tokenizer(spec: TinySpec) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on the built-in corpus, with special tokens and a ChatML template."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # About three sentences per wanted token lets bigger vocabularies find enough distinct merges.
    lines = corpus_lines(sentences=max(6000, 3 * spec.vocab), seed=spec.seed)
    bpe.train_from_iterator(lines, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=[IM_START, IM_END],
        model_max_length=spec.max_positions,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_config(spec: TinySpec, tokenizer: PreTrainedTokenizerFast) -> PretrainedConfig:
    """The model config of ``spec``: vocabulary and special-token ids taken from ``tokenizer``."""
    ids = {
        name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (("bos", BOS), ("eos", EOS), ("pad", PAD))
    }
    common = dict(
        vocab_size=max(len(tokenizer), spec.vocab),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_positions,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        tie_word_embeddings=False,
        # 0.02 suits hidden sizes in the thousands; at 64 it caps the logits (the final norm fixes
        # the hidden norm), so the model could barely fit anything. 1/sqrt(hidden) keeps the ratio.
        initializer_range=spec.hidden**-0.5,
        dtype="float32",
    )
    if spec.arch == "llama":
        return LlamaConfig(**common)
    return Qwen2Config(**common, use_sliding_window=False)


def build_tiny_model(spec: TinySpec, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """A randomly initialised causal LM for ``spec``; the same spec always gives the same weights."""
    config = tiny_config(spec, tokenizer)
    # A private RNG state: building a tiny model must not shift the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = [config.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)]
    model.generation_config.pad_token_id = config.pad_token_id
    return model
