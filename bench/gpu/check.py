"""``python -m bench.gpu check``: the whole GPU check in one command, each part under its own budget.

Parts, in order (a part that fails or runs out of time is recorded and the next one runs):
install_ours, install_peer (the carried wheels into ``--scratch``/<set> with ``--target``), matmul
(the card's measured bf16 rate), inputs (model folder and data; the operator's memory preflight
and the FLOPs per token of each training part), then training, each in its own process:
lora (ours, LoRA SFT bf16, sdpa, packing), lora_llamafactory (the same plan through LLaMA-Factory),
qlora (ours, 4-bit nf4 through bitsandbytes), zero3 (ours under DeepSpeed ZeRO-3 on one GPU).
After every part the JSON and text report under ``--out`` are rewritten, so a run killed at its
limit keeps what finished. ``--dry-run`` runs the same code with a tiny model on the CPU; the CUDA
parts (matmul, qlora, zero3) are then recorded as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import REPO, machine, run_measured
from bench.gpu import wheels
from bench.gpu.report import report_text
from bench.train_throughput import PEAK_BF16, PLANS, run_side

# Seconds each part may take at most (a part also stops at the whole run's deadline).
BUDGETS_S = {
    "install_ours": 60, "install_peer": 45, "matmul": 45, "inputs": 240,
    "lora": 130, "lora_llamafactory": 160, "qlora": 110, "zero3": 110,
}  # fmt: skip
MIN_PART_S = 20  # a part with less time left than this is skipped, not started
TRAINING = {"lora": "ours", "lora_llamafactory": "llamafactory", "qlora": "ours", "zero3": "ours"}
CUDA_ONLY = ("matmul", "qlora", "zero3")
# The 1.5B Qwen2-shaped plan, cut to what fits the budgets: 20 steps × 4 × 4096 tokens need about
# 330k tokens, and 4000 rows give about 760k.
GPU_PLAN = {
    "model_uri": PLANS["gpu"]["model_uri"], "rows": 4000, "samples": 4000, "steps": 20, "batch_size": 4,
    "cutoff": 4096, "precision": "bf16", "gpus": 1, "packing": True, "lora_rank": 8,
}  # fmt: skip
DRY_PLAN = {
    "model_uri": PLANS["quick"]["model_uri"], "rows": 2000, "samples": 64, "steps": 2, "batch_size": 2,
    "cutoff": 256, "precision": "auto", "gpus": 0, "packing": True, "lora_rank": 8,
}  # fmt: skip
# One process, no launcher: the rendezvous DeepSpeed would otherwise discover (through MPI here).
SINGLE_RANK = {
    "RANK": "0",
    "LOCAL_RANK": "0",
    "WORLD_SIZE": "1",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29517",
}
TARGET_MFU, TARGET_SPEEDUP, PREFLIGHT_RANGE = 0.45, 1.3, (1.0, 1.3)
TARGETS = {
    "mfu": TARGET_MFU,
    "speedup_vs_llamafactory": TARGET_SPEEDUP,
    "preflight_over_peak": PREFLIGHT_RANGE,
}


class Skip(Exception):
    """A part that cannot run here (and did not fail): its reason is recorded."""


def training_plans(dry_run: bool) -> dict[str, dict[str, Any]]:
    """The plan of each training part: one base plan; QLoRA and ZeRO-3 run fewer steps."""
    base = DRY_PLAN if dry_run else GPU_PLAN
    short = {"steps": max(2, base["steps"] // 2)}
    return {
        "lora": base,
        "lora_llamafactory": base,
        "qlora": {**base, **short, "quantization": {"bits": 4, "type": "nf4"}},
        "zero3": {**base, **short, "deepspeed": "zero3"},
    }


class Check:
    """One run of the check: parts, their figures, and the files under ``out``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.deadline = time.monotonic() + args.budget_s
        self.plans = training_plans(args.dry_run)
        self.scratch: Path = args.scratch
        self.cache: Path = args.cache or self.scratch / "cache"
        self.inputs: dict[str, str] = {}
        self.estimates: dict[str, Any] = {}
        self.result: dict[str, Any] = {
            "dry_run": args.dry_run,
            "budget_s": args.budget_s,
            "host": machine(),
            "plans": self.plans,
            "targets": TARGETS,
            "parts": {},
        }

    def env(self, side: str) -> dict[str, str]:
        """A worker's environment: only that side's install on the path (bench/ comes from the working
        directory, the repo root), the shared cache, no hub."""
        target = self.scratch / ("ours" if side == "ours" else "peer")
        return {
            "PYTHONPATH": str(target),
            "FINETUNE_CACHE_DIR": str(self.cache),
            "FT_CACHE": str(self.cache),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1",
        }

    def part(self, name: str, run: Callable[[float], dict[str, Any]], *, needs: tuple[str, ...] = ()) -> None:
        """Run one part within its budget, recording its figures, or why it was skipped or failed."""
        budget = BUDGETS_S[name]
        record: dict[str, Any] = {"budget_s": budget}
        parts = self.result["parts"]
        missing = [n for n in needs if parts.get(n, {}).get("status") != "ok"]
        timeout = min(budget, self.deadline - time.monotonic())
        started = time.monotonic()
        try:
            if self.args.dry_run and name in CUDA_ONLY:
                raise Skip("needs CUDA (dry run on the CPU)")
            if missing:
                raise Skip(f"needs {', '.join(missing)}")
            if timeout < MIN_PART_S:
                raise Skip(f"out of time ({timeout:.0f} s left of the run's {self.args.budget_s} s)")
            record |= {"status": "ok", **run(timeout)}
        except Skip as exc:
            record |= {"status": "skipped", "reason": str(exc)}
        except subprocess.TimeoutExpired:
            record |= {"status": "failed", "error": f"ran past its {timeout:.0f} s budget"}
        except Exception as exc:  # any failure is the part's figure; the next part still runs
            record |= {"status": "failed", "error": f"{type(exc).__name__}: {str(exc)[-3000:]}"}
        record["seconds"] = round(time.monotonic() - started, 1)
        parts[name] = record
        print(f"[gpu-check] {name}: {record['status']} in {record['seconds']} s", flush=True)
        self.write()

    def worker(self, what: str, cfg: Any, timeout: float) -> dict[str, Any]:
        """One ``bench.gpu.probe`` worker with our install on its path."""
        with tempfile.TemporaryDirectory(prefix=f"gpu-check-{what}-") as work:
            config = Path(work) / "config.json"
            config.write_text(json.dumps(cfg))
            argv = [sys.executable, "-m", "bench.gpu.probe", what, "--config", str(config)]
            result, _ = run_measured(argv, env=self.env("ours"), timeout_s=timeout)
        return result

    def install(self, side: str, timeout: float) -> dict[str, Any]:
        folder = self.args.wheels / side
        if not any(folder.glob("*.whl")):
            raise Skip(f"no wheels in {folder} (python -m bench.gpu prepare, and carry it)")
        try:
            names = wheels.install(folder, self.scratch / side)
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"pip install failed:\n{exc.stderr[-3000:]}") from exc
        return {"wheels": names}

    def matmul(self, timeout: float) -> dict[str, Any]:
        result = self.worker("matmul", {}, timeout)
        if "skipped" in result:
            raise Skip(result["skipped"])
        peak = next((v for k, v in PEAK_BF16.items() if k in result["device"]), None)
        return {**result, "datasheet_tflops": peak / 1e12 if peak else None}

    def build_inputs(self, timeout: float) -> dict[str, Any]:
        result = self.worker("inputs", self.plans, timeout)
        self.inputs, self.estimates = result["files"], result["estimates"]
        return result

    def train(self, name: str, timeout: float) -> dict[str, Any]:
        side = TRAINING[name]
        env, extra = self.env(side), {}
        if name == "zero3":
            try:
                extra["deepspeed"] = self.worker("deepspeed", {}, min(timeout, 60))
            except RuntimeError as exc:
                raise Skip(f"deepspeed does not import: {str(exc)[-1500:]}") from exc
            env |= SINGLE_RANK
        cfg = {**self.plans[name], **self.inputs}
        result = run_side(side, Path(sys.executable), cfg, env=env, timeout_s=timeout - 1)
        return {**self.figures(name, result), **extra}

    def figures(self, name: str, result: dict[str, Any]) -> dict[str, Any]:
        """The run's figures with MFU (against the measured and the datasheet rate) and the
        preflight estimate over the measured peak."""
        keep = ("steps", "real_tokens", "padded_tokens", "tokens_per_s", "train_seconds", "train_loss",
                "gpu_peak_allocated_mib", "gpu_peak_reserved_mib", "process_wall_s")  # fmt: skip
        out: dict[str, Any] = {k: result.get(k) for k in keep}
        out["host_peak_pss_mib"] = result["memory"]["peak_pss_mib"]
        estimate = self.estimates.get(name, {})
        matmul = self.result["parts"].get("matmul", {})
        flops = estimate.get("flops_per_token")
        if flops and matmul.get("tflops"):
            out["mfu"] = round(out["tokens_per_s"] * flops / (matmul["tflops"] * 1e12), 4)
        if flops and matmul.get("datasheet_tflops"):
            out["mfu_datasheet"] = round(out["tokens_per_s"] * flops / (matmul["datasheet_tflops"] * 1e12), 4)
        gib = estimate.get("preflight_gib")
        for kind in ("reserved", "allocated"):
            peak = result.get(f"gpu_peak_{kind}_mib")
            if gib and peak:
                out[f"preflight_over_{kind}"] = round(gib / (peak / 1024), 3)
        out["preflight_gib"] = gib
        return out

    def run(self) -> dict[str, Any]:
        """Every part in order; returns the result (also written under ``out``)."""
        self.part("install_ours", lambda t: self.install("ours", t))
        self.part("install_peer", lambda t: self.install("peer", t))
        self.part("matmul", self.matmul)  # the image's torch alone
        self.part("inputs", self.build_inputs, needs=("install_ours",))
        for name, side in TRAINING.items():
            needs = ("inputs", "install_ours") if side == "ours" else ("inputs", "install_peer")
            self.part(name, lambda t, n=name: self.train(n, t), needs=needs)  # type: ignore[misc]
        self.result["summary"] = summary(self.result["parts"])
        self.write()
        return self.result

    def write(self) -> None:
        out: Path = self.args.out
        out.mkdir(parents=True, exist_ok=True)
        self.result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        (out / "gpu_check.json").write_text(json.dumps(self.result, indent=2) + "\n")
        (out / "gpu_check.txt").write_text(report_text(self.result) + "\n")


