"""Small workers of the GPU check, each run as ``python -m bench.gpu.probe <what> --config FILE``
in its own subprocess (with the ``ours`` install on its path) and printing one JSON line.

- ``matmul``: the card's measured dense bf16 matmul rate (the MFU denominator).
- ``inputs``: the model folder and data file the training parts share (built once, cached), and
  the GPU-memory preflight's estimate and the FLOPs per token of each training part (one process:
  both import the training stack).
- ``deepspeed``: whether DeepSpeed imports, and which of its ops are compatible here.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch


def matmul_rate(n: int = 8192, repeats: int = 20) -> dict[str, Any]:
    """Median TFLOP/s of an n×n×n bf16 ``torch.matmul`` on random data (rotating 3 input pairs so
    the inputs are not served from L2), timed with CUDA events after a warm-up."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    pairs = [
        (
            torch.randn(n, n, device="cuda", dtype=torch.bfloat16),
            torch.randn(n, n, device="cuda", dtype=torch.bfloat16),
        )
        for _ in range(3)
    ]
    out = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
    for a, b in pairs:
        torch.matmul(a, b, out=out)
    torch.cuda.synchronize()
    times = []
    for i in range(repeats):
        a, b = pairs[i % len(pairs)]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.matmul(a, b, out=out)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    if not torch.isfinite(out).all():
        raise RuntimeError("the bf16 matmul produced non-finite values")
    median = statistics.median(times)
    return {
        "n": n,
        "repeats": repeats,
        "median_s": median,
        "tflops": round(2 * n**3 / median / 1e12, 1),
        "best_tflops": round(2 * n**3 / min(times) / 1e12, 1),
        "device": torch.cuda.get_device_name(),
        "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def inputs(plans: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The shared model folder (``tiny://`` build, cached) and alpaca JSONL of the first plan, and
    :func:`estimate` of every plan (its error instead, should it fail: the inputs still count)."""
    from bench.common import alpaca_file, tiny_model_folder

    first = next(iter(plans.values()))
    files = {"data": str(alpaca_file(first["rows"])), "model_dir": str(tiny_model_folder(first["model_uri"]))}
    try:
        estimates = estimate({name: {**cfg, **files} for name, cfg in plans.items()})
    except Exception as exc:  # recorded; the training parts need only the files
        estimates = {"error": f"{type(exc).__name__}: {exc}"}
    return {"files": files, "estimates": estimates}


def estimate(parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per training part: the operator's preflight estimate of the same FineTuneJob, and its FLOPs."""
    import finetune_trainer
    from bench.train_throughput import model_flops
    from bench.workers.ours_train import job_documents
    from finetune_api.preflight import estimate_memory, model_shape
    from finetune_api.resources import FineTuneJob

    out: dict[str, Any] = {"finetune_trainer_path": str(Path(finetune_trainer.__file__).parent)}
    for name, cfg in parts.items():
        spec = FineTuneJob.model_validate(job_documents(cfg)[0]).spec
        shape = model_shape(spec.model.source)
        memory = estimate_memory(spec, shape) if shape else None
        out[name] = {
            **model_flops(cfg["model_uri"], cfg["cutoff"]),
            "preflight_gib": round(memory.total_gib, 3) if memory else None,
            "preflight": memory.describe() if memory else None,
        }
    return out


def deepspeed_ops() -> dict[str, Any]:
    """DeepSpeed's version and the ops its builders call compatible here (nothing is built)."""
    import deepspeed
    from deepspeed.ops.op_builder.all_ops import ALL_OPS

    compatible: dict[str, bool | str] = {}
    for name, builder in ALL_OPS.items():
        try:
            compatible[name] = bool(builder.is_compatible(verbose=False))
        except Exception as exc:  # one builder's own check failing says nothing of the others
            compatible[name] = f"{type(exc).__name__}: {exc}"[:200]
    return {"version": deepspeed.__version__, "compatible_ops": compatible}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=("matmul", "inputs", "deepspeed"))
    parser.add_argument("--config", type=Path)
    args = parser.parse_args()
    cfg = json.loads(args.config.read_text()) if args.config else {}
    if args.what == "matmul":
        result = matmul_rate(**cfg)
    elif args.what == "inputs":
        result = inputs(cfg)
    else:
        result = deepspeed_ops()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
