"""finetune_trainer.progress: pure rate/ETA maths directly; metrics through a real Prometheus and
promtool; progress.json through the real S3 server."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from finetune_api.finetunejob import TrainingProgress
from finetune_api.uris import StorageURI
from finetune_trainer.progress import (
    DEFAULT_METRICS_PORT,
    PROGRESS_KEY,
    Observation,
    ProgressRecord,
    ProgressReporter,
    RateWindow,
    TrainingMetrics,
    format_duration,
    metrics_port,
    start_metrics_server,
)
from finetune_trainer.progress.writer import LatestObjectWriter
from finetune_trainer.storage import LocalStore, ObjectStore, S3Settings, open_store, read_json
from tests.fixtures.prometheus import Prometheus
from tests.fixtures.s3 import S3Server

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


class FakeClock:
    """A monotonic clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- pure ----------------------------------------------------------------------------------------


def test_rates_and_eta_from_a_moving_window() -> None:
    window = RateWindow(window=3)
    assert window.tokens_per_second() is None and window.eta_seconds(100) is None
    window.add(Observation(time=0.0, step=0, tokens=0, samples=0))
    window.add(Observation(time=10.0, step=10, tokens=5000, samples=40))
    assert window.tokens_per_second() == 500.0
    assert window.samples_per_second() == 4.0
    assert window.eta_seconds(100) == 90.0
    # The window forgets the first, slower observations: the pace doubled.
    window.add(Observation(time=15.0, step=20, tokens=10_000, samples=80))
    window.add(Observation(time=20.0, step=30, tokens=15_000, samples=120))
    assert window.eta_seconds(100) == 35.0
    assert window.eta_seconds(None) is None
    assert window.eta_seconds(10) == 0.0


