"""ProgressReporter: one call per logging step feeds the metrics, the progress record and the log's
progress bar. It knows nothing of transformers; a TrainerCallback adapter wraps it."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..storage import ObjectStore
from .metrics import TrainingMetrics
from .rates import Observation, RateWindow, format_duration
from .record import MESSAGE_MAX, PROGRESS_KEY, ProgressRecord, TrainerPhase, rfc3339_utc

log = logging.getLogger(__name__)
TERMINATION_LOG_ENV = "FINETUNE_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
TERMINATION_MAX = 4096  # the kubelet keeps at most this many bytes of a termination message


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ProgressReporter:
    """Turns training-loop observations into metrics, a throttled ``progress.json`` and a bar.

    Only the main process (global rank 0) should own one. Storage failures are logged, never
    raised: losing a progress update must not kill a training run.
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
        self.store = store
        self.metrics = metrics
        self.write_interval_s = write_interval_s
        self.termination_log = termination_log or Path(
            os.environ.get(TERMINATION_LOG_ENV, DEFAULT_TERMINATION_LOG)
        )
        self._clock = clock
        self._wall_clock = wall_clock
        self._rates = RateWindow(eta_window)
        self._last_write: float | None = None
        self._last_tokens = 0
        self._last_samples = 0
        self.writes = 0
        self.record = ProgressRecord(step=0, total_steps=total_steps, phase="Running")
        self._bar: Any = tqdm(total=total_steps, desc="train", unit="step", disable=not show_bar, dynamic_ncols=True)

    def set_total_steps(self, total_steps: int) -> None:
        """Set the planned steps once known (after the dataloader is built)."""
        self.record.total_steps = total_steps
        self._bar.total = total_steps
        if self.metrics:
            self.metrics.total_steps.set(total_steps)

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

        Writes ``progress.json`` when ``write_interval_s`` has passed since the last write.
        """
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
            "eta_seconds": int(round(eta)) if eta is not None else None,
            "eta": format_duration(eta) if eta is not None else None,
            "percent": round(min(100.0, 100.0 * step / total), 2) if total else None,
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

    def on_checkpoint(self, uri: str) -> None:
        """A checkpoint is complete in storage (its manifest written): record it right away."""
        self.record = self.record.model_copy(update={"last_checkpoint": uri})
        self.flush()

    def finish(self, phase: TrainerPhase, message: str | None = None) -> ProgressRecord:
        """Write the final record (and the termination log) and close the bar."""
        update: dict[str, Any] = {"phase": phase, "message": message[:MESSAGE_MAX] if message else None}
        if phase == "Succeeded":
            update |= {"eta_seconds": 0, "eta": format_duration(0)}
            if self.record.total_steps:
                update["percent"] = 100.0
        self.record = self.record.model_copy(update=update)
        self.flush()
        self._write_termination_log()
        self._bar.close()
        return self.record

    def flush(self) -> None:
        """Write ``progress.json`` now, stamped with the current time."""
        self._last_write = self._clock()
        self.record = self.record.model_copy(update={"updated_at": rfc3339_utc(self._wall_clock())})
        if self.store is None:
            return
        try:
            self.store.put_bytes(PROGRESS_KEY, self.record.to_json().encode(), content_type="application/json")
            self.writes += 1
        except Exception as exc:  # any storage fault: the run goes on, the next write retries
            log.warning("could not write %s to %s: %s", PROGRESS_KEY, self.store.uri, exc)

    def _update_bar(self, step: int, loss: float | None, learning_rate: float | None) -> None:
        if self._bar.disable:
            return
        self._bar.update(max(step - self._bar.n, 0))
        postfix: dict[str, str] = {}
        if loss is not None:
            postfix["loss"] = f"{loss:.4f}"
        if learning_rate is not None:
            postfix["lr"] = f"{learning_rate:.2e}"
        if self.record.tokens_per_second is not None:
            postfix["tok/s"] = f"{self.record.tokens_per_second:.0f}"
        self._bar.set_postfix(postfix, refresh=False)

    def _write_termination_log(self) -> None:
        """The final record for the pod's status (``kubectl describe pod``); skipped when the path
        is not writable, as it is outside Kubernetes."""
        data = self.record.to_json().encode()[:TERMINATION_MAX]
        try:
            with self.termination_log.open("wb") as fh:
                fh.write(data)
        except OSError as exc:
            log.debug("termination log %s not written: %s", self.termination_log, exc)
