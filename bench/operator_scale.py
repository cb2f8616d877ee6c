"""Operator scale: N FineTuneJobs applied to the real test control plane with the operator running.

Starts the e2e fixtures' control plane (etcd, kube-apiserver, controller-manager, scheduler, fake
kubelet) and ``python -m finetune_operator`` with its default resync (in a venv holding what the
operator image holds, ``hack/operator-env.sh``: no test packages), makes one Ready Dataset,
then creates N FineTuneJobs one after the other. A watch on Jobs timestamps each trainer Job's
creation: latency = Job ADDED − just before the FineTuneJob's create call. Also: the operator's
memory (RSS and PSS) and its own count of API calls (``finetune_operator_api_calls_total``, the
calls of its reconcilers; kopf's watch streams and status patches are not in it) per job; and, from
the API server's own ``apiserver_request_total``, every client's requests in the burst (the
operator's, kopf's, the controllers', this benchmark's), with the CPU each control-plane process used.
Full mode then grows to 1000 FineTuneJobs and measures memory again.

    python -m bench.operator_scale [--quick]      # 200 (+800) jobs; quick: 20

Targets (bench/README.md, Targets): p99 apply → Job created ≤ 1 s with 200 live FineTuneJobs; RSS ≤ 150 MB at 1000.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
from kubernetes import client, watch

from bench.common import REPO, operator_python, proc_kib, process_cpu_s, write_result
from tests.e2e.operator_harness import TRAINER_IMAGE, Harness, _free_port
from tests.fixtures.cluster import Cluster, start_cluster, stop_cluster, wait_until
from tests.fixtures.s3 import S3Server, SeaweedS3

NAME = "operator_scale"
TARGET_P99_S = 1.0
TARGET_RSS_MB = 150.0
JOB_SPEC: dict[str, Any] = {
    "model": {"source": "tiny://llama"},
    "datasets": [{"ref": "chats"}],
    "method": {"stage": "sft", "finetuning": "lora"},
    "training": {"maxSteps": 10},
    "resources": {"gpusPerNode": 0, "cpu": "100m", "memory": "64Mi"},
    "backoffLimit": 0,
}
BUCKET = "bench-scale"


class JobWatch:
    """Timestamps the first ADDED event of every Job in a namespace (a background watch)."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.added: dict[str, float] = {}
        self._watch = watch.Watch()
        self._batch = client.BatchV1Api(api)
        self._ns = namespace
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                for event in self._watch.stream(self._batch.list_namespaced_job, self._ns, timeout_seconds=0):
                    if event["type"] == "ADDED":
                        self.added.setdefault(event["object"].metadata.name, time.monotonic())
            except Exception:  # a dropped stream: re-list (setdefault keeps first-seen times)
                self._stopped.wait(0.1)

    def stop(self) -> None:
        self._stopped.set()
        self._watch.stop()


