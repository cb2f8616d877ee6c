"""The common end of every Trainer-based recipe: train (resuming), evaluate, save, report."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from transformers import PreTrainedTokenizerBase, PrinterCallback, Trainer

from finetune_api.resources import resolved_documents

from ..data import DatasetConfig, PreparedData, ProcessingConfig, prepare_dataset
from ..export.card import write_run_card
from ..model.loader import load_tokenizer
from ..model.sources import fetch_source
from ..storage import upload_with_manifest
from ..workspace import ADAPTER, LOSS_PLOT, RESOLVED_SPEC, TRAINER_LOG, Workspace
from .callbacks import AlreadyTrained, RescaleLearningRate, StopWhenTrained
from .lossplot import plot_loss
from .recipes import TrainOutcome

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
        adapter_uri = save_final(ws, final, documents)
    return TrainOutcome(
        global_step=trainer.state.global_step,
        train_loss=metrics.get("train_loss"),
        adapter_uri=adapter_uri,
        resumed_from=str(resume) if resume else None,
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
    )


def save_final(ws: Workspace, model_dir: Path, spec_documents: list[dict[str, Any]]) -> str:
    """Upload the final adapter/model (manifest last), the log, the loss plot and the resolved spec."""
    assert ws.uploader is not None, "only rank 0 saves"
    ws.uploader.wait()  # checkpoints first: the final artifact is the last word
    documents = resolved_documents(spec_documents)
    adapter_uri = str(ws.store.uri.join(ADAPTER))
    # Over PEFT's empty template (save_pretrained wrote it); before the upload, so the manifest lists ours.
    write_run_card(model_dir, name=ws.name, documents=documents, log=ws.local_log, uri=adapter_uri)
    upload_with_manifest(model_dir, ws.store.child(ADAPTER))
    spec_text = yaml.safe_dump_all(documents, sort_keys=False)
    ws.store.put_bytes(RESOLVED_SPEC, spec_text.encode(), content_type="application/yaml")
    if ws.local_log.is_file():
        ws.store.put_file(TRAINER_LOG, ws.local_log)
    plot = ws.work_dir / LOSS_PLOT
    if ws.local_log.is_file() and plot_loss(ws.local_log, plot, title=ws.name):
        ws.store.put_file(LOSS_PLOT, plot)
    else:  # no loss logged: no plot, and none left from an earlier run
        ws.store.delete(LOSS_PLOT)
    return adapter_uri
