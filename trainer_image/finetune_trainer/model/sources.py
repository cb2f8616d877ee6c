"""Where model and adapter weights come from: turn a source URI into something ``from_pretrained`` reads.

``hf://org/name`` stays a hub id (transformers downloads it, honouring ``HF_TOKEN``); ``s3://`` is
downloaded into the local cache; ``pvc://claim/path`` is a path below the PVC mount root;
``file://`` and plain paths are used in place; ``tiny://`` is built (or found) in the cache.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from finetune_api.pod import PVC_ROOT as DEFAULT_PVC_ROOT
from finetune_api.pod import PVC_ROOT_ENV
from finetune_api.uris import MODEL_SCHEMES, Scheme, parse_location

from ..files import new_staging_dir
from .tiny import cache_root, tiny_model_path

_COMPLETE = ".download-complete"


def pvc_root() -> Path:
    """Where the operator mounts PVCs: ``$FINETUNE_PVC_ROOT`` or /mnt/pvc, one sub-folder per claim."""
    return Path(os.environ.get(PVC_ROOT_ENV) or DEFAULT_PVC_ROOT)


def fetch_source(uri: str, *, field: str) -> str:
    """Make ``uri`` readable by ``from_pretrained``: a local folder path, or a hub id for hf://.

    Raises:
        ValueError: the URI is malformed (``field``, e.g. ``model.source``, names the spec field), or the
            local/PVC folder does not exist.
    """
    source = parse_location(uri, field=field, schemes=MODEL_SCHEMES)
    if source.scheme is Scheme.HF:
        return source.hub_id
    if source.scheme is Scheme.TINY:
        return str(tiny_model_path(uri))
    if source.scheme is Scheme.S3:
        return str(download_s3_folder(uri, cache_root() / "s3" / source.bucket / source.key, field=field))
    pvc = source.scheme is Scheme.PVC
    path = pvc_root() / source.claim / source.path if pvc else source.local_path
    if not path.exists():
        hint = f" (is the claim mounted under {pvc_root()}?)" if pvc else ""
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
