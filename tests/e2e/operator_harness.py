"""Harness (no tests here) for the operator e2e tests: `python -m finetune_operator` against the test control plane,
plus helpers that play the trainer (finish its pods with a termination message, write progress.json)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.fixtures.cluster import Cluster, wait_until
from tests.fixtures.fake_kubelet import (
    EXIT_CODE_ANNOTATION,
    MESSAGE_ANNOTATION,
    REASON_ANNOTATION,
    RUN_SECONDS_ANNOTATION,
)
from tests.fixtures.s3 import S3Server

GROUP, VERSION = "finetune.dev", "v1alpha1"
TRAINER_IMAGE = "trainer:e2e"
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OperatorProcess:
    """One operator process; `start`/`kill` let a test restart it like a crashed pod."""

    kubeconfig: Path
    log_path: Path
    metrics_port: int = 0
    health_port: int = 0
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.metrics_port, self.health_port = _free_port(), _free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "FINETUNE_TRAINER_IMAGE": TRAINER_IMAGE,
            "FINETUNE_RESYNC_SECONDS": "1",
            "FINETUNE_METRICS_PORT": str(self.metrics_port),
            "FINETUNE_LIVENESS_ENDPOINT": f"http://127.0.0.1:{self.health_port}/healthz",
        }
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "finetune_operator"], cwd=REPO, env=env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait_until(self._healthy, 60, "operator liveness endpoint", interval_s=0.2)

    def _healthy(self) -> bool:
        assert self.popen is not None
        if self.popen.poll() is not None:
            raise RuntimeError(f"operator exited with {self.popen.returncode}:\n{self.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", self.health_port), timeout=0.5):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as when a node dies mid-reconcile."""
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=30)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module", name="operator_process")
def operator_fixture(cluster: Cluster) -> Iterator[OperatorProcess]:
    """The operator, running cluster-wide for this test module; its log is printed if it died."""
    log = Path(tempfile.mkdtemp(prefix="finetune-operator-")) / "operator.log"
    proc = OperatorProcess(cluster.kubeconfig, log)
    proc.start()
    yield proc
    proc.stop()
    print(f"operator log: {log}")


class Harness:
    """Talks to the cluster as a user and as the trainer would."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster, self.ns = cluster, namespace
        self.custom = client.CustomObjectsApi(cluster.api_client)
        self.core = client.CoreV1Api(cluster.api_client)
        self.batch = client.BatchV1Api(cluster.api_client)

    # -- objects -------------------------------------------------------------------------------
    def create(self, plural: str, name: str, spec: dict[str, Any], kind: str) -> None:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, plural, body)

    def get(self, plural: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, plural, name)
        return obj

    def patch_spec(self, plural: str, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.ns, plural, name, {"spec": spec})

    def wait_phase(self, plural: str, name: str, phase: str, timeout_s: float = 60) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            obj = self.get(plural, name)
            return obj if (obj.get("status") or {}).get("phase") == phase else None

        try:
            return wait_until(probe, timeout_s, f"{plural}/{name} phase {phase}", interval_s=0.2)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; last: {self.get(plural, name).get('status')}") from exc

    def condition(self, obj: dict[str, Any], kind: str) -> dict[str, Any]:
        return next(c for c in obj["status"]["conditions"] if c["type"] == kind)

    def s3_secret(self, s3: S3Server, name: str = "s3-creds") -> str:
        data = {"accessKeyId": s3.access_key, "secretAccessKey": s3.secret_key}
        self.core.create_namespaced_secret(self.ns, {"metadata": {"name": name}, "stringData": data})
        return name

    def submit_job(self, name: str, s3: S3Server, bucket: str, **over: Any) -> None:
        """A FineTuneJob ``name`` (:func:`job_spec` with ``over``), with its output Secret and a Ready Dataset."""
        self.s3_secret(s3)
        self.ready_dataset()
        self.create("finetunejobs", name, job_spec(bucket, s3, **over), "FineTuneJob")

    def ready_dataset(self, name: str = "chats", **spec: Any) -> dict[str, Any]:
        """A Dataset whose validation Job reports it Ready (the test plays `finetune validate-data`)."""
        self.create(
            "datasets", name, {"source": "s3://data/chats.jsonl", "format": "alpaca", **spec}, "Dataset"
        )
        report = {"phase": "Ready", "samples": 42, "invalidSamples": 0,
                  "tokenStats": {"min": 5, "max": 90, "mean": 31.5, "p95": 80}, "preview": ["<|user|> hi"]}  # fmt: skip
        self.finish_job_pods(f"{name}-validate-g1", 0, message=json.dumps(report))
        return self.wait_phase("datasets", name, "Ready")

    # -- children and the pods the fake kubelet plays -------------------------------------------
    def pods(self, job_name: str) -> list[client.V1Pod]:
        return self.core.list_namespaced_pod(
            self.ns, label_selector=f"batch.kubernetes.io/job-name={job_name}"
        ).items

    def job(self, name: str) -> client.V1Job | None:
        try:
            return self.batch.read_namespaced_job(name, self.ns)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def running_pods(self, job_name: str, count: int = 1, timeout_s: float = 60) -> list[client.V1Pod]:
        def probe() -> list[client.V1Pod] | None:
            running = [
                p
                for p in self.pods(job_name)
                if p.status.phase == "Running" and not p.metadata.deletion_timestamp
            ]
            return running if len(running) >= count else None

        return wait_until(probe, timeout_s, f"{count} running pod(s) of Job {job_name}", interval_s=0.2)

    def finish_job_pods(
        self, job_name: str, exit_code: int, reason: str | None = None, message: str = ""
    ) -> None:
        """End the running pods of ``job_name`` as the trainer would: exit code, reason, termination message."""
        for pod in self.running_pods(job_name):
            self.finish_pod(pod.metadata.name, exit_code, reason, message)

    def finish_pod(
        self, name: str, exit_code: int, reason: str | None = None, message: str = "", run_seconds: float = 0
    ) -> None:
        """End one pod as the trainer would, once it has run ``run_seconds`` (the fake kubelet reads these
        annotations)."""
        annotations = {EXIT_CODE_ANNOTATION: str(exit_code), MESSAGE_ANNOTATION: message}
        if reason:
            annotations[REASON_ANNOTATION] = reason
        if run_seconds:
            annotations[RUN_SECONDS_ANNOTATION] = str(run_seconds)
        self.core.patch_namespaced_pod(name, self.ns, {"metadata": {"annotations": annotations}})

    def events_for(self, name: str) -> list[client.CoreV1Event]:
        return [e for e in self.core.list_namespaced_event(self.ns).items if e.involved_object.name == name]


def job_spec(bucket: str, s3: S3Server, *, run: str = "demo", **over: Any) -> dict[str, Any]:
    """A small sft FineTuneJob spec writing to s3://<bucket>/runs/<run> on the test S3 server."""
    spec: dict[str, Any] = {
        "model": {"source": "tiny://llama"},
        "datasets": [{"ref": "chats"}],
        "method": {"stage": "sft", "finetuning": "lora"},
        "training": {"maxSteps": 10},
        "resources": {"gpusPerNode": 1, "memory": "8Gi"},
        "output": {
            "uri": f"s3://{bucket}/runs/{run}",
            "endpoint": s3.endpoint_url,
            "credentialsSecret": "s3-creds",
        },
        "backoffLimit": 0,
    }
    spec.update(over)
    return spec
