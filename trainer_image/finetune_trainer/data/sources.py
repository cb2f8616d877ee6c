"""Where a dataset's bytes come from: local paths, PVC mounts, HTTPS, S3 or the Hugging Face hub.

Remote files are downloaded once into the cache directory; everything after this module reads
local files (or, for ``hf://``, hands the name to ``datasets.load_dataset``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from finetune_api.pod import PVC_ROOT as DEFAULT_PVC_ROOT
from finetune_api.pod import PVC_ROOT_ENV
from finetune_api.uris import DATASET_SCHEMES, Scheme, parse_location

from ..files import write_atomically

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".arrow", ".txt", ".jsonl.gz", ".json.gz")


@dataclass(frozen=True)
class ResolvedSource:
    """Local data files, or a hub dataset name (``hf://org/name``) for ``datasets.load_dataset``."""

    files: tuple[Path, ...] = ()
    hub_name: str | None = None


def resolve_source(
    source: str, *, cache_dir: Path, s3_endpoint: str | None = None, credentials_dir: str | None = None
) -> ResolvedSource:
    """Turn a Dataset's ``source`` URI into local files (downloading remote ones) or a hub name.

    Raises:
        ValueError: a malformed URI or an unsupported scheme, or no data files at the location.
    """
    location = parse_location(source, field="source", schemes=DATASET_SCHEMES)
    if location.scheme is Scheme.HF:
        return ResolvedSource(hub_name=location.hub_id)
    if location.scheme in (Scheme.HTTP, Scheme.HTTPS):
        return ResolvedSource(files=(download_https(source, cache_dir=cache_dir),))
    if location.scheme is Scheme.S3:
        return ResolvedSource(
            files=download_s3(
                source, cache_dir=cache_dir, endpoint=s3_endpoint, credentials_dir=credentials_dir
            )
        )
    if location.scheme is Scheme.PVC:
        root = Path(os.environ.get(PVC_ROOT_ENV, DEFAULT_PVC_ROOT))
        return ResolvedSource(files=list_data_files(root / location.claim / location.path, source))
    return ResolvedSource(files=list_data_files(location.local_path, source))


def list_data_files(path: Path, source: str) -> tuple[Path, ...]:
    """``path`` itself, or the data files directly inside it (sorted, so shards keep their order)."""
    if path.is_file():
        return (path,)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(DATA_SUFFIXES))
        if found:
            return tuple(found)
        raise ValueError(f"source: no data files ({', '.join(DATA_SUFFIXES)}) in {source!r}")
    raise ValueError(f"source: {source!r} does not exist (looked at {path})")


def _download_dir(cache_dir: Path, uri: str) -> Path:
    return cache_dir / "downloads" / hashlib.sha256(uri.encode()).hexdigest()[:16]


def download_https(url: str, *, cache_dir: Path, timeout: float = 60.0) -> Path:
    """Download ``url`` once into the cache (atomic rename, so a killed download never looks complete)."""
    name = Path(unquote(urlsplit(url).path)).name or "data"
    dest = _download_dir(cache_dir, url) / name
    if dest.is_file():
        return dest
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        write_atomically(dest, lambda fh: shutil.copyfileobj(resp, fh, length=1 << 20))
    return dest


def download_s3(
    uri: str, *, cache_dir: Path, endpoint: str | None = None, credentials_dir: str | None = None
) -> tuple[Path, ...]:
    """Download an object, or every data file under a prefix, into the cache.

    A file already there with the object's size is reused.
    """
    # Imported here: boto3 is only needed when a dataset actually lives in S3.
    from finetune_trainer.storage.credentials import load_s3_settings
    from finetune_trainer.storage.stores import open_store

    settings = load_s3_settings(endpoint_url=endpoint, secret_dir=credentials_dir)
    dest_root = _download_dir(cache_dir, uri)
    store = open_store(uri, settings=settings)
    listing = {k: v for k, v in store.list_files().items() if k.endswith(DATA_SUFFIXES)}
    if not listing:  # the URI names one object, not a prefix
        parent, _, name = uri.rstrip("/").rpartition("/")
        store, listing = open_store(parent, settings=settings), {name: -1}
    files = []
    for key, size in sorted(listing.items()):
        dest = dest_root / key
        if not (dest.is_file() and dest.stat().st_size == size):
            dest.parent.mkdir(parents=True, exist_ok=True)
            store.get_file(key, dest)
        files.append(dest)
    return tuple(files)


def hash_files(files: tuple[Path, ...]) -> str:
    """A content hash of ``files`` (names, sizes and bytes) for the preprocessing cache key."""
    digest = hashlib.blake2b(digest_size=16)
    for path in files:
        digest.update(f"{path.name}:{path.stat().st_size}\n".encode())
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()