def test_a_restart_starts_a_fresh_window() -> None:
    window = RateWindow()
    window.add(Observation(time=0.0, step=50, tokens=100, samples=1))
    window.add(Observation(time=1.0, step=60, tokens=200, samples=2))
    window.add(Observation(time=2.0, step=5, tokens=10, samples=1))
    assert window.tokens_per_second() is None
    with pytest.raises(ValueError):
        RateWindow(window=1)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (44.6, "45s"), (200, "3m20s"), (3900, "1h05m"), (183_600, "2d03h"), (-5, "0s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_metrics_port_from_env() -> None:
    assert metrics_port({}) == DEFAULT_METRICS_PORT == 9400
    assert metrics_port({"FINETUNE_METRICS_PORT": "9555"}) == 9555
    for bad in ("http", "0", "70000"):
        with pytest.raises(ValueError, match="FINETUNE_METRICS_PORT"):
            metrics_port({"FINETUNE_METRICS_PORT": bad})


def test_record_is_the_status_progress_plus_phase() -> None:
    record = ProgressRecord(
        step=3, total_steps=10, learning_rate=1e-4, phase="Running", last_checkpoint="s3://b/c"
    )
    wire = json.loads(record.to_json())
    assert wire == {
        "step": 3,
        "totalSteps": 10,
        "learningRate": 1e-4,
        "phase": "Running",
        "lastCheckpoint": "s3://b/c",
    }
    assert record.progress() == TrainingProgress(step=3, total_steps=10, learning_rate=1e-4)
    assert ProgressRecord.model_validate_json(record.to_json()) == record


# ---- metrics: promtool and a real Prometheus ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _feed(reporter: ProgressReporter, clock: FakeClock, steps: range) -> None:
    for step in steps:
        clock.now += 2.0
        reporter.on_log(
            step, loss=2.0 / step, learning_rate=1e-4, tokens=step * 1000, samples=step * 4, epoch=step / 10
        )


def test_exposition_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed: run hack/install-prometheus.sh")
    metrics = TrainingMetrics()
    clock = FakeClock()
    reporter = ProgressReporter(total_steps=100, metrics=metrics, clock=clock, show_bar=False)
    _feed(reporter, clock, range(1, 6))
    text = metrics.exposition().decode()
    assert "finetune_train_step 5.0" in text
    assert "finetune_train_tokens_total 5000.0" in text
    assert "finetune_train_eta_seconds 190.0" in text  # 95 steps left at 2 s each
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def served_metrics() -> Iterator[tuple[TrainingMetrics, str]]:
    metrics = TrainingMetrics()
    server = start_metrics_server(metrics, port=_free_port(), addr="127.0.0.1")
    yield metrics, f"127.0.0.1:{server.port}"
    server.close()


def test_prometheus_scrapes_the_trainer(
    prometheus: Prometheus, served_metrics: tuple[TrainingMetrics, str]
) -> None:
    metrics, address = served_metrics
    clock = FakeClock()
    reporter = ProgressReporter(total_steps=40, metrics=metrics, clock=clock, show_bar=False)
    _feed(reporter, clock, range(1, 13))
    assert "finetune_train_step 12.0" in requests.get(f"http://{address}/metrics", timeout=5).text
    prometheus.add_target(address)
    where = f'{{instance="{address}"}}'
    assert prometheus.query_value(f"finetune_train_step{where}") == 12
    assert prometheus.query_value(f"finetune_train_total_steps{where}") == 40
    assert prometheus.query_value(f"finetune_train_tokens_total{where}") == 12_000
    assert prometheus.query_value(f"finetune_train_loss{where}") == pytest.approx(2.0 / 12)
    assert prometheus.query_value(f"finetune_train_tokens_per_second{where}") == 500.0


# ---- progress.json in the real bucket --------------------------------------------------------------


@pytest.fixture
def output_store(s3_server: S3Server, s3_bucket: str) -> ObjectStore:
    settings = S3Settings(
        s3_server.endpoint_url, s3_server.access_key, s3_server.secret_key, None, s3_server.region
    )
    return open_store(f"s3://{s3_bucket}/jobs/demo", settings=settings)


def test_progress_json_is_throttled_and_complete(output_store: ObjectStore, tmp_path: Path) -> None:
    clock = FakeClock()
    wall = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
    term = tmp_path / "termination-log"
    reporter = ProgressReporter(
        total_steps=50, store=output_store, write_interval_s=5.0, clock=clock,
        wall_clock=lambda: wall, termination_log=term, show_bar=False,
    )  # fmt: skip
    reporter.on_log(1, loss=3.0, learning_rate=2e-4, tokens=1000, samples=4, epoch=0.02)
    assert reporter.drain(timeout=30)
    assert read_json(output_store, PROGRESS_KEY)["step"] == 1, "the first observation is written at once"
    clock.now += 2.0
    reporter.on_log(2, loss=2.5, learning_rate=2e-4, tokens=2000, samples=8, epoch=0.04)
    clock.now += 2.9
    reporter.on_log(3, loss=2.2, learning_rate=2e-4, tokens=3000, samples=12, epoch=0.06)
    assert reporter.drain(timeout=30)
    assert read_json(output_store, PROGRESS_KEY)["step"] == 1, "written again before the interval"
    assert reporter.writes == 1
    clock.now += 0.1  # 5.0 s since the first write
    reporter.on_log(4, loss=2.0, learning_rate=1.5e-4, tokens=4000, samples=16, epoch=0.08)
    assert reporter.drain(timeout=30)
    doc = read_json(output_store, PROGRESS_KEY)
    assert reporter.writes == 2
    assert doc == {
        "step": 4, "totalSteps": 50, "epoch": 0.08, "percent": 8.0, "loss": 2.0, "learningRate": 1.5e-4,
        "tokensPerSecond": 600.0, "etaSeconds": 77, "eta": "1m17s", "updatedAt": "2025-03-01T12:00:00Z",
        "phase": "Running",
    }  # fmt: skip
    assert RFC3339_UTC.match(doc["updatedAt"])
    assert ProgressRecord.model_validate(doc).progress().eta_seconds == 77

    reporter.on_checkpoint(f"{output_store.uri}/checkpoint-4")  # written at once, throttle or not
    assert reporter.drain(timeout=30)
    assert read_json(output_store, PROGRESS_KEY)["lastCheckpoint"].endswith("/jobs/demo/checkpoint-4")
    assert not term.exists(), "the termination log is only written at the end"

    final = reporter.finish("Succeeded", "trained 4 steps")
    doc = read_json(output_store, PROGRESS_KEY)
    # percent follows step, also in the final record (4 of 50 is 8%, whatever the phase)
    assert doc["phase"] == "Succeeded" and doc["percent"] == 8.0 and doc["etaSeconds"] == 0
    assert doc["message"] == "trained 4 steps"
    assert json.loads(term.read_text()) == json.loads(final.to_json()) == doc
    reporter.on_checkpoint("s3://late/notice")  # after the end: no error, the final record stands
    assert read_json(output_store, PROGRESS_KEY) == doc


def test_storage_faults_do_not_stop_training(s3_server: S3Server, tmp_path: Path) -> None:
    settings = S3Settings(
        s3_server.endpoint_url, s3_server.access_key, s3_server.secret_key, None, s3_server.region
    )
    missing = open_store("s3://bucket-that-does-not-exist/x", settings=settings)
    clock = FakeClock()
    reporter = ProgressReporter(
        total_steps=10, store=missing, clock=clock, termination_log=tmp_path / "no" / "such" / "dir" / "log",
        show_bar=False,
    )  # fmt: skip
    record = reporter.on_log(1, loss=1.0, tokens=10)
    assert reporter.drain(timeout=30)
    assert record.step == 1 and reporter.writes == 0
    failed = reporter.finish("Failed", "x" * 5000)
    assert failed.phase == "Failed" and failed.message is not None and len(failed.message) == 1024


class GatedStore(LocalStore):
    """A real local store whose writes wait for a gate, as a slow network would."""

    def __init__(self, root: Path) -> None:
        super().__init__(StorageURI("file", "", str(root)))
        self.gate = threading.Event()
        self.started = threading.Event()

    def put_bytes(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        self.started.set()
        assert self.gate.wait(timeout=60)
        super().put_bytes(key, data, content_type=content_type)


def test_slow_storage_never_blocks_and_the_newest_record_wins(tmp_path: Path) -> None:
    store = GatedStore(tmp_path)
    writer = LatestObjectWriter(store, "progress.json")
    writer.put(b"v1")
    assert store.started.wait(timeout=30)  # v1 is being written, held at the gate
    writer.put(b"v2")  # returns at once although storage is stuck
    writer.put(b"v3")  # replaces v2, which is never written
    assert not writer.drain(timeout=0)
    store.gate.set()
    assert writer.drain(timeout=30)
    assert (tmp_path / "progress.json").read_bytes() == b"v3"
    assert writer.writes == 2
    writer.close(timeout=30)
    with pytest.raises(RuntimeError, match="closed"):
        writer.put(b"v4")


def test_default_termination_log_is_written_only_where_the_kubelet_made_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from finetune_api import pod

    default = tmp_path / "termination-log"
    monkeypatch.setattr(pod, "DEFAULT_TERMINATION_LOG", default)
    monkeypatch.delenv("FINETUNE_TERMINATION_LOG", raising=False)
    ProgressReporter(show_bar=False).finish("Succeeded")
    assert not default.exists(), "outside Kubernetes the default path must not be created"
    default.write_text("")  # what the kubelet does in a container
    ProgressReporter(show_bar=False).finish("Failed", "boom")
    assert json.loads(default.read_text())["message"] == "boom"
    monkeypatch.setenv("FINETUNE_TERMINATION_LOG", str(tmp_path / "explicit"))
    ProgressReporter(show_bar=False).finish("Succeeded")
    assert json.loads((tmp_path / "explicit").read_text())["phase"] == "Succeeded"
