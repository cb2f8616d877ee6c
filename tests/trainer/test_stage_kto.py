"""Stage kto on tiny models: desirable answers gain and undesirable ones lose against the KL reference
point (the KL-adjusted margin grows), and the desirable/undesirable weights reach the loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from finetune_trainer.run import execute, plan_run
from tests.trainer.stage_jobs import KTO_DATA, early_late, logged, write_stage_job

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, model_cache_dir: Path) -> None:
    monkeypatch.setenv("FINETUNE_METRICS_PORT", "0")  # tests run beside other servers


def run_kto(tmp_path: Path, **preference: Any) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / "out"
    job = write_stage_job(
        tmp_path / "kto.yaml",
        stage="kto",
        method={"finetuning": "lora", "preference": {"loss": "kto", "beta": 0.1, **preference}},
        dataset=KTO_DATA,
        out=out,
    )
    assert execute(plan_run([str(job)])).global_step == 12
    return out


def test_kl_adjusted_margin_grows(tmp_path: Path) -> None:
    out = run_kto(tmp_path)
    early, late = early_late(logged(out, "rewards/margins"))
    assert late > early and late > 0, f"KL-adjusted margin {early:.4f} → {late:.4f}"
    _, desirable = early_late(logged(out, "rewards/chosen"))
    _, undesirable = early_late(logged(out, "rewards/rejected"))
    assert desirable > undesirable
    assert all(kl >= 0 for kl in logged(out, "kl"))


def test_undesirable_weight_scales_the_loss(tmp_path: Path) -> None:
    plain = run_kto(tmp_path / "plain")
    heavy = run_kto(tmp_path / "heavy", ktoUndesirableWeight=3.0)
    # Step 1: LoRA starts as the reference (log-ratio 0, KL 0), so each example's loss is 0.5 × its weight.
    assert logged(plain, "loss")[0] == pytest.approx(0.5, abs=1e-4)
    heavy_first = logged(heavy, "loss")[0]  # 0.5 × (1 + 2 × the undesirable share of the 8-row batch)
    undesirable_rows = (heavy_first / 0.5 - 1) / 2 * 8
    assert (
        undesirable_rows == pytest.approx(round(undesirable_rows), abs=1e-3)
        and 1 <= round(undesirable_rows) <= 7
    )
