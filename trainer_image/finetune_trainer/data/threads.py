"""The Rust tokenizer's own thread pool (rayon), switched per batched call.

On few cores one process whose batched encode runs on every core beats forked ``datasets.map``
workers: no pool to start, no tokenizer pickled into each worker, no shards to merge. Forked workers
must not start threads of their own (each already has its core). ``tokenizers`` reads
``TOKENIZERS_PARALLELISM`` at every batched call, so the switch is that variable, set for the call
and restored after it.

Fast path: see finetune_trainer.fastpaths (its reference path and the tests that pin the two equal).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

ENV = "TOKENIZERS_PARALLELISM"
_forked = False


def _mark_forked() -> None:
    global _forked
    _forked = True


# A child forked after its parent ran rayon inherits a pool without threads: using it hangs.
# Children of this process (map workers, dataloader workers) therefore never turn rayon on.
os.register_at_fork(after_in_child=_mark_forked)


def rust_threads_allowed() -> bool:
    """Whether this process may run the tokenizer's thread pool: not a fork of a process that had this module."""
    return not _forked


@contextmanager
def rust_threads(enabled: bool) -> Iterator[None]:
    """The tokenizer's thread pool on (``enabled`` and :func:`rust_threads_allowed`) or off, for the block."""
    previous = os.environ.get(ENV)
    os.environ[ENV] = "true" if enabled and rust_threads_allowed() else "false"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[ENV]
        else:
            os.environ[ENV] = previous


def encode_batch(
    backend: Any, texts: list[str], *, add_special_tokens: bool = False, threads: bool | None = None
) -> list[list[int]]:
    """Token ids of ``texts`` by one batched call of the Rust tokenizer (``tokenizers.Tokenizer``).

    ``threads``: its thread pool on (True) or off (False) for this call; None leaves
    ``TOKENIZERS_PARALLELISM`` as it is.
    """
    with nullcontext() if threads is None else rust_threads(threads):
        encodings = backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)
    return [e.ids for e in encodings]
