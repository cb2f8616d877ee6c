"""The operator's own REST client (finetune_operator.kube) against the real test control plane:
each call, its errors, the credentials it logs in with (client certificate, ServiceAccount token,
re-login after a 401) and the counter every call feeds."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf
import pytest
from kubernetes import client
from prometheus_client import REGISTRY

from finetune_operator.kube import AdoptionConflict, ApiError, Kube, login
from tests.fixtures.cluster import Cluster, wait_until

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def kube_for(kubeconfig: Path, monkeypatch: pytest.MonkeyPatch) -> Kube:
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return Kube(threads=2)


@pytest.fixture
def kube(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Kube:
    return kube_for(cluster.kubeconfig, monkeypatch)


@pytest.fixture
def owner(cluster: Cluster, namespace: str) -> Callable[[str], dict[str, Any]]:
    """A controller reference to a real object (the garbage collector deletes children of absent owners)."""
    core = client.CoreV1Api(cluster.api_client)

    def make(name: str = "owner") -> dict[str, Any]:
        made = core.create_namespaced_config_map(namespace, {"metadata": {"name": name}})
        return {"apiVersion": "v1", "kind": "ConfigMap", "name": name, "uid": made.metadata.uid,
                "controller": True, "blockOwnerDeletion": True}  # fmt: skip

    return make


def config_map(namespace: str, name: str, data: dict[str, str], ref: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "data": data,
            "metadata": {"name": name, "namespace": namespace, "ownerReferences": [ref]}}  # fmt: skip


def calls(verb: str, resource: str, code: str) -> float:
    labels = {"verb": verb, "resource": resource, "code": code}
    return REGISTRY.get_sample_value("finetune_operator_api_calls_total", labels) or 0.0


def test_create_then_adopt_then_conflict(
    kube: Kube, cluster: Cluster, namespace: str, owner: Callable[[str], dict[str, Any]]
) -> None:
    core = client.CoreV1Api(cluster.api_client)
    ours = owner("owner")
    created_before = calls("create", "configmaps", "201")
    made, created = kube.create_or_adopt(config_map(namespace, "cfg", {"a": "1"}, ours))
    assert created and made["metadata"]["uid"]
    assert calls("create", "configmaps", "201") == created_before + 1

    # The same name again (a retry): the object found is used, its data brought level.
    again, created = kube.create_or_adopt(config_map(namespace, "cfg", {"a": "2"}, ours))
    assert not created and again["metadata"]["uid"] == made["metadata"]["uid"]
    assert core.read_namespaced_config_map("cfg", namespace).data == {"a": "2"}

    # One made by hand, without a controller: adopted, its other owner references kept.
    bystander = {**owner("other"), "controller": False}
    core.create_namespaced_config_map(namespace, config_map(namespace, "loose", {"x": "y"}, bystander))
    kube.create_or_adopt(config_map(namespace, "loose", {"x": "y"}, ours))
    refs = core.read_namespaced_config_map("loose", namespace).metadata.owner_references
    assert sorted((r.name, bool(r.controller)) for r in refs) == [("other", False), ("owner", True)]

    # Another controller's object: refused, untouched.
    theirs = owner("theirs")
    with pytest.raises(AdoptionConflict, match="belongs to ConfigMap owner"):
        kube.create_or_adopt(config_map(namespace, "cfg", {"a": "3"}, theirs))
    assert core.read_namespaced_config_map("cfg", namespace).data == {"a": "2"}


def test_jobs_pods_nodes_and_delete(
    kube: Kube, cluster: Cluster, namespace: str, owner: Callable[[str], dict[str, Any]]
) -> None:
    assert kube.read_job(namespace, "absent") is None
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "train", "namespace": namespace, "ownerReferences": [owner("owner")]},
        "spec": {"suspend": True, "template": {"metadata": {"labels": {"app": "t"}}, "spec": {
            "restartPolicy": "Never", "containers": [{"name": "main", "image": "trainer:test"}]}}},
    }  # fmt: skip
    kube.create_or_adopt(job)
    kube.set_job_suspend(namespace, "train", False)
    read = kube.read_job(namespace, "train")
    assert read is not None and read["spec"]["suspend"] is False
    assert kube.list_pods(namespace, {"app": "nothing-has-this"}) == []
    # Running, the Job makes its pod: a list from the server's cache (resourceVersion=0) finds it too.
    cached = wait_until(lambda: kube.list_pods(namespace, {"app": "t"}, cached=True), what="the Job's pod")
    current = kube.list_pods(namespace, {"app": "t"})
    assert [p["metadata"]["name"] for p in cached] == [p["metadata"]["name"] for p in current]
    assert current[0]["metadata"]["labels"]["batch.kubernetes.io/job-name"] == "train"
    assert kube.node_labels({}) == [
        n.metadata.labels or {} for n in client.CoreV1Api(cluster.api_client).list_node().items
    ]
    kube.delete("Job", namespace, "train")
    kube.delete("Job", namespace, "train")  # absent already (or going): fine
    kube.delete("Service", namespace, "never-made")


def test_secret_custom_objects_and_errors(kube: Kube, cluster: Cluster, namespace: str) -> None:
    cluster.install_crds()
    core = client.CoreV1Api(cluster.api_client)
    core.create_namespaced_secret(namespace, {"metadata": {"name": "s3"}, "stringData": {"key": "välue"}})
    assert kube.secret_data(namespace, "s3") == {"key": "välue"}

    custom = client.CustomObjectsApi(cluster.api_client)
    custom.create_namespaced_custom_object("finetune.dev", "v1alpha1", namespace, "datasets", {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "Dataset", "metadata": {"name": "chats"},
        "spec": {"source": "s3://data/x.jsonl"}})  # fmt: skip
    assert kube.read_custom("datasets", namespace, "absent") is None
    kube.patch_status("datasets", namespace, "chats", {"phase": "Validating"})
    found = kube.read_custom("datasets", namespace, "chats")
    assert found is not None and found["status"]["phase"] == "Validating"

    # The API server's own words come through, with the status code the handlers decide on.
    with pytest.raises(ApiError) as invalid:
        kube.patch_status("datasets", namespace, "chats", {"phase": "NoSuchPhase"})
    assert invalid.value.status == 422 and "NoSuchPhase" in str(invalid.value)
    before = calls("get", "secrets", "404")
    with pytest.raises(ApiError) as missing:
        kube.secret_data(namespace, "absent")
    assert missing.value.status == 404
    assert calls("get", "secrets", "404") == before + 1


def test_a_terminating_namespace_reads_as_gone(kube: Kube, cluster: Cluster) -> None:
    """Creating in a namespace being deleted is the API's 403 with the NamespaceTerminating cause:
    the handlers treat it like a 404 (nothing left to reconcile), not as a refusal to log."""
    core = client.CoreV1Api(cluster.api_client)
    name = f"terminating-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    # A finalizer keeps the namespace terminating until the test lets it go.
    core.create_namespaced_config_map(
        name, {"metadata": {"name": "held", "finalizers": ["finetune.dev/test"]}}
    )
    try:
        core.delete_namespace(name)
        wait_until(
            lambda: core.read_namespace(name).status.phase == "Terminating", 30, "namespace terminating"
        )
        with pytest.raises(ApiError) as refused:
            kube.create_or_adopt({"apiVersion": "v1", "kind": "ConfigMap", "data": {},
                                  "metadata": {"name": "late", "namespace": name}})  # fmt: skip
        assert refused.value.status == 403 and refused.value.gone, refused.value.causes
        with pytest.raises(ApiError) as absent:
            kube.secret_data(name, "absent")
        assert absent.value.gone
    finally:
        core.patch_namespaced_config_map("held", name, {"metadata": {"finalizers": None}})


def test_serviceaccount_token_and_relogin_after_401(
    cluster: Cluster, namespace: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A token kubeconfig logs in as that ServiceAccount (RBAC applies); a 401 logs in again once."""
    sa_config = cluster.serviceaccount_kubeconfig(namespace, "default", tmp_path / "sa.kubeconfig")
    sa = kube_for(sa_config, monkeypatch)
    with pytest.raises(ApiError) as forbidden:
        sa.secret_data(namespace, "anything")
    assert forbidden.value.status == 403 and f"system:serviceaccount:{namespace}:default" in str(
        forbidden.value
    )
    assert not forbidden.value.gone  # a refusal, not an object going away

    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    good = login()
    handed: list[str] = []

    def rotating() -> kopf.ConnectionInfo:  # a stale token first, the fresh one on the next login
        handed.append("stale" if not handed else "fresh")
        stale = dataclasses.replace(good, token="stale-token", certificate_path=None, certificate_data=None,
                                    private_key_path=None, private_key_data=None)  # fmt: skip
        return good if len(handed) > 1 else stale

    relogged = Kube(rotating, threads=1)
    assert relogged.read_job(namespace, "absent") is None
    assert handed == ["stale", "fresh"]


def test_admin_kubeconfig_is_a_client_certificate(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    info = login()
    assert (
        info.server == cluster.server and (info.certificate_path or info.certificate_data) and not info.token
    )


def test_no_credentials_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(kopf.LoginError, match="no credentials"):
        login()


def test_operator_runs_without_the_kubernetes_package() -> None:
    """The operator's modules import with ``kubernetes`` unimportable (the operator image does not carry
    it; tests/unit/test_dockerfile_install.py checks the image), and kopf offers no login of its own."""
    probe = (
        "import sys; sys.modules['kubernetes'] = None;"  # as if not installed
        "import finetune_operator.main, finetune_operator.__main__;"
        "from kopf._core.intents.registries import get_default_registry;"
        "print(sorted(h.id for h in get_default_registry()._activities.get_all_handlers()))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['configure', 'login', 'stop_resync']", out.stdout + out.stderr
