"""The operator's Prometheus metrics (served on FINETUNE_METRICS_PORT at /metrics)."""

from __future__ import annotations

import threading
from collections import OrderedDict

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
    "finetune_operator_objects",
    "Objects last seen in each phase, by kind (FineTuneJob, Dataset, Export)",
    ["kind", "phase"],
)
PROGRESS_READS = Counter(
    "finetune_operator_progress_reads_total", "Reads of progress.json, by outcome", ["outcome"]
)


class PhaseBook:
    """The last phase of every object, so the per-phase gauge counts each object once.

    ``kind`` is the object's kind as the API spells it (FineTuneJob, Dataset, Export), the same label
    value as the reconcile metrics. A deleted object is dropped and stays dropped: a reconcile that was
    in flight when it went cannot count it again (uids are never reused).
    """

    def __init__(self, tombstones: int = 4096) -> None:
        self._phases: dict[tuple[str, str], str] = {}
        self._gone: OrderedDict[str, None] = OrderedDict()
        self._tombstones = tombstones
        self._lock = threading.Lock()  # reconciles run in threads; deletions arrive on kopf's loop

    def set(self, kind: str, uid: str, phase: str) -> None:
        """Record ``uid``'s phase and move the gauges."""
        with self._lock:
            if uid not in self._gone:
                self._move((kind, uid), phase)

    def drop(self, kind: str, uid: str) -> None:
        """Forget a deleted object: it no longer counts in any phase."""
        with self._lock:
            self._move((kind, uid), None)
            self._gone[uid] = None
            while len(self._gone) > self._tombstones:
                self._gone.popitem(last=False)

    def _move(self, key: tuple[str, str], phase: str | None) -> None:
        before = self._phases.pop(key, None)
        if before is not None:
            OBJECTS_BY_PHASE.labels(kind=key[0], phase=before).dec()
        if phase is not None:
            self._phases[key] = phase
            OBJECTS_BY_PHASE.labels(kind=key[0], phase=phase).inc()


PHASES = PhaseBook()
