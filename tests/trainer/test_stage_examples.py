"""The preference examples run unchanged through `finetune run` and report their stage's signal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune_trainer.run import run_from_files
from tests.trainer.stage_jobs import ROOT, logged

pytestmark = pytest.mark.slow

# example → the metric its stage logs for "chosen beats rejected"
EXAMPLES = {
    "rm-lora": "accuracy",
    "dpo-lora": "rewards/margins",
    "kto-lora": "rewards/margins",
    "orpo-lora": "rewards/margins",
    "simpo-lora": "rewards/margins",
}


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_example_runs_with_finetune_run(
    example: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_cache_dir: Path
) -> None:
    monkeypatch.setenv("FINETUNE_METRICS_PORT", "0")
    monkeypatch.chdir(ROOT)  # the examples name their data relative to the repository root
    out = tmp_path / "out"
    assert run_from_files([f"examples/{example}.yaml"], output=f"file://{out}") == 0
    progress = json.loads((out / "progress.json").read_text())
    assert progress["phase"] == "Succeeded" and progress["step"] == 20
    assert (out / "adapter" / "manifest.json").is_file()
    assert len(logged(out, EXAMPLES[example])) == 4  # loggingSteps 5 of 20
