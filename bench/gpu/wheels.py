"""The wheels the GPU check carries to a machine that reaches no registry, and their install there.

Two sets, each its own folder under the wheels folder and its own ``--target`` on the device, so
the two stacks never mix:

- ``ours``: this checkout as a wheel, the project's pins (pyproject.toml's trainer extra and base
  dependencies) that the device's image lacks or holds at another version, and their own needs
  the image lacks, at the versions of the project venv that runs ``prepare`` (what the tests ran).
- ``peer``: LLaMA-Factory 0.9.5 and the versions it resolved to in its bench venv
  (bench/README.md), plus the needs of its training path the image lacks.

torch and everything the image already has (bench/README.md, "The device's image") are used as they
are there.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

from bench.common import REPO

SETS = ("ours", "peer")
# What pyproject.toml builds the distribution from.
PROJECT_FILES = ("pyproject.toml", "README.md", "crds", "operator", "trainer_image")
# What one device call may carry (working tree included), from the device README.
CARRY_LIMIT_MIB = 64.0
# pip matches each manylinux tag exactly: the device runs CPython 3.12 on x86-64 with a recent glibc.
PLATFORMS = ("manylinux1", "manylinux2014", *(f"manylinux_2_{n}" for n in (17, 24, 27, 28, 31, 34, 35)))
# From pyproject.toml's pins: the image has accelerate 1.15.0 (our pin), torch (another version:
# too large to carry), and prometheus-client, matplotlib, tqdm. galore-torch is imported only
# when a spec asks for GaLore.
OUR_PINNED = ("transformers", "peft", "trl", "datasets", "tokenizers", "bitsandbytes", "boto3", "cel-python")
# Needs of our stack the image lacks (bench/README.md), taken at the project venv's versions.
OUR_NEEDS = (
    "pydantic", "pydantic-core", "annotated-types", "typing-inspection",  # the API package
    "google-re2", "lark", "pendulum", "tzdata", "jmespath",  # cel-python
    "botocore", "s3transfer",  # boto3
    "dill", "multiprocess",  # datasets
    "fsspec",  # datasets 5.2.0 caps it (<= 2026.9.0); the image's may be newer
    "hjson",  # deepspeed
)  # fmt: skip
# DeepSpeed ships as an sdist only: built here into a pure-Python wheel; its ops build at run time.
DEEPSPEED_ENV = {"DS_BUILD_OPS": "0"}
PEER_PINS = (
    "llamafactory==0.9.5", "transformers==5.6.0", "peft==0.18.1", "trl==0.24.0", "datasets==4.0.0",
    "accelerate==1.11.0", "tokenizers==0.22.2",
    # datasets 4.0.0's own upper bounds (the image's fsspec may be newer); omegaconf for its argument parser.
    "dill==0.3.8", "multiprocess==0.70.16", "fsspec==2025.3.0", "omegaconf==2.4.0",
)  # fmt: skip
# Files left out of two wheels so that one call carries everything (64 MiB): bitsandbytes' library
# for every other CUDA and ROCm version (the device's torch is built for CUDA 13.0; 43 -> 7 MB),
# and botocore's models of every AWS service but S3 and STS, the only ones the trainer calls (16 -> 1 MB).
SLIM = {
    "bitsandbytes": re.compile(r"/libbitsandbytes_(?!cpu|cuda13\d)\w+\.so$"),
    "botocore": re.compile(r"^botocore/data/(?!s3/|sts/)[^/]+/"),
}


def trainer_pins() -> dict[str, str]:
    """``name -> name==version`` for pyproject.toml's pinned trainer and base dependencies."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for dep in [*project["dependencies"], *project["optional-dependencies"]["trainer"]]:
        name, sep, version = dep.partition("==")
        if sep:
            pins[name.strip()] = f"{name.strip()}=={version.split(';')[0].strip()}"
    return pins


def our_requirements() -> list[str]:
    """The ``ours`` set's downloads: the pins the image lacks and their needs at this venv's versions."""
    pins = trainer_pins()
    return [pins[name] for name in OUR_PINNED] + [f"{name}=={md.version(name)}" for name in OUR_NEEDS]


