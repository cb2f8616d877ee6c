"""What every benchmark shares: result files, the peer's environment, peak-memory sampling of a
process tree, and the deterministic inputs (alpaca-style data, the tiny model folder).

The benchmarks run in the project venv; the peer's side runs in its own venv
(``hack/bench-peer-env.sh``) as a subprocess that imports nothing of ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
# Tests point BENCH_RESULTS_DIR elsewhere so a CI run never overwrites the full figures.
RESULTS_DIR = Path(os.environ.get("BENCH_RESULTS_DIR", REPO / "bench" / "results"))
CACHE = Path(os.environ.get("FT_CACHE", Path.home() / ".cache" / "finetune-operator"))
PEER_ENV_SCRIPT = REPO / "hack" / "bench-peer-env.sh"
OPERATOR_ENV_SCRIPT = REPO / "hack" / "operator-env.sh"
# Bump when the generator below changes: it is part of the cached file's name.
DATA_VERSION = 1


def write_result(name: str, result: dict[str, Any]) -> Path:
    """Write ``result`` (plus the machine and the command) to bench/results/<name>.json (or $BENCH_RESULTS_DIR)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "command": " ".join([Path(sys.executable).name, "-m", f"bench.{name}", *sys.argv[1:]]),
        "machine": machine(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **result,
    }
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def machine() -> dict[str, Any]:
    """Cores, memory and CPU model of this machine (the figures mean nothing without it)."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return {
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu": cpu,
        "python": platform.python_version(),
    }


def peer_python() -> Path:
    """The LLaMA-Factory venv's python, creating the venv first if needed (idempotent, cached)."""
    return _venv_python(PEER_ENV_SCRIPT)


def operator_python() -> Path:
    """The python of a venv holding what the operator image holds (``.[operator]``), made if needed."""
    return _venv_python(OPERATOR_ENV_SCRIPT)


def _venv_python(script: Path) -> Path:
    out = subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1]) / "bin" / "python"


def peer_versions(python: Path) -> dict[str, str]:
    """Versions of the peer's main packages, as resolved in its venv."""
    code = (
        "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
        "['llamafactory', 'torch', 'transformers', 'peft', 'trl', 'datasets', 'accelerate', 'tokenizers']}))"
    )
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout))


def our_versions() -> dict[str, str]:
    """Versions of the same packages in the project venv."""
    import importlib.metadata as md

    return {p: md.version(p) for p in ("torch", "transformers", "peft", "trl", "datasets", "tokenizers")}


