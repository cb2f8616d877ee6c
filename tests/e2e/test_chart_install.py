"""The Helm chart on the real test control plane: `helm install`, then the operator run with the
chart's ServiceAccount token (not admin) takes a FineTuneJob to Succeeded, which proves the RBAC
suffices; what the RBAC leaves out is refused. Cluster-wide and namespaced (with kopf peering).

The fake kubelet plays the pods: the chart's operator pod just "runs", while the real operator
process runs here under that pod's identity; the test plays the trainer (progress.json in S3).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.e2e.operator_harness import Harness, OperatorProcess, job_spec
from tests.fixtures.cluster import Cluster, wait_until
from tests.fixtures.s3 import S3Server
from tests.unit.test_chart_render import CHART, helm

pytestmark = pytest.mark.e2e
# How a refusal shows in the operator's log: the API's 403, or kopf's fallback warning when it may not
# list or watch something (e.g. Namespaces).
# "403" only as a status: a log line's milliseconds may read ",403".
DENIED = re.compile(r"(?<![\d,.])403\b|Forbidden|forbidden|Not enough permissions")


@pytest.fixture
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not installed: run hack/install-prometheus.sh")
    return found


class Release:
    """One `helm install` of the chart into the test cluster, uninstalled afterwards."""

    def __init__(self, cluster: Cluster, namespace: str, values: dict[str, Any], workdir: Path) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.name = f"ft{namespace.rsplit('-', 1)[-1]}"  # unique: its ClusterRoles are cluster-wide
        self.fullname = f"{self.name}-finetune-operator"
        values_path = workdir / f"{self.name}-values.yaml"
        values_path.write_text(yaml.safe_dump(values))
        self.helm("install", self.name, str(CHART), "--namespace", namespace, "-f", str(values_path),
                  "--timeout", "120s")  # fmt: skip

    def helm(self, *args: str) -> str:
        return helm(*args, "--kubeconfig", str(self.cluster.kubeconfig), timeout=180).stdout

    def uninstall(self) -> None:
        self.helm("uninstall", self.name, "--namespace", self.namespace, "--timeout", "120s")

    def test_pod_script(self) -> tuple[str, dict[str, str]]:
        """The `helm test` pod's Python script and environment, as installed."""
        hooks = yaml.safe_load_all(self.helm("get", "hooks", self.name, "--namespace", self.namespace))
        pod = next(
            h for h in hooks if h and h["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"
        )
        container = pod["spec"]["containers"][0]
        assert container["command"][:2] == ["python", "-c"]
        return container["command"][2], {e["name"]: e["value"] for e in container["env"]}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Values, the ServiceAccount kubeconfig and the operator log (kept by pytest for a look after)."""
    return tmp_path


def start_operator(cluster: Cluster, release: Release, workdir: Path) -> OperatorProcess:
    """The operator with the chart's ServiceAccount token as its only credential."""
    kubeconfig = cluster.serviceaccount_kubeconfig(
        release.namespace, release.fullname, workdir / "sa.kubeconfig"
    )
    proc = OperatorProcess(kubeconfig, workdir / "operator.log")
    proc.start()
    return proc


def run_job_to_succeeded(h: Harness, s3: S3Server, bucket: str) -> dict[str, Any]:
    """The happy path: Dataset Ready, FineTuneJob Running with progress from S3, then Succeeded."""
    h.s3_secret(s3)
    h.ready_dataset()
    spec = job_spec(bucket, s3, run="chart")
    h.create("finetunejobs", "chart", spec, "FineTuneJob")
    h.running_pods("chart-train")
    h.wait_phase("finetunejobs", "chart", "Running")
    record = {"step": 4, "totalSteps": 10, "percent": 40.0, "loss": 1.5, "updatedAt": "2030-01-01T00:00:00Z",
              "phase": "Running"}  # fmt: skip
    s3.client().put_object(Bucket=bucket, Key="runs/chart/progress.json", Body=json.dumps(record).encode())
    # Reading progress.json needs the output credentials: the Secret `get` the chart grants.
    wait_until(lambda: (h.get("finetunejobs", "chart")["status"].get("progress") or {}).get("step") == 4,
               30, "status.progress from progress.json", interval_s=0.2)  # fmt: skip
    h.finish_job_pods("chart-train", 0, message=json.dumps({**record, "step": 10, "phase": "Succeeded"}))
    done = h.wait_phase("finetunejobs", "chart", "Succeeded")
    # Events are posted with the ServiceAccount too.
    wait_until(
        lambda: {e.reason for e in h.events_for("chart")} >= {"TrainingSucceeded"} or None, 30, "events"
    )
    return done


def denials(log: str) -> list[str]:
    """Log lines where the API server refused the operator something (kopf's fallbacks included)."""
    return [line for line in log.splitlines()
            if DENIED.search(line) and "being terminated" not in line]  # other tests' namespaces going away  # fmt: skip


def check_metrics(proc: OperatorProcess, release: Release, promtool: str) -> None:
    """The operator's real /metrics passes promtool, and the helm test pod's script accepts it."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{proc.metrics_port}/metrics", timeout=10).read().decode()
    assert 'finetune_operator_objects{kind="FineTuneJob",phase="Succeeded"}' in text
    lint = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    script, env = release.test_pod_script()
    assert env["METRICS_URL"].startswith(f"http://{release.fullname}-metrics.{release.namespace}.svc:8080/")
    here = {"METRICS_URL": f"http://127.0.0.1:{proc.metrics_port}/metrics", "PATH": "/usr/bin:/bin"}
    ran = subprocess.run([sys.executable, "-c", script], env=here, capture_output=True, text=True, timeout=90)
    assert ran.returncode == 0, ran.stderr


def test_cluster_wide_chart_rbac_runs_a_job_to_succeeded(
    cluster: Cluster, namespace: str, s3_server: S3Server, s3_bucket: str, workdir: Path, promtool: str
) -> None:
    release = Release(cluster, namespace, {"crds": {"enabled": False}}, workdir)
    rbac = client.RbacAuthorizationV1Api(cluster.api_client)
    assert rbac.read_cluster_role(release.fullname).rules
    jobs_ns = cluster.create_namespace("chart-jobs")  # cluster-wide: not the release's namespace
    proc = start_operator(cluster, release, workdir)
    try:
        done = run_job_to_succeeded(Harness(cluster, jobs_ns), s3_server, s3_bucket)
        assert done["status"]["progress"]["step"] == 10
        check_metrics(proc, release, promtool)
    finally:
        proc.stop()
        client.CoreV1Api(cluster.api_client).delete_namespace(jobs_ns)
    assert denials(proc.log_path.read_text()) == [], f"see {proc.log_path}"
    release.uninstall()
    with pytest.raises(ApiException) as gone:
        rbac.read_cluster_role(release.fullname)
    assert gone.value.status == 404


def test_namespaced_chart_rbac_with_peering_and_refusals(
    cluster: Cluster, namespace: str, s3_server: S3Server, s3_bucket: str, workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    values = {"crds": {"enabled": False}, "watchNamespaces": [namespace],
              "peering": {"enabled": True, "name": "chart-peering"}}  # fmt: skip
    release = Release(cluster, namespace, values, workdir)
    custom = client.CustomObjectsApi(cluster.api_client)
    # The post-install hook created the KopfPeering once the chart's peering CRDs were served.
    custom.get_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", "chart-peering")
    monkeypatch.setenv("FINETUNE_WATCH_NAMESPACES", namespace)
    monkeypatch.setenv("FINETUNE_PEERING_NAME", "chart-peering")
    proc = start_operator(cluster, release, workdir)
    try:
        run_job_to_succeeded(Harness(cluster, namespace), s3_server, s3_bucket)
        peering = custom.get_namespaced_custom_object(
            "kopf.dev", "v1", namespace, "kopfpeerings", "chart-peering"
        )
        assert peering.get("status"), "the operator never announced itself in the peering object"
    finally:
        proc.stop()
    assert denials(proc.log_path.read_text()) == [], f"see {proc.log_path}"

    sa = client.CoreV1Api(cluster.api_client_for(workdir / "sa.kubeconfig"))
    other = cluster.create_namespace("chart-other")
    try:
        client.CoreV1Api(cluster.api_client).create_namespaced_secret(
            other, {"metadata": {"name": "not-yours"}, "stringData": {"k": "v"}}
        )
        refused = [
            lambda: sa.read_namespaced_secret("not-yours", other),  # a secret outside the watched namespace
            lambda: sa.list_namespaced_secret(namespace),  # get by name only, never list
            lambda: client.BatchV1Api(sa.api_client).list_namespaced_job(other),
            sa.list_namespace,  # kopf takes the watched namespaces by name
            lambda: client.ApiextensionsV1Api(sa.api_client).list_custom_resource_definition(),
        ]
        for call in refused:
            with pytest.raises(ApiException) as denied:
                call()
            assert denied.value.status == 403
        assert sa.list_node().items  # the one cluster-wide read it keeps (GPU-memory preflight)
    finally:
        client.CoreV1Api(cluster.api_client).delete_namespace(other)
    release.uninstall()


def test_chart_with_its_crds_refuses_crds_applied_by_kubectl(cluster: Cluster, namespace: str) -> None:
    # The cluster fixture applied crds/ with kubectl: the documented way is crds.enabled=false (the README's
    # quick start, tests/e2e/test_readme_quickstart.py); the default must fail loudly, never half-install.
    name = f"crd{namespace.rsplit('-', 1)[-1]}"
    refused = helm(
        "install", name, str(CHART), "-n", namespace, "--kubeconfig", str(cluster.kubeconfig), check=False
    )
    assert refused.returncode != 0
    assert "invalid ownership metadata" in refused.stderr
    status = helm("status", name, "-n", namespace, "--kubeconfig", str(cluster.kubeconfig), check=False)
    assert status.returncode != 0 and "not found" in status.stderr  # no release left behind
