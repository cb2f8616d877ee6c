"""ProgressReporter: one call per optimizer step moves the bar, one per logging step feeds the metrics,
the progress record and the bar's loss. It knows nothing of transformers; a TrainerCallback adapter wraps it."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from finetune_api.evaluation import EvaluationStatus
from finetune_api.pod import write_termination_message

from ..storage import ObjectStore
from .metrics import TrainingMetrics
from .rates import Observation, RateWindow, format_duration
from .record import MESSAGE_MAX, PROGRESS_KEY, ProgressRecord, TrainerPhase, rfc3339_utc
from .writer import LatestObjectWriter

log = logging.getLogger(__name__)
FINAL_WRITE_TIMEOUT_S = 120.0


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ProgressReporter:
    """Turns training-loop observations into metrics, a throttled ``progress.json`` and a bar.

    Only the main process (global rank 0) should own one. ``progress.json`` is written from a
    background thread (newest version wins) and storage failures are logged, never raised:
    losing a progress update must not stall or kill a training run. Thread-safe, because
    checkpoint notices arrive from the upload thread.
    """

    def __init__(
        self,
        *,
        total_steps: int | None = None,
        store: ObjectStore | None = None,
        metrics: TrainingMetrics | None = None,
        write_interval_s: float = 5.0,
        eta_window: int = 20,
        termination_log: Path | None = None,
        show_bar: bool = True,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.metrics = metrics
        self.write_interval_s = write_interval_s
        self.termination_log = termination_log  # None: the pod contract's (finetune_api.pod)
        self._writer = LatestObjectWriter(store, PROGRESS_KEY) if store is not None else None
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.RLock()
        self._rates = RateWindow(eta_window)
        self._last_write: float | None = None
        self._last_tokens = 0
        self._last_samples = 0
        self._finished = False
        self.record = ProgressRecord(step=0, total_steps=total_steps, phase="Running")
        self.show_bar = show_bar
        # The bar appears when training starts (set_total_steps), not while data and model load.
        self._bar: Any = None
        self._bar_scope = ExitStack()

    @property
    def writes(self) -> int:
        """``progress.json`` writes that reached storage."""
        return self._writer.writes if self._writer else 0

    @property
    def bar_position(self) -> int:
        """The step the bar shows (0 before training starts)."""
        return int(self._bar.n) if self._bar is not None else 0

    def set_total_steps(self, total_steps: int, *, step: int = 0) -> None:
        """Set the planned steps once known (training starts, at ``step`` when resumed); shows the bar."""
        with self._lock:
            self.record = self.record.model_copy(
                update={"total_steps": total_steps, "step": step, "percent": _percent(step, total_steps)}
            )
            if self.metrics:
                self.metrics.total_steps.set(total_steps)
            if self._bar is None:
                if self.show_bar:  # log lines (uploads, warnings) print above the bar, not through it
                    self._bar_scope.enter_context(logging_redirect_tqdm())
                self._bar = tqdm(
                    total=total_steps, initial=step, desc="train", unit="step",
                    disable=not self.show_bar, dynamic_ncols=True,
                )  # fmt: skip
            else:
                self._bar.total = total_steps

    def on_step(self, step: int) -> None:
        """One optimizer step is done: move the bar; the record's step and percent follow."""
        with self._lock:
            total = self.record.total_steps
            self.record = self.record.model_copy(update={"step": step, "percent": _percent(step, total)})
            if self._bar is not None and not self._bar.disable:
                self._bar.update(max(step - self._bar.n, 0))
            if self._last_write is not None and self._clock() - self._last_write >= self.write_interval_s:
                self.flush()

    def close_bar(self) -> None:
        """Leave the bar's last state as one line (training is over; saving and uploads follow)."""
        with self._lock:
            if self._bar is not None:
                self._bar.close()
            self._bar_scope.close()

    def on_log(
        self,
        step: int,
        *,
        loss: float | None = None,
        learning_rate: float | None = None,
        tokens: int = 0,
        samples: int = 0,
        epoch: float | None = None,
    ) -> ProgressRecord:
        """Record one observation; ``tokens`` and ``samples`` are cumulative counts.

        Schedules a ``progress.json`` write when ``write_interval_s`` has passed since the last.
        """
        with self._lock:
            now = self._clock()
            self._rates.add(Observation(time=now, step=step, tokens=tokens, samples=samples))
            total = self.record.total_steps
            eta = self._rates.eta_seconds(total)
            tps = self._rates.tokens_per_second()
            update: dict[str, Any] = {
                "step": step,
                "epoch": epoch,
                "loss": loss,
                "learning_rate": learning_rate,
                "tokens_per_second": round(tps, 2) if tps is not None else None,
                "eta_seconds": round(eta) if eta is not None else None,
                "eta": format_duration(eta) if eta is not None else None,
                "percent": _percent(step, total),
            }
            self.record = self.record.model_copy(update={k: v for k, v in update.items() if v is not None})
            if self.metrics:
                self.metrics.observe(
                    step=step, total_steps=total, epoch=epoch, loss=loss, learning_rate=learning_rate,
                    tokens_per_second=tps, samples_per_second=self._rates.samples_per_second(), eta_seconds=eta,
                    new_tokens=tokens - self._last_tokens, new_samples=samples - self._last_samples,
                )  # fmt: skip
            self._last_tokens, self._last_samples = tokens, samples
            self._update_bar(step, loss, learning_rate)
            if self._last_write is None or now - self._last_write >= self.write_interval_s:
                self.flush()
            return self.record

    def on_resume(self, uri: str) -> None:
        """The run continues from checkpoint ``uri``: it is the newest complete one until the next."""
        with self._lock:
            self.record = self.record.model_copy(update={"last_checkpoint": uri})

    def on_checkpoint(self, uri: str) -> None:
        """A checkpoint is complete in storage (its manifest written): record it right away."""
        with self._lock:
            self.record = self.record.model_copy(update={"last_checkpoint": uri})
            self.flush()

    def on_evaluation(self, status: EvaluationStatus) -> None:
        """Evaluation scores are in: put them in the record (→ status.evaluation) and the gauges, write now."""
        with self._lock:
            self.record = self.record.model_copy(update={"evaluation": status})
            if self.metrics:
                predict = status.predict
                self.metrics.observe_evaluation(
                    predict={"bleu-4": predict.bleu4, "rouge-1": predict.rouge1, "rouge-2": predict.rouge2,
                             "rouge-l": predict.rouge_l} if predict else {},
                    benchmark={"all": status.benchmark.accuracy}
                    | {s.subject: s.accuracy for s in status.benchmark.subjects} if status.benchmark else {},
                )  # fmt: skip
            self.flush()

    def finish(self, phase: TrainerPhase, message: str | None = None) -> ProgressRecord:
        """Write the final record (waiting for it to land) and the termination log; close the bar."""
        with self._lock:
            update: dict[str, Any] = {"phase": phase, "message": message[:MESSAGE_MAX] if message else None}
            if phase == "Succeeded":
                update |= {"eta_seconds": 0, "eta": format_duration(0)}
            # percent always follows step: a resumed or finished run never says step 0 at 100%
            update["percent"] = _percent(self.record.step, self.record.total_steps)
            self.record = self.record.model_copy(update=update)
            self.flush()
            self._finished = True
            if self._writer is not None:
                self._writer.close(timeout=FINAL_WRITE_TIMEOUT_S)
            self._write_termination_log()
            self.close_bar()
            return self.record

    def flush(self) -> None:
        """Schedule a write of ``progress.json`` now, stamped with the current time."""
        with self._lock:
            self._last_write = self._clock()
            self.record = self.record.model_copy(update={"updated_at": rfc3339_utc(self._wall_clock())})
            # After finish() the final record stands; late notices update only the in-memory copy.
            if self._writer is not None and not self._finished:
                self._writer.put(self.record.to_json().encode())

    def drain(self, timeout: float | None = None) -> bool:
        """Wait until every scheduled write has reached storage (or failed); False on timeout."""
        return self._writer.drain(timeout) if self._writer else True

    def _update_bar(self, step: int, loss: float | None, learning_rate: float | None) -> None:
        if self._bar is None or self._bar.disable:
            return
        self._bar.update(max(step - self._bar.n, 0))
        postfix: dict[str, str] = {}
        if loss is not None:
            postfix["loss"] = f"{loss:.4f}"
        if learning_rate is not None:
            postfix["lr"] = f"{learning_rate:.2e}"
        if self.record.tokens_per_second is not None:
            postfix["tok/s"] = f"{self.record.tokens_per_second:.0f}"
        self._bar.set_postfix(postfix)  # drawn now: the bar shows the loss of the step just logged

    def _write_termination_log(self) -> None:
        """The final record for the pod's status (``kubectl describe pod``)."""
        write_termination_message(self.record.to_json(), self.termination_log)


def _percent(step: int, total: int | None) -> float | None:
    return round(min(100.0, 100.0 * step / total), 2) if total else None
