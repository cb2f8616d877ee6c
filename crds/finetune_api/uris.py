"""The project's one reading of ``file://`` URIs.

Everything after ``file://`` is a filesystem path: ``file:///abs/path`` is absolute and
``file://runs/x`` or ``file://./runs/x`` is relative to the working directory (how examples and
`finetune run` name local data and outputs). ``file://localhost/abs`` is absolute too.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote

FILE_PREFIX = "file://"


def local_path(uri: str) -> Path:
    """The absolute local path of a ``file://`` URI (or of a plain path)."""
    rest = uri[len(FILE_PREFIX) :] if uri.startswith(FILE_PREFIX) else uri
    if rest.startswith("localhost/"):
        rest = rest[len("localhost") :]
    return Path(unquote(rest)).expanduser().resolve()


PREPARED_DIR = "finetune-prepared"


def prepared_root(output_uri: str) -> str:
    """Where prepared (tokenized) datasets are shared, beside a job's output location.

    ``s3://bucket/any/prefix`` → ``s3://bucket/finetune-prepared``: every job writing to the bucket
    shares it. ``file://…/runs/job`` → ``file://…/runs/finetune-prepared``.
    """
    if output_uri.startswith("s3://"):
        bucket = output_uri[len("s3://") :].split("/", 1)[0]
        return f"s3://{bucket}/{PREPARED_DIR}"
    return (local_path(output_uri).parent / PREPARED_DIR).as_uri()
