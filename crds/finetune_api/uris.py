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
