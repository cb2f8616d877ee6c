"""Operator start-up: kopf settings (each with the reason for it) and the API client."""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf
from kubernetes import client, config
from prometheus_client import start_http_server

from ..kube import Kube
from .runtime import RUNTIME

PREFIX = "finetune.dev"


def _api_client() -> client.ApiClient:
    # In a pod: the ServiceAccount; elsewhere (tests, a laptop): $KUBECONFIG or ~/.kube/config.
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config()
        return client.ApiClient()
    return config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"))


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
    """Tune kopf for this operator and connect the reconcilers' API client."""
    ours = RUNTIME.settings
    # Handler progress and the last-handled spec live in our own annotations, never in status:
    # the status is the user's view (and a GitOps tool sees no kopf fields there).
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    # Timers need a finalizer to stop cleanly on deletion; it carries our name, not kopf's.
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    # Events for transitions are posted explicitly; kopf's own per-handler chatter stays in the log.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "finetune-operator"
    settings.posting.event_name_prefix = "finetune-"
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
    settings.execution.max_workers = 16
    settings.networking.request_timeout = 60
    RUNTIME.kube = Kube(_api_client())
    if ours.metrics_port:
        start_http_server(ours.metrics_port)
    logger.info(
        "finetune-operator started: image %s, namespaces %s", ours.trainer_image, ours.namespaces or "all"
    )
