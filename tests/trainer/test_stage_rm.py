"""Stage rm on tiny models: the reward model learns to rank chosen over rejected, reports its reward
accuracy on the validation split, and saves the adapter with its score head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune_trainer.run import execute, plan_run
from tests.trainer.stage_jobs import PREFERENCE_DATA, early_late, logged, write_stage_job

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, model_cache_dir: Path) -> None:
    monkeypatch.setenv("FINETUNE_METRICS_PORT", "0")  # tests run beside other servers


def test_reward_margin_rises_and_validation_accuracy_is_reported(tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = write_stage_job(
        tmp_path / "rm.yaml",
        stage="rm",
        method={"finetuning": "lora"},
        dataset=PREFERENCE_DATA,
        out=out,
        training={"valSize": 0.25, "maxSteps": 15},
    )
    outcome = execute(plan_run([str(job)]))

    assert outcome.global_step == 15
    early, late = early_late(logged(out, "margin"))
    assert late > early and late > 0, f"reward margin {early:.3f} → {late:.3f}"
    assert early_late(logged(out, "accuracy"))[1] > 0.5
    # Reward accuracy on the 8 held-out pairs: in the outcome and in the log the operator uploads.
    assert 0.0 <= outcome.metrics["eval_accuracy"] <= 1.0
    assert logged(out, "eval_accuracy")[-1] == outcome.metrics["eval_accuracy"]
    assert "eval_margin" in outcome.metrics
    manifest = json.loads((out / "adapter" / "manifest.json").read_text())
    names = {f["path"] for f in manifest["files"]}
    assert "adapter_model.safetensors" in names
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "SEQ_CLS" and "score" in (config["modules_to_save"] or [])