def download(requirements: list[str], dest: Path) -> None:
    """cp312 manylinux (or pure-Python) wheels of ``requirements``, without their dependencies."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", f"{p}_x86_64")]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(dest), *requirements],
        check=True,
    )  # fmt: skip


def build_wheel(what: str, dest: Path, env: dict[str, str] | None = None) -> None:
    """``pip wheel --no-deps`` of a path or requirement, with the running venv's build tools."""
    import os

    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dest),
            what,
        ],
        check=True,
        env={**os.environ, **(env or {})},
    )


def project_wheel(dest: Path) -> None:
    """This checkout's wheel, built from a copy of its sources: setuptools' build/ in the tree keeps
    files deleted since, and would put them in the wheel."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-project-") as tmp:
        for name in PROJECT_FILES:
            src, copy = REPO / name, Path(tmp) / name
            if src.is_dir():
                shutil.copytree(src, copy, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                shutil.copy2(src, copy)
        build_wheel(tmp, dest)


def slim_wheel(wheel: Path, drop: re.Pattern[str]) -> None:
    """Rewrite ``wheel`` in place without the members ``drop`` matches (its RECORD without them too)."""
    with tempfile.TemporaryDirectory() as tmp:
        slim = Path(tmp) / wheel.name
        with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as out:
            dropped = {n for n in src.namelist() if drop.search(n)}
            for info in src.infolist():
                if info.filename in dropped:
                    continue
                data = src.read(info)
                if info.filename.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines()
                    data = "".join(
                        f"{line}\n" for line in lines if line.split(",")[0] not in dropped
                    ).encode()
                out.writestr(info, data)
        slim.replace(wheel)


def prepare(wheels: Path, sets: tuple[str, ...] = SETS, *, project_only: bool = False) -> None:
    """Fill ``wheels/<set>/`` for each set; ``project_only`` builds only this checkout's wheel (no download)."""
    for name in sets:
        dest = wheels / name
        dest.mkdir(parents=True, exist_ok=True)
        for old in dest.glob("*.whl"):
            old.unlink()
        if name == "ours":
            project_wheel(dest)
            if project_only:
                continue
            download(our_requirements(), dest)
            build_wheel(trainer_pins()["deepspeed"], dest, DEEPSPEED_ENV)
            for package, drop in SLIM.items():
                for wheel in dest.glob(f"{package}-*.whl"):
                    slim_wheel(wheel, drop)
        elif not project_only:
            download(list(PEER_PINS), dest)


def mib(path: Path) -> float:
    """Size of a file, or of every file under a folder, in MiB."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def working_tree_mib() -> float:
    """What travels besides the carried paths: tracked and untracked-not-ignored files."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    paths = [REPO / p.decode() for p in out.stdout.split(b"\0") if p]
    return sum(p.stat().st_size for p in paths if p.is_file()) / 2**20


def carry_report(wheels: Path) -> str:
    """Every wheel to carry with its size, each set's total, and the call's total against the limit."""
    lines = []
    total = 0.0
    for name in SETS:
        dest = wheels / name
        files = sorted(dest.glob("*.whl")) if dest.is_dir() else []
        size = sum(mib(f) for f in files)
        total += size
        lines.append(f"{name}: {len(files)} wheels, {size:.1f} MiB in {dest}")
        lines += [f"  {mib(f):6.2f} MiB  {f.name}" for f in files]
    tree = working_tree_mib()
    verdict = "fits" if total + tree <= CARRY_LIMIT_MIB else "does NOT fit: carry the sets in separate calls"
    lines.append(
        f"one call: wheels {total:.1f} + working tree {tree:.1f} = {total + tree:.1f} MiB "
        f"of {CARRY_LIMIT_MIB:.0f}: {verdict}"
    )
    return "\n".join(lines)


def install(wheels: Path, target: Path) -> list[str]:
    """Install every wheel of a set folder into ``target`` (no index, no dependencies); their names.

    Raises:
        FileNotFoundError: the folder holds no wheel.
        subprocess.CalledProcessError: pip failed.
    """
    files = sorted(wheels.glob("*.whl"))
    if not files:
        raise FileNotFoundError(f"no wheels in {wheels}: run `python -m bench.gpu prepare` here first")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
         "--no-cache-dir", "--upgrade", "--disable-pip-version-check", "--target", str(target),
         *map(str, files)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return [f.name for f in files]
