"""The one reading of file:// URIs shared by storage, the model loader and the data worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune_api.uris import local_path


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("file:///data/x.jsonl", "/data/x.jsonl"),
        ("file://localhost/data/x", "/data/x"),
        ("/abs/plain", "/abs/plain"),
    ],
)
def test_absolute_forms(uri: str, expected: str) -> None:
    assert local_path(uri) == Path(expected)


def test_relative_forms_resolve_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert local_path("file://runs/job") == tmp_path / "runs" / "job"
    assert local_path("file://./runs/job") == tmp_path / "runs" / "job"
    assert local_path("file://examples/data/a%20b.jsonl") == tmp_path / "examples" / "data" / "a b.jsonl"
