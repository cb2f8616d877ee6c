"""Proofs that the `cluster` fixture is a real Kubernetes control plane: the real Job, garbage
collector, RBAC and admission code paths answer, and the fake kubelet plays pods' lifecycle."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.fixtures.cluster import Cluster, wait_until
from tests.fixtures.fake_kubelet import CompletionRule

pytestmark = pytest.mark.e2e


def job_manifest(
    name: str, labels: dict[str, str], backoff_limit: int = 0, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": backoff_limit,
            "template": {
                "metadata": {"labels": labels, "annotations": annotations or {}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": "trainer:test",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ],
                },
            },
        },
    }


def job_condition(batch: client.BatchV1Api, namespace: str, name: str, kind: str) -> Any:
    job = batch.read_namespaced_job(name, namespace)
    return next((c for c in job.status.conditions or [] if c.type == kind and c.status == "True"), None)


def pods_of(core: client.CoreV1Api, namespace: str, job: str) -> list[client.V1Pod]:
    return core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items


@pytest.fixture
def core(cluster: Cluster) -> client.CoreV1Api:
    return client.CoreV1Api(cluster.api_client)


@pytest.fixture
def batch(cluster: Cluster) -> client.BatchV1Api:
    return client.BatchV1Api(cluster.api_client)


@pytest.fixture
def succeed_app_pods(cluster: Cluster, namespace: str) -> Iterator[CompletionRule]:
    """Pods labelled app=trainer in this test's namespace end with exit code 0 once Running."""
    rule = cluster.add_completion_rule(CompletionRule(labels={"app": "trainer"}, namespace=namespace))
    yield rule
    cluster.kubelet.remove_rule(rule)


def test_job_pod_runs_on_fake_node_and_job_completes(
    namespace: str, core: client.CoreV1Api, batch: client.BatchV1Api, succeed_app_pods: CompletionRule
) -> None:
    batch.create_namespaced_job(namespace, job_manifest("ok", {"app": "trainer"}))

    complete = wait_until(lambda: job_condition(batch, namespace, "ok", "Complete"), 60, "Job ok Complete")

    assert complete.status == "True"
    (pod,) = pods_of(core, namespace, "ok")
    assert pod.spec.node_name.startswith("fake-node-"), "the real scheduler bound the pod to a fake node"
    assert pod.status.phase == "Succeeded"
    assert pod.status.pod_ip
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0


def test_job_with_failing_pod_and_no_backoff_fails(
    namespace: str, core: client.CoreV1Api, batch: client.BatchV1Api, cluster: Cluster
) -> None:
    batch.create_namespaced_job(namespace, job_manifest("bad", {"app": "other"}, backoff_limit=0))
    running = wait_until(
        lambda: [p for p in pods_of(core, namespace, "bad") if p.status.phase == "Running"],
        60,
        "pod of Job bad Running",
    )
    assert not job_condition(batch, namespace, "bad", "Failed"), "a running pod must not fail the Job"

    cluster.finish_pod(namespace, running[0].metadata.name, exit_code=1)

    failed = wait_until(lambda: job_condition(batch, namespace, "bad", "Failed"), 60, "Job bad Failed")
    assert failed.reason == "BackoffLimitExceeded"
    assert batch.read_namespaced_job("bad", namespace).status.failed == 1


def test_oom_killed_pod_reports_reason_and_exit_code(
    namespace: str, core: client.CoreV1Api, cluster: Cluster
) -> None:
    pod = {
        "metadata": {"name": "hungry"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "trainer:test"}]},
    }
    core.create_namespaced_pod(namespace, pod)
    wait_until(
        lambda: core.read_namespaced_pod("hungry", namespace).status.phase == "Running", 60, "pod Running"
    )

    cluster.finish_pod(namespace, "hungry", exit_code=137, reason="OOMKilled")

    status = core.read_namespaced_pod("hungry", namespace).status
    assert status.phase == "Failed"
    terminated = status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (137, "OOMKilled")


def test_annotated_pod_fails_on_its_own_and_deleted_pod_disappears(
    namespace: str, core: client.CoreV1Api
) -> None:
    annotations = {"fake-kubelet.finetune.dev/exit-code": "3"}
    pod = {
        "metadata": {"name": "crash", "annotations": annotations},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]},
    }
    core.create_namespaced_pod(namespace, pod)
    wait_until(
        lambda: core.read_namespaced_pod("crash", namespace).status.phase == "Failed", 60, "pod crash Failed"
    )
    core.create_namespaced_pod(
        namespace, {"metadata": {"name": "sleeper"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    )
    wait_until(
        lambda: core.read_namespaced_pod("sleeper", namespace).status.phase == "Running",
        60,
        "pod sleeper Running",
    )

    core.delete_namespaced_pod("sleeper", namespace)  # default 30s grace: the kubelet must confirm it

    wait_until(
        lambda: "sleeper" not in {p.metadata.name for p in core.list_namespaced_pod(namespace).items},
        20,
        "sleeper gone",
    )
    assert (
        core.read_namespaced_pod("crash", namespace).status.container_statuses[0].state.terminated.exit_code
        == 3
    )


def test_garbage_collector_deletes_dependents_of_a_deleted_owner(
    namespace: str, core: client.CoreV1Api
) -> None:
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}, "data": {}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "child", "ownerReferences": [ref]}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "bystander"}})

    core.delete_namespaced_config_map("owner", namespace)

    wait_until(lambda: "child" not in _configmap_names(core, namespace), 60, "child ConfigMap collected")
    assert "bystander" in _configmap_names(core, namespace)


