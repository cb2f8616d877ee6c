"""The project's one reading of its URIs: where models, data and outputs are.

- ``hf://org/name[@revision]`` (or ``hf://name``): a repository on the Hugging Face hub;
- ``s3://bucket[/key]``: an object, or every object below a key prefix;
- ``pvc://claim[/path]``: a path on a PersistentVolumeClaim (the operator mounts it under
  ``finetune_api.pod.PVC_ROOT/<claim>``);
- ``file://path``: everything after ``file://`` is a filesystem path: ``file:///abs/path`` is absolute and
  ``file://runs/x`` or ``file://./runs/x`` is relative to the working directory (how examples and
  `finetune run` name local data and outputs); ``file://localhost/abs`` is absolute too;
- a plain path (no scheme): a local file or folder, like ``file://``;
- ``tiny://arch?opts``: a small random model (its grammar is :mod:`finetune_api.tiny`'s);
- ``https://`` (and ``http://``): a data file on the web.

:func:`parse_location` checks a URI and names the spec field in its errors
(``spec.model.source: 's3:///x' has no bucket ...``); :func:`parse_uri` is the storage view of it
(``s3://`` and local). The helpers (:func:`scheme_of`, :func:`is_local`, :func:`pvc_claim`,
:func:`hf_repo`) read one thing from a URI and never raise.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit


class Scheme(StrEnum):
    HF = "hf"
    S3 = "s3"
    PVC = "pvc"
    FILE = "file"
    TINY = "tiny"
    HTTPS = "https"
    HTTP = "http"
    PATH = ""
    """A plain filesystem path: no scheme."""


MODEL_SCHEMES: tuple[Scheme, ...] = (Scheme.HF, Scheme.S3, Scheme.PVC, Scheme.FILE, Scheme.TINY)
"""Where a model (base, reference, reward) comes from."""
ADAPTER_SCHEMES: tuple[Scheme, ...] = (Scheme.HF, Scheme.S3, Scheme.PVC, Scheme.FILE)
"""Where an adapter to continue training comes from."""
DATASET_SCHEMES: tuple[Scheme, ...] = (
    Scheme.S3,
    Scheme.HF,
    Scheme.HTTPS,
    Scheme.HTTP,
    Scheme.PVC,
    Scheme.FILE,
)
"""Where a Dataset's bytes come from."""
STORAGE_SCHEMES: tuple[Scheme, ...] = (Scheme.S3, Scheme.FILE)
"""Where outputs are written (and read back)."""
ALL_SCHEMES: tuple[Scheme, ...] = tuple(Scheme)

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")  # what urllib.parse.urlsplit takes for a scheme
_KNOWN = {s.value: s for s in Scheme}


@dataclass(frozen=True)
class Location:
    """A parsed URI; read it through the accessors of its scheme (:attr:`bucket` of an ``s3://`` one...)."""

    uri: str
    """The URI as written."""
    scheme: Scheme
    authority: str = ""
    """The bucket (s3), the claim (pvc) or the arch (tiny); empty otherwise."""
    path: str = ""
    """The key below the bucket (s3) or the path below the claim (pvc), without leading or trailing
    slashes; the repository (hf); the absolute local path (file and plain paths); empty otherwise."""
    revision: str | None = None
    """The ``@revision`` of an hf:// URI, if it names one."""

    def _only(self, value: str, *schemes: Scheme) -> str:
        if self.scheme not in schemes:
            raise ValueError(f"{self.uri!r} is not a {_listing(schemes)} URI")
        return value

    @property
    def bucket(self) -> str:
        """The bucket of ``s3://bucket/key``."""
        return self._only(self.authority, Scheme.S3)

    @property
    def key(self) -> str:
        """The key (or key prefix) of ``s3://bucket/key``; empty for the bucket's root."""
        return self._only(self.path, Scheme.S3)

    @property
    def claim(self) -> str:
        """The claim of ``pvc://claim/path``."""
        return self._only(self.authority, Scheme.PVC)

    @property
    def repo(self) -> str:
        """The repository (``org/name`` or ``name``) of ``hf://org/name[@revision]``."""
        return self._only(self.path, Scheme.HF)

    @property
    def hub_id(self) -> str:
        """``org/name[@revision]`` as the hf:// URI writes it (what the loaders hand the hub libraries)."""
        return self.repo if self.revision is None else f"{self.repo}@{self.revision}"

    @property
    def local_path(self) -> Path:
        """The absolute local path of a ``file://`` URI or a plain path."""
        return Path(self._only(self.path, Scheme.FILE, Scheme.PATH))


def scheme_of(uri: str) -> Scheme | None:
    """The scheme ``uri`` names (:attr:`Scheme.PATH` for a plain path); None for one the project does not know."""
    match = _SCHEME.match(uri)
    return _KNOWN.get(match.group(1).lower() if match else "")


def is_local(uri: str) -> bool:
    """Whether ``uri`` is on this machine's filesystem: a ``file://`` URI or a plain path."""
    return scheme_of(uri) in (Scheme.FILE, Scheme.PATH)


def _listing(schemes: Collection[Scheme]) -> str:
    named = [f"{s}://" for s in schemes if s is not Scheme.PATH]
    return ", ".join(named[:-1]) + f" or {named[-1]}" if len(named) > 1 else "".join(named)


def _file_path(uri: str) -> Path:
    rest = uri[len("file://") :] if uri.startswith("file://") else uri
    if rest.startswith("localhost/"):
        rest = rest[len("localhost") :]
    return Path(unquote(rest)).expanduser().resolve()


