"""README.md's "Quick start on a cluster", run as written: its bash blocks (between the quickstart markers) run
in order against the test control plane and the test S3 server, through the variables the README documents.

Blocks marked `quickstart:skip` (the image builds: no container engine here) are not run. The chart's operator
pod only "runs" on the fake kubelet, so the `quickstart:operator` block (the development loop, `python -m
finetune_operator`) stands in for it, in the background with the chart's ServiceAccount token. The
`quickstart:watch` block (apply, then `kubectl get ftj -w`) runs in the background while the test plays the pods
(validation report, progress in the bucket, success); its output must show the job Preparing, Running with its
loss, then Succeeded.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tests.e2e.operator_harness import REPO, Harness, _free_port
from tests.e2e.test_cluster_examples import READY, examples_bucket  # noqa: F401 (fixture)
from tests.fixtures.cluster import Cluster, wait_until
from tests.fixtures.s3 import S3Server
from tests.unit.test_chart_render import helm_binary

pytestmark = pytest.mark.e2e
RELEASE, RELEASE_NS = "finetune-operator", "finetune-system"
_SECTION = re.compile(r"<!-- quickstart:begin.*?-->(.*?)<!-- quickstart:end -->", re.DOTALL)
_BLOCK = re.compile(r"(?:<!-- quickstart:(?P<mark>\w+) -->\n)?```bash\n(?P<code>.*?)```", re.DOTALL)


@dataclass(frozen=True)
class Block:
    """One fenced bash block of the quick start; ``mark`` is skip, operator, watch or empty."""

    code: str
    mark: str = ""


def quickstart_blocks(readme: str) -> list[Block]:
    """The bash blocks between the quickstart markers, in order, each with its marker."""
    section = _SECTION.search(readme)
    assert section, "README.md has no <!-- quickstart:begin --> ... <!-- quickstart:end --> section"
    return [Block(m.group("code"), m.group("mark") or "") for m in _BLOCK.finditer(section.group(1))]


def test_quickstart_blocks_are_found_with_their_marks() -> None:
    blocks = quickstart_blocks((REPO / "README.md").read_text())
    assert [b.mark for b in blocks][-1] == "watch"
    assert {b.mark for b in blocks} <= {"", "skip", "operator", "watch"}
    assert any("helm install" in b.code for b in blocks if not b.mark)


def _environment(cluster: Cluster, namespace: str, s3: S3Server, workdir: Path) -> dict[str, str]:
    """The README's variables, a kubeconfig whose context namespace is the test's, helm and kubectl on PATH."""
    kubeconfig = workdir / "kubeconfig"
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    for context in config["contexts"]:
        context["context"]["namespace"] = namespace
    kubeconfig.write_text(yaml.safe_dump(config))
    bin_dir = workdir / "bin"
    bin_dir.mkdir()
    (bin_dir / "helm").symlink_to(helm_binary())
    (bin_dir / "kubectl").symlink_to(cluster.kubectl_bin)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "KUBECONFIG": str(kubeconfig),
        "REGISTRY": "registry.test/ml",
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_ENDPOINT_URL": s3.endpoint_url,
        "AWS_REGION": s3.region,
        "AWS_CONFIG_FILE": str(workdir / "aws-config"),  # nothing from the machine's own AWS set-up
        "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "aws-credentials"),
    }


def _run(block: Block, env: dict[str, str]) -> None:
    ran = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert ran.returncode == 0, (
        f"README block failed ({ran.returncode}):\n{block.code}\n{ran.stdout}\n{ran.stderr}"
    )


def _watch_shows(output: Path, phase: str, *columns: str) -> bool:
    """A line of the watch shows sft-lora in ``phase``, with ``columns`` (e.g. the progress) among its cells."""
    rows = [line.split() for line in output.read_text().splitlines()]
    return any(row[:2] == ["sft-lora", phase] and set(columns) <= set(row) for row in rows)


def _background(block: Block, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(["bash", "-euo", "pipefail", "-c", block.code], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None and process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def _start_operator(
    block: Block, env: dict[str, str], kubeconfig: Path, log: Path
) -> subprocess.Popen[bytes]:
    """The README's development loop, as the chart's ServiceAccount and on free ports (other e2e runs share
    this machine); returns once kopf's liveness endpoint answers."""
    metrics, health = _free_port(), _free_port()
    env = {**env, "KUBECONFIG": str(kubeconfig), "FINETUNE_RESYNC_SECONDS": "1", "FINETUNE_METRICS_PORT": str(metrics),
           "FINETUNE_LIVENESS_ENDPOINT": f"http://127.0.0.1:{health}/healthz"}  # fmt: skip
    process = _background(block, env, log)

    def listening() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the README's operator command exited:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", health), timeout=0.5):
            return True
        return False

    wait_until(listening, 60, "the operator's liveness endpoint", interval_s=0.2)
    return process


