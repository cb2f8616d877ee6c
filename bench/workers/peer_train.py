"""LLaMA-Factory's side of bench/train_throughput.py: ``run_exp`` (what ``llamafactory-cli train``
runs) with the same plan as ours, metered. Run with the peer venv's python; prints one JSON line.
Only ``Trainer.train`` is metered: data preparation and model loading are outside it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from peer_compat import text_only_torchaudio  # bench/workers/ is this script's sys.path[0]

text_only_torchaudio()

from llamafactory.train.tuner import run_exp  # noqa: E402
from meter import install  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402


def lf_arguments(cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    """LLaMA-Factory's arguments for the plan: LoRA on every linear layer, neat packing
    (its packing without cross-contamination, like ours) when the plan packs."""
    dataset_dir = work / "dataset_dir"
    dataset_dir.mkdir()
    (dataset_dir / "dataset_info.json").write_text(json.dumps({"bench": {"file_name": cfg["data"]}}))
    return {
        "model_name_or_path": cfg["model_dir"],
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": "all",
        "lora_rank": cfg["lora_rank"],
        "lora_alpha": cfg["lora_rank"] * 2,
        "dataset": "bench",
        "dataset_dir": str(dataset_dir),
        "max_samples": cfg["samples"],
        "template": "chatml",
        "cutoff_len": cfg["cutoff"],
        "packing": cfg["packing"],
        "neat_packing": cfg["packing"],
        "preprocessing_num_workers": 2,
        "overwrite_cache": True,
        "output_dir": str(work / "out"),
        # LLaMA-Factory checkpoints activations by default; ours is off in the plan: like for like,
        # and faster whenever the memory suffices (it does here).
        "disable_gradient_checkpointing": True,
        "per_device_train_batch_size": cfg["batch_size"],
        "gradient_accumulation_steps": 1,
        "max_steps": cfg["steps"],
        "learning_rate": 2e-4,
        "logging_steps": cfg["steps"],
        "save_strategy": "no",
        "report_to": "none",
        "bf16": cfg.get("precision") == "bf16",
        "seed": 42,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, required=True)
    cfg = json.loads(parser.parse_args().config.read_text())
    tokenizer = AutoTokenizer.from_pretrained(cfg["model_dir"])
    meter = install(tokenizer.pad_token_id)
    with tempfile.TemporaryDirectory(prefix="bench-peer-train-") as work:
        run_exp(lf_arguments(cfg, Path(work)))
        results = Path(work) / "out" / "train_results.json"
        loss = json.loads(results.read_text()).get("train_loss") if results.is_file() else None
    print(json.dumps({**meter.summary(), "train_loss": loss}))


if __name__ == "__main__":
    main()
