"""Our side of bench/train_throughput.py: ``finetune run`` on a generated FineTuneJob, metered.

Run in the project venv: ``python -m bench.workers.ours_train --config plan.json``; prints one JSON line.
Only ``Trainer.train`` is metered: data preparation and model loading are outside it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import yaml
from transformers import AutoTokenizer

from bench.workers.meter import install
from finetune_trainer.run import execute, plan_run


def job_documents(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The FineTuneJob and Dataset of the benchmark's plan (LoRA on every linear layer, packed)."""
    model: dict[str, Any] = {"source": cfg["model_uri"]}
    if "quantization" in cfg:  # the GPU check's QLoRA part (bench/gpu/check.py)
        model["quantization"] = cfg["quantization"]
    job: dict[str, Any] = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "bench-train"},
        "spec": {
            "model": model,
            "datasets": [{"ref": "bench-alpaca"}],
            "method": {
                "stage": "sft",
                "finetuning": "lora",
                "lora": {"rank": cfg["lora_rank"], "targetModules": ["all"]},
            },
            "training": {
                "maxSteps": cfg["steps"],
                "learningRate": 0.0002,
                "perDeviceBatchSize": cfg["batch_size"],
                "gradientAccumulationSteps": 1,
                "cutoffLen": cfg["cutoff"],
                "packing": cfg["packing"],
                "template": "chatml",
                "saveSteps": cfg["steps"] * 10,  # no checkpoint inside the timed loop
                "loggingSteps": cfg["steps"],
                "gradientCheckpointing": False,
                "precision": cfg.get("precision", "auto"),
            },
            "resources": {"gpusPerNode": cfg.get("gpus", 0)},
        },
    }
    if "deepspeed" in cfg:  # the GPU check's ZeRO-3 part
        job["spec"]["distributed"] = {"deepspeed": cfg["deepspeed"]}
    dataset = {
        "apiVersion": "finetune.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "bench-alpaca"},
        "spec": {"source": f"file://{cfg['data']}", "format": "alpaca", "maxSamples": cfg["samples"]},
    }
    return [job, dataset]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    cfg = json.loads(parser.parse_args().config.read_text())
    tokenizer = AutoTokenizer.from_pretrained(cfg["model_dir"])
    meter = install(tokenizer.pad_token_id)
    with tempfile.TemporaryDirectory(prefix="bench-ours-train-") as work:
        manifest = Path(work) / "job.yaml"
        manifest.write_text(yaml.safe_dump_all(job_documents(cfg)))
        outcome = execute(plan_run([str(manifest)], output=f"file://{work}/out"))
    print(
        json.dumps({**meter.summary(), "global_step": outcome.global_step, "train_loss": outcome.train_loss})
    )


if __name__ == "__main__":
    main()
