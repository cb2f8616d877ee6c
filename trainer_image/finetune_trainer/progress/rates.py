"""Throughput and ETA from a moving window of progress observations (pure; times are injected)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Observation:
    """Cumulative counters at one moment (``time`` in seconds from any monotonic clock)."""

    time: float
    step: int
    tokens: int
    samples: int


class RateWindow:
    """Rates over the last ``window`` observations: smooth enough to ignore a slow step (an
    evaluation, a checkpoint save) yet quick to follow a real change in speed."""

    def __init__(self, window: int = 20) -> None:
        if window < 2:
            raise ValueError(f"window must be at least 2, got {window}")
        self._obs: deque[Observation] = deque(maxlen=window)

    def add(self, obs: Observation) -> None:
        """Record an observation; one that goes back in step (a restart) starts a fresh window."""
        if self._obs and (obs.step < self._obs[-1].step or obs.time < self._obs[-1].time):
            self._obs.clear()
        self._obs.append(obs)

    def _span(self) -> tuple[Observation, Observation] | None:
        if len(self._obs) < 2 or self._obs[-1].time <= self._obs[0].time:
            return None
        return self._obs[0], self._obs[-1]

    def _rate(self, attr: str) -> float | None:
        span = self._span()
        if span is None:
            return None
        first, last = span
        # Counters only grow; a caller that resets one mid-window must not yield a negative rate.
        return max(getattr(last, attr) - getattr(first, attr), 0) / (last.time - first.time)

    def tokens_per_second(self) -> float | None:
        """Tokens per second over the window; ``None`` until two observations exist."""
        return self._rate("tokens")

    def samples_per_second(self) -> float | None:
        """Samples per second over the window."""
        return self._rate("samples")

    def eta_seconds(self, total_steps: int | None) -> float | None:
        """Seconds until ``total_steps`` at the window's pace; ``None`` when unknown."""
        steps_per_second = self._rate("step")
        if total_steps is None or not steps_per_second or steps_per_second <= 0:
            return None
        return max(total_steps - self._obs[-1].step, 0) / steps_per_second


def format_duration(seconds: float) -> str:
    """A short human duration: ``45s``, ``3m20s``, ``1h05m``, ``2d03h``."""
    total = max(round(seconds), 0)
    days, rem = divmod(total, 86_400)
    hours, rem = divmod(rem, 3_600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"
