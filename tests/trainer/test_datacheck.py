"""`finetune validate-data`: the report the operator's validation Job leaves in the termination message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from finetune_api.reports import DatasetReport
from finetune_trainer.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_fit_drops_previews_then_errors_to_stay_under_the_limit() -> None:
    doc = {
        "phase": "Invalid",
        "samples": 1,
        "preview": ["x" * 3000, "y" * 3000],
        "errors": [{"row": i, "field": "f", "message": "m" * 100} for i in range(20)],
    }
    text = DatasetReport.model_validate(doc).to_message(limit=1500)
    assert len(text.encode()) <= 1500
    parsed = json.loads(text)
    assert parsed["preview"] == [] and parsed["phase"] == "Invalid" and parsed["errors"]


def test_valid_dataset_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "termination-log"
    monkeypatch.setenv("FINETUNE_TERMINATION_LOG", str(log))
    monkeypatch.chdir(ROOT)
    assert (
        main(
            ["validate-data", "examples/dataset-alpaca.yaml", "--model", "tiny://llama", "--cutoff-len", "48"]
        )
        == 0
    )
    report = json.loads(log.read_text())
    assert report["phase"] == "Ready" and report["samples"] == 64 and report["invalidSamples"] == 0
    assert report["tokenStats"]["max"] >= report["tokenStats"]["p95"] >= report["tokenStats"]["min"] > 0
    assert 0 < report["tokenStats"]["overCutoff"] < 64
    assert "<|im_start|>assistant" in report["preview"][0]
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"demo-alpaca": report}  # named, one report per Dataset
    assert "demo-alpaca: Ready, 64 samples" in captured.err


def test_invalid_rows_are_listed_with_their_numbers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "termination-log"
    monkeypatch.setenv("FINETUNE_TERMINATION_LOG", str(log))
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"instruction": "q", "output": "a"}\n{"instruction": ["x"], "output": "a"}\n')
    manifest = tmp_path / "ds.yaml"
    manifest.write_text(
        "apiVersion: finetune.dev/v1alpha1\nkind: Dataset\nmetadata: {name: mixed}\n"
        f"spec: {{source: 'file://{rows}', format: alpaca}}\n"
    )
    assert main(["validate-data", str(manifest)]) == 1  # a bad row: the exit status says so
    assert (
        "mixed: Ready, 1 samples; 1 invalid row(s) left out (first: row 1 instruction"
        in capsys.readouterr().err
    )
    # The operator's validation Job: one good row makes it usable (Ready), with the bad one reported.
    assert main(["validate-data", "--allow-invalid-rows", str(manifest)]) == 0
    report = json.loads(log.read_text())
    assert report["samples"] == 1 and report["invalidSamples"] == 1
    assert report["errors"][0]["row"] == 1 and report["errors"][0]["field"] == "instruction"
    assert json.loads(capsys.readouterr().out) == {"mixed": report}


def test_manifest_from_stdin_and_an_unusable_dataset_fails(tmp_path: Path) -> None:
    manifest = (
        "apiVersion: finetune.dev/v1alpha1\nkind: Dataset\nmetadata: {name: nothing-here}\n"
        f"spec: {{source: 'file://{tmp_path}/missing.jsonl', format: alpaca}}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "finetune_trainer.cli", "validate-data", "-"],
        input=manifest, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["nothing-here"]["phase"] == "Invalid"
    assert "nothing-here: Invalid:" in done.stderr
