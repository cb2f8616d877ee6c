"""One small object-store interface with two backends: S3 (boto3) and the local filesystem.

Keys are slash-separated and relative to the store's root URI. Missing objects raise
``FileNotFoundError`` on both backends, so callers have one error vocabulary.
"""

from __future__ import annotations

import os
import shutil
import threading
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from finetune_api.uris import StorageURI, parse_uri

from ..files import write_atomically
from .credentials import S3Settings, load_s3_settings
from .manifest import sha256_file, sha256_stream

MiB = 1024 * 1024
# 16 MiB parts with 8 threads keep a 10 GbE link busy without holding much memory per file.
DEFAULT_TRANSFER = TransferConfig(
    multipart_threshold=16 * MiB, multipart_chunksize=16 * MiB, max_concurrency=8, use_threads=True
)
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


class ObjectStore(Protocol):
    """The operations the trainer needs from a storage location."""

    uri: StorageURI

    def child(self, rel: str) -> ObjectStore:
        """The store rooted at ``rel`` below this one."""
        ...

    def put_file(self, key: str, source: Path) -> None:
        """Upload a local file to ``key``."""
        ...

    def get_file(self, key: str, dest: Path) -> None:
        """Download ``key`` to a local file (parent directories are created)."""
        ...

    def put_bytes(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        """Write a small object in one request."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """Read a small object whole."""
        ...

    def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""
        ...

    def sha256(self, key: str) -> str:
        """Hex sha256 of an object's content, streamed."""
        ...

    def list_files(self, rel: str = "") -> dict[str, int]:
        """Every object below ``rel`` (recursively) as key relative to the store → size."""
        ...

    def list_dirs(self) -> list[str]:
        """Names of the immediate sub-"directories" (common prefixes) of the root."""
        ...

    def delete(self, key: str) -> None:
        """Delete one object; a missing one is not an error."""
        ...

    def delete_dir(self, rel: str) -> int:
        """Delete everything below ``rel``; returns the number of objects removed."""
        ...


def open_store(
    uri: str | StorageURI, *, settings: S3Settings | None = None, transfer: TransferConfig | None = None
) -> ObjectStore:
    """Open the store for ``uri``; S3 settings default to :func:`load_s3_settings`."""
    parsed = parse_uri(uri) if isinstance(uri, str) else uri
    if parsed.scheme == "file":
        return LocalStore(parsed)
    client = make_s3_client(settings if settings is not None else load_s3_settings())
    return S3Store(parsed, client, transfer or DEFAULT_TRANSFER)


_SESSION_LOCK = threading.Lock()


@cache
def _session() -> boto3.session.Session:
    """One boto3 session per process: a new one loads botocore's S3 model again (~0.1 s a store)."""
    return boto3.session.Session()


def make_s3_client(settings: S3Settings) -> Any:
    """A boto3 S3 client with retries and backoff for transient faults (throttling, 5xx, resets)."""
    custom = settings.endpoint_url is not None
    config = Config(
        region_name=settings.region,
        retries={"mode": "standard", "max_attempts": 10},
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=32,
        # Non-AWS servers (MinIO, SeaweedFS, GCS) rarely serve virtual-host buckets on a custom host.
        s3={"addressing_style": "path" if custom else "auto"},
        # Newer botocore defaults to trailing CRC checksums that several S3-compatible servers reject.
        request_checksum_calculation="when_required" if custom else "when_supported",
        response_checksum_validation="when_required" if custom else "when_supported",
    )
    with _SESSION_LOCK:  # clients are thread-safe; making them from one session is not
        return _session().client(
            "s3",
            endpoint_url=settings.endpoint_url,
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            aws_session_token=settings.session_token,
            config=config,
        )


def _is_not_found(exc: ClientError) -> bool:
    err = exc.response.get("Error", {})
    status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return str(err.get("Code", "")) in _NOT_FOUND or status == "404"


def _dir_key(path: str) -> str:
    return f"{path.strip('/')}/" if path.strip("/") else ""


class S3Store:
    """An S3 bucket prefix."""

    def __init__(self, uri: StorageURI, client: Any, transfer: TransferConfig) -> None:
        self.uri = uri
        self.client = client
        self.transfer = transfer

    def _key(self, key: str) -> str:
        return self.uri.join(key).path

    def child(self, rel: str) -> S3Store:
        return S3Store(self.uri.join(rel), self.client, self.transfer)

    def put_file(self, key: str, source: Path) -> None:
        self.client.upload_file(str(source), self.uri.bucket, self._key(key), Config=self.transfer)

    def get_file(self, key: str, dest: Path) -> None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.uri.bucket, self._key(key), str(dest), Config=self.transfer)
        except ClientError as exc:
            if _is_not_found(exc):
                raise FileNotFoundError(str(self.uri.join(key))) from exc
            raise

    def put_bytes(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        self.client.put_object(
            Bucket=self.uri.bucket, Key=self._key(key), Body=data, ContentType=content_type
        )

    def _get(self, key: str) -> Any:
        try:
            return self.client.get_object(Bucket=self.uri.bucket, Key=self._key(key))["Body"]
        except ClientError as exc:
            if _is_not_found(exc):
                raise FileNotFoundError(str(self.uri.join(key))) from exc
            raise

    def get_bytes(self, key: str) -> bytes:
        body = self._get(key)
        try:
            return bytes(body.read())
        finally:
            body.close()

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.uri.bucket, Key=self._key(key))
        except ClientError as exc:
            if _is_not_found(exc):
                return False
            raise
        return True

    def sha256(self, key: str) -> str:
        body = self._get(key)
        try:
            return sha256_stream(body.iter_chunks(chunk_size=MiB))
        finally:
            body.close()

    def _list(self, prefix: str, delimiter: str | None = None) -> tuple[dict[str, int], list[str]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.uri.bucket, Prefix=prefix, **({"Delimiter": delimiter} if delimiter else {})
        )
        files: dict[str, int] = {}
        dirs: list[str] = []
        for page in pages:
            files.update({obj["Key"]: int(obj["Size"]) for obj in page.get("Contents", [])})
            dirs.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
        return files, dirs

    def list_files(self, rel: str = "") -> dict[str, int]:
        root = _dir_key(self.uri.path)
        files, _ = self._list(_dir_key(self._key(rel)) if rel else root)
        return {key[len(root) :]: size for key, size in files.items() if not key.endswith("/")}

    def list_dirs(self) -> list[str]:
        root = _dir_key(self.uri.path)
        _, dirs = self._list(root, delimiter="/")
        return sorted(d[len(root) :].rstrip("/") for d in dirs)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.uri.bucket, Key=self._key(key))

    def delete_dir(self, rel: str) -> int:
        if not rel.strip("/"):
            raise ValueError("refusing to delete the store's root")
        root = _dir_key(self._key(rel))
        files = list(self._list(root)[0])
        # Servers with real folders (SeaweedFS) keep listing an emptied "dir/" as a common prefix
        # until its marker is deleted too; on AWS these keys do not exist and the delete is a no-op.
        markers = {root} | {k[: i + 1] for k in files for i in range(len(root), len(k)) if k[i] == "/"}
        keys = files + sorted(markers - set(files), key=lambda k: -k.count("/"))
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            resp = self.client.delete_objects(
                Bucket=self.uri.bucket, Delete={"Objects": batch, "Quiet": True}
            )
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise OSError(
                    f"S3 delete of {first.get('Key')} failed: {first.get('Code')} {first.get('Message')}"
                )
        return len([k for k in files if not k.endswith("/")])


