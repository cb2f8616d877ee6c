"""Small preference-stage jobs for the stage tests: one FineTuneJob + Dataset file, and its log's metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "data"
PREFERENCE_DATA = {"source": f"file://{DATA / 'preference.jsonl'}", "format": "alpaca", "ranking": True}
KTO_DATA = {
    "source": f"file://{DATA / 'kto.jsonl'}",
    "format": "alpaca",
    "columns": {"prompt": "instruction", "response": "output", "ktoTag": "label"},
}


def write_stage_job(
    path: Path,
    *,
    stage: str,
    method: dict[str, Any],
    dataset: dict[str, Any],
    out: Path,
    training: dict[str, Any] | None = None,
) -> Path:
    """A job small enough to train in seconds on CPU (tiny://llama, 12 steps, everything logged)."""
    spec = {
        "model": {"source": "tiny://llama"},
        "datasets": [{"ref": "data"}],
        "method": {"stage": stage, **method},
        "training": {
            "maxSteps": 12,
            "learningRate": 3e-3,
            "perDeviceBatchSize": 8,
            "cutoffLen": 128,
            "loggingSteps": 1,
            "saveSteps": 100,
            "lrScheduler": "constant",
            "gradientCheckpointing": False,
            **(training or {}),
        },
        "output": {"uri": f"file://{out}"},
    }
    docs = [
        {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": path.stem},
            "spec": spec,
        },
        {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "Dataset",
            "metadata": {"name": "data"},
            "spec": dataset,
        },
    ]
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def logged(out: Path, key: str) -> list[float]:
    """The values of ``key`` in the run's trainer_log.jsonl, in step order."""
    records = map(json.loads, (out / "trainer_log.jsonl").read_text().splitlines())
    return [r[key] for r in records if key in r]


def early_late(values: list[float], window: int = 3) -> tuple[float, float]:
    """Means of the first and of the last ``window`` values (one step is noisy on 8 pairs)."""
    assert len(values) >= 2 * window, values
    return sum(values[:window]) / window, sum(values[-window:]) / window
