"""Training throughput: LoRA SFT with ``finetune run`` vs LLaMA-Factory's ``run_exp``, same plan, one run.

Both sides: the same random Llama (our ``tiny://`` model folder; ~25M parameters), the same
alpaca-style rows, ChatML, the same cutoff, batch size and steps, LoRA rank 8 on every linear
layer, packing without cross-contamination (ours; LLaMA-Factory's ``neat_packing``). Each side
runs in its own subprocess; a meter wrapped around ``Trainer.train`` counts real tokens (padding
excluded) and times each step (the first step, with its warm-up, is left out of tokens/s).

The full plan runs each side twice in the order ours, peer, peer, ours (``--rounds``): on a shared
machine one side's single run can land in a slow minute (10% between two identical runs here), and
this order gives both sides the same share of early and late minutes. Each side reports the mean of
its runs and the ratio of the means; every run is kept in the result.

    python -m bench.train_throughput [--quick] [--rounds N]
    python -m bench.train_throughput --gpu [--plan]   # 1.5B Qwen2-shaped model, bf16, MFU

Target (bench/README.md, Targets): tokens/s ≥ 1.5× LLaMA-Factory; on an H100, ≥ 45% MFU for the 1.5B model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    alpaca_file,
    our_versions,
    peer_python,
    peer_versions,
    ratio,
    run_measured,
    tiny_model_folder,
    write_result,
)

NAME = "train_throughput"
TARGET_SPEEDUP = 1.5
TARGET_MFU = 0.45
# Dense bf16 peak FLOP/s by device name fragment (vendor datasheets, no sparsity).
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}

# What each run keeps in a side's ``runs``.
RUN_FIGURES = ("tokens_per_s", "tokens_per_cpu_s", "train_seconds", "train_loss")

PLANS: dict[str, dict[str, Any]] = {
    "full": {"model_uri": "tiny://llama?layers=8&hidden=512&intermediate=1408&heads=8&kv_heads=4&vocab=8192",
             "rows": 2000, "samples": 2000, "steps": 30, "batch_size": 4, "cutoff": 1024},
    "quick": {"model_uri": "tiny://llama?layers=2&hidden=128&intermediate=256&heads=4&kv_heads=2&vocab=2048",
              "rows": 2000, "samples": 200, "steps": 4, "batch_size": 2, "cutoff": 512},
    # Qwen2-1.5B's shapes (untied head); the tokenizer is small, the embedding padded to 151936.
    "gpu": {"model_uri": "tiny://qwen2?layers=28&hidden=1536&intermediate=8960&heads=12&kv_heads=2"
                         "&vocab=151936&max_positions=32768",
            "rows": 50_000, "samples": 50_000, "steps": 60, "batch_size": 4, "cutoff": 4096,
            "precision": "bf16", "gpus": 1},
}  # fmt: skip


def model_flops(uri: str, seq_len: int) -> dict[str, float]:
    """Parameters and training FLOPs per token (PaLM's 6N + 12·L·H·S, N without the input embedding).

    The 6N convention counts weight gradients that LoRA does not compute for frozen weights; it
    is the usual basis of MFU figures, so the target is stated against it.
    """
    from finetune_trainer.model.tiny import parse_tiny_uri

    s = parse_tiny_uri(uri)
    head = s.hidden // s.heads
    attn = s.hidden * s.heads * head * 2 + s.hidden * s.kv_heads * head * 2
    mlp = 3 * s.hidden * s.intermediate
    per_layer = attn + mlp + 2 * s.hidden
    n_matmul = s.layers * per_layer + s.vocab * s.hidden  # + the LM head
    total = n_matmul + s.vocab * s.hidden + s.hidden
    return {
        "parameters": float(total),
        "flops_per_token": 6.0 * n_matmul + 12.0 * s.layers * s.hidden * seq_len,
    }


def peak_flops() -> tuple[str, float | None]:
    """This machine's accelerator and its dense bf16 peak, when known."""
    import torch

    if not torch.cuda.is_available():
        return "cpu", None
    name = torch.cuda.get_device_name()
    return name, next((v for k, v in PEAK_BF16.items() if k in name), None)


def run_side(
    side: str,
    python: Path,
    cfg: dict[str, Any],
    *,
    env: dict[str, str] | None = None,
    timeout_s: float = 3600,
) -> dict[str, Any]:
    """One side in its own subprocess, the plan passed as a JSON file; ``env`` adds to its environment."""
    with tempfile.TemporaryDirectory(prefix=f"bench-train-{side}-") as work:
        plan = Path(work) / "plan.json"
        plan.write_text(json.dumps(cfg))
        if side == "ours":
            argv = [sys.executable, "-m", "bench.workers.ours_train", "--config", str(plan)]
        else:
            argv = [str(python), str(REPO / "bench/workers/peer_train.py"), "--config", str(plan)]
        base = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_CACHE": f"{work}/hf"}
        result, memory = run_measured(argv, env={**base, **(env or {})}, timeout_s=timeout_s)
    result["memory"] = asdict(memory)
    return result


def run_rounds(python: Path, cfg: dict[str, Any], rounds: int) -> dict[str, dict[str, Any]]:
    """Each side ``rounds`` times, alternating which goes first (ours, peer, peer, ours, …); per side,
    the first run's figures with tokens/s averaged over the runs, the peak memory over all of them and
    every run's figures under ``runs``."""
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "llamafactory": []}
    for i in range(rounds):
        order = ("ours", "llamafactory") if i % 2 == 0 else ("llamafactory", "ours")
        for side in order:
            runs[side].append(run_side(side, python, cfg))
    sides = {}
    for side, results in runs.items():
        mean = {
            k: round(statistics.fmean(r[k] for r in results), 1) for k in ("tokens_per_s", "tokens_per_cpu_s")
        }
        peaks = {k: max(r["memory"][k] for r in results) for k in results[0]["memory"] if "peak" in k}
        sides[side] = {
            **results[0],
            **mean,
            "memory": {**results[0]["memory"], **peaks},
            "runs": [{k: r[k] for k in RUN_FIGURES} for r in results],
        }
    return sides


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a 1M-parameter model, 4 steps (CI)")
    mode.add_argument("--gpu", action="store_true", help="the 1.5B Qwen2-shaped model in bf16 on the GPU")
    parser.add_argument("--plan", action="store_true", help="print the plan and FLOPs, run nothing")
    parser.add_argument("--steps", type=int, help="override the plan's steps")
    parser.add_argument("--rounds", type=int, help="runs per side, alternating the order (full: 2, else 1)")
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")

    name = "gpu" if args.gpu else "quick" if args.quick else "full"
    cfg = {**PLANS[name], "packing": True, "lora_rank": 8}
    if args.steps:
        cfg["steps"] = args.steps
    flops = model_flops(cfg["model_uri"], cfg["cutoff"])
    if args.plan:
        print(json.dumps({"plan": name, **cfg, **flops}, indent=2))
        return {"plan": name, **cfg, **flops}
    device, peak = peak_flops()
    if args.gpu and peak is None:
        raise SystemExit(f"--gpu needs a known CUDA device (found {device}); see PEAK_BF16")
    python = peer_python()
    cfg |= {"data": str(alpaca_file(cfg["rows"])), "model_dir": str(tiny_model_folder(cfg["model_uri"]))}
    rounds = args.rounds or (2 if name == "full" else 1)
    sides = run_rounds(python, cfg, rounds)
    for side in sides.values():
        side["mfu"] = round(side["tokens_per_s"] * flops["flops_per_token"] / peak, 4) if peak else None
    ours, peer = sides["ours"], sides["llamafactory"]
    speedup = ratio(ours["tokens_per_s"], peer["tokens_per_s"])
    result = {
        "plan": name,
        "inputs": cfg,
        "rounds": rounds,
        "device": device,
        **flops,
        "versions": {"ours": our_versions(), "llamafactory": peer_versions(python)},
        "ours": ours,
        "llamafactory": peer,
        "speedup": speedup,
        "speedup_per_cpu_second": ratio(ours["tokens_per_cpu_s"], peer["tokens_per_cpu_s"]),
        "peak_memory_ratio": ratio(ours["memory"]["peak_pss_mib"], peer["memory"]["peak_pss_mib"]),
        "target": {"speedup": TARGET_SPEEDUP, **({"mfu": TARGET_MFU} if args.gpu else {})},
        "meets_target": speedup >= TARGET_SPEEDUP and (not args.gpu or (ours["mfu"] or 0) >= TARGET_MFU),
    }
    path = write_result(NAME if name != "gpu" else f"{NAME}_gpu", result)
    mfu = f"; MFU {ours['mfu']:.1%} vs {peer['mfu']:.1%}" if peak else ""
    print(
        f"train_throughput[{name}, {rounds} round(s)]: ours {ours['tokens_per_s']:.0f} tokens/s, LLaMA-Factory "
        f"{peer['tokens_per_s']:.0f} -> {speedup:.2f}x (target {TARGET_SPEEDUP}x){mfu}; peak PSS "
        f"{ours['memory']['peak_pss_mib']:.0f} vs {peer['memory']['peak_pss_mib']:.0f} MiB; {path}"
    )
    return result


if __name__ == "__main__":
    main()
