"""The handler boundary (handlers/runtime.py): what a reconcile raises becomes a kopf error for change
handlers only, and a handler that runs before start-up connected the client asks kopf to retry."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf
import pytest

from finetune_operator.handlers import runtime
from finetune_operator.kube import ApiError
from finetune_operator.reconcile.cluster import ApiMismatch, Cluster
from tests.unit.memory_cluster import MemoryKube

BODY = {"metadata": {"uid": "uid-boundary", "name": "demo", "namespace": "team"}}


def raising(exc: Exception) -> Any:
    def reconcile(cluster: Cluster, body: Mapping[str, Any]) -> None:
        raise exc

    return reconcile


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> runtime.Runtime:
    ours = runtime.Runtime(kube=MemoryKube())  # type: ignore[arg-type]  # the fake of the KubeApi protocol
    monkeypatch.setattr(runtime, "RUNTIME", ours)
    return ours


def test_a_body_the_model_refuses_is_permanent_for_a_change_handler_only(started: runtime.Runtime) -> None:
    mismatch = ApiMismatch("FineTuneJob does not match the operator's API: spec.unknownField")
    with pytest.raises(kopf.PermanentError, match="does not match the operator's API"):
        runtime.run_guarded("FineTuneJob", BODY, raising(mismatch), permanent=True)
    runtime.run_guarded("FineTuneJob", BODY, raising(mismatch), permanent=False)  # the resync logs nothing


def test_an_object_gone_meanwhile_ends_the_reconcile_quietly(started: runtime.Runtime) -> None:
    runtime.run_guarded("Dataset", BODY, raising(ApiError(404, "PATCH", "/x", "not found")), permanent=True)
    with pytest.raises(ApiError):
        runtime.run_guarded("Dataset", BODY, raising(ApiError(500, "PATCH", "/x", "boom")), permanent=False)


def test_the_reconcile_gets_the_process_view(started: runtime.Runtime) -> None:
    seen: list[Cluster] = []
    runtime.run_guarded("Export", BODY, lambda cluster, body: seen.append(cluster), permanent=True)
    (cluster,) = seen
    assert cluster.kube is started.kube and cluster.memory is started.memory
    assert cluster.settings is started.settings


def test_before_start_up_a_handler_asks_kopf_to_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "RUNTIME", runtime.Runtime())
    with pytest.raises(kopf.TemporaryError, match="still starting"):
        runtime.run_guarded("FineTuneJob", BODY, raising(AssertionError("not reached")), permanent=True)
    runtime.run_guarded("FineTuneJob", BODY, raising(AssertionError("not reached")), permanent=False)
