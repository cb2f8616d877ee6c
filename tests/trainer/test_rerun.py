"""Re-running into an output location that holds a run: finished runs stay finished, a different spec
is refused by name before any model loads, --overwrite starts afresh, --resume continues where the
checkpoints allow, the log grows across resumes and no run trains past maxSteps. Tiny models on CPU."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from finetune_api.pod import REFUSED_EXIT
from finetune_trainer.run import run_from_files
from tests.trainer.test_train_recipe import write_job

pytestmark = pytest.mark.slow

STEPS = 4
TRAINING = {"maxSteps": STEPS, "saveSteps": 2, "loggingSteps": 1, "lrScheduler": "constant"}
LORA = {"finetuning": "lora", "lora": {"rank": 8}}


@pytest.fixture(autouse=True)
def _no_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_METRICS_PORT", "0")


def job_file(folder: Path, out: Path, *, name: str = "rerun", **changes: Any) -> Path:
    """The finished run's job (``changes`` merged into training/method/extra)."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_job(
        folder / f"{name}.yaml",
        method={**LORA, **changes.pop("method", {})},
        training={**TRAINING, **changes.pop("training", {})},
        output={"uri": f"file://{out}"},
        extra=changes,
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished run's output location; each test works on its own copy."""
    root = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FINETUNE_METRICS_PORT", "0")
        assert run_from_files([str(job_file(root, root / "out"))]) == 0
    return root / "out"


@pytest.fixture
def out(finished_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "out"
    shutil.copytree(finished_run, copy)
    return copy


def log_records(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]


def loss_steps(out: Path) -> list[int]:
    return [r["step"] for r in log_records(out) if "loss" in r]


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_a_finished_run_says_so_and_does_nothing(
    out: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(out)
    capsys.readouterr()
    assert run_from_files([str(job_file(tmp_path, out))]) == 0
    err = capsys.readouterr().err
    assert "rerun: already finished" in err and "--overwrite" in err
    assert "train:" not in err, "no training may start"
    assert snapshot(out) == before


def test_overwrite_starts_afresh(out: Path, tmp_path: Path) -> None:
    (out / "checkpoints" / "checkpoint-2" / "manifest.json").unlink()  # old leftovers must go too
    assert run_from_files([str(job_file(tmp_path, out))], overwrite=True) == 0
    assert loss_steps(out) == [1, 2, 3, 4], "the log holds the new run only, once"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert (out / "checkpoints" / "checkpoint-2" / "manifest.json").is_file()
    progress = json.loads((out / "progress.json").read_text())
    assert (progress["phase"], progress["step"], progress["percent"]) == ("Succeeded", STEPS, 100.0)


def test_a_changed_learning_rate_is_refused_by_name_before_any_model_loads(
    out: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    before = snapshot(out)
    job = job_file(tmp_path, out, training={"learningRate": 1e-3})
    assert run_from_files([str(job)]) == REFUSED_EXIT
    err = capsys.readouterr().err
    assert "spec.training.learningRate: 0.003 -> 0.001" in err
    assert "--resume" in err and "--overwrite" in err and "--output" in err
    assert "loaded tiny://llama" not in caplog.text
    assert snapshot(out) == before


def test_a_changed_lora_rank_is_refused_even_with_resume(
    out: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = job_file(tmp_path, out, method={"lora": {"rank": 16}})
    for resume in (False, True):
        assert run_from_files([str(job)], resume=resume) == REFUSED_EXIT
        err = capsys.readouterr().err
        assert "spec.method.lora.rank: 8 -> 16" in err and "never be resumed" in err
        assert "Traceback" not in err and "state_dict" not in err
    assert "--resume is refused" in err


def test_resume_continues_with_more_steps_and_the_new_rate(out: Path, tmp_path: Path) -> None:
    job = job_file(tmp_path, out, training={"maxSteps": 6, "learningRate": 6e-3})
    assert run_from_files([str(job)]) == REFUSED_EXIT, "a changed spec needs --resume"
    assert run_from_files([str(job)], resume=True) == 0
    records = [r for r in log_records(out) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6], "the log holds both runs' records"
    assert [r["learning_rate"] for r in records] == pytest.approx([3e-3] * 4 + [6e-3] * 2)
    progress = json.loads((out / "progress.json").read_text())
    assert (progress["phase"], progress["step"], progress["percent"]) == ("Succeeded", 6, 100.0)
    assert json.loads((out / "run.json").read_text())["spec"]["training"]["maxSteps"] == 6
    assert run_from_files([str(job)]) == 0, "the resumed run is now the run of this spec"


def test_a_run_killed_after_its_last_checkpoint_never_trains_past_max_steps(
    out: Path, tmp_path: Path
) -> None:
    shutil.rmtree(out / "adapter")  # killed between its final checkpoint and its adapter
    (out / "progress.json").unlink()
    assert run_from_files([str(job_file(tmp_path, out))]) == 0
    assert loss_steps(out) == [1, 2, 3, 4]
    assert (out / "adapter" / "manifest.json").is_file()
    assert not (out / "checkpoints" / "checkpoint-5").exists()
    progress = json.loads((out / "progress.json").read_text())
    assert (progress["phase"], progress["step"], progress["percent"]) == ("Succeeded", STEPS, 100.0)


def test_a_run_killed_midway_resumes_and_carries_its_log_on(out: Path, tmp_path: Path) -> None:
    for name in ("adapter", "checkpoints/checkpoint-4"):
        shutil.rmtree(out / name)
    assert run_from_files([str(job_file(tmp_path, out))]) == 0
    assert loss_steps(out) == [1, 2, 3, 4], "steps 1-2 from the checkpoint's log, 3-4 trained again"


def test_a_run_shorter_than_logging_steps_logs_its_final_loss_and_plots_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = job_file(tmp_path, out, training={"maxSteps": 2, "loggingSteps": 50, "saveSteps": 100})
    assert run_from_files([str(job)]) == 0
    assert loss_steps(out) == [2]
    assert json.loads((out / "progress.json").read_text())["loss"] > 0
    assert (out / "loss.png").stat().st_size > 1000


def test_a_retry_of_the_same_cluster_job_resumes_and_another_job_is_refused(
    out: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    shutil.rmtree(out / "adapter")  # the first pod died before its adapter
    lifecycle = {"suspend": False, "backoffLimit": 5, "image": "registry.example/trainer:2",
                 "queueName": "team-a", "resources": {"gpusPerNode": 0, "memory": "8Gi"}}  # fmt: skip
    assert run_from_files([str(job_file(tmp_path, out, **lifecycle))]) == 0
    assert "resuming from" in caplog.text
    assert loss_steps(out) == [1, 2, 3, 4]

    before = snapshot(out)
    other = job_file(tmp_path / "other", out, name="other")
    term = tmp_path / "termination-log"
    env = {**os.environ, "FINETUNE_METRICS_PORT": "0", "FINETUNE_TERMINATION_LOG": str(term)}
    cmd = [sys.executable, "-m", "finetune_trainer.run", str(other)]  # what a trainer pod runs
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == REFUSED_EXIT, result.stderr[-3000:]  # the Job fails at once on it
    assert "Traceback" not in result.stderr and "metadata.name: rerun -> other" in result.stderr
    record = json.loads(term.read_text())
    assert record["phase"] == "Failed" and "metadata.name: rerun -> other" in record["message"]
    assert snapshot(out) == before, "the other run's files, progress.json included, are left alone"
