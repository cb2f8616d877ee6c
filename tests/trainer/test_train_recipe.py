"""`finetune run` end to end on tiny models: each tuning type learns, outputs land with manifests,
a killed run resumes from its checkpoint in the real S3 server, and multi-process runs complete."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_api.method import Stage
from finetune_trainer.run import execute, plan_run, run_from_files
from finetune_trainer.storage import S3Settings, open_store, read_json
from finetune_trainer.train.recipes import IMPLEMENTED_STAGES, recipe_for
from tests.fixtures.s3 import S3Server

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "data"

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _no_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_METRICS_PORT", "0")  # tests run in parallel with other servers


def write_job(
    path: Path,
    *,
    stage: str = "sft",
    method: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    dataset: dict[str, Any] | None = None,
    output: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """A FineTuneJob + its Dataset in one file, small enough to train in seconds on CPU."""
    spec: dict[str, Any] = {
        "model": model or {"source": "tiny://llama"},
        "datasets": [{"ref": "data"}],
        "method": {"stage": stage, **(method or {"finetuning": "lora"})},
        "training": {
            "maxSteps": 12,
            "learningRate": 3e-3,
            "perDeviceBatchSize": 8,
            "gradientAccumulationSteps": 1,
            "cutoffLen": 128,
            "loggingSteps": 1,
            "saveSteps": 6,
            "lrScheduler": "constant",
            "gradientCheckpointing": False,
            **(training or {}),
        },
        **(extra or {}),
    }
    if output:
        spec["output"] = output
    ds = dataset or {"source": f"file://{DATA / 'alpaca.jsonl'}", "format": "alpaca"}
    docs = [
        {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": path.stem},
            "spec": spec,
        },
        {"apiVersion": "finetune.dev/v1alpha1", "kind": "Dataset", "metadata": {"name": "data"}, "spec": ds},
    ]
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def losses(log: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, log.read_text().splitlines()) if "loss" in r]


TEXT = {"source": f"file://{DATA / 'corpus.txt'}", "format": "text", "fileType": "txt"}

CASES = {
    "sft-lora": {"method": {"finetuning": "lora", "lora": {"rank": 8}}},
    "sft-dora": {"method": {"finetuning": "lora", "lora": {"rank": 8, "useDora": True}}},
    "sft-full": {"method": {"finetuning": "full"}, "training": {"learningRate": 1e-3}},
    "sft-freeze": {
        "method": {"finetuning": "freeze", "freeze": {"trainableLayers": 1}},
        "training": {"learningRate": 1e-3},
    },
    "sft-qlora": {
        "method": {"finetuning": "lora", "lora": {"rank": 8}},
        "model": {"source": "tiny://llama", "quantization": {"bits": 4}},
    },
    "pt-lora": {"stage": "pt", "dataset": TEXT},
    "pt-full-packed": {
        "stage": "pt",
        "dataset": TEXT,
        "method": {"finetuning": "full"},
        "training": {"packing": True, "learningRate": 1e-3},
    },
    "sft-lora-packed": {"method": {"finetuning": "lora"}, "training": {"packing": True}},
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_tuning_type_learns_and_saves(case: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = write_job(tmp_path / f"{case}.yaml", output={"uri": f"file://{out}"}, **CASES[case])
    plan = plan_run([str(job)])
    outcome = execute(plan)

    assert outcome.global_step == 12
    curve = losses(out / "trainer_log.jsonl")
    assert len(curve) == 12
    first, last = sum(curve[:3]) / 3, sum(curve[-3:]) / 3
    assert last < first, f"loss did not fall: {curve}"
    manifest = json.loads((out / "adapter" / "manifest.json").read_text())
    names = {f["path"] for f in manifest["files"]}
    expected = "adapter_model.safetensors" if "lora" in case or "dora" in case else "model.safetensors"
    assert expected in names, names
    assert (out / "loss.png").stat().st_size > 1000
    assert yaml.safe_load_all((out / "job.yaml").read_text())
    progress = json.loads((out / "progress.json").read_text())
    assert progress["phase"] == "Succeeded" and progress["step"] == 12 and progress["percent"] == 100.0
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-12", "checkpoint-6"]


def test_the_seed_alone_decides_the_trained_weights(tmp_path: Path) -> None:
    def adapter_sha256(name: str, seed: int) -> str:
        out = tmp_path / name
        training = {"maxSteps": 3, "saveSteps": 100, "seed": seed}
        job = write_job(tmp_path / f"{name}.yaml", output={"uri": f"file://{out}"}, training=training)
        execute(plan_run([str(job)]))
        manifest = json.loads((out / "adapter" / "manifest.json").read_text())
        return next(f["sha256"] for f in manifest["files"] if f["path"] == "adapter_model.safetensors")

    # The LoRA matrices are initialised before the Trainer seeds anything: run twice in one process,
    # the second run starts from whatever random state the first left behind.
    first, again, other = adapter_sha256("a", 7), adapter_sha256("b", 7), adapter_sha256("c", 8)
    assert first == again
    assert other != first


def test_save_total_limit_is_enforced_in_storage(tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = write_job(
        tmp_path / "limit.yaml",
        output={"uri": f"file://{out}"},
        training={"saveSteps": 3, "saveTotalLimit": 2},
    )
    execute(plan_run([str(job)]))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-12", "checkpoint-9"]


def test_bad_input_is_a_clear_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_rows = tmp_path / "bad.jsonl"
    bad_rows.write_text(
        '{"instruction": ["not", "text"], "output": "a"}\n{"instruction": "q", "output": {"x": 1}}\n'
    )
    job = write_job(tmp_path / "bad.yaml", dataset={"source": f"file://{bad_rows}", "format": "alpaca"})
    assert run_from_files([str(job)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    message = err[err.index("error: ") :]
    assert "row 0" in message and "row 1" in message


def test_every_stage_has_a_recipe_or_is_refused_by_name() -> None:
    # Every API stage has a recipe today; one added to the API without a recipe must be refused by name.
    for stage in Stage:
        if stage in IMPLEMENTED_STAGES:
            assert callable(recipe_for(stage)), stage
        else:
            with pytest.raises(ValueError, match=f"spec.method.stage: {stage.value} is not available yet"):
                recipe_for(stage)
    assert set(IMPLEMENTED_STAGES) <= set(Stage)


@pytest.fixture
def s3_env(s3_server: S3Server) -> Iterator[dict[str, str]]:
    yield {
        **os.environ,
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_REGION": s3_server.region,
        "FINETUNE_METRICS_PORT": "0",
    }


def _wait_for(predicate: Any, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _children(pid: int) -> list[int]:
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]


def _signal_when_ready(
    cmd: list[str], *, cwd: Path, ready: Callable[[], bool], what: str, send: Callable[[int], None]
) -> tuple[int, str]:
    """Start ``cmd``, wait (with a deadline) until ``ready``, call ``send(pid)``; its exit code and stderr."""
    env = {**os.environ, "FINETUNE_METRICS_PORT": "0"}
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(ready, timeout=240, what=what)
        send(proc.pid)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def _progress(out: Path) -> dict[str, Any]:
    path = out / "progress.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare for a PID namespace")
def test_sigterm_ends_a_run_promptly_even_as_pid_1(tmp_path: Path) -> None:
    # In a pod the trainer is PID 1, and PID 1 gets no signal it does not handle: without the
    # handler a deleted pod would wait out its grace period and die by SIGKILL (137).
    out = tmp_path / "out"
    job = write_job(
        tmp_path / "term.yaml",
        training={"maxSteps": 100_000, "saveSteps": 1000},
        output={"uri": f"file://{out}"},
    )

    def terminate_pid_1(pid: int) -> None:
        (trainer,) = _children(pid)  # PID 1 of the new namespace
        status = Path(f"/proc/{trainer}/status").read_text().splitlines()
        (nspid,) = [line for line in status if line.startswith("NSpid:")]
        assert nspid.split()[-1] == "1", nspid  # its PID in the innermost namespace
        os.kill(trainer, signal.SIGTERM)

    code, err = _signal_when_ready(
        ["unshare", "--pid", "--fork", sys.executable, "-m", "finetune_trainer.cli", "run", str(job)],
        cwd=tmp_path,
        ready=lambda: _progress(out).get("step", 0) >= 2,
        what="training to be under way",
        send=terminate_pid_1,
    )
    assert code == 143, err[-3000:]
    assert "terminated by SIGTERM" in err and "Traceback" not in err
    assert "no checkpoint was saved yet" in err and "resumes from" not in err, "no checkpoint to promise"
    progress = json.loads((out / "progress.json").read_text())
    assert progress["phase"] == "Failed" and "SIGTERM" in progress["message"]
    assert progress["step"] < 100_000


def test_ctrl_c_ends_a_run_with_one_line_and_exit_130(tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = write_job(
        tmp_path / "int.yaml", training={"maxSteps": 100_000, "saveSteps": 2}, output={"uri": f"file://{out}"}
    )
    code, err = _signal_when_ready(
        [sys.executable, "-m", "finetune_trainer.cli", "run", str(job)],
        cwd=tmp_path,
        ready=lambda: "lastCheckpoint" in _progress(out),
        what="the first checkpoint",
        send=lambda pid: os.kill(pid, signal.SIGINT),  # what Ctrl-C in a terminal delivers
    )
    assert code == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "interrupted (Ctrl-C); the next run resumes from file://" in line and "checkpoint-" in line
    progress = json.loads((out / "progress.json").read_text())
    assert progress["phase"] == "Failed" and "interrupted" in progress["message"]


def test_killed_run_resumes_from_its_s3_checkpoint(
    tmp_path: Path, s3_server: S3Server, s3_bucket: str, s3_env: dict[str, str]
) -> None:
    uri = f"s3://{s3_bucket}/runs/resume"
    job = write_job(
        tmp_path / "resume.yaml",
        training={"maxSteps": 60, "saveSteps": 5, "saveTotalLimit": 2},
        output={"uri": uri, "endpoint": s3_server.endpoint_url},
    )
    store = open_store(
        uri, settings=S3Settings(s3_server.endpoint_url, s3_server.access_key, s3_server.secret_key)
    )
    cmd = [sys.executable, "-m", "finetune_trainer.run", str(job)]
    first = subprocess.Popen(cmd, env=s3_env, cwd=tmp_path, start_new_session=True)
    try:
        _wait_for(
            lambda: store.exists("checkpoints/checkpoint-5/manifest.json"),
            timeout=240,
            what="the first checkpoint",
        )
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # a preempted pod: no chance to clean up
        first.wait()
    assert not store.exists("adapter/manifest.json"), "the first run must not have finished"

    second = subprocess.run(cmd, env=s3_env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stderr
    progress = read_json(store, "progress.json")
    assert progress["phase"] == "Succeeded" and progress["step"] == 60
    records = [json.loads(line) for line in store.get_bytes("trainer_log.jsonl").decode().splitlines()]
    log_steps = [r["step"] for r in records if "loss" in r]
    # The history up to the checkpoint came with it; the resumed run appended the rest, once each.
    assert log_steps == list(range(1, 61)), log_steps
    assert store.exists("adapter/manifest.json")
    kept = sorted(
        k for k in ("checkpoint-55", "checkpoint-60") if store.exists(f"checkpoints/{k}/manifest.json")
    )
    assert kept == ["checkpoint-55", "checkpoint-60"]
    assert not store.exists("checkpoints/checkpoint-5/manifest.json"), (
        "saveTotalLimit not enforced in the bucket"
    )


@pytest.mark.parametrize("deepspeed", [None, "zero2"])
def test_two_process_gloo_run_completes(tmp_path: Path, deepspeed: str | None) -> None:
    out = tmp_path / "out"
    extra = {"distributed": {"deepspeed": deepspeed}} if deepspeed else {}
    job = write_job(
        tmp_path / "ddp.yaml",
        output={"uri": f"file://{out}"},
        training={"maxSteps": 6, "saveSteps": 3, "perDeviceBatchSize": 4},
        extra=extra,
    )
    env = {**os.environ, "FINETUNE_METRICS_PORT": "0", "OMP_NUM_THREADS": "1"}
    with socket.socket() as sock:  # torchrun's own port 0 hangs the rendezvous: pick a free one
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           "-m", "finetune_trainer.run", str(job)]  # fmt: skip
    result = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    progress = json.loads((out / "progress.json").read_text())
    assert progress["phase"] == "Succeeded" and progress["step"] == 6
    assert (out / "adapter" / "manifest.json").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-6"]
