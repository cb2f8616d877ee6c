"""The operator's Prometheus metrics (served on FINETUNE_METRICS_PORT at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILE_SECONDS = Histogram(
    "finetune_operator_reconcile_duration_seconds",
    "Time spent in one reconcile of an object",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
RECONCILE_ERRORS = Counter(
    "finetune_operator_reconcile_errors_total",
    "Reconciles that raised, by kind and error class",
    ["kind", "error"],
)
API_CALLS = Counter(
    "finetune_operator_api_calls_total",
    "Kubernetes API calls made by the reconcilers",
    ["verb", "resource", "code"],
)
API_LATENCY = Histogram(
    "finetune_operator_api_call_duration_seconds", "Latency of those API calls", ["verb", "resource"]
)
OBJECTS_BY_PHASE = Gauge(
    "finetune_operator_objects", "Objects last seen in each phase, by kind", ["kind", "phase"]
)
PROGRESS_READS = Counter(
    "finetune_operator_progress_reads_total", "Reads of progress.json, by outcome", ["outcome"]
)


class PhaseBook:
    """The last phase of every object, so the per-phase gauge counts each object once."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str], str] = {}

    def set(self, kind: str, uid: str, phase: str | None) -> None:
        """Record ``uid``'s phase (None: forget it, e.g. deleted) and move the gauges."""
        key = (kind, uid)
        before = self._phases.pop(key, None)
        if before is not None:
            OBJECTS_BY_PHASE.labels(kind=kind, phase=before).dec()
        if phase is not None:
            self._phases[key] = phase
            OBJECTS_BY_PHASE.labels(kind=kind, phase=phase).inc()


PHASES = PhaseBook()