def summary(parts: dict[str, Any]) -> dict[str, Any]:
    """The figures the targets are stated in."""
    ours, peer = parts.get("lora", {}), parts.get("lora_llamafactory", {})
    speedup = None
    if ours.get("tokens_per_s") and peer.get("tokens_per_s"):
        speedup = round(ours["tokens_per_s"] / peer["tokens_per_s"], 3)
    low, high = PREFLIGHT_RANGE
    ratios = {n: p["preflight_over_reserved"] for n, p in parts.items() if p.get("preflight_over_reserved")}
    return {
        "lora_mfu": ours.get("mfu"),
        "speedup_vs_llamafactory": speedup,
        "preflight_over_reserved": ratios,
        "meets": {
            "mfu": ours.get("mfu") is not None and ours["mfu"] >= TARGET_MFU,
            "speedup": speedup is not None and speedup >= TARGET_SPEEDUP,
            "preflight": bool(ratios) and all(low <= r <= high for r in ratios.values()),
        },
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``check`` subcommand's options."""
    parser.add_argument("--wheels", type=Path, default=REPO / ".whl", help="the carried wheels folder")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT", REPO / "bench" / "results")),
        help="where gpu_check.json and gpu_check.txt go (default: $OUT, else bench/results)",
    )
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "gpu-check")
    parser.add_argument("--cache", type=Path, help="model and data cache (default: SCRATCH/cache)")
    parser.add_argument("--budget-s", type=int, default=540, help="the whole run's deadline")
    parser.add_argument("--dry-run", action="store_true", help="tiny model on the CPU; CUDA parts skipped")


def main(args: argparse.Namespace) -> None:
    """Run the check and print the text report last (a device call returns the output's end)."""
    result = Check(args).run()
    print(report_text(result))
