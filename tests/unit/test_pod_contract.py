"""The pod contract's one termination-message writer and its report fitter (finetune_api.pod)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from finetune_api import pod


def test_fit_report_trims_lists_then_drops_keys_within_the_limit() -> None:
    report = {"phase": "Ready", "preview": ["p" * 100] * 5, "errors": ["e" * 100] * 5, "message": "m" * 300}
    assert json.loads(pod.fit_report(report, trim=("preview", "errors"), drop=("message",))) == report
    fitted = json.loads(pod.fit_report(report, trim=("preview", "errors"), drop=("message",), limit=600))
    assert len(json.dumps(fitted).encode()) <= 600
    assert fitted["preview"] == [] and len(fitted["errors"]) < 5 and fitted["message"] == "m" * 300
    tight = json.loads(pod.fit_report(report, trim=("preview", "errors"), drop=("message",), limit=100))
    assert tight == {"phase": "Ready", "preview": [], "errors": []}


def test_write_termination_message_outside_a_pod_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = tmp_path / "termination-log"
    monkeypatch.setattr(pod, "DEFAULT_TERMINATION_LOG", default)
    monkeypatch.delenv(pod.TERMINATION_LOG_ENV, raising=False)
    pod.write_termination_message("done")
    assert not default.exists(), "outside Kubernetes the default path must not be created"
    default.write_text("")  # what the kubelet does in a container
    pod.write_termination_message("done")
    assert default.read_text() == "done"


def test_write_termination_message_keeps_the_kubelets_limit_on_a_character_boundary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = tmp_path / "asked"
    monkeypatch.setenv(pod.TERMINATION_LOG_ENV, str(asked))
    pod.write_termination_message("é" * pod.TERMINATION_MAX)  # two bytes each
    data = asked.read_bytes()
    assert len(data) == pod.TERMINATION_MAX and data.decode() == "é" * (pod.TERMINATION_MAX // 2)
    pod.write_termination_message("a" + "é" * pod.TERMINATION_MAX)  # the cut falls inside a character
    assert asked.read_bytes().decode() == "a" + "é" * (pod.TERMINATION_MAX // 2 - 1)
    # An unwritable log is skipped: the report went to stdout as well.
    pod.write_termination_message("x", tmp_path / "no" / "such" / "dir")


def test_no_trainer_or_operator_module_spells_a_pod_variable_itself() -> None:
    """Each FINETUNE_* variable the trainer reads is named once, in finetune_api.pod."""
    root = Path(__file__).resolve().parents[2]
    named = {value for key, value in vars(pod).items() if key.endswith("_ENV")}
    assert {"FINETUNE_WORK_DIR", "FINETUNE_CACHE_DIR"} <= named
    spelled = []
    for folder in ("trainer_image/finetune_trainer", "operator/finetune_operator/builders"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                value = node.value if isinstance(node, ast.Constant) else None
                if isinstance(value, str) and re.fullmatch(r"FINETUNE_[A-Z0-9_]+", value) and value in named:
                    spelled.append(f"{path.relative_to(root)}:{node.lineno}: {value}")
    assert not spelled, "use the finetune_api.pod constant:\n" + "\n".join(spelled)
