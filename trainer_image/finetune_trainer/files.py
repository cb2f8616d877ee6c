"""New files and folders for atomic writes, with the mode the umask gives any other new file.

``tempfile.mkstemp`` and ``mkdtemp`` create 0600 files and 0700 folders whatever the umask, and
the rename that publishes them keeps that mode: a run's outputs on a shared disk, or a node's
model and data caches, would be readable by their owner alone. Creating them with 0666 / 0777
lets the kernel apply the process's umask, as ``open()`` and ``mkdir`` do; reading the umask
instead (``os.umask`` sets it to read it) would race with other threads creating files.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_ATTEMPTS = 100


def _candidate(parent: Path, prefix: str, suffix: str) -> Path:
    return parent / f"{prefix}{secrets.token_hex(6)}{suffix}"


def _new_partial_file(dest: Path) -> tuple[int, Path]:
    """A new, empty hidden sibling of ``dest`` opened for writing: ``(fd, path)``."""
    for _ in range(_ATTEMPTS):
        path = _candidate(dest.parent, f".{dest.name}.", ".partial")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {dest}")


def new_staging_dir(parent: Path, prefix: str) -> Path:
    """A new, empty folder in ``parent`` whose name starts with ``prefix``, to be renamed into place."""
    for _ in range(_ATTEMPTS):
        path = _candidate(parent, prefix, "")
        try:
            path.mkdir(mode=0o777)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temporary name in {parent}")


def write_atomically(dest: Path, write: Callable[[BinaryIO], object]) -> None:
    """Create or replace ``dest`` with what ``write`` writes, all at once (a rename); parents are created.

    Readers see the old file or the new one, never a part: until the rename the bytes are in a
    hidden sibling ``.NAME.<random>.partial``, which listings skip and a failure removes.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_partial_file(dest)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
