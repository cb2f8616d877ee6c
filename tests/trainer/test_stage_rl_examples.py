"""The RL examples run unchanged through `finetune run`: grpo alone, ppo on the output of rm-lora."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from finetune_trainer.run import run_from_files
from tests.trainer.stage_jobs import ROOT, logged

pytestmark = pytest.mark.slow


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_cache_dir: Path) -> Iterator[Path]:
    """A fresh directory with the repository's examples/ in it: outputs land in its runs/, as for a user."""
    monkeypatch.setenv("FINETUNE_METRICS_PORT", "0")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many tiny matmuls: oversubscribed OpenMP is ~10x slower on a shared box
    yield tmp_path
    torch.set_num_threads(threads)


def finished(out: Path, steps: int) -> None:
    progress = json.loads((out / "progress.json").read_text())
    assert progress["phase"] == "Succeeded" and progress["step"] == steps
    assert (out / "adapter" / "manifest.json").is_file()


def test_ppo_example_runs_on_the_rm_example_output(workdir: Path) -> None:
    assert run_from_files(["examples/rm-lora.yaml"]) == 0
    finished(workdir / "runs" / "rm-lora", 20)
    assert run_from_files(["examples/ppo-lora.yaml"]) == 0  # rewardModel: file://runs/rm-lora/adapter
    out = workdir / "runs" / "ppo-lora"
    finished(out, 20)
    assert len(logged(out, "reward")) == 4  # loggingSteps 5 of 20


def test_grpo_example_runs(workdir: Path) -> None:
    assert run_from_files(["examples/grpo-lora.yaml"]) == 0
    out = workdir / "runs" / "grpo-lora"
    finished(out, 20)
    assert len(logged(out, "rewards/regex_match/mean")) == 4