def test_readme_cluster_quick_start_runs_as_written(
    cluster: Cluster, namespace: str, s3_server: S3Server, examples_bucket: str, tmp_path: Path  # noqa: F811
) -> None:  # fmt: skip
    if shutil.which("aws") is None:
        pytest.skip("the quick start uses the AWS CLI (`aws`), which is not installed")
    blocks = quickstart_blocks((REPO / "README.md").read_text())
    env = _environment(cluster, namespace, s3_server, tmp_path)
    h = Harness(cluster, namespace)
    operator, watch = None, None
    try:
        for block in blocks:
            if block.mark == "":
                _run(block, env)
        # The data went where the cluster examples read it.
        listed = s3_server.client().list_objects_v2(Bucket=examples_bucket, Prefix="data/")
        assert "data/alpaca.jsonl" in {o["Key"] for o in listed.get("Contents", [])}

        (dev_loop,) = [b for b in blocks if b.mark == "operator"]
        kubeconfig = cluster.serviceaccount_kubeconfig(RELEASE_NS, RELEASE, tmp_path / "sa.kubeconfig")
        operator = _start_operator(dev_loop, env, kubeconfig, tmp_path / "operator.log")
        (watched,) = [b for b in blocks if b.mark == "watch"]
        output = tmp_path / "watch.txt"
        watch = _background(watched, env, output)
        play_the_pods(h, s3_server, examples_bucket, output)
    finally:
        _stop(watch)
        _stop(operator)
        subprocess.run([helm_binary(), "uninstall", RELEASE, "-n", RELEASE_NS, "--kubeconfig", str(cluster.kubeconfig)],
                       capture_output=True, timeout=120)  # fmt: skip
        client.CoreV1Api(cluster.api_client).delete_namespace(RELEASE_NS)


def play_the_pods(h: Harness, s3: S3Server, bucket: str, output: Path) -> None:
    """What the validation and trainer pods would do; the watch must show each phase."""
    job = wait_until(
        lambda: h.job("demo-alpaca-validate-g1"), 60, "the Dataset's validation Job", interval_s=0.2
    )
    validation = job.spec.template.spec
    assert {v.secret.secret_name for v in validation.volumes if v.secret} == {"finetune-s3"}
    h.finish_job_pods("demo-alpaca-validate-g1", 0, message=json.dumps(READY))
    h.running_pods("sft-lora-train", timeout_s=90)
    record = {"step": 10, "totalSteps": 20, "percent": 50.0, "loss": 1.5, "phase": "Running",
              "updatedAt": "2030-01-01T00:00:00Z"}  # fmt: skip
    s3.client().put_object(Bucket=bucket, Key="runs/sft-lora/progress.json", Body=json.dumps(record).encode())
    # Progress read from the bucket with the Secret's keys and endpoint (the operator's own reading).
    wait_until(lambda: _watch_shows(output, "Running", "1.5"), 60, "Running with its loss in the watch")
    done = {**record, "step": 20, "percent": 100.0, "loss": 1.25, "phase": "Succeeded"}
    h.finish_job_pods("sft-lora-train", 0, message=json.dumps(done))
    wait_until(lambda: _watch_shows(output, "Succeeded"), 60, "Succeeded in `kubectl get ftj -w`")
    assert _watch_shows(output, "Preparing") or _watch_shows(output, "Pending"), output.read_text()
