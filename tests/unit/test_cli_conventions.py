"""CLI conventions: --version, `-` for stdin, key=value overrides on `run`, `explain --recursive`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from finetune_api.manifests import apply_overrides, split_overrides
from finetune_trainer.cli import main
from finetune_trainer.run import plan_run
from finetune_trainer.terminate import BROKEN_PIPE_EXIT_CODE

ROOT = Path(__file__).resolve().parents[2]
SFT = str(ROOT / "examples" / "sft-lora.yaml")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("finetune ") and out.split()[1][0].isdigit()


def test_validate_reads_stdin() -> None:
    def validate(text: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "finetune_trainer.cli", "validate", "-"],
            input=text, capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
        )  # fmt: skip

    good = validate(Path(SFT).read_text())
    assert good.returncode == 0, good.stdout + good.stderr
    assert "<stdin>[0] FineTuneJob/sft-lora: valid" in good.stdout
    bad = validate(Path(SFT).read_text().replace("learningRate:", "learning_rate:"))
    assert bad.returncode == 1
    assert "spec.training.learning_rate: unknown field; did you mean learningRate?" in bad.stdout


def test_split_overrides_tells_files_from_key_values(tmp_path: Path) -> None:
    odd = tmp_path / "a=b.yaml"
    odd.write_text("")
    args = [SFT, "training.learningRate=1e-4", str(odd), "datasets[0].weight=2", "method.lora.rank=16"]
    assert split_overrides(args) == (
        [SFT, str(odd)],
        ["training.learningRate=1e-4", "datasets[0].weight=2", "method.lora.rank=16"],
    )


def test_overrides_set_parsed_yaml_values_and_create_blocks() -> None:
    spec: dict[str, Any] = {"training": {"epochs": 1}, "datasets": [{"ref": "d"}]}
    apply_overrides(
        spec,
        ["training.learningRate=1e-4", "method.lora.rank=16", "datasets[0].weight=2",
         "training.packing=true", "method.lora.targetModules=[q_proj, v_proj]", "training.epochs="],
    )  # fmt: skip
    assert spec == {
        "training": {"learningRate": 1e-4, "packing": True},
        "datasets": [{"ref": "d", "weight": 2}],
        "method": {"lora": {"rank": 16, "targetModules": ["q_proj", "v_proj"]}},
    }
    with pytest.raises(ValueError, match=r"spec.training.epochs is not an object"):
        apply_overrides({"training": {"epochs": 1}}, ["training.epochs.x=1"])
    with pytest.raises(ValueError, match=r"spec.datasets is not a list with an item \[3\]"):
        apply_overrides({"datasets": [{}]}, ["datasets[3].weight=1"])
    with pytest.raises(ValueError, match="expected path=value"):
        apply_overrides({}, ["nonsense"])


def test_run_overrides_go_through_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    plan = plan_run([SFT], overrides=["training.learningRate=1e-4", "method.lora.rank=16"])
    assert plan.job.spec.training.learning_rate == 1e-4
    assert plan.job.spec.method.lora is not None and plan.job.spec.method.lora.rank == 16


def test_a_misspelt_override_gets_the_same_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["run", SFT, "training.learningRatee=1e-4"]) == 1
    err = capsys.readouterr().err
    assert "spec.training.learningRatee: unknown field; did you mean learningRate?" in err
    assert main(["run", SFT, "training.epochs='3'"]) == 1
    assert 'spec.training.epochs: must be a number, got the string "3"' in capsys.readouterr().err


def test_explain_recursive_prints_the_subtree_with_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "--recursive", "ftj.spec.training"]) == 0
    out = capsys.readouterr().out
    assert "\n  learningRate: 0.0001  # number (> 0, <= 1). Peak learning rate." in out
    assert main(["explain", "--recursive", "ftj.spec"]) == 0
    out = capsys.readouterr().out
    assert "\n  datasets:  # []object, required." in out and "\n  - ref:  # string, required." in out
    assert "\n    lora:  # object." in out and "\n      rank: 8  # integer (>= 1, <= 1024)." in out
    assert "\n      targetModules: [all]  # []string." in out


def test_exponent_numbers_read_as_kubectl_reads_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # PyYAML (YAML 1.1) reads 1e-4 as a string; kubectl sends a number, so the strict check must see one.
    job = tmp_path / "job.yaml"
    job.write_text(Path(SFT).read_text().replace("learningRate: 0.0005", "learningRate: 1e-4"))
    assert "learningRate: 1e-4" in job.read_text()
    assert main(["validate", str(job)]) == 0, capsys.readouterr().out


def test_a_reader_that_leaves_early_ends_the_output_quietly() -> None:
    # `finetune crds | head -1` once head has left: a pipe whose reading end is already closed.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "finetune_trainer.cli", "crds"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, check=False, cwd=ROOT,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (BROKEN_PIPE_EXIT_CODE, "")
