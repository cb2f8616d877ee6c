"""Operator start-up: kopf settings (each with the reason for it) and the API client."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf
from prometheus_client import start_http_server

from .. import kube
from ..builders.common import MANAGED_BY, MANAGER
from . import resync
from .indexes import INDEXES
from .runtime import RUNTIME

PREFIX = "finetune.dev"
WORKERS = 16
_tasks: set[asyncio.Task[Any]] = set()  # a reference keeps the resync task from being collected


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo:
    """The ServiceAccount in a pod, else the kubeconfig: the same identity for kopf and the reconcilers."""
    return kube.login(**kwargs)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, logger: logging.Logger, **kwargs: Any) -> None:
    """Tune kopf for this operator, connect the reconcilers' API client and start the shared resync."""
    ours = RUNTIME.settings
    # The API server filters Jobs by label: kopf never sees (nor keeps memory of) other Jobs.
    settings.watching.label_selectors["batch", "jobs"] = f"{MANAGED_BY}={MANAGER}"
    # Handler progress and the last-handled spec live in our own annotations, never in status:
    # the status is the user's view (and a GitOps tool sees no kopf fields there).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    # No handler needs a finalizer (no timers, daemons or delete handlers: a deletion is a watch
    # event); one left by an older version carries our name, not kopf's.
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    # Events for transitions are posted by write_status; kopf's own per-handler chatter stays in the log.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = kube.REPORTING_COMPONENT
    settings.posting.event_name_prefix = "finetune-"
    # Watched namespaces are exact names (the chart's schema): a namespaced operator neither lists nor
    # watches Namespaces (no cluster-wide grant for it) and scans the served resources once at start.
    settings.scanning.disabled = bool(ours.namespaces)
    # Two replicas must never reconcile the same object: peering when a peering object is named.
    settings.peering.standalone = ours.peering_name is None
    if ours.peering_name:
        settings.peering.name = ours.peering_name
        settings.peering.clusterwide = not ours.namespaces
        settings.peering.mandatory = True
    # A watch that silently stalls is re-established instead of waiting forever.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # Sync handlers block on the API: enough threads for many objects reconciled at once.
    settings.execution.max_workers = WORKERS
    settings.networking.request_timeout = 60
    RUNTIME.kube = kube.Kube(
        lambda: kube.login(settings), threads=WORKERS, timeout_s=settings.networking.request_timeout
    )
    # kopf fills the indexes before any other handler runs; the reconcilers and the resync read them.
    RUNTIME.indexes = {name: kwargs[name] for name in INDEXES}
    _tasks.add(resync.start(ours.resync_seconds, settings.execution.executor))
    if ours.metrics_port:
        start_http_server(ours.metrics_port)
    logger.info(
        "finetune-operator started: image %s, namespaces %s", ours.trainer_image, ours.namespaces or "all"
    )


@kopf.on.cleanup()
async def stop_resync(**_: Any) -> None:
    """Stop the shared resync before kopf closes its loop."""
    for task in _tasks:
        task.cancel()
    await asyncio.gather(*_tasks, return_exceptions=True)
    _tasks.clear()
