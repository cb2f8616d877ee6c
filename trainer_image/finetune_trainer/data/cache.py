"""The preprocessing cache: prepared datasets saved under a fingerprint of everything that shaped them.

The key covers the tokenizer (name, vocabulary, special tokens, chat template), the processing
settings (stage, template, cutoff, packing, masking, split, seed, mixing), each dataset's layout
and a hash of its files' bytes; a second run over the same inputs loads the saved Arrow files
(memory-mapped) instead of tokenising again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from datasets import DatasetDict, load_from_disk
from transformers import PreTrainedTokenizerFast

from ..files import new_staging_dir
from .config import DatasetConfig, ProcessingConfig

# Bump when the processors' output changes for the same inputs.
CACHE_FORMAT_VERSION = 1
SUMMARY_FILE = "summary.json"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of the tokenizer's behaviour: its serialised model, special tokens and chat template."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(tokenizer.name_or_path).encode())
    if isinstance(tokenizer, PreTrainedTokenizerFast):
        digest.update(tokenizer.backend_tokenizer.to_str().encode())
        # splitSpecialTokens changes how the same text encodes, without changing the serialised model.
        digest.update(str(tokenizer.backend_tokenizer.encode_special_tokens).encode())
    else:
        digest.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    digest.update(json.dumps([tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token]).encode())
    digest.update(str(tokenizer.chat_template or "").encode())
    return digest.hexdigest()


def fingerprint(
    datasets: list[tuple[DatasetConfig, str]], processing: ProcessingConfig, tokenizer_hash: str
) -> str:
    """The cache key; ``datasets`` pairs each config with the hash of its data (or its hub name)."""
    settings = asdict(processing)
    for local_only in ("cache_dir", "num_proc"):  # where and how fast, not what
        settings.pop(local_only)
    key = {
        "version": CACHE_FORMAT_VERSION,
        "tokenizer": tokenizer_hash,
        "processing": settings,
        # where the keys are mounted is not what the data is: pods and workstations share entries
        "datasets": [
            {**asdict(cfg), "credentials_dir": None, "data": data_hash} for cfg, data_hash in datasets
        ],
    }
    return hashlib.blake2b(json.dumps(key, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def cache_path(cache_dir: Path, key: str) -> Path:
    """Folder of the prepared dataset with fingerprint ``key``."""
    return cache_dir / "prepared" / key


def load_cached(cache_dir: Path, key: str) -> tuple[DatasetDict, dict[str, Any]] | None:
    """The prepared splits and the run summary saved under ``key``, or None on a miss."""
    folder = cache_path(cache_dir, key)
    if not (folder / SUMMARY_FILE).is_file():  # written last: its presence marks a complete entry
        return None
    return load_from_disk(str(folder)), json.loads((folder / SUMMARY_FILE).read_text())


def save_cached(cache_dir: Path, key: str, splits: DatasetDict, summary: dict[str, Any]) -> DatasetDict:
    """Save ``splits`` under ``key`` atomically and return them re-opened from the cache (memory-mapped)."""
    folder = cache_path(cache_dir, key)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = new_staging_dir(folder.parent, f".{key}-")
    try:
        splits.save_to_disk(str(staging))
        (staging / SUMMARY_FILE).write_text(json.dumps(summary, indent=1))
        try:
            os.replace(staging, folder)
        except OSError:
            if not (folder / SUMMARY_FILE).is_file():
                raise  # not a concurrent run that finished first (its copy would be identical)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    loaded = load_cached(cache_dir, key)
    assert loaded is not None
    return loaded[0]
