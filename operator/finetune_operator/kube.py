"""The few Kubernetes API calls the operator makes, each counted; objects come back as plain dicts."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from . import metrics

GROUP: Final = "finetune.dev"
VERSION: Final = "v1alpha1"
T = TypeVar("T")


class AdoptionConflict(RuntimeError):
    """A child's deterministic name is taken by an object another controller owns."""


def _json(response: Any) -> Any:
    return json.loads(response.data)


class Kube:
    """Typed-enough access to the API server for reconcile: create-or-adopt, reads, status patches."""

    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def _call(self, verb: str, resource: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        started = time.perf_counter()
        code = "200"
        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            code = str(exc.status)
            raise
        finally:
            metrics.API_CALLS.labels(verb=verb, resource=resource, code=code).inc()
            metrics.API_LATENCY.labels(verb=verb, resource=resource).observe(time.perf_counter() - started)

    # -- children ------------------------------------------------------------------------------
    def _creator(self, kind: str) -> tuple[str, Callable[..., Any], Callable[..., Any]]:
        table: dict[str, tuple[str, Callable[..., Any], Callable[..., Any]]] = {
            "ConfigMap": (
                "configmaps",
                self.core.create_namespaced_config_map,
                self.core.read_namespaced_config_map,
            ),
            "Service": ("services", self.core.create_namespaced_service, self.core.read_namespaced_service),
            "Job": ("jobs", self.batch.create_namespaced_job, self.batch.read_namespaced_job),
        }
        return table[kind]

    def create_or_adopt(self, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create ``manifest``; when its name exists (a retry, a restart) use that object. Returns (object, created).

        An existing object without a controller is adopted (our ownerReference added); one owned by
        another controller raises :class:`AdoptionConflict`.
        """
        resource, create, read = self._creator(manifest["kind"])
        meta = manifest["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        try:
            return _json(
                self._call("create", resource, create, namespace, manifest, _preload_content=False)
            ), True
        except ApiException as exc:
            if exc.status != 409:
                raise
        existing = _json(self._call("get", resource, read, name, namespace, _preload_content=False))
        ours = meta["ownerReferences"][0]
        controllers = [o for o in existing["metadata"].get("ownerReferences") or [] if o.get("controller")]
        if controllers and controllers[0].get("uid") != ours["uid"]:
            owner = controllers[0]
            raise AdoptionConflict(
                f"{manifest['kind']} {namespace}/{name} exists and belongs to {owner['kind']} {owner['name']}"
            )
        patch: dict[str, Any] = {}
        if not controllers:
            patch["metadata"] = {"ownerReferences": [*existing["metadata"].get("ownerReferences", []), ours]}
        # A ConfigMap is level-based like the rest; a Job's template is immutable, so it is kept as found.
        if manifest["kind"] == "ConfigMap" and existing.get("data") != manifest["data"]:
            patch["data"] = manifest["data"]
        if patch:
            patcher = {
                "ConfigMap": self.core.patch_namespaced_config_map,
                "Service": self.core.patch_namespaced_service,
                "Job": self.batch.patch_namespaced_job,
            }[manifest["kind"]]
            existing = _json(
                self._call("patch", resource, patcher, name, namespace, patch, _preload_content=False)
            )
        return existing, False

    def read_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The Job, or None when absent."""
        try:
            return _json(
                self._call(
                    "get", "jobs", self.batch.read_namespaced_job, name, namespace, _preload_content=False
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_pods(self, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        """Pods matching every label of ``selector``."""
        labels = ",".join(f"{k}={v}" for k, v in selector.items())
        resp = self._call(
            "list",
            "pods",
            self.core.list_namespaced_pod,
            namespace,
            label_selector=labels,
            _preload_content=False,
        )
        items: list[dict[str, Any]] = _json(resp)["items"]
        return items

    def set_job_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        """Suspend (the Job controller deletes the pods) or resume a Job."""
        self._call(
            "patch", "jobs", self.batch.patch_namespaced_job, name, namespace, {"spec": {"suspend": suspend}}
        )

    def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete a child and (background) its dependents; absent is fine."""
        options = client.V1DeleteOptions(propagation_policy="Background")
        deleters = {
            "Job": ("jobs", self.batch.delete_namespaced_job),
            "ConfigMap": ("configmaps", self.core.delete_namespaced_config_map),
            "Service": ("services", self.core.delete_namespaced_service),
        }
        resource, fn = deleters[kind]
        try:
            self._call("delete", resource, fn, name, namespace, body=options)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def node_labels(self, selector: dict[str, str]) -> list[dict[str, str]]:
        """Labels of the nodes matching ``selector`` (all nodes when empty)."""
        labels = ",".join(f"{k}={v}" for k, v in selector.items())
        resp = self._call("list", "nodes", self.core.list_node, label_selector=labels, _preload_content=False)
        return [n["metadata"].get("labels") or {} for n in _json(resp)["items"]]

    def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        """A Secret's keys, decoded; only ever used in memory (never logged or written)."""
        secret = self._call("get", "secrets", self.core.read_namespaced_secret, name, namespace)
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    # -- our custom resources ------------------------------------------------------------------
    def read_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A FineTuneJob / Dataset / Export, or None."""
        try:
            resp = self._call("get", plural, self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace,
                              plural, name, _preload_content=False)  # fmt: skip
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        obj: dict[str, Any] = _json(resp)
        return obj

    def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch the status subresource (the only part of our objects the operator writes)."""
        self._call("patch", f"{plural}/status", self.custom.patch_namespaced_custom_object_status, GROUP, VERSION,
                   namespace, plural, name, {"status": status})  # fmt: skip
