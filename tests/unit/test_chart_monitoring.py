"""The chart's monitoring: dashboard and alerts use the metric names the operator and the trainer
really export, the rules pass `promtool check rules`, and `promtool test rules` shows each alert
firing on the series that should fire it and on no other."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.registry import Collector

import finetune_operator.metrics  # noqa: F401  (registers the operator's metrics)
from finetune_api.resources import KINDS
from finetune_trainer.progress.metrics import TrainingMetrics
from tests.unit.test_chart_render import CHART, FULLNAME, NAMESPACE, find, render

METRIC = re.compile(r"\bfinetune_[a-z0-9_]+")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def exported_names(registry: Collector) -> set[str]:
    """Series names a scrape of ``registry`` can return (families expanded by type)."""
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + s for s in SUFFIXES.get(family.type, ("",)))
    return {n for n in names if n.startswith("finetune_")}


def known_metrics() -> set[str]:
    return exported_names(REGISTRY) | exported_names(TrainingMetrics().registry)


def dashboard_exprs() -> list[str]:
    board = json.loads((CHART / "dashboards" / "finetune-operator.json").read_text())
    return [t["expr"] for panel in board["panels"] for t in panel["targets"]]


def rendered_rules(tmp_path: Path) -> dict[str, Any]:
    (rule,) = find(render(tmp_path, {"prometheusRule": {"enabled": True}}), "PrometheusRule")
    return {"groups": rule["spec"]["groups"]}


def test_dashboard_and_alerts_use_only_real_metric_names(tmp_path: Path) -> None:
    known = known_metrics()
    exprs = dashboard_exprs() + [r["expr"] for g in rendered_rules(tmp_path)["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in METRIC.findall(e)}
    assert used - known == set()
    # The four views the issue asks for.
    assert {"finetune_train_loss", "finetune_train_tokens_per_second", "finetune_gpu_memory_allocated_bytes",
            "finetune_operator_objects"} <= used  # fmt: skip


def test_dashboard_is_grafana_json_with_a_datasource_variable() -> None:
    board = json.loads((CHART / "dashboards" / "finetune-operator.json").read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in board["templating"]["list"]} >= {"datasource"}
    assert all(p["datasource"]["uid"] == "${datasource}" for p in board["panels"])


@pytest.fixture
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not installed: run hack/install-prometheus.sh")
    return found


def run_promtool(promtool: str, *args: str, cwd: Path) -> None:
    result = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_pass_promtool_check(tmp_path: Path, promtool: str) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rendered_rules(tmp_path)))
    run_promtool(promtool, "check", "rules", "rules.yaml", cwd=tmp_path)


def test_alerts_fire_on_the_right_series(tmp_path: Path, promtool: str) -> None:
    rules = rendered_rules(tmp_path)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    alerts = {r["alert"]: r for r in rules["groups"][0]["rules"]}
    up = f'up{{job="{FULLNAME}-metrics", namespace="{NAMESPACE}"}}'
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {   # A job fails at minute 20; the phase gauge of another kind changes too.
                "interval": "1m",
                "input_series": [
                    {"series": 'finetune_operator_objects{kind="FineTuneJob", phase="Failed"}', "values": "0x20 1x40"},
                    {"series": 'finetune_operator_objects{kind="Dataset", phase="Invalid"}', "values": "0x20 1x40"},
                ],
                "promql_expr_test": [
                    {"expr": f"count({alerts['FineTuneJobFailed']['expr']})", "eval_time": "25m",
                     "exp_samples": [{"labels": "{}", "value": 1}]},
                    {"expr": f"count({alerts['FineTuneJobFailed']['expr']}) or vector(0)", "eval_time": "50m",
                     "exp_samples": [{"labels": "{}", "value": 0}]},
                ],
            },
            {   # a: stuck at step 40 for an hour; b: progressing; c: new, still loading; d: done.
                "interval": "1m",
                "input_series": [
                    {"series": 'finetune_train_step{pod="a"}', "values": "0+1x40 40x60"},
                    {"series": 'finetune_train_total_steps{pod="a"}', "values": "100x100"},
                    {"series": 'finetune_train_step{pod="b"}', "values": "0+1x100"},
                    {"series": 'finetune_train_total_steps{pod="b"}', "values": "200x100"},
                    {"series": 'finetune_train_step{pod="c"}', "values": "_x80 0x20"},
                    {"series": 'finetune_train_total_steps{pod="c"}', "values": "_x80 100x20"},
                    {"series": 'finetune_train_step{pod="d"}', "values": "0+1x50 50x50"},
                    {"series": 'finetune_train_total_steps{pod="d"}', "values": "50x100"},
                ],
                "promql_expr_test": [
                    {"expr": alerts["FineTuneProgressStalled"]["expr"], "eval_time": "100m",
                     "exp_samples": [{"labels": 'finetune_train_step{pod="a"}', "value": 40}]},
                    {"expr": alerts["FineTuneProgressStalled"]["expr"], "eval_time": "60m", "exp_samples": []},
                ],
            },
            {   # The operator stops answering scrapes at minute 10.
                "interval": "1m",
                "input_series": [{"series": up, "values": "1x10 0x20"}],
                "alert_rule_test": [
                    {"alertname": "FineTuneOperatorDown", "eval_time": "9m", "exp_alerts": []},
                    {"alertname": "FineTuneOperatorDown", "eval_time": "13m", "exp_alerts": []},
                    {"alertname": "FineTuneOperatorDown", "eval_time": "20m", "exp_alerts": [
                        {"exp_labels": alerts["FineTuneOperatorDown"]["labels"],
                         "exp_annotations": alerts["FineTuneOperatorDown"]["annotations"]}]},
                ],
            },
        ],
    }  # fmt: skip
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    run_promtool(promtool, "test", "rules", "tests.yaml", cwd=tmp_path)


def test_trainer_metrics_pass_promtool_check(promtool: str, tmp_path: Path) -> None:
    metrics = TrainingMetrics()
    metrics.observe(step=3, total_steps=10, epoch=0.3, loss=1.5, learning_rate=1e-4, tokens_per_second=900.0,
                    samples_per_second=3.0, eta_seconds=20.0, new_tokens=4096, new_samples=12)  # fmt: skip
    metrics.gpu_allocated.labels(device="0").set(2**30)
    result = subprocess.run([promtool, "check", "metrics"], input=metrics.exposition().decode(),
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_kind_label_is_spelled_as_the_api_kinds(tmp_path: Path) -> None:
    exprs = dashboard_exprs() + [r["expr"] for g in rendered_rules(tmp_path)["groups"] for r in g["rules"]]
    spelled = {v for e in exprs for v in re.findall(r'\bkind\s*=~?\s*"([^"]*)"', e)}
    assert spelled and spelled <= set(KINDS)
