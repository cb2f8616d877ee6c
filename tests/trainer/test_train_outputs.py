"""What a local `finetune run` leaves for people: files as readable as the umask says, our own model card in
adapter/ (whose snippets run as written), and job.yaml as the resolved spec that validates and runs again."""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from finetune_trainer.cli import main as finetune
from finetune_trainer.export import export_from_files
from finetune_trainer.run import execute, plan_run, run_from_files
from finetune_trainer.storage import open_store, verify_artifact
from tests.trainer.test_train_recipe import ROOT, write_job

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class FinishedRun:
    job: Path
    out: Path


def fenced(card: str, language: str) -> str:
    """The first ```language block of a Markdown text."""
    match = re.search(rf"```{language}\n(.*?)```", card, re.S)
    assert match, f"no {language} block in the card:\n{card}"
    return match.group(1)


def finish_run(root: Path, umask: int) -> FinishedRun:
    """Train a tiny LoRA for two steps (a checkpoint each step), then export it merged."""
    old = os.umask(umask)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("FINETUNE_METRICS_PORT", "0")
            out = root / "out"
            job = write_job(root / "card-run.yaml", output={"uri": f"file://{out}"},
                            training={"maxSteps": 2, "saveSteps": 1})  # fmt: skip
            execute(plan_run([str(job)]))
            export = {"apiVersion": "finetune.dev/v1alpha1", "kind": "Export", "metadata": {"name": "exported"},
                      "spec": {"model": "tiny://llama", "adapter": f"file://{out}/adapter",
                               "output": {"uri": f"file://{out}/exported"}}}  # fmt: skip
            (root / "export.yaml").write_text(yaml.safe_dump(export))
            assert export_from_files([str(root / "export.yaml")]) == 0
    finally:
        os.umask(old)
    return FinishedRun(job, out)


@pytest.fixture(scope="module")
def run_027(tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    return finish_run(tmp_path_factory.mktemp("umask027"), 0o027)


@pytest.fixture(scope="module")
def run_022(tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    return finish_run(tmp_path_factory.mktemp("umask022"), 0o022)


def modes(root: Path) -> dict[str, int]:
    """Permission bits of every file and folder below ``root`` (folders end in /)."""
    found = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs:
            found[os.path.relpath(os.path.join(dirpath, name), root) + "/"] = os.stat(
                os.path.join(dirpath, name)
            )
        for name in files:
            found[os.path.relpath(os.path.join(dirpath, name), root)] = os.stat(os.path.join(dirpath, name))
    return {path: stat.S_IMODE(st.st_mode) for path, st in found.items()}


@pytest.mark.parametrize(
    ("run", "file_mode", "dir_mode"), [("run_022", 0o644, 0o755), ("run_027", 0o640, 0o750)]
)
def test_outputs_are_as_readable_as_the_umask_says(
    run: str, file_mode: int, dir_mode: int, request: pytest.FixtureRequest
) -> None:
    finished: FinishedRun = request.getfixturevalue(run)
    found = modes(finished.out)
    for expected in ("adapter/adapter_model.safetensors", "adapter/manifest.json", "adapter/README.md",
                     "progress.json", "job.yaml", "trainer_log.jsonl", "loss.png",
                     "checkpoints/checkpoint-1/manifest.json", "checkpoints/checkpoint-2/",
                     "exported/model.safetensors", "exported/manifest.json", "exported/README.md"):  # fmt: skip
        assert expected in found, sorted(found)
    wrong = {
        path: oct(mode)
        for path, mode in found.items()
        if mode != (dir_mode if path.endswith("/") else file_mode)
    }
    assert not wrong


def test_the_adapter_card_is_ours_and_its_snippets_run(run_027: FinishedRun, tmp_path: Path) -> None:
    adapter = run_027.out / "adapter"
    card = (adapter / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "peft" and front["tags"] == ["finetune-operator", "lora", "sft"]
    assert "[More Information Needed]" not in card  # PEFT's template
    # No staging or temporary path (the run's work dir, a downloaded base): only the output and the data,
    # which live under this checkout (itself under /tmp in a CI clone).
    shown = card.replace(str(run_027.out), "").replace(str(ROOT), "")
    assert "/tmp/" not in shown and "finetune-card-run-rank" not in card
    log = [json.loads(line) for line in (run_027.out / "trainer_log.jsonl").read_text().splitlines()]
    train_loss = next(r["train_loss"] for r in log if "train_loss" in r)
    for line in ("- base: `tiny://llama`", "Stage `sft`, fine-tuning `lora`.", "| rank | 8 |",
                 "| alpha | 16 (twice the rank) |", "| targetModules | all |", "| learningRate | 0.003 |",
                 "| maxSteps | 2 |", "| batch | 8 per device × 1 accumulation steps |", "| cutoffLen | 128 |",
                 "| precision | auto |", "| seed | 42 |", f"| train_loss | {train_loss:.6g} |",
                 "- `data`: file://", "(alpaca), weight 1"):  # fmt: skip
        assert line in card, line
    manifest = verify_artifact(open_store(f"file://{adapter}"), deep=True)  # written after our card
    assert "README.md" in {f.path for f in manifest.files}
    scope: dict[str, object] = {}
    exec(fenced(card, "python"), scope)  # loads the adapter on its base as the card says
    assert type(scope["model"]).__name__ == "PeftModelForCausalLM"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        Path("export.yaml").write_text(fenced(card, "yaml"))
        assert export_from_files(["export.yaml"]) == 0  # the Export the card suggests
    merged_card = (run_027.out / "merged" / "README.md").read_text()
    assert "PeftModel" not in merged_card and "library_name: transformers" in merged_card


def test_job_yaml_is_the_resolved_spec_and_runs_again(
    run_027: FinishedRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FINETUNE_METRICS_PORT", "0")
    saved = run_027.out / "job.yaml"
    job, dataset = yaml.safe_load_all(saved.read_text())
    assert job["apiVersion"] == "finetune.dev/v1alpha1" and job["metadata"] == {"name": "card-run"}
    # defaults the user never wrote, in camelCase wire form
    assert job["spec"]["training"]["optimizer"] == "adamw_torch" and job["spec"]["training"]["seed"] == 42
    assert job["spec"]["method"]["lora"]["rank"] == 8 and job["spec"]["model"]["attention"] == "auto"
    assert dataset["kind"] == "Dataset" and dataset["spec"]["fileType"] == "auto"
    assert finetune(["validate", str(saved)]) == 0, capsys.readouterr()
    again = tmp_path / "again"
    assert run_from_files([str(saved)], output=f"file://{again}") == 0
    assert yaml.safe_load_all((again / "job.yaml").read_text()) and list(
        yaml.safe_load_all((again / "job.yaml").read_text())
    ) == list(yaml.safe_load_all(saved.read_text()))