def start_operator(kubeconfig: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The operator as a process (default resync), and its metrics port."""
    metrics_port, health_port = _free_port(), _free_port()
    env = {
        **os.environ, "KUBECONFIG": str(kubeconfig), "FINETUNE_TRAINER_IMAGE": TRAINER_IMAGE,
        "FINETUNE_METRICS_PORT": str(metrics_port),
        "FINETUNE_LIVENESS_ENDPOINT": f"http://127.0.0.1:{health_port}/healthz",
    }  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(operator_python()), "-m", "finetune_operator"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"operator exited with {proc.returncode}; log {log}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=1).close()
            return True
        except OSError:
            return False

    wait_until(healthy, 90, "operator liveness", interval_s=0.2)
    return proc, metrics_port


def api_calls_by_label(metrics_port: int) -> dict[str, float]:
    """The operator's finetune_operator_api_calls_total, by "verb resource code"."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return metric_samples(text, "finetune_operator_api_calls_total", ("verb", "resource", "code"))


def metric_samples(text: str, name: str, keys: tuple[str, ...]) -> dict[str, float]:
    """The samples of one Prometheus counter in ``text``, summed by the values of ``keys``."""
    found: dict[str, float] = {}
    for m in re.finditer(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        key = " ".join(labels.get(k, "") for k in keys if labels.get(k))
        found[key] = found.get(key, 0.0) + float(m.group(2))
    return found


def apiserver_requests(cluster: Cluster) -> tuple[dict[str, float], dict[str, float]]:
    """The API server's request count (every client) and the seconds its requests took
    (``apiserver_request_duration_seconds``), by "verb resource subresource"."""
    response = cluster.api_client.call_api(
        "/metrics", "GET", _preload_content=False, _return_http_data_only=True
    )
    text, keys = response.data.decode(), ("verb", "resource", "subresource")
    return (
        metric_samples(text, "apiserver_request_total", keys),
        metric_samples(text, "apiserver_request_duration_seconds_sum", keys),
    )


def control_plane_cpu_s(cluster: Cluster) -> dict[str, float]:
    """CPU-seconds each control-plane process has used so far."""
    return {p.name: process_cpu_s(p.popen.pid) for p in cluster.control_plane.processes}


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """``after − before`` per key, the keys that moved only, largest first."""
    moved = {k: round(v - before.get(k, 0.0), 2) for k, v in after.items() if v != before.get(k, 0.0)}
    return dict(sorted(moved.items(), key=lambda kv: -kv[1]))


def api_calls(metrics_port: int) -> float:
    """The operator's total of finetune_operator_api_calls_total over all labels."""
    return sum(api_calls_by_label(metrics_port).values())


def operator_memory(pid: int) -> dict[str, float]:
    """RSS, PSS and peak RSS (VmHWM) of the operator process, in MB."""
    proc = psutil.Process(pid)
    full = proc.memory_full_info()
    hwm = proc_kib(pid, "status", "VmHWM:")
    return {
        "rss_mb": round(full.rss / 1e6, 1),
        "pss_mb": round(full.pss / 1e6, 1),
        "peak_rss_mb": round(hwm * 1024 / 1e6, 1),
    }


def apply_jobs(
    h: Harness, jobs: JobWatch, output: dict[str, str], first: int, count: int, timeout_s: float
) -> list[float]:
    """Create FineTuneJobs ``first``..``first+count-1``; seconds from each create to its Job's ADDED."""
    sent: dict[str, float] = {}
    for i in range(first, first + count):
        name = f"scale-{i:04d}"
        spec = {**JOB_SPEC, "output": {**output, "uri": f"s3://{BUCKET}/runs/{name}"}}
        sent[name] = time.monotonic()
        h.create("finetunejobs", name, spec, "FineTuneJob")
    wait_until(
        lambda: all(f"{n}-train" in jobs.added for n in sent),
        timeout_s,
        f"{count} trainer Jobs",
        interval_s=0.2,
    )
    return [jobs.added[f"{n}-train"] - t for n, t in sent.items()]


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values``, linear interpolation."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def latency_summary(latencies: list[float]) -> dict[str, float]:
    """p50, p99, max and mean in seconds."""
    return {
        "p50": round(percentile(latencies, 0.5), 3),
        "p99": round(percentile(latencies, 0.99), 3),
        "max": round(max(latencies), 3),
        "mean": round(statistics.fmean(latencies), 3),
    }


def settle(seconds: float) -> None:
    """Let a few resync periods pass: steady-state memory and call counts, not the burst's."""
    time.sleep(seconds)  # a measurement window, not synchronisation


def measure(cluster: Cluster, s3: S3Server, n: int, grow_to: int | None, log: Path) -> dict[str, Any]:
    """Both phases against a running cluster and S3 server (the jobs' output location)."""
    ns = cluster.create_namespace("bench-scale")
    proc, metrics_port = start_operator(cluster.kubeconfig, log)
    try:
        h = Harness(cluster, ns)
        output = {"endpoint": s3.endpoint_url, "credentialsSecret": h.s3_secret(s3)}
        h.ready_dataset()
        memory_idle = operator_memory(proc.pid)  # one Ready Dataset, no FineTuneJob yet
        jobs = JobWatch(cluster.api_client, ns)
        calls_before, cpu_before = api_calls(metrics_port), process_cpu_s(proc.pid)
        server_before, plane_before = apiserver_requests(cluster), control_plane_cpu_s(cluster)
        started = time.monotonic()
        latencies = apply_jobs(h, jobs, output, 0, n, timeout_s=max(120, n))
        burst_s = time.monotonic() - started
        server_after = apiserver_requests(cluster)
        server_burst, server_seconds = (delta(a, b) for a, b in zip(server_after, server_before, strict=True))
        plane_burst = delta(control_plane_cpu_s(cluster), plane_before)
        by_label, cpu_burst = api_calls_by_label(metrics_port), process_cpu_s(proc.pid) - cpu_before
        calls, memory = sum(by_label.values()) - calls_before, operator_memory(proc.pid)
        settle(25)
        by_label_settled = api_calls_by_label(metrics_port)
        calls_settled = sum(by_label_settled.values()) - calls_before
        cpu_settled, memory_settled = process_cpu_s(proc.pid) - cpu_before, operator_memory(proc.pid)
        result: dict[str, Any] = {
            "jobs": n,
            "apply_to_job_s": latency_summary(latencies),
            "burst_seconds": round(burst_s, 2),
            "api_calls_per_job": round(calls / n, 2),
            "api_calls_per_job_after_settle": round(calls_settled / n, 2),
            "api_calls_by_label_at_n": by_label,
            "api_calls_by_label_after_settle": by_label_settled,
            "apiserver_requests_per_job": round(sum(server_burst.values()) / n, 2),
            "apiserver_requests_in_burst": server_burst,
            "apiserver_seconds_in_burst": server_seconds,
            "control_plane_cpu_s_in_burst": {**plane_burst, "operator": round(cpu_burst, 2)},
            "operator_cpu_s_per_job": round(cpu_burst / n, 4),
            "operator_cpu_s_per_job_after_settle": round(cpu_settled / n, 4),
            "operator_memory_idle": memory_idle,
            "operator_memory": memory,
            "operator_memory_after_settle": memory_settled,
        }
        if grow_to:
            cpu_before_growth = process_cpu_s(proc.pid)
            apply_jobs(h, jobs, output, n, grow_to - n, timeout_s=max(600, grow_to))
            settle(25)
            result["grown_to"] = grow_to
            result["operator_memory_at_grown"] = operator_memory(proc.pid)
            result["operator_cpu_s_per_job_growth"] = round(
                (process_cpu_s(proc.pid) - cpu_before_growth) / (grow_to - n), 4
            )
            result["api_calls_by_label_at_grown"] = api_calls_by_label(metrics_port)
        jobs.stop()
        return result
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 jobs, no growth (CI)")
    parser.add_argument("--jobs", type=int, help="FineTuneJobs for the latency phase (default 200; quick 20)")
    parser.add_argument(
        "--grow-to", type=int, help="total FineTuneJobs for the memory phase (default 1000; quick: none)"
    )
    args = parser.parse_args(argv)
    n = args.jobs or (20 if args.quick else 200)
    grow_to = args.grow_to or (None if args.quick else 1000)

    state = Path(tempfile.mkdtemp(prefix="bench-k8s-"))
    (state / "s3").mkdir()
    (state / "k8s").mkdir()
    weed = SeaweedS3(state / "s3")
    s3 = weed.start()
    s3.client().create_bucket(Bucket=BUCKET)
    cluster = start_cluster(state / "k8s")
    try:
        figures = measure(cluster, s3, n, grow_to, state / "operator.log")
    except BaseException:
        print(f"operator_scale failed; logs kept in {state}", file=sys.stderr)
        raise
    finally:
        stop_cluster(cluster)
        weed.stop()
    shutil.rmtree(state, ignore_errors=True)
    rss_at_scale = (figures.get("operator_memory_at_grown") or figures["operator_memory_after_settle"])[
        "rss_mb"
    ]
    result = {
        "quick": args.quick,
        **figures,
        "target": {"p99_s": TARGET_P99_S, "rss_mb_at_1000": TARGET_RSS_MB},
        "meets_target": figures["apply_to_job_s"]["p99"] <= TARGET_P99_S
        and (grow_to is None or rss_at_scale <= TARGET_RSS_MB),
    }
    path = write_result(NAME, result)
    lat = figures["apply_to_job_s"]
    grown = f"; RSS at {grow_to}: {rss_at_scale:.0f} MB (target {TARGET_RSS_MB:.0f})" if grow_to else ""
    print(
        f"operator_scale: {n} jobs, apply->Job p50 {lat['p50']:.3f}s p99 {lat['p99']:.3f}s (target {TARGET_P99_S}s), "
        f"{figures['api_calls_per_job']:.1f} operator API calls/job "
        f"({figures['apiserver_requests_per_job']:.1f} requests/job at the API server, all clients), operator RSS "
        f"{figures['operator_memory_after_settle']['rss_mb']:.0f} MB{grown}; {path}"
    )
    return result


if __name__ == "__main__":
    main()
