"""Where model and adapter weights come from: turn a source URI into something ``from_pretrained`` reads.

``hf://org/name`` stays a hub id (transformers downloads it, honouring ``HF_TOKEN``); ``s3://`` is
downloaded into the local cache; ``pvc://claim/path`` is a path below the PVC mount root;
``file://`` and plain paths are used in place; ``tiny://`` is built (or found) in the cache.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from finetune_api.pod import PVC_ROOT as DEFAULT_PVC_ROOT
from finetune_api.pod import PVC_ROOT_ENV
from finetune_api.uris import local_path

from ..files import new_staging_dir
from .tiny import cache_root, tiny_model_path

SourceKind = Literal["hf", "s3", "pvc", "file", "tiny"]
_COMPLETE = ".download-complete"


@dataclass(frozen=True)
class Source:
    """A parsed source URI: ``location`` is a hub id (hf), ``bucket/key`` (s3), a local path or the URI (tiny)."""

    kind: SourceKind
    location: str


def parse_source(uri: str, *, field: str) -> Source:
    """Parse a model or adapter URI; ``field`` (e.g. ``model.source``) names the spec field in errors.

    Raises:
        ValueError: unknown scheme, or a URI missing its org/name, bucket or claim.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme
    rest = (parts.netloc + parts.path).strip("/")
    if scheme == "" and uri:
        return Source("file", str(Path(uri).expanduser().resolve()))
    if scheme == "file":
        return Source("file", str(local_path(uri)))
    if scheme == "tiny":
        return Source("tiny", uri)
    if scheme == "hf":
        if not rest or rest.count("/") > 1:
            raise ValueError(f"{field}: {uri!r} must be hf://org/name")
        return Source("hf", rest)
    if scheme in ("s3", "pvc"):
        if not parts.netloc:
            what = "bucket" if scheme == "s3" else "claim"
            raise ValueError(f"{field}: {uri!r} has no {what} (expected {scheme}://{what}/path)")
        if ".." in rest.split("/"):
            raise ValueError(f"{field}: {uri!r} must not contain '..'")
        return Source("s3" if scheme == "s3" else "pvc", rest)
    raise ValueError(f"{field}: unsupported scheme in {uri!r} (use hf://, s3://, pvc://, file:// or tiny://)")


def pvc_root() -> Path:
    """Where the operator mounts PVCs: ``$FINETUNE_PVC_ROOT`` or /mnt/pvc, one sub-folder per claim."""
    return Path(os.environ.get(PVC_ROOT_ENV) or DEFAULT_PVC_ROOT)


def fetch_source(uri: str, *, field: str) -> str:
    """Make ``uri`` readable by ``from_pretrained``: a local folder path, or a hub id for hf://.

    Raises:
        ValueError: the URI is malformed, or the local/PVC folder does not exist.
    """
    source = parse_source(uri, field=field)
    if source.kind == "hf":
        return source.location
    if source.kind == "tiny":
        return str(tiny_model_path(uri))
    if source.kind == "s3":
        return str(download_s3_folder(uri, cache_root() / "s3" / source.location, field=field))
    path = pvc_root() / source.location if source.kind == "pvc" else Path(source.location)
    if not path.exists():
        hint = f" (is the claim mounted under {pvc_root()}?)" if source.kind == "pvc" else ""
        raise ValueError(f"{field}: {uri!r} resolves to {path}, which does not exist{hint}")
    return str(path)


def download_s3_folder(uri: str, dest: Path, *, field: str = "source") -> Path:
    """Download every object below the ``s3://`` prefix ``uri`` into ``dest`` once; later calls reuse it.

    A prefix with a ``manifest.json`` (an artifact this project wrote) is verified file by file;
    one without (e.g. a model synced from the hub) is copied as listed. The copy is assembled in
    a temporary sibling and renamed into place, so an interrupted download never looks complete.

    Raises:
        ValueError: nothing is stored below ``uri``.
    """
    if (dest / _COMPLETE).is_file():
        return dest
    # Imported here: boto3 is only needed when a model actually comes from S3.
    from finetune_trainer.storage import MANIFEST_NAME, download_with_manifest, open_store

    store = open_store(uri)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = new_staging_dir(dest.parent, f".{dest.name}-")
    try:
        if store.exists(MANIFEST_NAME):
            download_with_manifest(store, staging)
        else:
            files = store.list_files()
            if not files:
                raise ValueError(f"{field}: no objects found below {uri}")
            for key in sorted(files):
                store.get_file(key, staging / key)
        (staging / _COMPLETE).write_text(uri + "\n")
        try:
            staging.rename(dest)
        except OSError:
            # Another rank on this node finished first; its copy is as good as ours.
            if not (dest / _COMPLETE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest
