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

log = logging.getLogger(__name__)


class ProgressCallback(TrainerCallback):
    """Feeds the ProgressReporter (metrics endpoint, progress.json, the bar) from the Trainer's logs."""

    def __init__(self, reporter: ProgressReporter) -> None:
        self.reporter = reporter

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.is_world_process_zero:
            self.reporter.set_total_steps(state.max_steps)

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


class CheckpointUploadCallback(TrainerCallback):
    """After each local save, uploads the checkpoint (manifest last) without stalling training.

    The checkpoint is staged as hard links first, so the Trainer may go on writing or deleting its
    own copy while the upload runs; ``saveTotalLimit`` is enforced in the bucket after each upload.
    """

    def __init__(
        self,
        uploader: BackgroundUploader,
        store: ObjectStore,
        *,
        keep: int | None,
        on_uploaded: Callable[[str], None] | None = None,
    ) -> None:
        self.uploader = uploader
        self.store = store
        self.keep = keep
        self.on_uploaded = on_uploaded
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