def _configmap_names(core: client.CoreV1Api, namespace: str) -> set[str]:
    return {cm.metadata.name for cm in core.list_namespaced_config_map(namespace).items}


def test_serviceaccount_token_is_held_to_its_role(
    namespace: str, core: client.CoreV1Api, cluster: Cluster
) -> None:
    rbac = client.RbacAuthorizationV1Api(cluster.api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    rules = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "cm-get"}, "rules": rules})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "reader-cm-get"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-get"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
    })  # fmt: skip
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "visible"}, "data": {"k": "v"}})
    as_reader = client.CoreV1Api(
        cluster.api_client_for(cluster.serviceaccount_kubeconfig(namespace, "reader"))
    )

    assert as_reader.read_namespaced_config_map("visible", namespace).data == {"k": "v"}
    with pytest.raises(ApiException) as refused:
        as_reader.list_namespaced_secret(namespace)
    assert refused.value.status == 403
    with pytest.raises(ApiException) as refused_list:
        as_reader.list_namespaced_config_map(namespace)  # the Role grants get, not list
    assert refused_list.value.status == 403


def test_kubectl_reports_the_built_server_version(cluster: Cluster) -> None:
    version = json.loads(cluster.kubectl("get", "--raw", "/version").stdout)

    assert version["gitVersion"] == "v1.37.2"
    assert (version["major"], version["minor"]) == ("1", "37")


def test_kubectl_server_side_dry_run_validates_without_creating(
    cluster: Cluster, namespace: str, batch: client.BatchV1Api, tmp_path: Path
) -> None:
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(job_manifest("dry", {"app": "dry"})))
    broken = tmp_path / "broken.yaml"
    bad_job = job_manifest("broken", {"app": "dry"}, backoff_limit=-1)
    broken.write_text(yaml.safe_dump(bad_job))

    ok = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(manifest))
    rejected = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(broken), check=False)

    assert "job.batch/dry created (server dry run)" in ok.stdout
    assert batch.list_namespaced_job(namespace).items == [], "a dry run must not persist"
    assert rejected.returncode != 0
    assert "spec.backoffLimit" in rejected.stderr


def test_on_failure_pod_restarts_until_job_backoff_is_spent(
    namespace: str, core: client.CoreV1Api, batch: client.BatchV1Api
) -> None:
    job = job_manifest(
        "flaky", {"app": "flaky"}, backoff_limit=1, annotations={"fake-kubelet.finetune.dev/exit-code": "2"}
    )
    job["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
    batch.create_namespaced_job(namespace, job)

    def restarted_container() -> client.V1ContainerStatus | None:
        statuses = [cs for p in pods_of(core, namespace, "flaky") for cs in p.status.container_statuses or []]
        return next((cs for cs in statuses if cs.restart_count > 0), None)

    restarted = wait_until(restarted_container, 60, "a restarted container")
    failed = wait_until(lambda: job_condition(batch, namespace, "flaky", "Failed"), 60, "Job flaky Failed")

    assert restarted.last_state.terminated.exit_code == 2
    assert failed.reason == "BackoffLimitExceeded"


def test_install_crds_waits_until_established(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    suffix = namespace.replace("-", "")  # cluster-scoped names, unique per test run
    group, plural, kind = "fixture.finetune.dev", f"widgets{suffix}", f"Widget{suffix}"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural[:-1], "kind": kind},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {"size": {"type": "integer", "minimum": 1}}}
                }}},
            }],
        },
    }  # fmt: skip
    (tmp_path / "widget.yaml").write_text(yaml.safe_dump(crd))
    custom = client.CustomObjectsApi(cluster.api_client)
    try:
        assert cluster.install_crds(tmp_path) == [f"{plural}.{group}"]
        body = {"apiVersion": f"{group}/v1", "kind": kind, "metadata": {"name": "w"}}
        custom.create_namespaced_custom_object(group, "v1", namespace, plural, {**body, "spec": {"size": 2}})
        with pytest.raises(ApiException) as invalid:
            custom.create_namespaced_custom_object(
                group, "v1", namespace, plural, {**body, "spec": {"size": 0}}
            )
        assert invalid.value.status == 422
    finally:
        client.ApiextensionsV1Api(cluster.api_client).delete_custom_resource_definition(f"{plural}.{group}")
