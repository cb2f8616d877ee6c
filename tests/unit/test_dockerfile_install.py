"""CI has no container engine, so this runs the Dockerfile's `operator` target the only way it can:
its COPY steps into a scratch "image root", its `pip install` steps in a fresh virtual environment
with the image's Python, then imports what its ENTRYPOINT runs. Any other RUN step fails the test
until it is mirrored here. The venv is cached, keyed by the stage's text and pyproject.toml; on a
cache hit only the project itself is reinstalled, from the current tree."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = Path.home() / ".cache" / "finetune-operator"
# RUN steps that only shape the image (its user), with nothing to install.
IMAGE_ONLY = re.compile(r"^(groupadd|useradd) ")


@dataclass
class Stage:
    """The instructions of one Dockerfile stage that matter for its Python install."""

    base: str
    copies: list[tuple[list[str], str]] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    entrypoint: list[str] = field(default_factory=list)
    text: str = ""


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    logical, buf = [], ""
    for line in dockerfile.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        logical.append(buf.strip())
        buf = ""
    return [(ins.split(None, 1)[0].upper(), ins.split(None, 1)[1]) for ins in logical]


def parse_stage(dockerfile: str, name: str) -> Stage:
    """The stage ``FROM … AS name``, with ARG defaults substituted into its base image."""
    args: dict[str, str] = {}
    stage: Stage | None = None
    for ins, rest in instructions(dockerfile):
        if ins == "ARG" and stage is None and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value
        elif ins == "FROM":
            if stage is not None:
                break
            image, _, alias = rest.partition(" AS ")
            if alias.strip() == name:
                stage = Stage(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image.strip()))
        elif stage is not None:
            stage.text += f"{ins} {rest}\n"
            if ins == "COPY":
                *sources, dest = shlex.split(rest)
                stage.copies.append((sources, dest))
            elif ins == "RUN":
                stage.runs.extend(step.strip() for step in rest.split("&&"))
            elif ins == "ENTRYPOINT":
                stage.entrypoint = json.loads(rest)
    if stage is None:
        raise ValueError(f"no stage {name!r} in the Dockerfile")
    return stage


def image_python(base: str) -> str:
    """The local interpreter matching the base image's Python (python:3.11-slim → python3.11)."""
    match = re.match(r"python:(\d+\.\d+)", base)
    assert match, f"operator base image {base} is not a python: image"
    found = shutil.which(f"python{match.group(1)}")
    if found is None:
        pytest.skip(f"python{match.group(1)} (the operator image's Python) is not installed here")
    return found


def copy_into(root: Path, stage: Stage, workdir: Path) -> None:
    for sources, dest in stage.copies:
        target = workdir / dest if not dest.startswith("/") else root / dest.lstrip("/")
        for src in sources:
            path = REPO / src
            if path.is_dir():
                shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target / path.name)


def pip_steps(stage: Stage) -> list[list[str]]:
    """The stage's `pip install` commands; any RUN step that is neither those nor image-only fails."""
    steps = []
    for run in stage.runs:
        if run.startswith("pip install "):
            steps.append(shlex.split(run))
        else:
            assert IMAGE_ONLY.match(run), f"RUN step not mirrored by this test: {run!r}"
    assert steps, "the operator stage installs nothing with pip"
    return steps


def test_operator_target_installs_and_imports_in_a_fresh_venv() -> None:
    stage = parse_stage((REPO / "Dockerfile").read_text(), "operator")
    python = image_python(stage.base)
    steps = pip_steps(stage)
    key = hashlib.sha256((stage.text + (REPO / "pyproject.toml").read_text()).encode()).hexdigest()[:12]
    venv = CACHE / f"docker-operator-venv-{key}"
    with tempfile.TemporaryDirectory(prefix="operator-image-") as scratch:
        root = Path(scratch)
        workdir = root / "app"  # the stage's WORKDIR
        workdir.mkdir()
        copy_into(root, stage, workdir)
        if not (venv / ".complete").is_file():
            # Built beside the cache entry and renamed when complete; `python -m pip` keeps it movable.
            CACHE.mkdir(parents=True, exist_ok=True)
            partial = Path(tempfile.mkdtemp(prefix=f"{venv.name}.partial-", dir=CACHE))
            subprocess.run([python, "-m", "venv", "--clear", str(partial)], check=True, timeout=120)
            for argv in steps:
                run(
                    [str(partial / "bin" / "python"), "-m", "pip", *argv[1:]], workdir, "install", timeout=900
                )
            (partial / ".complete").touch()
            shutil.rmtree(venv, ignore_errors=True)
            partial.rename(venv)
        else:  # dependencies unchanged: only the project, from the current tree
            pip = [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--force-reinstall",
                ".",
            ]
            run(pip, workdir, "install")
        (venv / ".last-used").touch()  # hack/setup-env.sh prunes these venvs when unused for days
    assert stage.entrypoint[:2] == ["python", "-m"], stage.entrypoint
    module = stage.entrypoint[2]
    probe = (
        f"import importlib, importlib.util; importlib.import_module('{module}.main'); "
        f"assert importlib.util.find_spec('{module}.__main__'); "
        "assert importlib.util.find_spec('torch') is None, 'torch in the operator image'; "
        # kopf imports the kubernetes client (~56 MB) whenever it is installed; the operator needs none.
        "assert importlib.util.find_spec('kubernetes') is None, 'kubernetes in the operator image'; "
        "from finetune_operator.settings import settings_from_env; print(settings_from_env({}).metrics_port)"
    )
    result = run([str(venv / "bin" / "python"), "-c", probe], Path("/"), "import")
    assert result.stdout.strip() == "8080"


def run(argv: list[str], cwd: Path, what: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{what} failed: {' '.join(argv)}\n{result.stdout[-2000:]}{result.stderr[-4000:]}"
    )
    return result
