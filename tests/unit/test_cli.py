"""The `finetune` CLI's light commands (validate, crds, explain), run in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune_trainer.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_validate_examples_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(p) for p in sorted((ROOT / "examples").glob("*.yaml"))]
    assert main(["validate", *files]) == 0
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


def test_validate_reports_a_missing_dataset_unless_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        "apiVersion: finetune.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {name: j}\n"
        "spec:\n  model: {source: 'tiny://llama'}\n  datasets: [{ref: chats}]\n  method: {stage: sft}\n"
    )
    assert main(["validate", str(job)]) == 1
    assert "spec.datasets[0].ref: Dataset 'chats' not found" in capsys.readouterr().out
    assert main(["validate", "--allow-missing-datasets", str(job)]) == 0


def test_validate_cluster_applies_the_cluster_rules(capsys: pytest.CaptureFixture[str]) -> None:
    example = str(ROOT / "examples" / "invalid" / "cluster-output-file.yaml")
    assert main(["validate", example]) == 0
    capsys.readouterr()
    assert main(["validate", "--cluster", example]) == 1
    assert (
        "spec.output.uri: 'file://runs/cluster-output-file' is local to a workstation"
        in capsys.readouterr().out
    )
    local_demo = str(ROOT / "examples" / "sft-lora.yaml")
    assert main(["validate", "--cluster", local_demo]) == 1
    out = capsys.readouterr().out
    assert "spec.output: required on a cluster" in out and "spec.source: 'file://examples/data" in out
