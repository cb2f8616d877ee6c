"""Fixtures for the trainer tests. Names are prefixed by area (model_, data_) so several files can share this one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from finetune_trainer.model.tiny import CACHE_DIR_ENV


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh trainer cache (tiny models, S3 downloads) for the session: no test reuses the user's cache."""
    root = tmp_path_factory.mktemp("finetune-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_DIR_ENV, str(root))
        yield root


# --- data worker (tests/trainer/test_data_*.py) ---


@pytest.fixture(scope="session")
def data_tokenizer():  # type: ignore[no-untyped-def]
    """The tiny:// tokenizer (byte-level BPE trained locally, ChatML template); built once, never downloaded."""
    from finetune_trainer.model.tiny import TinySpec, build_tiny_tokenizer

    return build_tiny_tokenizer(TinySpec(arch="llama"))


@pytest.fixture
def data_cache_dir(tmp_path: Path) -> Path:
    """A fresh preprocessing cache for one test."""
    return tmp_path / "data-cache"
