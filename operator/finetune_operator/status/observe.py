"""What a batch/v1 Job and its pods say, read once into a typed observation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from finetune_api.reports import said

IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})


def rfc3339(moment: datetime) -> str:
    """``2025-01-31T12:00:00Z``: the timestamp form of the Kubernetes API."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 timestamp from the API, or None."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True)
class ContainerEnd:
    """A terminated container of a failed or finished pod."""

    pod: str
    exit_code: int
    reason: str
    message: str
    """The whole termination message (the kubelet keeps at most ``TERMINATION_MAX`` bytes): a
    report parses from it, so it is never cut here."""
    finished_at: str | None

    @property
    def said(self) -> str:
        """The message for people (:func:`finetune_api.reports.said`)."""
        return said(self.message)


@dataclass(frozen=True)
class JobObservation:
    """The facts the status logic needs from a Job and its pods."""

    name: str
    suspended: bool = False
    active: int = 0
    ready: int = 0
    failed: int = 0
    complete: bool = False
    failed_reason: str | None = None
    failed_message: str = ""
    start_time: str | None = None
    completion_time: str | None = None
    running_pods: int = 0
    image_pull: tuple[str, str] | None = None
    failures: list[ContainerEnd] = field(default_factory=list)
    successes: list[ContainerEnd] = field(default_factory=list)
    stale_peers: list[str] = field(default_factory=list)
    """Pods of a multi-pod group still running from before a peer failed (:func:`stale_peers`)."""

    def last_end(self) -> ContainerEnd | None:
        """The container that ended last (its message is the trainer's report or summary)."""
        ends = sorted(self.successes + self.failures, key=lambda e: e.finished_at or "")
        return ends[-1] if ends else None

    def last_message(self) -> str:
        """The whole termination message of the last pod that ended, or ''."""
        last = self.last_end()
        return last.message if last else ""

    def last_said(self) -> str:
        """What the last pod that ended said to people (:attr:`ContainerEnd.said`), or ''."""
        last = self.last_end()
        return last.said if last else ""


def _condition(job: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind and cond.get("status") == "True":
            return dict(cond)
    return None


def _container_ends(pod: Mapping[str, Any]) -> list[ContainerEnd]:
    ends = []
    name = pod["metadata"]["name"]
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            message = (term.get("message") or "").strip()
            ends.append(
                ContainerEnd(
                    name,
                    int(term.get("exitCode", 0)),
                    term.get("reason") or "",
                    message,
                    term.get("finishedAt"),
                )
            )
    return ends


def _image_pull(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in IMAGE_PULL_REASONS:
            return pod["metadata"]["name"], f"{waiting['reason']}: {waiting.get('message', '')}".strip()
    return None


def has_pods(job: Mapping[str, Any]) -> bool:
    """Whether a Job's status counts any pod; one that counts none (just created, suspended) needs no pod list."""
    status = job.get("status") or {}
    counts = ("active", "ready", "failed", "succeeded", "terminating", "uncountedTerminatedPods")
    return any(status.get(k) for k in counts)


class PodRead(Enum):
    """How much of a Job's pods a reconcile must read."""

    NONE = "none"
    """The Job's own counts say it all: no pod yet, or every pod ready and none failed."""
    CACHED = "cached"
    """Pods that may not start or that failed: a list from the API server's cache (a stale one is
    corrected by the next Job event or the resync)."""
    CONSISTENT = "consistent"
    """A finished Job: its pods hold the final report, read once and current."""


def pod_read(job: Mapping[str, Any], pods_wanted: int = 1) -> PodRead:
    """Which pod list ``job``'s state calls for, with ``pods_wanted`` pods meaning it runs."""
    if _condition(job, "Complete") or _condition(job, "Failed"):
        return PodRead.CONSISTENT
    status = job.get("status") or {}
    if not has_pods(job) or (int(status.get("ready") or 0) >= pods_wanted and not status.get("failed")):
        return PodRead.NONE
    return PodRead.CACHED


def _disrupted(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "DisruptionTarget" and c.get("status") == "True" for c in conditions)


def stale_peers(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], group: int) -> list[str]:
    """Pods of a ``group``-pod Job (one per node, one torchrun rendezvous) created before a peer failed.

    They cannot go on: their collectives wait on a rank that is gone, and the peer's replacement
    cannot join a rendezvous that already completed. Evicted, they restart with it from the last
    checkpoint. A failure of a pod with ``DisruptionTarget`` (preempted or evicted: such an eviction
    included) starts nothing, and a finished or suspended Job has no group to restart.
    """
    if (
        group < 2
        or _condition(job, "Complete")
        or _condition(job, "Failed")
        or (job.get("spec") or {}).get("suspend")
    ):
        return []
    failed_at = [
        end.finished_at
        for pod in pods
        if (pod.get("status") or {}).get("phase") == "Failed" and not _disrupted(pod)
        for end in _container_ends(pod)
        if end.exit_code != 0 and end.finished_at
    ]
    if not failed_at:
        return []
    latest = max(failed_at)
    return [
        pod["metadata"]["name"]
        for pod in pods
        if (pod.get("status") or {}).get("phase") in ("Pending", "Running")
        and not pod["metadata"].get("deletionTimestamp")
        # Strictly before, to the second: the failed pod's replacement is never among them.
        and (pod["metadata"].get("creationTimestamp") or latest) < latest
    ]


def observe_job(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]], group: int = 1) -> JobObservation:
    """Read a Job and its pods into a :class:`JobObservation` (without pods, its ready count is the running one).

    ``group``: how many pods run as one (a multi-node Job), for :func:`stale_peers`."""
    status = job.get("status") or {}
    failed = _condition(job, "Failed")
    complete = _condition(job, "Complete")
    failures: list[ContainerEnd] = []
    successes: list[ContainerEnd] = []
    running = 0
    image_pull = None
    for pod in pods:
        phase = (pod.get("status") or {}).get("phase")
        running += phase == "Running"
        for end in _container_ends(pod):
            (successes if end.exit_code == 0 else failures).append(end)
        image_pull = image_pull or _image_pull(pod)
    return JobObservation(
        name=job["metadata"]["name"],
        suspended=bool((job.get("spec") or {}).get("suspend")),
        active=int(status.get("active") or 0),
        ready=int(status.get("ready") or 0),
        failed=int(status.get("failed") or 0),
        complete=complete is not None,
        failed_reason=(failed.get("reason") or "JobFailed") if failed else None,
        failed_message=(failed.get("message") or "") if failed else "",
        start_time=status.get("startTime"),
        completion_time=status.get("completionTime")
        or (failed.get("lastTransitionTime") if failed else None),
        running_pods=running if pods else int(status.get("ready") or 0),
        image_pull=image_pull,
        failures=sorted(failures, key=lambda e: e.finished_at or ""),
        successes=successes,
        stale_peers=stale_peers(job, pods, group),
    )