def process_cpu_s(pid: int) -> float:
    """CPU-seconds (user + system) a process has used so far."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


# -- peak memory of a process tree ------------------------------------------------------------------
def proc_kib(pid: int, name: str, key: str) -> int:
    """One ``key: N kB`` line of ``/proc/<pid>/<name>`` (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


@dataclass
class TreeMemory:
    """Peaks seen while sampling a process and its descendants."""

    peak_pss_mib: float = 0.0
    """Sum of PSS over the tree at its highest sample: the tree's real footprint."""
    peak_rss_mib: float = 0.0
    """Sum of RSS over the tree at its highest sample (counts shared pages once per process)."""
    peak_single_rss_mib: float = 0.0
    """The largest RSS any one process of the tree reached (the kernel's own high-water mark, exact)."""
    samples: int = 0
    """RSS samples taken."""
    pss_samples: int = 0
    """PSS samples taken (see :class:`TreeSampler`)."""


@dataclass
class TreeSampler:
    """Samples a process tree's memory in a thread until stopped.

    RSS is read every ``interval_s`` (``/proc/<pid>/statm``: a counter, microseconds). PSS is not
    free: the kernel walks every page table under the process's mmap lock (≈ 20 ms per GiB here),
    which stalls the process's own mmap/munmap — a 3 GiB trainer sampled every 0.1 s ran 25% slower.
    So PSS is read when the tree's summed RSS reaches a new high (by ``new_high``: that is where
    the peak can be), and otherwise only as often as keeps its cost under ``max_duty`` of the time.
    """

    pid: int
    interval_s: float = 0.1
    max_duty: float = 0.05
    new_high: float = 1.01
    memory: TreeMemory = field(default_factory=TreeMemory)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _rss_high: int = 0
    _next_pss: float = 0.0

    def start(self) -> TreeSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            self.sample(root)
            self._stop.wait(self.interval_s)

    def sample(self, root: psutil.Process) -> None:
        """One sample of ``root`` and its descendants (gone processes are skipped)."""
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        rss = []
        for proc in procs:
            try:
                rss.append(proc.memory_info().rss)
            except psutil.NoSuchProcess:
                continue
        m = self.memory
        total = sum(rss)
        now = time.monotonic()
        if total > self._rss_high * self.new_high or now >= self._next_pss:
            # Proportional set size: shared pages (forked workers, mmapped Arrow) counted once in total.
            pss = sum(proc_kib(p.pid, "smaps_rollup", "Pss:") for p in procs) / 1024
            cost = time.monotonic() - now
            self._next_pss = now + max(self.interval_s, cost / self.max_duty)
            m.peak_pss_mib = max(m.peak_pss_mib, pss)
            m.pss_samples += 1
        self._rss_high = max(self._rss_high, total)
        hwm = max((proc_kib(p.pid, "status", "VmHWM:") for p in procs), default=0)
        m.peak_rss_mib = max(m.peak_rss_mib, total / 2**20)
        m.peak_single_rss_mib = max(m.peak_single_rss_mib, hwm / 1024)
        m.samples += 1

    def stop(self) -> TreeMemory:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.memory


def run_measured(
    argv: list[str], *, env: dict[str, str] | None = None, timeout_s: float = 3600
) -> tuple[dict[str, Any], TreeMemory]:
    """Run a worker that prints one JSON object as its last stdout line; returns it and its tree's peak memory.

    Raises:
        RuntimeError: the worker failed (its stderr tail is in the message).
    """
    started = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sampler = TreeSampler(proc.pid).start()
    try:
        out, err = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
        memory = sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed ({proc.returncode}):\n{err[-4000:]}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"{' '.join(argv[:3])} printed no result:\n{out[-2000:]}\n{err[-2000:]}")
    result = json.loads(lines[-1])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result["process_wall_s"] = round(time.monotonic() - started, 2)
    # CPU seconds of the worker and its reaped children: less sensitive than wall time to other
    # load on a shared machine.
    result["process_cpu_s"] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 2)
    return result, memory


# -- inputs ---------------------------------------------------------------------------------------
_VERBS = [
    "explain",
    "summarise",
    "list",
    "describe",
    "compare",
    "translate",
    "rewrite",
    "classify",
    "outline",
]


def _sentence(rng: random.Random, words: list[str], lo: int, hi: int) -> str:
    return " ".join(rng.choices(words, k=rng.randint(lo, hi))).capitalize() + "."


def alpaca_rows(count: int, *, seed: int = 0) -> list[dict[str, str]]:
    """``count`` deterministic alpaca rows (instruction/input/output) of varied, realistic lengths."""
    from finetune_trainer.model.corpus import corpus_lines

    words = sorted(
        {w.strip(".,;:!?").lower() for line in corpus_lines(sentences=2000, seed=seed) for w in line.split()}
        - {""}
    )
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        instruction = f"{rng.choice(_VERBS).capitalize()} {_sentence(rng, words, 4, 20)}"
        context = _sentence(rng, words, 5, 40) if rng.random() < 0.4 else ""
        output = " ".join(_sentence(rng, words, 6, 25) for _ in range(rng.randint(1, 8)))
        rows.append({"instruction": instruction, "input": context, "output": output})
    return rows


def alpaca_file(count: int) -> Path:
    """A JSONL file of :func:`alpaca_rows` (cached by size and generator version)."""
    path = CACHE / "bench" / f"alpaca-{count}-v{DATA_VERSION}.jsonl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as out:
            for row in alpaca_rows(count):
                out.write(json.dumps(row) + "\n")
        tmp.rename(path)
    return path


def tiny_model_folder(uri: str) -> Path:
    """A Hugging Face folder (config, weights, tokenizer) of our ``tiny://`` model, for both sides to load."""
    from finetune_trainer.model.tiny import tiny_model_path

    return tiny_model_path(uri)


def ratio(ours: float, peer: float) -> float:
    """ours / peer, 0 when the peer measured nothing."""
    return round(ours / peer, 3) if peer else 0.0
