"""The `finetune` CLI's light commands (validate, crds, explain), run in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune_trainer.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_validate_examples_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(p) for p in sorted((ROOT / "examples").glob("*.yaml"))]
    assert main(["validate", "--require-datasets", *files]) == 0
    assert "invalid" not in capsys.readouterr().out


def test_validate_lists_every_error_and_exits_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: finetune.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {name: bad}\n"
        "spec:\n  model: {source: 'ftp://m'}\n  datasets: [{ref: d}]\n"
        "  method: {stage: sft, lora: {rank: 0}}\n"
    )
    assert main(["validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "spec.method.lora.rank: must be >= 1" in out
    assert "spec.model.source: source must be" in out


def test_validate_unreadable_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [unclosed\n")
    assert main(["validate", str(bad)]) == 1
    assert "not valid YAML" in capsys.readouterr().err


def test_crds_check_passes_on_committed_files() -> None:
    assert main(["crds", "--check"]) == 0


def test_crds_write_to_a_directory(tmp_path: Path) -> None:
    assert main(["crds", "--write", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "finetune.dev_datasets.yaml",
        "finetune.dev_exports.yaml",
        "finetune.dev_finetunejobs.yaml",
    ]


def test_explain_field(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "ftj.spec.method.lora"]) == 0
    out = capsys.readouterr().out
    assert "rank\t<integer> (>= 1, <= 1024, default 8)" in out
    assert "useDora" in out


def test_explain_unknown_field(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "finetunejob.spec.nope"]) == 1
    assert "has no field 'nope'" in capsys.readouterr().err
