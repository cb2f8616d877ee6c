"""One run's places and plumbing: the output store and its layout, local staging, resume, progress.

Training (``train``) and evaluation (``evaluate``) both write here; neither imports the other's
package for it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from finetune_api.finetunejob import FineTuneJobSpec
from finetune_api.pod import KEEP_WORK_DIR_ENV, METRICS_PORT_ENV, WORK_DIR_ENV
from finetune_api.uris import Scheme, prepared_root, scheme_of

from .progress import ProgressReporter, TrainingMetrics, start_metrics_server
from .storage import (
    BackgroundUploader,
    ObjectStore,
    S3Settings,
    load_s3_settings,
    open_store,
    restore_latest_checkpoint,
)

log = logging.getLogger(__name__)

# The output location's layout (progress.json and run.json are the API's: PROGRESS_KEY, RUN_IDENTITY_KEY).
CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
TRAINER_LOG = "trainer_log.jsonl"
LOSS_PLOT = "loss.png"
RESOLVED_SPEC = "job.yaml"
PREDICTIONS = "predictions.jsonl"
EVAL_RESULTS = "eval_results.json"


def global_rank() -> int:
    return int(os.environ.get("RANK", "0"))


@dataclass
class Workspace:
    """Where a run reads and writes; rank 0 owns the progress record and the uploads."""

    name: str
    spec: FineTuneJobSpec
    output_uri: str
    store: ObjectStore
    work_dir: Path
    reporter: ProgressReporter | None
    uploader: BackgroundUploader | None
    prepared: ObjectStore | None = None
    """Shared store of prepared datasets (when a Dataset has prepare: true)."""
    resume: bool = True
    """Whether to continue from the output's newest complete checkpoint (False: start afresh)."""
    learning_rate_scale: float = 1.0
    """New over old learningRate when ``--resume`` changed it (the checkpoint's optimizer has the old)."""

    @property
    def is_main(self) -> bool:
        return self.reporter is not None

    @property
    def local_log(self) -> Path:
        return self.work_dir / TRAINER_LOG

    def resume_checkpoint(self) -> Path | None:
        """The newest complete checkpoint in the output location, downloaded; None on a fresh start.

        Every rank downloads its own copy: ranks may be on different nodes with no shared disk.
        Rank 0 carries the log history on from it, so that trainer_log.jsonl grows across resumes.
        """
        if not self.resume:
            return None
        restored = restore_latest_checkpoint(
            self.store.child(CHECKPOINTS), self.work_dir / f"resume-{global_rank()}"
        )
        if restored is None:
            return None
        ref, path = restored
        log.info("resuming from %s (step %d)", ref.uri, ref.step)
        if self.reporter is not None:
            self.reporter.on_resume(ref.uri)
            self._restore_log(path, ref.step)
        return path

    def _restore_log(self, checkpoint: Path, step: int) -> None:
        """The log up to ``step``: the checkpoint's copy, else (older checkpoints) the output's, cut at ``step``."""
        saved = checkpoint / TRAINER_LOG
        if saved.is_file():
            shutil.copyfile(saved, self.local_log)
            return
        try:
            lines = self.store.get_bytes(TRAINER_LOG).decode().splitlines()
        except FileNotFoundError:
            return
        kept = [line for line in lines if _logged_step(line) <= step]
        self.local_log.write_text("".join(f"{line}\n" for line in kept))

    def close(self, *, failed: str | None = None, wait_for_uploads: bool = True) -> None:
        """Finish uploads and write the final progress record (Succeeded, or Failed with the error).

        ``wait_for_uploads=False`` (the process is being terminated) leaves uploads in flight
        unfinished: a checkpoint without its manifest is never resumed from.
        """
        error = failed
        if self.uploader is not None and wait_for_uploads:
            try:
                self.uploader.close()
            except Exception as exc:  # an upload that failed must not hide the training error
                error = error or f"checkpoint upload failed: {exc}"
        if self.reporter is not None:
            self.reporter.finish("Failed" if error else "Succeeded", error)
        if os.environ.get(KEEP_WORK_DIR_ENV) != "1":
            shutil.rmtree(self.work_dir, ignore_errors=True)


def output_store(spec: FineTuneJobSpec, uri: str) -> ObjectStore:
    """A location in the run's output store (the output itself, or the prepared data beside it), with the
    spec's S3 settings."""
    return open_store(uri, settings=output_settings(spec) if scheme_of(uri) is Scheme.S3 else None)


def open_workspace(
    name: str, spec: FineTuneJobSpec, output_uri: str, *, share_prepared: bool = False, resume: bool = True
) -> Workspace:
    """Open the output store and local staging dir; rank 0 also starts metrics and progress.

    ``share_prepared``: prepared datasets are shared beside the output (see ``prepared_root``);
    ``resume``: continue from the output's newest complete checkpoint.
    """
    store = output_store(spec, output_uri)
    prepared = output_store(spec, prepared_root(output_uri)) if share_prepared else None
    configured = os.environ.get(WORK_DIR_ENV)  # unset (as in a pod): a private temp dir
    if configured:
        work_dir = Path(configured) / f"rank-{global_rank()}"
        work_dir.mkdir(parents=True, exist_ok=True)
    else:
        work_dir = Path(tempfile.mkdtemp(prefix=f"finetune-{name}-rank{global_rank()}-"))
    if global_rank() != 0:
        return Workspace(name, spec, output_uri, store, work_dir, None, None, prepared, resume)
    metrics = TrainingMetrics()
    if os.environ.get(METRICS_PORT_ENV) != "0":
        try:
            start_metrics_server(metrics)
        except OSError as exc:  # a second local run on the same port: train anyway, without an endpoint
            log.warning("metrics endpoint not started: %s", exc)
    reporter = ProgressReporter(store=store, metrics=metrics)
    return Workspace(
        name, spec, output_uri, store, work_dir, reporter, BackgroundUploader(), prepared, resume
    )


def output_settings(spec: FineTuneJobSpec) -> S3Settings:
    """S3 settings for the output: the spec's endpoint and region over the mounted secret / environment."""
    out = spec.output
    settings = load_s3_settings(endpoint_url=out.endpoint if out else None)
    return replace(settings, region=out.region) if out and out.region else settings


def _logged_step(line: str) -> int:
    """A log record's step; a torn last line (the run was killed mid-write) counts as past every step."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return sys.maxsize
