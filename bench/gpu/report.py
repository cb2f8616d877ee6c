"""The GPU check's short text report: one line per part, then the figures against the targets."""

from __future__ import annotations

from typing import Any


def _pct(value: float | None) -> str:
    return f"{value:.1%}" if value is not None else "-"


def _part_line(name: str, part: dict[str, Any]) -> str:
    head = (
        f"{name:<18} {part.get('status', '?'):<8} {part.get('seconds', 0):>6.1f} s of {part['budget_s']:>3} s"
    )
    if part.get("status") == "skipped":
        return f"{head}  {part['reason']}"
    if part.get("status") == "failed":
        return f"{head}  {part['error'].strip().splitlines()[-1][:160]}"
    if "tokens_per_s" in part:
        peak = part.get("gpu_peak_reserved_mib")
        memory = f"GPU peak {peak / 1024:.1f} GiB reserved" if peak else "no GPU"
        estimate = f", preflight {part['preflight_gib']:.1f} GiB" if part.get("preflight_gib") else ""
        ratio = f" ({part['preflight_over_reserved']:.2f}x)" if part.get("preflight_over_reserved") else ""
        return (
            f"{head}  {part['tokens_per_s']:.0f} tokens/s, MFU {_pct(part.get('mfu'))}, {memory}{estimate}{ratio}, "
            f"loss {part.get('train_loss')}"
        )
    if "tflops" in part:
        return f"{head}  bf16 matmul {part['tflops']:.0f} TFLOP/s measured on {part['device']}"
    return head


def report_text(result: dict[str, Any]) -> str:
    """Lines a person reads first: what ran, what did not and why, and the targets."""
    mode = "DRY RUN on the CPU (tiny model)" if result["dry_run"] else "GPU"
    lines = [f"GPU check, {mode}, budget {result['budget_s']} s, finished {result.get('finished_at', '')}"]
    lines += [_part_line(name, part) for name, part in result["parts"].items()]
    summary = result.get("summary")
    if summary:
        targets, meets = result["targets"], summary["meets"]
        low, high = targets["preflight_over_peak"]
        ratios = ", ".join(f"{n} {r:.2f}x" for n, r in summary["preflight_over_reserved"].items()) or "-"
        speedup = summary["speedup_vs_llamafactory"]
        lines += [
            f"target MFU >= {targets['mfu']:.0%}: {_pct(summary['lora_mfu'])} ({'met' if meets['mfu'] else 'not met'})",
            f"target >= {targets['speedup_vs_llamafactory']}x LLaMA-Factory tokens/s: "
            f"{f'{speedup:.2f}x' if speedup else '-'} ({'met' if meets['speedup'] else 'not met'})",
            f"target preflight / peak in [{low}, {high}]: {ratios} ({'met' if meets['preflight'] else 'not met'})",
        ]
    return "\n".join(lines)
