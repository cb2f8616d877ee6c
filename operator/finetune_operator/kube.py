"""The few Kubernetes API calls the operator makes, each counted; objects come back as plain dicts.

A thin REST client: urllib3 (already loaded for the progress reads) on kopf's own credentials
(:func:`login`, which kopf's watches use too). The ``kubernetes`` package is not needed: its
generated client costs ~56 MB of memory in a process that makes a dozen kinds of request.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote, urlencode, urlsplit

import kopf
import urllib3

from . import metrics

log = logging.getLogger(__name__)
GROUP: Final = "finetune.dev"
VERSION: Final = "v1alpha1"
SERVICE_ACCOUNT_TOKEN: Final = "/var/run/secrets/kubernetes.io/serviceaccount/token"
MERGE_PATCH: Final = "application/merge-patch+json"
REPORTING_COMPONENT: Final = "finetune-operator"
# The children the reconcilers create, and where they live in the API.
_CHILDREN: Final[dict[str, tuple[str, str]]] = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "Job": ("/apis/batch/v1", "jobs"),
}


class ApiError(Exception):
    """A request the API server answered with an error status (``status`` is the HTTP code)."""

    def __init__(
        self, status: int, method: str, path: str, message: str, causes: tuple[str, ...] = ()
    ) -> None:
        super().__init__(f"{method} {path}: {status} {message}")
        self.status = status
        self.causes = causes  # the reasons in the Status body's ``details.causes``

    @property
    def gone(self) -> bool:
        """The object, or the namespace it lives in, is going away: there is nothing left to reconcile."""
        return self.status == 404 or (self.status == 403 and "NamespaceTerminating" in self.causes)


class AdoptionConflict(RuntimeError):
    """A child's deterministic name is taken by an object another controller owns."""


def login(settings: kopf.OperatorSettings | None = None, **kwargs: Any) -> kopf.ConnectionInfo:
    """Credentials for the API server: the pod's ServiceAccount in a cluster, else the kubeconfig.

    The operator's kopf login handler (so kopf's watches and our requests use the same identity).
    kopf reads tokens, client certificates and CA data itself; a kubeconfig whose user runs an
    ``exec`` plugin or an auth provider needs the ``kubernetes`` package, which is used only then.
    """
    settings = settings or kopf.OperatorSettings()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and os.path.exists(SERVICE_ACCOUNT_TOKEN):
        info = kopf.login_with_service_account(settings=settings)
    else:
        info = kopf.login_with_kubeconfig(settings=settings)
        if info is not None and not (info.token or info.certificate_path or info.certificate_data
                                     or info.username):  # fmt: skip
            # exec plugins (cloud IAM), refreshable auth providers: the full client knows them all.
            info = kopf.login_via_client(settings=settings, logger=kwargs.get("logger", log)) or info
    if info is None:
        raise kopf.LoginError("no credentials: neither a ServiceAccount token nor a kubeconfig ($KUBECONFIG)")
    return info


