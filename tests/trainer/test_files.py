"""finetune_trainer.files and the stores built on it: atomically written files and staging folders get
the mode the umask gives any new file (mkstemp / mkdtemp gave 0600 / 0700 whatever the umask)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from finetune_trainer.files import new_staging_dir, write_atomically
from finetune_trainer.storage import open_store


@pytest.fixture(params=[(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)], ids=["umask022", "umask027"])
def umask(request: pytest.FixtureRequest) -> Iterator[tuple[int, int]]:
    """Run the test under a umask; yields the (file, folder) modes it should give."""
    mask, file_mode, dir_mode = request.param
    old = os.umask(mask)
    try:
        yield file_mode, dir_mode
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_and_staging_dirs_follow_the_umask(umask: tuple[int, int], tmp_path: Path) -> None:
    file_mode, dir_mode = umask
    write_atomically(tmp_path / "a" / "one.bin", lambda fh: fh.write(b"1"))
    staging = new_staging_dir(tmp_path, ".stage-")
    store = open_store(f"file://{tmp_path / 'store'}")
    store.put_bytes("x/progress.json", b"{}")
    store.put_file("x/copy.bin", tmp_path / "a" / "one.bin")

    assert mode(tmp_path / "a" / "one.bin") == file_mode
    assert mode(tmp_path / "store" / "x" / "progress.json") == file_mode
    assert mode(tmp_path / "store" / "x" / "copy.bin") == file_mode
    assert mode(staging) == dir_mode and staging.name.startswith(".stage-")


def test_a_failed_write_leaves_the_old_file_and_no_partial(tmp_path: Path) -> None:
    dest = tmp_path / "f.txt"
    write_atomically(dest, lambda fh: fh.write(b"old"))

    def fail(fh: object) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomically(dest, fail)
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
