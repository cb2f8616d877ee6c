"""The operator's own metrics: the per-phase gauge counts each live object once and drops deleted
ones, the kind label has one spelling, and the exposition passes `promtool check metrics`."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest
from prometheus_client import REGISTRY, generate_latest

from finetune_api.resources import KINDS
from finetune_operator import metrics
from finetune_operator.handlers.runtime import KIND_OF, forget_deleted


def objects(kind: str, phase: str) -> float:
    return REGISTRY.get_sample_value("finetune_operator_objects", {"kind": kind, "phase": phase}) or 0.0


def test_phase_gauge_counts_each_object_once_and_drops_a_deleted_one() -> None:
    book, uid = metrics.PhaseBook(), str(uuid.uuid4())
    running, failed = objects("FineTuneJob", "Running"), objects("FineTuneJob", "Failed")
    book.set("FineTuneJob", uid, "Running")
    book.set("FineTuneJob", uid, "Running")
    assert objects("FineTuneJob", "Running") == running + 1
    book.set("FineTuneJob", uid, "Failed")
    assert (objects("FineTuneJob", "Running"), objects("FineTuneJob", "Failed")) == (running, failed + 1)
    book.drop("FineTuneJob", uid)
    assert objects("FineTuneJob", "Failed") == failed
    book.set("FineTuneJob", uid, "Failed")  # a reconcile that was in flight when it was deleted
    assert objects("FineTuneJob", "Failed") == failed


def test_a_deleted_watch_event_drops_the_object_from_the_gauge() -> None:
    uid = str(uuid.uuid4())
    before = objects("Dataset", "Ready")
    metrics.PHASES.set("Dataset", uid, "Ready")
    forget_deleted("datasets", {"type": "MODIFIED", "object": {"metadata": {"uid": uid}}})
    assert objects("Dataset", "Ready") == before + 1
    forget_deleted("datasets", {"type": "DELETED", "object": {"metadata": {"uid": uid}}})
    assert objects("Dataset", "Ready") == before


def test_tombstones_are_bounded() -> None:
    book = metrics.PhaseBook(tombstones=2)
    for uid in ("a", "b", "c"):
        book.drop("Export", uid)
    book.set("Export", "a", "Running")  # forgotten tombstone: counted (uids are never reused anyway)
    assert objects("Export", "Running") >= 1
    book.drop("Export", "a")


def test_kind_label_is_the_api_kind_everywhere() -> None:
    assert set(KIND_OF.values()) == set(KINDS)
    metrics.RECONCILE_SECONDS.labels(kind="FineTuneJob")  # run_guarded's spelling
    families = {f.name: f for f in REGISTRY.collect() if f.name.startswith("finetune_operator_")}
    kinds = {s.labels["kind"] for f in families.values() for s in f.samples if "kind" in s.labels}
    assert kinds and kinds <= set(KINDS)


def test_operator_exposition_passes_promtool_check() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed: run hack/install-prometheus.sh")
    metrics.PHASES.set("FineTuneJob", str(uuid.uuid4()), "Running")
    result = subprocess.run([promtool, "check", "metrics"], input=generate_latest(REGISTRY).decode(),
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
