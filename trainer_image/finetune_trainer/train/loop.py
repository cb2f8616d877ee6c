"""The common end of every Trainer-based recipe: train (resuming), evaluate, save, report."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase, PrinterCallback, Trainer

from ..data import DatasetConfig, PreparedData, ProcessingConfig, prepare_dataset
from ..model.loader import load_tokenizer
from ..model.sources import fetch_source
from .callbacks import AlreadyTrained, RescaleLearningRate, StopWhenTrained
from .workspace import TrainOutcome, Workspace

log = logging.getLogger(__name__)


def tokenize_datasets(
    ws: Workspace, datasets: Sequence[DatasetConfig], processing: ProcessingConfig
) -> tuple[PreTrainedTokenizerBase, PreparedData]:
    """The job's tokenizer and its prepared rows, before any model is loaded (bad data fails here);
    shared through object storage when a Dataset asks for it; skipped rows are logged."""
    spec = ws.spec
    tokenizer = load_tokenizer(fetch_source(spec.model.source, field="spec.model.source"), spec=spec.model)
    data = prepare_dataset(datasets, processing, tokenizer, shared=ws.prepared)
    warn_skipped_rows(data)
    return tokenizer, data


def warn_skipped_rows(data: PreparedData) -> None:
    """Log each dataset's malformed rows (they were dropped by the data worker)."""
    for summary in data.summaries:
        if summary.num_errors:
            log.warning(
                "%s: %d malformed rows skipped, first: %s",
                summary.name,
                summary.num_errors,
                summary.errors[:3],
            )


def train_and_save(
    ws: Workspace, trainer: Trainer, tokenizer: Any, documents: list[dict[str, Any]], *, evaluate: bool
) -> TrainOutcome:
    """Train from the newest complete checkpoint (if any), evaluate when there is a validation split, save.

    The final model (or adapter) goes to the output location with its manifest; rank 0 only.
    """
    trainer.remove_callback(PrinterCallback)  # our progress bar and trainer_log.jsonl report the logs
    trainer.add_callback(StopWhenTrained())  # after ours: the progress record still learns the step
    resume = ws.resume_checkpoint()
    if resume is not None and ws.learning_rate_scale != 1.0:
        trainer.add_callback(RescaleLearningRate(ws.learning_rate_scale))
    try:
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        metrics = dict(result.metrics)
    except AlreadyTrained as done:  # killed after its last checkpoint: that checkpoint is the result
        log.info("%s: saving it without training further", done)
        if ws.reporter is not None:
            ws.reporter.close_bar()
        logged = [r["loss"] for r in trainer.state.log_history if "loss" in r]
        metrics = {"train_loss": logged[-1]} if logged else {}
    if evaluate:
        metrics |= trainer.evaluate()
    adapter_uri = None
    if ws.is_main:
        final = ws.work_dir / "final"
        trainer.save_model(str(final))
        tokenizer.save_pretrained(str(final))
        adapter_uri = ws.save_final(final, documents)
    return TrainOutcome(
        global_step=trainer.state.global_step,
        train_loss=metrics.get("train_loss"),
        adapter_uri=adapter_uri,
        resumed_from=str(resume) if resume else None,
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
    )
