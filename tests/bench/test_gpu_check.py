"""The GPU check (bench/gpu): its CPU dry run end to end, so the device command cannot rot, and the
pieces that decide what a device call keeps (budgets, guarded parts, slimmed wheels)."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bench.common import CACHE
from bench.gpu.check import Check, Skip
from bench.gpu.wheels import slim_wheel

REPO = Path(__file__).resolve().parents[2]


def check_args(tmp_path: Path, budget_s: int = 540) -> argparse.Namespace:
    return argparse.Namespace(
        budget_s=budget_s, dry_run=True, wheels=tmp_path / "whl", out=tmp_path / "out",
        scratch=tmp_path / "scratch", cache=None,
    )  # fmt: skip


@pytest.mark.slow
def test_dry_run_installs_our_wheel_and_trains_with_it(tmp_path: Path) -> None:
    """prepare --project-only builds this checkout's wheel; the dry run installs it with --target
    and trains with that copy (not the sources); CUDA parts and the uncarried peer are skipped."""
    wheels, out, scratch = tmp_path / "whl", tmp_path / "out", tmp_path / "scratch"
    prep = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "prepare", "--project-only", "--wheels", str(wheels)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert prep.returncode == 0, prep.stderr[-3000:]
    assert "ours: 1 wheels" in prep.stdout and "finetune_operator-0.1.0-py3-none-any.whl" in prep.stdout
    assert "MiB of 64: fits" in prep.stdout

    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "check", "--dry-run", "--wheels", str(wheels), "--out", str(out),
         "--scratch", str(scratch), "--cache", str(CACHE)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((out / "gpu_check.json").read_text())
    parts = result["parts"]
    assert result["dry_run"]
    assert parts["install_ours"]["wheels"] == ["finetune_operator-0.1.0-py3-none-any.whl"]
    estimates = parts["inputs"]["estimates"]
    assert Path(estimates["finetune_trainer_path"]).is_relative_to(scratch / "ours")
    lora = parts["lora"]
    assert lora["status"] == "ok", lora
    assert lora["steps"] == result["plans"]["lora"]["steps"] == 2
    assert lora["tokens_per_s"] > 0 and 0 < lora["real_tokens"] <= lora["padded_tokens"]
    assert lora["preflight_gib"] == estimates["lora"]["preflight_gib"] > 0
    assert estimates["lora"]["flops_per_token"] > 6 * estimates["lora"]["parameters"] * 0.5
    for name in ("matmul", "qlora", "zero3"):
        assert (parts[name]["status"], parts[name]["reason"]) == (
            "skipped",
            "needs CUDA (dry run on the CPU)",
        )
    assert parts["install_peer"]["status"] == "skipped" and "no wheels" in parts["install_peer"]["reason"]
    assert parts["lora_llamafactory"]["reason"] == "needs install_peer"
    report = (out / "gpu_check.txt").read_text()
    assert report.startswith("GPU check, DRY RUN") and all(name in report for name in parts)
    assert proc.stdout.rstrip().endswith(report.rstrip().splitlines()[-1])  # the report is printed last


def test_a_failing_part_is_recorded_and_the_next_still_runs(tmp_path: Path) -> None:
    check = Check(check_args(tmp_path))

    def fails(timeout: float) -> dict[str, float]:
        raise RuntimeError("worker died")

    def skips(timeout: float) -> dict[str, float]:
        raise Skip("not here")

    check.part("install_ours", fails)
    check.part("install_peer", skips)
    check.part("inputs", lambda t: {"budget_seen": t})
    check.part("lora", lambda t: {}, needs=("install_ours",))
    parts = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["parts"]
    assert parts["install_ours"]["status"] == "failed" and "worker died" in parts["install_ours"]["error"]
    assert parts["install_peer"] == {**parts["install_peer"], "status": "skipped", "reason": "not here"}
    assert parts["inputs"]["budget_seen"] == 240  # the part's own budget: the run has 540 s left
    assert parts["lora"]["reason"] == "needs install_ours"


def test_a_part_gets_no_more_than_the_time_left_and_none_under_the_minimum(tmp_path: Path) -> None:
    check = Check(check_args(tmp_path, budget_s=50))
    check.part("inputs", lambda t: {"budget_seen": t})
    assert 45 < check.result["parts"]["inputs"]["budget_seen"] <= 50
    check = Check(check_args(tmp_path, budget_s=10))
    check.part("inputs", lambda t: {})
    assert check.result["parts"]["inputs"]["reason"].startswith("out of time")


def test_slim_wheel_drops_the_matched_files_and_their_record_lines(tmp_path: Path) -> None:
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    members = ["pkg/__init__.py", "pkg/libpkg_cuda118.so", "pkg/libpkg_cuda130.so", "pkg/libpkg_cpu.so"]
    with zipfile.ZipFile(wheel, "w") as z:
        for name in members:
            z.writestr(name, b"x" * 100)
        z.writestr("pkg-1.0.dist-info/RECORD", "".join(f"{m},sha256=0,100\n" for m in members))
    slim_wheel(wheel, re.compile(r"/libpkg_(?!cpu|cuda13\d)\w+\.so$"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        record = z.read("pkg-1.0.dist-info/RECORD").decode()
    assert "pkg/libpkg_cuda118.so" not in names and "libpkg_cuda118" not in record
    assert {"pkg/__init__.py", "pkg/libpkg_cuda130.so", "pkg/libpkg_cpu.so"} <= names
    assert record.count("\n") == 3
