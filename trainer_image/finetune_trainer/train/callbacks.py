"""Trainer callbacks: progress and metrics, the JSONL log, and checkpoint upload to object storage."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..progress import ProgressReporter
from ..storage import BackgroundUploader, ObjectStore
from ..workspace import CHECKPOINTS, Workspace

log = logging.getLogger(__name__)


def run_callbacks(ws: Workspace) -> list[TrainerCallback]:
    """The Trainer callbacks of a run (progress, JSONL log and uploads on rank 0 only)."""
    if ws.reporter is None or ws.uploader is None:
        return []
    reporter = ws.reporter
    return [
        ProgressCallback(reporter),
        JsonlLogCallback(ws.local_log),
        CheckpointUploadCallback(
            ws.uploader,
            ws.store.child(CHECKPOINTS),
            keep=ws.spec.training.save_total_limit,
            on_uploaded=reporter.on_checkpoint,
            log=ws.local_log,
        ),
    ]


class ProgressCallback(TrainerCallback):
    """Feeds the ProgressReporter (metrics endpoint, progress.json, the bar) from the Trainer's steps and logs.

    The last step is always logged, so that a run shorter than ``loggingSteps`` (or not a multiple
    of it) still records its final loss.
    """

    def __init__(self, reporter: ProgressReporter) -> None:
        self.reporter = reporter

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.is_world_process_zero:
            self.reporter.set_total_steps(state.max_steps, step=state.global_step)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.global_step >= state.max_steps:
            control.should_log = True  # every rank: logging reduces the loss across processes
        if state.is_world_process_zero:
            self.reporter.on_step(state.global_step)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.is_world_process_zero:
            self.reporter.close_bar()

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        self.reporter.on_log(
            state.global_step,
            loss=logs.get("loss"),
            learning_rate=logs.get("learning_rate"),
            tokens=int(state.num_input_tokens_seen or 0),
            epoch=state.epoch,
        )


class JsonlLogCallback(TrainerCallback):
    """Appends every log record (train and eval) to trainer_log.jsonl, as LLaMA-Factory does."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **logs}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class AlreadyTrained(Exception):
    """The checkpoint resumed from is already at the run's last step: there is nothing left to train."""


class StopWhenTrained(TrainerCallback):
    """Refuses to train on from a checkpoint at (or past) ``max_steps``.

    The Trainer checks for the end only after a step, so resuming from the final checkpoint (a run
    killed between its last checkpoint and its adapter) would train one step past ``maxSteps``.
    The checkpoint's weights are loaded by then: the recipe saves them as they are.
    """

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            raise AlreadyTrained(f"the checkpoint is at step {state.global_step} of {state.max_steps}")


class RescaleLearningRate(TrainerCallback):
    """``--resume`` with a new learningRate: the checkpoint's optimizer and scheduler state still carry
    the old rate; scaling them by ``factor`` continues the schedule at the new one (LoRA+ groups keep
    their ratio)."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        optimizer: Any = None,
        lr_scheduler: Any = None,
        **kwargs: Any,
    ) -> None:
        rescale_learning_rate(optimizer, lr_scheduler, self.factor)


def rescale_learning_rate(optimizer: Any, scheduler: Any, factor: float) -> None:
    """Scale a restored optimizer's rates and its scheduler's base rates by ``factor``."""
    if scheduler is not None and hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
        # The Trainer logs the first resumed step's rate from here (torch has no setter).
        scheduler._last_lr = [lr * factor for lr in scheduler.get_last_lr()]
    for group in optimizer.param_groups if optimizer is not None else []:
        group["lr"] *= factor
        if "initial_lr" in group:
            group["initial_lr"] *= factor


class CheckpointUploadCallback(TrainerCallback):
    """After each local save, uploads the checkpoint (manifest last) without stalling training.

    The checkpoint is staged as hard links first, so the Trainer may go on writing or deleting its
    own copy while the upload runs; ``saveTotalLimit`` is enforced in the bucket after each upload.
    A copy of the log so far (``log``) goes with it: a run resumed from it carries its history on.
    """

    def __init__(
        self,
        uploader: BackgroundUploader,
        store: ObjectStore,
        *,
        keep: int | None,
        on_uploaded: Callable[[str], None] | None = None,
        log: Path | None = None,
    ) -> None:
        self.uploader = uploader
        self.store = store
        self.keep = keep
        self.on_uploaded = on_uploaded
        self.log = log
        self.uploaded: list[str] = []

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not local.is_dir():
            log.warning("no local checkpoint at %s to upload", local)
            return
        staged = Path(args.output_dir) / ".staged" / local.name
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(local, staged, copy_function=_link_or_copy)
        if self.log is not None and self.log.is_file():  # a copy: the log goes on growing
            shutil.copyfile(self.log, staged / self.log.name)
        self.uploader.submit_checkpoint(staged, self.store, keep=self.keep)
        uri = str(self.store.uri.join(local.name))
        self.uploader.submit(lambda: shutil.rmtree(staged, ignore_errors=True))
        if self.on_uploaded is not None:
            callback = self.on_uploaded
            self.uploader.submit(lambda: callback(uri))
        self.uploaded.append(local.name)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
