"""Storage locations: ``s3://bucket/prefix``, ``file:///path`` and plain local paths."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from finetune_api.uris import local_path

Scheme = Literal["s3", "file"]


@dataclass(frozen=True)
class StorageURI:
    """A parsed storage location.

    For ``s3`` the ``path`` is the key prefix without leading or trailing slashes (empty for the
    bucket's root); for ``file`` it is an absolute local path and ``bucket`` is empty.
    """

    scheme: Scheme
    bucket: str
    path: str

    def join(self, *parts: str) -> StorageURI:
        """The location of ``parts`` (slash-separated, relative) below this one."""
        rel = posixpath.join(*parts).strip("/") if parts else ""
        if not rel:
            return self
        _check_relative(rel)
        if self.scheme == "s3":
            return StorageURI("s3", self.bucket, posixpath.join(self.path, rel) if self.path else rel)
        return StorageURI("file", "", str(Path(self.path, rel)))

    def __str__(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.path}" if self.path else f"s3://{self.bucket}"
        return Path(self.path).as_uri()


def parse_uri(uri: str, *, field: str = "uri") -> StorageURI:
    """Parse ``uri``; ``field`` names the spec field in the error message.

    Raises:
        ValueError: unsupported scheme, missing bucket, or a relative ``file://`` path.
    """
    if not uri:
        raise ValueError(f"{field}: must not be empty")
    parts = urlsplit(uri)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"{field}: {uri!r} has no bucket (expected s3://bucket/prefix)")
        key = parts.path.strip("/")
        if key:
            _check_relative(key, field=field)
        return StorageURI("s3", parts.netloc, key)
    if parts.scheme == "file":
        return StorageURI("file", "", str(local_path(uri)))
    if parts.scheme == "":
        return StorageURI("file", "", str(Path(uri).expanduser().resolve()))
    raise ValueError(f"{field}: unsupported scheme {parts.scheme!r} in {uri!r} (use s3:// or file://)")


def _check_relative(rel: str, *, field: str = "path") -> None:
    """Refuse ``..`` segments: a key must never escape the prefix it is joined to."""
    if any(seg == ".." for seg in rel.split("/")):
        raise ValueError(f"{field}: {rel!r} must not contain '..' segments")
