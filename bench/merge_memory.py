"""The merge's peak memory relative to the model's size (part of bench/export_upload.py).

Trains a one-step LoRA adapter with ``finetune run`` on a random Llama (~1.7 GB in fp32; quick:
a few MB), then runs ``finetune export`` (merge, safetensors shards, local output) in its own
process and samples its memory. The import baseline (a process importing the same stack) is
measured too: on small models it, not the merge, dominates.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from bench.common import alpaca_file, run_measured, tiny_model_folder

MERGE_MODELS = {
    "full": "tiny://llama?layers=16&hidden=1536&intermediate=4096&heads=12&kv_heads=4&vocab=8192",
    "quick": "tiny://llama?layers=2&hidden=128&intermediate=256&heads=4&kv_heads=2&vocab=2048",
}
BASELINE_IMPORTS = "import json, finetune_trainer.export.pipeline, peft, transformers; print(json.dumps({}))"


def _documents(model: str, data: Path) -> list[dict[str, Any]]:
    job = {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "bench-merge"},
        "spec": {
            "model": {"source": model}, "datasets": [{"ref": "bench-alpaca"}],
            "method": {"stage": "sft", "finetuning": "lora", "lora": {"rank": 8, "targetModules": ["all"]}},
            "training": {"maxSteps": 1, "perDeviceBatchSize": 1, "cutoffLen": 64, "saveSteps": 10,
                         "gradientCheckpointing": False},
            "resources": {"gpusPerNode": 0},
        },
    }  # fmt: skip
    dataset = {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "Dataset", "metadata": {"name": "bench-alpaca"},
        "spec": {"source": f"file://{data}", "format": "alpaca", "maxSamples": 16},
    }  # fmt: skip
    return [job, dataset]


def _export_document(model: str, adapter: Path, out: Path) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "Export", "metadata": {"name": "bench-merged"},
        "spec": {"model": model, "adapter": f"file://{adapter}", "merge": True, "shardSize": "500MB",
                 "output": {"uri": f"file://{out}"}},
    }  # fmt: skip


def measure_merge(*, quick: bool) -> dict[str, Any]:
    """Peak memory of ``finetune export`` (merge) over the base model's size on disk."""
    try:
        import finetune_trainer.export  # noqa: F401
    except ImportError:
        return {"todo": "finetune_trainer.export is not in this tree yet: merge peak memory not measured"}
    model = MERGE_MODELS["quick" if quick else "full"]
    folder = tiny_model_folder(model)
    model_bytes = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    cli = [sys.executable, "-m", "finetune_trainer.cli"]
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as work:
        root = Path(work)
        (root / "job.yaml").write_text(yaml.safe_dump_all(_documents(model, alpaca_file(2000))))
        subprocess.run([*cli, "run", str(root / "job.yaml"), "--output", f"file://{root}/run"], check=True,
                       capture_output=True, timeout=3600)  # fmt: skip
        (root / "export.yaml").write_text(
            yaml.safe_dump(_export_document(model, root / "run" / "adapter", root / "out"))
        )
        _, base_memory = run_measured([sys.executable, "-c", BASELINE_IMPORTS])
        report, memory = run_measured(
            [*cli, "export", str(root / "export.yaml")], env={"FINETUNE_WORK_DIR": str(root / "w")}
        )
    peak = memory.peak_pss_mib * 2**20
    return {
        "model": model,
        "model_bytes": model_bytes,
        "memory": asdict(memory),
        "import_baseline_memory": asdict(base_memory),
        "reported_peak_rss_bytes": report.get("peakRssBytes"),
        "peak_over_model_size": round(peak / model_bytes, 3),
        "peak_minus_imports_over_model_size": round(
            (peak - base_memory.peak_pss_mib * 2**20) / model_bytes, 3
        ),
        "exported_bytes": report.get("sizeBytes"),
    }
