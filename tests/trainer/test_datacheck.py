"""`finetune validate-data`: the report the operator's validation Job leaves in the termination message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune_trainer.cli import main
from finetune_trainer.datacheck import fit

ROOT = Path(__file__).resolve().parents[2]


def test_fit_drops_previews_then_errors_to_stay_under_the_limit() -> None:
    doc = {
        "phase": "Invalid",
        "samples": 1,
        "preview": ["x" * 3000, "y" * 3000],
        "errors": [{"row": i, "field": "f", "message": "m" * 100} for i in range(20)],
    }
    text = fit(doc, limit=1500)
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
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == report


def test_invalid_rows_are_listed_with_their_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "termination-log"
    monkeypatch.setenv("FINETUNE_TERMINATION_LOG", str(log))
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"instruction": "q", "output": "a"}\n{"instruction": ["x"], "output": "a"}\n')
    manifest = tmp_path / "ds.yaml"
    manifest.write_text(
        "apiVersion: finetune.dev/v1alpha1\nkind: Dataset\nmetadata: {name: mixed}\n"
        f"spec: {{source: 'file://{rows}', format: alpaca}}\n"
    )
    assert main(["validate-data", str(manifest)]) == 0  # one good row: usable, with the bad one reported
    report = json.loads(log.read_text())
    assert report["samples"] == 1 and report["invalidSamples"] == 1
    assert report["errors"][0]["row"] == 1 and report["errors"][0]["field"] == "instruction"
