"""Resumable uploads: a file already at the destination with the same size and sha256 is skipped.

S3 objects uploaded here carry their sha256 as user metadata (``x-amz-meta-sha256``), so the check
is one HEAD request; an object without it (written by another tool) is streamed and hashed. An
interrupted upload leaves whole objects or none (a PUT and a completed multipart upload are both
atomic), so every object found is either intact or detectably different.
"""

from __future__ import annotations

import logging
from pathlib import Path

from botocore.exceptions import ClientError

from .manifest import MANIFEST_NAME, Manifest
from .stores import LocalStore, ObjectStore, S3Store, _is_not_found

log = logging.getLogger(__name__)
SHA256_METADATA = "sha256"


def _remote_sha256(store: ObjectStore, key: str, size: int) -> str | None:
    """The stored object's sha256 when it exists with ``size`` bytes; ``None`` otherwise."""
    if isinstance(store, S3Store):
        try:
            head = store.client.head_object(Bucket=store.uri.bucket, Key=store.uri.join(key).path)
        except ClientError as exc:
            if _is_not_found(exc):
                return None
            raise
        if int(head["ContentLength"]) != size:
            return None
        recorded = head.get("Metadata", {}).get(SHA256_METADATA)
        return str(recorded) if recorded else store.sha256(key)
    if isinstance(store, LocalStore):
        path = Path(store.uri.join(key).path)
        if not path.is_file() or path.stat().st_size != size:
            return None
    elif not store.exists(key):
        return None
    return store.sha256(key)


def put_file_resumable(store: ObjectStore, key: str, source: Path, *, size: int, sha256: str) -> bool:
    """Upload ``source`` to ``key`` unless an identical object (size and sha256) is already there.

    Returns True when the file was uploaded, False when it was skipped.
    """
    if _remote_sha256(store, key, size) == sha256:
        log.info("skipping %s: already uploaded intact", store.uri.join(key))
        return False
    if isinstance(store, S3Store):
        # boto3's managed transfer: multipart with concurrent parts above the threshold.
        store.client.upload_file(
            str(source),
            store.uri.bucket,
            store.uri.join(key).path,
            ExtraArgs={"Metadata": {SHA256_METADATA: sha256}},
            Config=store.transfer,
        )
    else:
        store.put_file(key, source)
    return True


def write_manifest(store: ObjectStore, manifest: Manifest) -> None:
    """Write ``manifest.json``: call it last, once every file it lists is in place."""
    store.put_bytes(MANIFEST_NAME, manifest.to_json().encode(), content_type="application/json")
