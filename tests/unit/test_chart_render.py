"""The Helm chart, rendered by the real `helm` (hack/helm.sh builds it from helm.sh/helm/v4):
lint, default and non-default values, the values schema, least-privilege RBAC, CRDs = crds/.

The helpers at the top (`helm`, `render`, `find`) are shared by the other chart tests.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "finetune-operator"
RELEASE, NAMESPACE = "ft", "ops"
FULLNAME = f"{RELEASE}-finetune-operator"
# Every knob away from its default: namespaced RBAC, peering, monitors and dashboard on, CRDs off.
NON_DEFAULT: dict[str, Any] = {
    "crds": {"enabled": False},
    "watchNamespaces": ["team-a", "team-b"],
    "peering": {"enabled": True, "name": "ft-peers"},
    "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
    "podMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True, "stalledMinutes": 20},
    "dashboard": {"enabled": True},
    "image": {"digest": "sha256:" + "a" * 64},
    "trainer": {
        "image": "registry.local/trainer:1",
        "gpuMemoryGiB": 80,
        "defaultMemory": "16Gi",
        "serviceAccountName": "trainer",
    },
    "resyncSeconds": 5,
}


@functools.cache
def helm_binary() -> str:
    """The helm binary, built by hack/helm.sh into the cache when missing (a few minutes, once)."""
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "helm.sh"), "--build"], capture_output=True, text=True, timeout=1800
    )
    if out.returncode != 0:
        raise RuntimeError(f"hack/helm.sh --build failed:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


def helm(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run helm; output captured. Fails the test with helm's stderr when ``check`` and it fails."""
    result = subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def values_file(tmp_path: Path, values: dict[str, Any], name: str = "values.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return path


def render_text(tmp_path: Path, values: dict[str, Any] | None = None, *extra: str) -> str:
    """`helm template` of the chart (release ft in namespace ops), hooks and tests included."""
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    if values:
        args += ["-f", str(values_file(tmp_path, values))]
    return helm(*args, *extra).stdout


def render(tmp_path: Path, values: dict[str, Any] | None = None, *extra: str) -> list[dict[str, Any]]:
    """The rendered objects."""
    return [d for d in yaml.safe_load_all(render_text(tmp_path, values, *extra)) if d]


def find(docs: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """Objects of ``kind`` (named ``name`` when given)."""
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def rules_table(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) → verbs of a (Cluster)Role."""
    table: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                table.setdefault((group, resource), set()).update(rule["verbs"])
    return table


# What the operator needs where it reconciles (see templates/_rbac_rules.tpl for the reasons).
NAMESPACED_RULES = {
    ("finetune.dev", "finetunejobs"): {"get", "list", "watch", "patch"},
    ("finetune.dev", "datasets"): {"get", "list", "watch", "patch"},
    ("finetune.dev", "exports"): {"get", "list", "watch", "patch"},
    ("finetune.dev", "finetunejobs/status"): {"patch"},
    ("finetune.dev", "datasets/status"): {"patch"},
    ("finetune.dev", "exports/status"): {"patch"},
    ("finetune.dev", "finetunejobs/finalizers"): {"update"},
    ("finetune.dev", "datasets/finalizers"): {"update"},
    ("finetune.dev", "exports/finalizers"): {"update"},
    ("batch", "jobs"): {"create", "get", "list", "watch", "patch", "delete"},
    ("", "configmaps"): {"create", "get", "patch", "delete"},
    ("", "services"): {"create", "get", "patch", "delete"},
    ("", "pods"): {"list"},
    ("", "pods/eviction"): {"create"},
    ("", "secrets"): {"get"},
    ("", "events"): {"create"},
}
CLUSTER_RULES = {
    ("", "nodes"): {"list"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
}


# ---- lint ---------------------------------------------------------------------------------------
def test_helm_lint_strict_with_default_and_non_default_values(tmp_path: Path) -> None:
    helm("lint", "--strict", str(CHART))
    helm("lint", "--strict", str(CHART), "-f", str(values_file(tmp_path, NON_DEFAULT)))


# ---- default values -----------------------------------------------------------------------------
def test_default_render_is_a_cluster_wide_operator_with_crds(tmp_path: Path) -> None:
    docs = render(tmp_path)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["CustomResourceDefinition"] * 3 + ["ServiceAccount", "Deployment", "Service", "Pod", "NetworkPolicy"]
                           + ["ClusterRole", "ClusterRoleBinding"] * 2)  # fmt: skip
    (deployment,) = find(docs, "Deployment", FULLNAME)
    assert deployment["metadata"]["namespace"] == NAMESPACE
    spec = deployment["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == FULLNAME
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # never two operators at once
    (container,) = spec["containers"]
    assert container["image"] == "ghcr.io/finetune-operator/operator:0.1.0"
    assert container["command"] == ["python", "-m", "finetune_operator"]
    env = env_of(deployment)
    assert env["FINETUNE_WATCH_NAMESPACES"] == ""
    assert env["FINETUNE_TRAINER_IMAGE"] == "ghcr.io/finetune-operator/trainer:0.1.0"
    assert env["FINETUNE_METRICS_PORT"] == "8080"
    assert env["FINETUNE_LIVENESS_ENDPOINT"] == "http://0.0.0.0:8081/healthz"
    assert not {"FINETUNE_PEERING_NAME", "FINETUNE_GPU_MEMORY_GIB"} & env.keys()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["limits"]["memory"] == "256Mi"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    (service,) = find(docs, "Service")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    # The helm test pod must not be taken for an operator pod (a ReplicaSet would adopt it).
    (test_pod,) = find(docs, "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert not deployment["spec"]["selector"]["matchLabels"].items() <= test_pod["metadata"]["labels"].items()
    (policy,) = find(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= test_pod["metadata"]["labels"].items()
    assert policy["spec"]["ingress"] == [
        {"ports": [{"port": 8080, "protocol": "TCP"}, {"port": 8081, "protocol": "TCP"}]}
    ]


def test_default_rbac_is_exactly_what_the_operator_uses(tmp_path: Path) -> None:
    docs = render(tmp_path)
    (namespaced,) = find(docs, "ClusterRole", FULLNAME)
    (cluster,) = find(docs, "ClusterRole", f"{FULLNAME}-cluster")
    assert rules_table(namespaced) == NAMESPACED_RULES
    assert rules_table(cluster) == CLUSTER_RULES
    for binding in find(docs, "ClusterRoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
        assert binding["roleRef"]["name"] == binding["metadata"]["name"]
    for role in find(docs, "ClusterRole"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]


def test_crd_templates_render_to_the_committed_crds(tmp_path: Path) -> None:
    docs = {d["metadata"]["name"]: d for d in find(render(tmp_path), "CustomResourceDefinition")}
    committed = [yaml.safe_load(p.read_text()) for p in sorted((REPO / "crds").glob("*.yaml"))]
    assert sorted(docs) == sorted(c["metadata"]["name"] for c in committed)
    for crd in committed:
        ours = docs[crd["metadata"]["name"]]
        assert ours["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert ours["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert {k: v for k, v in ours.items() if k != "metadata"} == {
            k: v for k, v in crd.items() if k != "metadata"
        }
    unkept = find(render(tmp_path, {"crds": {"keep": False}}), "CustomResourceDefinition")
    assert unkept and all("annotations" not in d["metadata"] for d in unkept)


# ---- non-default values -------------------------------------------------------------------------
def test_namespaced_rbac_monitors_peering_and_no_crds(tmp_path: Path) -> None:
    docs = render(tmp_path, NON_DEFAULT)
    assert not [d for d in find(docs, "CustomResourceDefinition") if d["spec"]["group"] == "finetune.dev"]
    assert {d["metadata"]["name"] for d in find(docs, "CustomResourceDefinition")} == {
        "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}  # fmt: skip
    roles = find(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert rules_table(role) == {
            **NAMESPACED_RULES,
            ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"},
        }
    for binding in find(docs, "RoleBinding"):
        assert binding["subjects"][0] == {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
    # Nothing namespaced is granted cluster-wide: secrets stay readable only where the operator works.
    (cluster,) = find(docs, "ClusterRole")
    # Namespaces are taken by name and resources scanned once: neither Namespaces nor CRDs are listed.
    assert rules_table(cluster) == {("", "nodes"): {"list"}}
    peerings = find(docs, "KopfPeering", "ft-peers")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert all(p["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade" for p in peerings)

    (deployment,) = find(docs, "Deployment")
    env = env_of(deployment)
    assert env["FINETUNE_WATCH_NAMESPACES"] == "team-a,team-b"
    assert env["FINETUNE_PEERING_NAME"] == "ft-peers"
    assert env["FINETUNE_GPU_MEMORY_GIB"] == "80"
    assert env["FINETUNE_DEFAULT_MEMORY"] == "16Gi"
    assert env["FINETUNE_TRAINER_SERVICE_ACCOUNT"] == "trainer"
    assert env["FINETUNE_TRAINER_IMAGE"] == "registry.local/trainer:1"
    assert env["FINETUNE_RESYNC_SECONDS"] == "5"
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/finetune-operator/operator@sha256:" + "a" * 64

    (smon,) = find(docs, "ServiceMonitor")
    assert smon["metadata"]["labels"]["release"] == "prom"
    assert smon["spec"]["endpoints"][0]["port"] == "metrics"
    (service,) = find(docs, "Service")
    assert smon["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (pmon,) = find(docs, "PodMonitor")
    assert pmon["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    assert pmon["spec"]["selector"]["matchLabels"]["app.kubernetes.io/managed-by"] == "finetune-operator"
    (rule,) = find(docs, "PrometheusRule")
    alerts = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert set(alerts) == {"FineTuneJobFailed", "FineTuneProgressStalled", "FineTuneOperatorDown"}
    assert "[20m]" in alerts["FineTuneProgressStalled"]["expr"]
    assert f'job="{FULLNAME}-metrics"' in alerts["FineTuneOperatorDown"]["expr"]
    (dashboard,) = find(docs, "ConfigMap", f"{FULLNAME}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert '"uid": "finetune-operator"' in dashboard["data"]["finetune-operator.json"]


def test_cluster_wide_peering_uses_a_cluster_kopf_peering(tmp_path: Path) -> None:
    docs = render(tmp_path, {"peering": {"enabled": True}})
    assert [p["metadata"]["name"] for p in find(docs, "ClusterKopfPeering")] == ["finetune-operator"]
    (cluster,) = find(docs, "ClusterRole", f"{FULLNAME}-cluster")
    assert rules_table(cluster)[("kopf.dev", "clusterkopfpeerings")] == {"get", "list", "watch", "patch"}
    assert not find(docs, "KopfPeering")


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicaCount": 2}, "replicaCount"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces"),
        ({"trainer": {"image": "x", "gpuMemoryGiB": -1}}, "gpuMemoryGiB"),
        ({"metrics": {"port": 70000}}, "port"),
        ({"serviceMonitor": {"enabled": "yes"}}, "enabled"),
        ({"no_such_value": 1}, "no_such_value"),
    ],
)
def test_values_schema_rejects_mistakes(tmp_path: Path, values: dict[str, Any], complaint: str) -> None:
    args = ["template", RELEASE, str(CHART), "-f", str(values_file(tmp_path, values))]
    result = helm(*args, check=False)
    assert result.returncode != 0
    assert "schema" in result.stderr and complaint in result.stderr
