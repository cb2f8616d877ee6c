"""examples/cluster/ on the real control plane, as a user applies it: `kubectl apply -f examples/cluster/` beside
the Secret the quick start makes. The API server accepts every object; the operator validates each Dataset (the
test plays `finetune validate-data`), starts every stage's training Job with the Secret's keys and the bucket's
URIs, fails none, and the Export starts once its FineTuneJob succeeded. The fake kubelet plays the pods.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from finetune_api.manifests import load_documents
from finetune_api.pod import JOB_FILE
from finetune_operator.builders.training import config_map_name
from tests.e2e.operator_harness import Harness, OperatorProcess, operator_fixture  # noqa: F401 (fixture)
from tests.fixtures.cluster import Cluster, wait_until
from tests.fixtures.s3 import S3Server

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
CLUSTER_EXAMPLES = ROOT / "examples" / "cluster"
SECRET, BUCKET = "finetune-s3", "finetune-examples"
READY = {"phase": "Ready", "samples": 8, "invalidSamples": 0, "preview": ["<|user|> hi"]}


@pytest.fixture
def examples_bucket(s3_server: S3Server) -> Iterator[str]:
    """The examples' bucket on the test S3 server, removed afterwards (whoever created it)."""
    yield BUCKET
    names = {b["Name"] for b in s3_server.client().list_buckets().get("Buckets", [])}
    if BUCKET in names:
        s3_server.delete_bucket(BUCKET)


def quick_start_secret(h: Harness, s3: S3Server) -> None:
    """The Secret the README's quick start creates: the S3 keys and where S3 is."""
    data = {"accessKeyId": s3.access_key, "secretAccessKey": s3.secret_key, "endpoint": s3.endpoint_url}
    h.core.create_namespaced_secret(h.ns, {"metadata": {"name": SECRET}, "stringData": data})


def names_of(kind: str) -> list[str]:
    docs = load_documents(sorted(CLUSTER_EXAMPLES.glob("*.yaml")))
    return sorted({d.body["metadata"]["name"] for d in docs if d.body["kind"] == kind})


def test_every_cluster_example_is_accepted_and_started_by_the_operator(
    cluster: Cluster, namespace: str, operator_process: OperatorProcess, s3_server: S3Server, examples_bucket: str
) -> None:  # fmt: skip
    h = Harness(cluster, namespace)
    s3_server.client().create_bucket(Bucket=examples_bucket)
    quick_start_secret(h, s3_server)
    applied = cluster.kubectl("apply", "-n", namespace, "-f", str(CLUSTER_EXAMPLES), check=False)
    assert applied.returncode == 0, applied.stderr

    datasets, jobs = names_of("Dataset"), names_of("FineTuneJob")
    assert len(jobs) >= 9 and datasets
    for name in datasets:
        h.finish_job_pods(f"{name}-validate-g1", 0, message=json.dumps(READY))
    for name in datasets:
        h.wait_phase("datasets", name, "Ready")

    for name in jobs:
        h.running_pods(f"{name}-train", timeout_s=90)
        job = h.wait_phase("finetunejobs", name, "Running")
        assert {c["type"]: c["status"] for c in job["status"]["conditions"]}.get("Failed") != "True", job[
            "status"
        ]
        pod = h.batch.read_namespaced_job(f"{name}-train", namespace).spec.template.spec
        env = {e.name: e for e in pod.containers[0].env}
        manifest = h.core.read_namespaced_config_map(config_map_name(name), namespace).data[JOB_FILE]
        spec = next(d for d in yaml.safe_load_all(manifest) if d["kind"] == "FineTuneJob")["spec"]
        assert spec["output"]["uri"] == f"s3://{BUCKET}/runs/{name}"
        assert env["AWS_ACCESS_KEY_ID"].value_from.secret_key_ref.name == SECRET
        assert {v.secret.secret_name for v in pod.volumes if v.secret} == {SECRET}

    # The Export waits for sft-lora, then starts its own Job.
    (export,) = names_of("Export")
    h.wait_phase("exports", export, "Waiting")
    h.finish_job_pods("sft-lora-train", 0, message=json.dumps({"step": 20, "phase": "Succeeded"}))
    h.wait_phase("finetunejobs", "sft-lora", "Succeeded")
    exporter = wait_until(lambda: h.job(f"{export}-export"), 60, f"Job {export}-export", interval_s=0.2)
    assert isinstance(exporter, client.V1Job)
    h.wait_phase("exports", export, "Running")
