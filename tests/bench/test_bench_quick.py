"""Each bench/ script's --quick mode end to end, so the benchmarks keep working (no timing asserted).

They run as the README says (``python -m bench.<name> --quick``) in a subprocess, with results
written to a temp folder; the assertions check that both sides really ran on the same inputs.
The peer's venv (LLaMA-Factory) is created on first use by hack/bench-peer-env.sh (cached).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.common import run_measured

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run_bench(name: str, results: Path, *args: str, timeout_s: float = 1800) -> tuple[dict[str, Any], str]:
    """Run ``python -m bench.<name> --quick``; its JSON result and its summary line."""
    env = {**os.environ, "BENCH_RESULTS_DIR": str(results)}
    proc = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", "--quick", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s,
    )  # fmt: skip
    assert proc.returncode == 0, f"bench.{name} failed:\n{proc.stderr[-4000:]}"
    summary = [line for line in proc.stdout.splitlines() if line.startswith(f"{name}")]
    assert summary, f"no summary line from bench.{name}:\n{proc.stdout[-2000:]}"
    return json.loads((results / f"{name}.json").read_text()), summary[-1]


def test_data_preprocess_quick_tokenises_identically_on_both_sides(tmp_path: Path) -> None:
    result, line = run_bench("data_preprocess", tmp_path)
    ours, peer = result["ours"], result["llamafactory"]
    assert ours["samples"] == peer["samples"] == result["inputs"]["rows"]
    assert ours["tokens"] == peer["tokens"] > 0  # same tokenizer, template and cutoff
    assert result["speedup"] > 0 and ours["memory"]["peak_pss_mib"] > 0 and peer["memory"]["peak_pss_mib"] > 0
    assert "x" in line and result["versions"]["llamafactory"]["llamafactory"] == "0.9.5"


def test_train_throughput_quick_runs_the_same_steps_on_both_sides(tmp_path: Path) -> None:
    result, line = run_bench("train_throughput", tmp_path, "--rounds", "2", "--steps", "3")
    assert result["rounds"] == 2 and "2 round(s)" in line
    for side in (result["ours"], result["llamafactory"]):
        assert side["steps"] == result["inputs"]["steps"] == 3
        assert 0 < side["real_tokens"] <= side["padded_tokens"]
        runs = [run["tokens_per_s"] for run in side["runs"]]
        assert len(runs) == 2 and all(r > 0 for r in runs)
        assert side["tokens_per_s"] == pytest.approx(sum(runs) / 2, abs=0.1)
    assert result["speedup"] == pytest.approx(
        result["ours"]["tokens_per_s"] / result["llamafactory"]["tokens_per_s"], abs=1e-3
    )


def test_train_throughput_gpu_plan_parses_on_cpu() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.train_throughput", "--gpu", "--plan"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert 1.4e9 < plan["parameters"] < 1.9e9  # Qwen2-1.5B's shapes
    assert plan["flops_per_token"] > 6 * 1.4e9


def test_export_upload_quick_measures_ours_and_the_raw_tools(tmp_path: Path) -> None:
    result, _ = run_bench("export_upload", tmp_path)
    methods = result["methods"]
    assert {"ours_upload_with_manifest", "boto3_multipart", "rclone_copy"} <= set(methods)
    assert all(m["mb_per_s"] > 0 for m in methods.values())
    assert result["best_raw"] in ("boto3_multipart", "rclone_copy")
    assert set(result["ratio_vs_best_raw"]) == {k for k in methods if k.startswith("ours_")}


@pytest.mark.e2e
def test_operator_scale_quick_creates_a_job_per_finetunejob(tmp_path: Path) -> None:
    result, _ = run_bench("operator_scale", tmp_path)
    latency = result["apply_to_job_s"]
    assert result["jobs"] == 20
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    assert result["api_calls_per_job"] > 0 and result["operator_memory"]["rss_mb"] > 0
    # The API server counts every client's requests: at least the FineTuneJobs and Jobs created.
    server = result["apiserver_requests_in_burst"]
    assert server["POST finetunejobs"] >= 20 and server["POST jobs"] >= 20
    assert result["apiserver_requests_per_job"] > result["api_calls_per_job"]
    assert result["control_plane_cpu_s_in_burst"]["kube-apiserver"] > 0


def test_tree_memory_sampler_sees_a_childs_peak() -> None:
    """A child that holds 200 MiB for a while and then frees it: the peak is seen (PSS is read at
    the new RSS high; the high-water mark is the kernel's)."""
    hold = (
        "import json, time; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(1.5); "
        "del b; time.sleep(1.5); print(json.dumps({}))"
    )
    _, memory = run_measured([sys.executable, "-c", hold])
    assert 200 <= memory.peak_pss_mib <= memory.peak_rss_mib
    assert 200 <= memory.peak_single_rss_mib < 400  # the kernel's high-water mark
    assert memory.samples >= memory.pss_samples >= 1
