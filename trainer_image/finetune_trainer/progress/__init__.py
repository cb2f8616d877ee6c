"""Training progress: Prometheus metrics, the ``progress.json`` record the operator reads, and the
progress bar in the logs."""

from .metrics import (
    DEFAULT_METRICS_PORT,
    METRICS_PORT_ENV,
    MetricsServer,
    TrainingMetrics,
    metrics_port,
    start_metrics_server,
)
from .rates import Observation, RateWindow, format_duration
from .record import PROGRESS_KEY, ProgressRecord, TrainerPhase, rfc3339_utc
from .reporter import ProgressReporter

__all__ = [
    "DEFAULT_METRICS_PORT",
    "METRICS_PORT_ENV",
    "PROGRESS_KEY",
    "MetricsServer",
    "Observation",
    "ProgressRecord",
    "ProgressReporter",
    "RateWindow",
    "TrainerPhase",
    "TrainingMetrics",
    "format_duration",
    "metrics_port",
    "rfc3339_utc",
    "start_metrics_server",
]
