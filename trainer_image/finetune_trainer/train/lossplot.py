"""The loss curve of a run (``loss.png``): the logged losses and, beside them, a smoothed curve."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def smooth(values: Sequence[float]) -> list[float]:
    """An exponential moving average whose weight grows with the curve's length, as LLaMA-Factory
    smooths its loss plots: short curves stay close to the raw values, long ones are smoothed hard."""
    if not values:
        return []
    weight = 1.8 * (1 / (1 + math.exp(-0.05 * len(values))) - 0.5)
    smoothed, last = [], values[0]
    for value in values:
        last = last * weight + (1 - weight) * value
        smoothed.append(last)
    return smoothed


def read_losses(log_path: Path) -> tuple[list[int], list[float]]:
    """The (step, loss) pairs of the training records in trainer_log.jsonl, in order."""
    steps: list[int] = []
    losses: list[float] = []
    for line in log_path.read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            steps.append(int(record["step"]))
            losses.append(float(record["loss"]))
    return steps, losses


def plot_loss(log_path: Path, png: Path, *, title: str) -> bool:
    """The loss curve of trainer_log.jsonl as a PNG titled ``title``; False when there is nothing to plot."""
    steps, losses = read_losses(log_path)
    if not steps:
        return False
    import matplotlib.pyplot as plt

    fig = draw_loss(steps, losses, title=title)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return True


def draw_loss(steps: Sequence[int], losses: Sequence[float], *, title: str) -> Figure:
    """The figure of :func:`plot_loss`: every logged point, and the smoothed curve beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    # A marker on every raw point: a run with a single logged step still shows it.
    ax.plot(steps, losses, color="#1f77b4", alpha=0.4, marker="o", markersize=3, label="original")
    if len(steps) > 1:
        ax.plot(steps, smooth(losses), color="#1f77b4", label="smoothed")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