class Kube:
    """Typed-enough access to the API server for reconcile: create-or-adopt, reads, status patches.

    Thread-safe (the handlers run in kopf's thread pool): one kept-alive connection per thread.
    A 401 (a rotated ServiceAccount token) logs in again and retries the request once.
    """

    def __init__(
        self,
        credentials: Callable[[], kopf.ConnectionInfo] = login,
        *,
        threads: int = 16,
        timeout_s: float = 60,
    ) -> None:
        self._credentials = credentials
        self._threads = threads
        self._timeout = urllib3.Timeout(connect=10, read=timeout_s)
        self._lock = threading.Lock()
        self._server, self._headers, self._pool = self._connect()

    def _connect(self) -> tuple[str, dict[str, str], urllib3.PoolManager]:
        info = self._credentials()
        headers = {"Accept": "application/json", "User-Agent": "finetune-operator", **info.as_http_headers()}
        tls: dict[str, Any] = {}
        if urlsplit(info.server).scheme == "https":
            tls["ssl_context"] = info.as_ssl_context()
            if info.insecure:
                tls.update(cert_reqs="CERT_NONE", assert_hostname=False)
        pool = urllib3.PoolManager(maxsize=self._threads, retries=False, timeout=self._timeout, **tls)
        return info.server.rstrip("/"), headers, pool

    def _request(
        self,
        method: str,
        path: str,
        *,
        resource: str,
        verb: str,
        body: Any = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        url = path + (f"?{urlencode(query)}" if query else "")
        payload = None if body is None else json.dumps(body).encode()
        started = time.perf_counter()
        status = 0
        try:
            for attempt in (1, 2):
                server, headers, pool = self._server, self._headers, self._pool
                if payload is not None:
                    headers = {**headers, "Content-Type": content_type}
                response = pool.request(method, server + url, body=payload, headers=headers)
                status = response.status
                if status == 401 and attempt == 1:
                    with self._lock:
                        self._server, self._headers, self._pool = self._connect()
                    continue
                break
            if status >= 400:
                raise ApiError(status, method, path, *_status(response.data))
            result: dict[str, Any] = json.loads(response.data) if response.data else {}
            return result
        finally:
            code = str(status) if status else "error"  # no answer: refused, reset, timed out
            metrics.API_CALLS.labels(verb=verb, resource=resource, code=code).inc()
            metrics.API_LATENCY.labels(verb=verb, resource=resource).observe(time.perf_counter() - started)

    @staticmethod
    def _child_path(kind: str, namespace: str, name: str = "") -> tuple[str, str]:
        prefix, resource = _CHILDREN[kind]
        path = f"{prefix}/namespaces/{quote(namespace)}/{resource}"
        return (f"{path}/{quote(name)}" if name else path), resource

    # -- children ------------------------------------------------------------------------------
    def create_or_adopt(self, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create ``manifest``; when its name exists (a retry, a restart) use that object. Returns (object, created).

        An existing object without a controller is adopted (our ownerReference added); one owned by
        another controller raises :class:`AdoptionConflict`.
        """
        kind, meta = manifest["kind"], manifest["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        collection, resource = self._child_path(kind, namespace)
        try:
            return self._request("POST", collection, resource=resource, verb="create", body=manifest), True
        except ApiError as exc:
            if exc.status != 409:
                raise
        path, _ = self._child_path(kind, namespace, name)
        existing = self._request("GET", path, resource=resource, verb="get")
        ours = meta["ownerReferences"][0]
        controllers = [o for o in existing["metadata"].get("ownerReferences") or [] if o.get("controller")]
        if controllers and controllers[0].get("uid") != ours["uid"]:
            owner = controllers[0]
            raise AdoptionConflict(
                f"{kind} {namespace}/{name} exists and belongs to {owner['kind']} {owner['name']}"
            )
        patch: dict[str, Any] = {}
        if not controllers:
            patch["metadata"] = {"ownerReferences": [*existing["metadata"].get("ownerReferences", []), ours]}
        # A ConfigMap is level-based like the rest; a Job's template is immutable, so it is kept as found.
        if kind == "ConfigMap" and existing.get("data") != manifest["data"]:
            patch["data"] = manifest["data"]
        if patch:
            existing = self._request(
                "PATCH", path, resource=resource, verb="patch", body=patch, content_type=MERGE_PATCH
            )
        return existing, False

    def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Job, or None when absent."""
        path, resource = self._child_path("Job", namespace, name)
        try:
            return self._request("GET", path, resource=resource, verb="get")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list_pods(
        self, namespace: str, selector: dict[str, str], *, cached: bool = False
    ) -> list[dict[str, Any]]:
        """Pods matching every label of ``selector``. ``cached``: as the API server's watch cache holds them
        (``resourceVersion=0``: no wait for the cache to catch up with etcd, the costliest part of a list)."""
        path = f"/api/v1/namespaces/{quote(namespace)}/pods"
        query = {"labelSelector": _selector(selector), **({"resourceVersion": "0"} if cached else {})}
        items: list[dict[str, Any]] = self._request("GET", path, resource="pods", verb="list", query=query)[
            "items"
        ]
        return items

    def set_job_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        """Suspend (the Job controller deletes the pods) or resume a Job."""
        path, resource = self._child_path("Job", namespace, name)
        patch = {"spec": {"suspend": suspend}}
        self._request("PATCH", path, resource=resource, verb="patch", body=patch, content_type=MERGE_PATCH)

    def post_event(self, involved: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        """A core/v1 Event (``kind`` Normal or Warning) about the object ``involved`` (its body).

        Named as client-go names events, ``<object>.<hex nanoseconds>``: `kubectl describe` sorts
        events by lastTimestamp, which has whole seconds, and keeps the listed order (by name) among
        events of one second, so names that sort by time keep two quick transitions in order.
        """
        meta, moment = involved["metadata"], time.time_ns()
        ref = {"apiVersion": involved["apiVersion"], "kind": involved["kind"], "name": meta["name"],
               "namespace": meta["namespace"], "uid": meta["uid"]}  # fmt: skip
        stamp = datetime.fromtimestamp(moment / 1e9, UTC)
        seconds = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "metadata": {"name": f"{meta['name']}.{moment:x}", "namespace": meta["namespace"]},
            "involvedObject": ref,
            "type": kind,
            "reason": reason,
            "message": message[:1024],
            "action": "Reconcile",
            "count": 1,
            "firstTimestamp": seconds,
            "lastTimestamp": seconds,
            "eventTime": stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "reportingComponent": REPORTING_COMPONENT,
            "reportingInstance": socket.gethostname()[:128],
            "source": {"component": REPORTING_COMPONENT},  # the "From" column of `kubectl describe`
        }
        path = f"/api/v1/namespaces/{quote(meta['namespace'])}/events"
        self._request("POST", path, resource="events", verb="create", body=body)

    def evict_pod(self, namespace: str, name: str) -> None:
        """Evict a pod (the API server marks it ``DisruptionTarget``: its Job does not count it as failed);
        one already gone is fine."""
        path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}/eviction"
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
        }
        try:
            self._request("POST", path, resource="pods/eviction", verb="create", body=body)
        except ApiError as exc:
            if exc.status != 404:
                raise

    def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete a child and (background) its dependents; absent is fine."""
        path, resource = self._child_path(kind, namespace, name)
        options = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        try:
            self._request("DELETE", path, resource=resource, verb="delete", body=options)
        except ApiError as exc:
            if exc.status != 404:
                raise

    def node_labels(self, selector: dict[str, str]) -> list[dict[str, str]]:
        """Labels of the nodes matching ``selector`` (all nodes when empty)."""
        query = {"labelSelector": _selector(selector)} if selector else None
        nodes = self._request("GET", "/api/v1/nodes", resource="nodes", verb="list", query=query)["items"]
        return [n["metadata"].get("labels") or {} for n in nodes]

    def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        """A Secret's keys, decoded; only ever used in memory (never logged or written)."""
        path = f"/api/v1/namespaces/{quote(namespace)}/secrets/{quote(name)}"
        secret = self._request("GET", path, resource="secrets", verb="get")
        return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}

    # -- our custom resources ------------------------------------------------------------------
    @staticmethod
    def _custom_path(plural: str, namespace: str, name: str) -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/{plural}/{quote(name)}"

    def read_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A FineTuneJob / Dataset / Export, or None."""
        try:
            return self._request(
                "GET", self._custom_path(plural, namespace, name), resource=plural, verb="get"
            )
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch the status subresource (the only part of our objects the operator writes)."""
        path = self._custom_path(plural, namespace, name) + "/status"
        self._request("PATCH", path, resource=f"{plural}/status", verb="patch", body={"status": status},
                      content_type=MERGE_PATCH)  # fmt: skip


def _selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in labels.items())


def _status(data: bytes) -> tuple[str, tuple[str, ...]]:
    """The API server's own words from a ``Status`` body (raw text when it is not one), and the
    reasons of its ``details.causes``."""
    try:
        status = json.loads(data)
    except ValueError:
        return data[:500].decode(errors="replace"), ()
    if not isinstance(status, dict):
        return str(status), ()
    causes = (status.get("details") or {}).get("causes") or []
    return (
        str(status.get("message") or status.get("reason") or ""),
        tuple(str(c.get("reason", "")) for c in causes if isinstance(c, dict)),
    )
