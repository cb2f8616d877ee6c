"""The Rust tokenizer's thread switch: scoped to one call, never on in forked children, same tokens."""

from __future__ import annotations

import os
from typing import Any

import pytest

from finetune_trainer.data.config import IN_PROCESS_ROWS, ROWS_PER_WORKER, resolve_num_proc
from finetune_trainer.data.processor import batch_encode
from finetune_trainer.data.threads import ENV, rust_threads, rust_threads_allowed

TEXTS = [f"row {i}: the quick brown fox jumps over {i % 7} lazy dogs" * (1 + i % 5) for i in range(300)]


@pytest.mark.parametrize("before", [None, "false", "true"])
@pytest.mark.parametrize("enabled", [True, False])
def test_rust_threads_sets_the_variable_for_the_block_then_restores_it(
    monkeypatch: pytest.MonkeyPatch, before: str | None, enabled: bool
) -> None:
    if before is None:
        monkeypatch.delenv(ENV, raising=False)
    else:
        monkeypatch.setenv(ENV, before)
    with rust_threads(enabled):
        assert os.environ[ENV] == ("true" if enabled else "false")
    assert os.environ.get(ENV) == before


def test_a_forked_child_never_turns_the_thread_pool_on() -> None:
    assert rust_threads_allowed()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports what it would set, then exits without pytest's teardown
        with rust_threads(True):
            os.write(write, f"{rust_threads_allowed()}:{os.environ[ENV]}".encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert os.read(read, 100).decode() == "False:false"
    os.close(read)


def test_threaded_and_single_threaded_encoding_give_the_same_tokens(data_tokenizer: Any) -> None:
    single = batch_encode(data_tokenizer, TEXTS, threads=False)
    assert batch_encode(data_tokenizer, TEXTS, threads=True) == single
    assert single == data_tokenizer(TEXTS, add_special_tokens=False)["input_ids"]


def test_auto_runs_in_process_below_the_threshold_and_explicit_counts_are_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FINETUNE_DATA_NUM_PROC", raising=False)
    cpus = len(os.sched_getaffinity(0))
    assert resolve_num_proc(None, IN_PROCESS_ROWS - 1) == 1
    assert resolve_num_proc(None, 10 * IN_PROCESS_ROWS) == min(cpus, 10 * IN_PROCESS_ROWS // ROWS_PER_WORKER)
    assert resolve_num_proc(2, 10_000) == 2  # an explicit count is honoured above ROWS_PER_WORKER per worker
    monkeypatch.setenv("FINETUNE_DATA_NUM_PROC", "2")
    assert resolve_num_proc(None, 10_000) == 2
