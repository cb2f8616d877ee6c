"""The chart's CRD templates are crds/*.yaml, generated (finetune_api.chartgen), never hand-edited."""

from __future__ import annotations

import shutil
from pathlib import Path

from finetune_api.chartgen import CHART_CRD_DIR, chart_template, main, stale_chart_crds, write_chart_crds
from finetune_api.crdgen import CRD_DIR


def test_chart_crds_match_crds_dir() -> None:
    stale = stale_chart_crds()
    assert stale == [], f"{stale}: run `python -m finetune_api.chartgen --write`"
    assert main(["--check"]) == 0


def test_a_drifted_or_leftover_template_is_reported_and_rewritten(tmp_path: Path) -> None:
    chart = tmp_path / "chart-crds"
    shutil.copytree(CHART_CRD_DIR, chart)
    edited = chart / "finetune.dev_finetunejobs.yaml"
    edited.write_text(edited.read_text().replace("maxSteps", "maxStep"))
    (chart / "finetune.dev_gone.yaml").write_text("{{- if .Values.crds.enabled }}\n{{- end }}\n")
    assert {p.name for p in stale_chart_crds(CRD_DIR, chart)} == {edited.name, "finetune.dev_gone.yaml"}
    write_chart_crds(CRD_DIR, chart)
    assert stale_chart_crds(CRD_DIR, chart) == []
    assert not (chart / "finetune.dev_gone.yaml").exists()


def test_template_wraps_the_crd_and_escapes_template_braces() -> None:
    crd = "# header\napiVersion: v1\nkind: CustomResourceDefinition\nmetadata:\n  name: x.finetune.dev\nspec:\n  d: '{{ no }}'\n"
    text = chart_template("x.yaml", crd)
    assert text.startswith("{{- if .Values.crds.enabled }}\n") and text.endswith("{{- end }}\n")
    assert "# header" not in text and "helm.sh/resource-policy: keep" in text
    assert """d: '{{ "{{" }} no }}'""" in text
    assert text.index("  name: x.finetune.dev\n") < text.index("  labels:\n") < text.index("spec:\n")
