"""hack/setup-env.sh: two checkouts on one machine never run each other's code.

The dependencies live in one shared environment; each checkout gets its own .venv layered on it, with
the project installed from that checkout. Runs the real script on two copies of this tree (the shared
environment is the one this test suite already runs in, so nothing is downloaded).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The scripts and the venvs' pythons alone decide what is imported: a caller's PYTHONPATH would decide it instead.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
WHERE = (
    "import finetune_api, finetune_trainer; print(finetune_api.__file__); print(finetune_trainer.__file__)"
)


def tracked_copy(target: Path) -> Path:
    """The working tree's tracked files (uncommitted edits included) copied to ``target``."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in listed.decode().split("\0"):
        source = REPO / name
        if name and source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def setup_env(checkout: Path) -> Path:
    """Run the set-up script there; the shared environment's path (its last line)."""
    done = subprocess.run(
        ["bash", "hack/setup-env.sh"],
        cwd=checkout,
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(900)
def test_two_checkouts_each_run_their_own_code(tmp_path: Path) -> None:
    first = tracked_copy(tmp_path / "first")
    second = tracked_copy(tmp_path / "second")
    shared = setup_env(first)
    assert setup_env(second) == shared, "one dependency set, one shared environment"
    # `first` set up first: its .venv must still run its own code after `second` set up.
    for checkout in (first, second):
        python = checkout / ".venv" / "bin" / "python"
        where = subprocess.run(
            [str(python), "-c", WHERE], env=CLEAN_ENV, capture_output=True, text=True, check=True
        )
        for line in where.stdout.split():
            assert Path(line).is_relative_to(checkout), (checkout, where.stdout)
        # The CLI and the tools beside it (pytest here) run this checkout's code too.
        cli = (checkout / ".venv" / "bin" / "finetune").read_text().splitlines()[0]
        assert cli == f"#!{checkout}/.venv/bin/python", cli
        tool = (checkout / ".venv" / "bin" / "pytest").read_text().splitlines()[0]
        assert tool == f"#!{checkout}/.venv/bin/python", tool
        assert (checkout / ".venv" / "bin" / "ruff").exists()
    # The shared environment holds the dependencies and nothing of the project.
    probe = "import importlib.util as u; print(u.find_spec('finetune_api'), u.find_spec('torch') is not None)"
    shared_view = subprocess.run(
        [str(shared / "bin" / "python"), "-c", probe],
        env=CLEAN_ENV,
        capture_output=True,
        text=True,
        check=True,
    )
    assert shared_view.stdout.split() == ["None", "True"], shared_view.stdout
