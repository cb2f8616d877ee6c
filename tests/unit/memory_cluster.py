"""An in-memory cluster for the reconcile unit tests (no tests here): a fake of the reconciles' KubeApi
that keeps objects in dicts and records every write, indexes read from that same store, and a clock
the test moves."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from finetune_api.common import OutputSpec
from finetune_api.resources import Dataset
from finetune_operator.kube import ApiError
from finetune_operator.reconcile.cluster import (
    Cluster,
    JobEntry,
    Memory,
    compact_job,
    dataset_entry,
    job_entry,
)
from finetune_operator.settings import Settings
from finetune_operator.status.finetunejob import ProgressRead
from finetune_operator.status.observe import rfc3339

NS = "team"
START = datetime(2030, 1, 1, tzinfo=UTC)
API_VERSION = "finetune.dev/v1alpha1"
KIND = {"finetunejobs": "FineTuneJob", "datasets": "Dataset", "exports": "Export"}
_uids = itertools.count(1)


def _matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _merge(target: dict[str, Any], patch: Mapping[str, Any]) -> None:
    """A JSON merge patch (RFC 7386): None removes a key, objects merge, the rest replaces."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


@dataclass
class MemoryKube:
    """The reconciles' API calls on dicts: children by (kind, namespace, name), our objects by
    (plural, namespace, name), pods, node labels and Secrets; each write is recorded in order."""

    children: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    customs: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    pods: list[dict[str, Any]] = field(default_factory=list)
    nodes: list[dict[str, str]] = field(default_factory=list)
    secrets: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    created: list[tuple[str, str]] = field(default_factory=list)
    """(kind, name) of each object create_or_adopt created (not one it found)."""
    patches: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    """(plural, name, status patch) of each status write."""
    events: list[tuple[str, str, str, str]] = field(default_factory=list)
    """(object name, Normal|Warning, reason, message) of each event."""
    suspends: list[tuple[str, bool]] = field(default_factory=list)
    evictions: list[str] = field(default_factory=list)
    deletions: list[tuple[str, str]] = field(default_factory=list)
    pod_lists: list[bool] = field(default_factory=list)
    """``cached`` of each pod list."""
    secret_reads: list[str] = field(default_factory=list)
    events_fail: bool = False
    """Answer every event with a 403 (an event is worth a try, never a failed reconcile)."""

    # -- what a test puts in -------------------------------------------------------------------------
    def add(self, plural: str, name: str, spec: Mapping[str, Any], status: Mapping[str, Any] | None = None,
            generation: int = 1) -> dict[str, Any]:  # fmt: skip
        """Store one of our objects as the API server would hold it; returns a copy of its body."""
        body: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": KIND[plural],
            "metadata": {
                "name": name,
                "namespace": NS,
                "uid": f"uid-{next(_uids)}",
                "generation": generation,
            },
            "spec": copy.deepcopy(dict(spec)),
        }
        if status is not None:
            body["status"] = copy.deepcopy(dict(status))
        self.customs[(plural, NS, name)] = body
        return copy.deepcopy(body)

    def body(self, plural: str, name: str) -> dict[str, Any]:
        """The object as stored now (what a resync reads before it reconciles)."""
        return copy.deepcopy(self.customs[(plural, NS, name)])

    def status(self, plural: str, name: str) -> dict[str, Any]:
        return dict(self.customs[(plural, NS, name)].get("status") or {})

    def job(self, name: str) -> dict[str, Any]:
        return self.children[("Job", NS, name)]

    def set_job_status(self, name: str, **status: Any) -> None:
        """What the Job controller writes."""
        self.job(name)["status"] = status

    def pod(self, job: str, name: str, phase: str, *, created: datetime = START,
            terminated: Mapping[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        """A pod of Job ``job``, labelled as the Job controller labels it, as status/observe.py reads it."""
        template = self.job(job)["spec"]["template"]["metadata"]["labels"]
        state = (
            {"terminated": dict(terminated)} if terminated else {"running": {}} if phase == "Running" else {}
        )
        pod = {
            "metadata": {
                "name": name,
                "namespace": NS,
                "creationTimestamp": rfc3339(created),
                "labels": {**template, "batch.kubernetes.io/job-name": job},
            },
            "status": {"phase": phase, "containerStatuses": [{"state": state}]},
        }
        self.pods.append(pod)
        return pod

    # -- KubeApi ---------------------------------------------------------------------------------------
    def create_or_adopt(self, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        meta = manifest["metadata"]
        key = (manifest["kind"], meta["namespace"], meta["name"])
        if key in self.children:  # a name clash: the existing object is used
            return copy.deepcopy(self.children[key]), False
        stored = copy.deepcopy(manifest)
        stored["metadata"]["uid"] = f"uid-{next(_uids)}"
        self.children[key] = stored
        self.created.append((manifest["kind"], meta["name"]))
        return copy.deepcopy(stored), True

    def list_pods(
        self, namespace: str, selector: dict[str, str], *, cached: bool = False
    ) -> list[dict[str, Any]]:
        self.pod_lists.append(cached)
        found = [p for p in self.pods if p["metadata"]["namespace"] == namespace]
        return [copy.deepcopy(p) for p in found if _matches(p["metadata"]["labels"], selector)]

    def set_job_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        self.children[("Job", namespace, name)]["spec"]["suspend"] = suspend
        self.suspends.append((name, suspend))

    def post_event(self, involved: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        if self.events_fail:
            raise ApiError(403, "POST", "/api/v1/namespaces/team/events", "forbidden")
        self.events.append((involved["metadata"]["name"], kind, reason, message))

    def evict_pod(self, namespace: str, name: str) -> None:
        self.evictions.append(name)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.children.pop((kind, namespace, name), None)
        self.deletions.append((kind, name))

    def node_labels(self, selector: dict[str, str]) -> list[dict[str, str]]:
        return [dict(labels) for labels in self.nodes if _matches(labels, selector)]

    def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        self.secret_reads.append(name)
        return dict(self.secrets[(namespace, name)])

    def read_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.customs.get((plural, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.patches.append((plural, name, copy.deepcopy(status)))
        _merge(self.customs[(plural, namespace, name)].setdefault("status", {}), status)


@dataclass
class MemoryIndexes:
    """The indexes as kopf would hold them for ``kube``'s objects, always current (or, ``lagging``, not
    having seen the Jobs yet)."""

    kube: MemoryKube
    lagging: bool = False

    def dataset(self, namespace: str, name: str) -> Dataset | None:
        body = self.kube.customs.get(("datasets", namespace, name))
        return dataset_entry(body) if body is not None else None

    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        body = self.kube.children.get(("Job", namespace, name))
        return compact_job(body) if body is not None and not self.lagging else None

    def finetunejob(self, namespace: str, name: str) -> JobEntry | None:
        body = self.kube.customs.get(("finetunejobs", namespace, name))
        return job_entry(body) if body is not None else None


@dataclass
class MemoryClock:
    """Wall and monotonic time that move only when the test says."""

    moment: datetime = START
    ticks: float = 1000.0

    def now(self) -> datetime:
        return self.moment

    def monotonic(self) -> float:
        return self.ticks

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)
        self.ticks += seconds


@dataclass
class ProgressStore:
    """The progress records in object storage, by output URI; each read is recorded."""

    records: dict[str, ProgressRead] = field(default_factory=dict)
    reads: list[tuple[str, dict[str, str] | None]] = field(default_factory=list)

    def __call__(self, output: OutputSpec, credentials: dict[str, str] | None) -> ProgressRead:
        self.reads.append((output.uri, credentials))
        return self.records.get(output.uri, ProgressRead(None))


@dataclass
class World:
    """One in-memory cluster and the view a reconcile gets of it."""

    kube: MemoryKube = field(default_factory=MemoryKube)
    clock: MemoryClock = field(default_factory=MemoryClock)
    progress: ProgressStore = field(default_factory=ProgressStore)
    memory: Memory = field(default_factory=Memory)
    settings: Settings = field(default_factory=lambda: Settings(resync_seconds=10.0))
    lagging: bool = False

    @property
    def cluster(self) -> Cluster:
        return Cluster(
            self.kube, MemoryIndexes(self.kube, self.lagging), self.settings, self.memory, self.clock,
            self.progress,
        )  # fmt: skip
