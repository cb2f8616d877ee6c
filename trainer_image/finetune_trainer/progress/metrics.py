"""Prometheus metrics of a training run, served over HTTP for the ServiceMonitor/PodMonitor."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, start_http_server

from finetune_api.pod import METRICS_PORT as DEFAULT_METRICS_PORT
from finetune_api.pod import METRICS_PORT_ENV


class TrainingMetrics:
    """The trainer's gauges and counters in their own registry (no process/platform collectors
    from the global one, so two trainers in one test process never clash)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.step = Gauge("finetune_train_step", "Optimizer steps done.", registry=r)
        self.total_steps = Gauge("finetune_train_total_steps", "Planned optimizer steps.", registry=r)
        self.epoch = Gauge("finetune_train_epoch", "Fractional epoch reached.", registry=r)
        self.loss = Gauge("finetune_train_loss", "Latest training loss.", registry=r)
        self.learning_rate = Gauge("finetune_train_learning_rate", "Current learning rate.", registry=r)
        self.tokens_per_second = Gauge(
            "finetune_train_tokens_per_second", "Training throughput in tokens per second.", registry=r
        )
        self.samples_per_second = Gauge(
            "finetune_train_samples_per_second", "Training throughput in samples per second.", registry=r
        )
        self.eta_seconds = Gauge("finetune_train_eta_seconds", "Estimated seconds to completion.", registry=r)
        self.tokens = Counter("finetune_train_tokens", "Tokens trained on.", registry=r)
        self.samples = Counter("finetune_train_samples", "Samples trained on.", registry=r)
        self.gpu_allocated = Gauge(
            "finetune_gpu_memory_allocated_bytes", "GPU memory held by tensors.", ["device"], registry=r
        )
        self.gpu_reserved = Gauge(
            "finetune_gpu_memory_reserved_bytes", "GPU memory reserved by the caching allocator.", ["device"],
            registry=r,
        )  # fmt: skip
        # Labelled, so they expose nothing until an evaluation has run.
        self.eval_predict_score = Gauge(
            "finetune_eval_predict_score",
            "Prediction score after training, in percent.",
            ["metric"],
            registry=r,
        )
        self.eval_benchmark_accuracy = Gauge(
            "finetune_eval_benchmark_accuracy", "Multiple-choice accuracy after training, in percent.", ["subject"],
            registry=r,
        )  # fmt: skip

    def observe_evaluation(self, *, predict: dict[str, float], benchmark: dict[str, float]) -> None:
        """Set the evaluation gauges: ``predict`` by metric name, ``benchmark`` by subject ("all" overall)."""
        for metric, value in predict.items():
            self.eval_predict_score.labels(metric=metric).set(value)
        for subject, value in benchmark.items():
            self.eval_benchmark_accuracy.labels(subject=subject).set(value)

    def observe(
        self,
        *,
        step: int,
        total_steps: int | None,
        epoch: float | None,
        loss: float | None,
        learning_rate: float | None,
        tokens_per_second: float | None,
        samples_per_second: float | None,
        eta_seconds: float | None,
        new_tokens: int,
        new_samples: int,
    ) -> None:
        """Set every metric from one progress observation; ``None`` leaves a gauge as it was."""
        self.step.set(step)
        for gauge, value in (
            (self.total_steps, total_steps),
            (self.epoch, epoch),
            (self.loss, loss),
            (self.learning_rate, learning_rate),
            (self.tokens_per_second, tokens_per_second),
            (self.samples_per_second, samples_per_second),
            (self.eta_seconds, eta_seconds),
        ):
            if value is not None:
                gauge.set(value)
        self.tokens.inc(max(new_tokens, 0))
        self.samples.inc(max(new_samples, 0))
        self.observe_gpu_memory()

    def observe_gpu_memory(self) -> None:
        """Record CUDA memory per device when this process uses torch with CUDA.

        torch is looked up, never imported: a process that has not imported it holds no GPU memory,
        and importing it would cost seconds in every CPU-only caller.
        """
        torch: Any = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return
        for index in range(torch.cuda.device_count()):
            device = str(index)
            self.gpu_allocated.labels(device=device).set(torch.cuda.memory_allocated(index))
            self.gpu_reserved.labels(device=device).set(torch.cuda.memory_reserved(index))

    def exposition(self) -> bytes:
        """The metrics in the Prometheus text format, as a scrape would return them."""
        return generate_latest(self.registry)


@dataclass
class MetricsServer:
    """A running metrics HTTP endpoint (``/metrics`` and any other path)."""

    port: int
    _server: Any
    _thread: Any

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def metrics_port(env: dict[str, str] | None = None) -> int:
    """The port from ``$FINETUNE_METRICS_PORT`` (default 9400).

    Raises:
        ValueError: not an integer in 1..65535.
    """
    raw = (os.environ if env is None else env).get(METRICS_PORT_ENV, "").strip()
    if not raw:
        return DEFAULT_METRICS_PORT
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ValueError(f"{METRICS_PORT_ENV}={raw!r} is not a port number")
    return int(raw)


def start_metrics_server(
    metrics: TrainingMetrics, *, port: int | None = None, addr: str = "0.0.0.0"
) -> MetricsServer:
    """Serve ``metrics`` on ``addr:port`` (port defaults to :func:`metrics_port`) from a daemon thread.

    Only one process per pod should call this (local rank 0): the port is the pod's.
    """
    chosen = metrics_port() if port is None else port
    server, thread = start_http_server(chosen, addr=addr, registry=metrics.registry)
    return MetricsServer(port=int(server.server_port), _server=server, _thread=thread)