def parse_location(uri: str, *, field: str = "uri", schemes: Collection[Scheme] = ALL_SCHEMES) -> Location:
    """Parse ``uri``, one of ``schemes`` or a plain path; ``field`` names the spec field in errors.

    Raises:
        ValueError: empty, a scheme not among ``schemes``, an s3:// URI without its bucket or a
            pvc:// one without its claim, a ``..`` segment in either, an hf:// URI that is not
            ``hf://org/name``.
    """
    if not uri:
        raise ValueError(f"{field}: must not be empty")
    scheme = scheme_of(uri)
    if scheme is None or (scheme is not Scheme.PATH and scheme not in schemes):
        written = uri.split(":", 1)[0].lower()
        raise ValueError(f"{field}: unsupported scheme {written!r} in {uri!r} (use {_listing(schemes)})")
    if scheme is Scheme.PATH:
        return Location(uri, scheme, path=str(Path(uri).expanduser().resolve()))
    if scheme is Scheme.FILE:
        return Location(uri, scheme, path=str(_file_path(uri)))
    try:
        parts = urlsplit(uri)
    except ValueError as exc:  # e.g. an unclosed '[' in the host part
        raise ValueError(f"{field}: {uri!r} is not a URI ({exc})") from exc
    if scheme is Scheme.HF:
        repo, at, revision = (parts.netloc + parts.path).strip("/").partition("@")
        if not repo or repo.count("/") > 1:
            raise ValueError(f"{field}: {uri!r} must be hf://org/name")
        return Location(uri, scheme, path=repo, revision=revision if at else None)
    if scheme in (Scheme.S3, Scheme.PVC):
        if not parts.netloc:
            what, form = (
                ("bucket", "s3://bucket/prefix") if scheme is Scheme.S3 else ("claim", "pvc://claim/path")
            )
            raise ValueError(f"{field}: {uri!r} has no {what} (expected {form})")
        # S3 keys are taken literally; a path on a claim is a filesystem path, %-escaped like file://.
        path = (parts.path if scheme is Scheme.S3 else unquote(parts.path)).strip("/")
        if ".." in (parts.netloc, *path.split("/")):
            raise ValueError(f"{field}: {uri!r} must not contain '..' segments")
        return Location(uri, scheme, authority=parts.netloc, path=path)
    if scheme is Scheme.TINY:
        return Location(uri, scheme, authority=parts.netloc)
    return Location(uri, scheme)  # http(s): the URI is the address


def _parsed(uri: str, scheme: Scheme) -> Location | None:
    if scheme_of(uri) is not scheme:
        return None
    try:
        return parse_location(uri)
    except ValueError:
        return None


def local_path(uri: str) -> Path:
    """The absolute local path of a ``file://`` URI or a plain path.

    Raises:
        ValueError: ``uri`` names another scheme.
    """
    return parse_location(uri, schemes=(Scheme.FILE,)).local_path


def pvc_claim(uri: str) -> str | None:
    """The claim of a ``pvc://claim/path`` URI; None for other schemes and malformed pvc:// URIs."""
    location = _parsed(uri, Scheme.PVC)
    return location.claim if location else None


def hf_repo(uri: str) -> str | None:
    """The repository (``org/name``) of an ``hf://`` URI, without its revision; None for other URIs."""
    location = _parsed(uri, Scheme.HF)
    return location.repo if location else None


@dataclass(frozen=True)
class StorageURI:
    """A parsed storage location.

    For ``s3`` the ``path`` is the key prefix without leading or trailing slashes (empty for the
    bucket's root); for ``file`` it is an absolute local path and ``bucket`` is empty.
    """

    scheme: Literal["s3", "file"]
    bucket: str
    path: str

    def join(self, *parts: str) -> StorageURI:
        """The location of ``parts`` (slash-separated, relative) below this one."""
        rel = posixpath.join(*parts).strip("/") if parts else ""
        if not rel:
            return self
        if any(seg == ".." for seg in rel.split("/")):  # a key must never escape the prefix it is joined to
            raise ValueError(f"path: {rel!r} must not contain '..' segments")
        if self.scheme == "s3":
            return StorageURI("s3", self.bucket, posixpath.join(self.path, rel) if self.path else rel)
        return StorageURI("file", "", str(Path(self.path, rel)))

    def __str__(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.path}" if self.path else f"s3://{self.bucket}"
        return Path(self.path).as_uri()


def parse_uri(uri: str, *, field: str = "uri") -> StorageURI:
    """Parse a storage location (``s3://``, ``file://`` or a plain path); ``field`` names the spec field in errors.

    Raises:
        ValueError: as :func:`parse_location` (another scheme, no bucket, ``..`` segments).
    """
    location = parse_location(uri, field=field, schemes=STORAGE_SCHEMES)
    if location.scheme is Scheme.S3:
        return StorageURI("s3", location.bucket, location.key)
    return StorageURI("file", "", str(location.local_path))


PREPARED_DIR = "finetune-prepared"


def prepared_root(output_uri: str) -> str:
    """Where prepared (tokenized) datasets are shared, beside a job's output location.

    ``s3://bucket/any/prefix`` → ``s3://bucket/finetune-prepared``: every job writing to the bucket
    shares it. ``file://…/runs/job`` → ``file://…/runs/finetune-prepared``.
    """
    output = parse_uri(output_uri, field="spec.output.uri")
    if output.scheme == "s3":
        return str(StorageURI("s3", output.bucket, PREPARED_DIR))
    return (Path(output.path).parent / PREPARED_DIR).as_uri()
