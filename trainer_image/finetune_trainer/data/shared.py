"""The shared tier of the preprocessing cache: prepared datasets in object storage.

Datasets with ``prepare: true`` are tokenized once; the result is uploaded under its fingerprint
(tokenizer, template, cutoff, every processing setting and the data's bytes), manifest last, and
any later job with the same key — on any node — downloads it instead of tokenizing again.
"""

from __future__ import annotations

import logging
import os
import shutil

from ..files import new_staging_dir
from ..storage import ObjectStore, download_with_manifest, is_complete, upload_with_manifest
from .cache import SUMMARY_FILE, cache_path
from .config import ProcessingConfig

log = logging.getLogger(__name__)


def fetch_shared(store: ObjectStore, key: str, processing: ProcessingConfig) -> bool:
    """Download the prepared dataset ``key`` into the local cache; False when the store has none."""
    remote = store.child(key)
    if not is_complete(remote):
        return False
    folder = cache_path(processing.cache_dir, key)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = new_staging_dir(folder.parent, f".{key}-")
    try:
        download_with_manifest(remote, staging)
        if not (folder / SUMMARY_FILE).is_file():  # else a concurrent run got it first
            os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("prepared dataset %s downloaded from %s", key, remote.uri)
    return True


def publish_shared(store: ObjectStore, key: str, processing: ProcessingConfig) -> None:
    """Upload the locally cached prepared dataset ``key`` (manifest last) unless it is there already."""
    remote = store.child(key)
    if is_complete(remote):
        return
    upload_with_manifest(cache_path(processing.cache_dir, key), remote)
    log.info("prepared dataset %s shared at %s", key, remote.uri)
