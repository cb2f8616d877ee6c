"""Throughput meter for any ``transformers.Trainer`` (ours and LLaMA-Factory's subclass alike).

Standalone (stdlib, torch, transformers only): the peer's venv imports it by path. ``install()``
wraps ``Trainer.train`` so that, for the run, a forward pre-hook counts the real tokens of each
batch (padding excluded) and step callbacks time each optimizer step.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback


class Meter(TrainerCallback):
    """Real tokens and wall time per optimizer step."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id
        self.tokens = 0
        self.padded_tokens = 0
        self.step_tokens: list[int] = []
        self.step_seconds: list[float] = []
        self._step_start = 0.0
        self._tokens_at_step_start = 0
        self.train_seconds = 0.0
        self.train_cpu_seconds = 0.0

    def count(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Forward pre-hook: a 2D attention mask marks real tokens; else (packed rows) non-pad ids."""
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            return
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            real = int((mask != 0).sum())
        else:
            real = int((ids != self.pad_token_id).sum())
        self.tokens += real
        self.padded_tokens += int(ids.numel())

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._step_start = time.perf_counter()
        self._tokens_at_step_start = self.tokens

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.step_seconds.append(time.perf_counter() - self._step_start)
        self.step_tokens.append(self.tokens - self._tokens_at_step_start)

    def summary(self) -> dict[str, Any]:
        """Totals, and steady-state tokens/s (the first step, with its warm-up, left out)."""
        steady_tokens, steady_s = sum(self.step_tokens[1:]), sum(self.step_seconds[1:])
        return {
            **gpu_peaks(),
            "steps": len(self.step_seconds),
            "real_tokens": self.tokens,
            "padded_tokens": self.padded_tokens,
            "train_seconds": round(self.train_seconds, 3),
            "train_cpu_seconds": round(self.train_cpu_seconds, 3),
            "tokens_per_cpu_s": round(self.tokens / self.train_cpu_seconds, 1)
            if self.train_cpu_seconds
            else 0.0,
            "tokens_per_s": round(steady_tokens / steady_s, 1) if steady_s else 0.0,
            "tokens_per_s_incl_first_step": round(self.tokens / self.train_seconds, 1)
            if self.train_seconds
            else 0.0,
        }


def gpu_peaks() -> dict[str, float]:
    """The process's peak GPU memory so far (the caching allocator's), when it used a GPU."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return {}
    return {
        "gpu_peak_allocated_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1),
        "gpu_peak_reserved_mib": round(torch.cuda.max_memory_reserved() / 2**20, 1),
    }


METER: Meter | None = None
# Set to a file path to write torch.profiler's op table (self CPU time) of the training run there.
PROFILE_ENV = "BENCH_TORCH_PROFILE"


@contextlib.contextmanager
def _profiled() -> Iterator[None]:
    target = os.environ.get(PROFILE_ENV)
    if not target:
        yield
        return
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        yield
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
    Path(target).write_text(table)


def install(pad_token_id: int) -> Meter:
    """Meter every later ``Trainer.train`` call; returns the meter that collects the figures."""
    global METER
    meter = METER = Meter(pad_token_id)
    original = Trainer.train

    def train(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        self.add_callback(meter)
        hook = self.model.register_forward_pre_hook(meter.count, with_kwargs=True)
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            with _profiled():
                return original(self, *args, **kwargs)
        finally:
            meter.train_seconds = time.perf_counter() - started
            meter.train_cpu_seconds = time.process_time() - cpu_started
            hook.remove()

    Trainer.train = train
    return meter