class LocalStore:
    """A local directory (``file://`` URIs and plain paths); writes are atomic renames."""

    def __init__(self, uri: StorageURI) -> None:
        self.uri = uri
        self.root = Path(uri.path)

    def _path(self, key: str) -> Path:
        return Path(self.uri.join(key).path)

    def child(self, rel: str) -> LocalStore:
        return LocalStore(self.uri.join(rel))

    def put_file(self, key: str, source: Path) -> None:
        with source.open("rb") as src:
            write_atomically(self._path(key), lambda fh: shutil.copyfileobj(src, fh, MiB))

    def get_file(self, key: str, dest: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise FileNotFoundError(str(src))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)

    def put_bytes(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        write_atomically(self._path(key), lambda fh: fh.write(data))

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def sha256(self, key: str) -> str:
        return sha256_file(self._path(key))

    def list_files(self, rel: str = "") -> dict[str, int]:
        base = self._path(rel) if rel else self.root
        if not base.is_dir():
            return {}
        found: dict[str, int] = {}
        for dirpath, _dirs, names in os.walk(base):
            for name in names:
                if name.startswith(".") and name.endswith(".partial"):  # an atomic write in flight
                    continue
                full = Path(dirpath, name)
                found[full.relative_to(self.root).as_posix()] = full.stat().st_size
        return found

    def list_dirs(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(e.name for e in os.scandir(self.root) if e.is_dir())

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_dir(self, rel: str) -> int:
        if not rel.strip("/"):
            raise ValueError("refusing to delete the store's root")
        target = self._path(rel)
        count = len(self.child(rel).list_files())
        shutil.rmtree(target, ignore_errors=True)
        return count
