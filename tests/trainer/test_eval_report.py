"""Evaluation scores in the progress record and the Prometheus exposition (checked by promtool when
installed), and the stop tokens used for predictions."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from finetune_api.explain import explain
from finetune_trainer.evaluate.choice import BenchmarkScores
from finetune_trainer.evaluate.report import evaluation_status, log_record, results_document
from finetune_trainer.evaluate.scores import SimilarityScores
from finetune_trainer.progress import ProgressReporter, TrainingMetrics


def scores() -> tuple[SimilarityScores, BenchmarkScores]:
    bench = BenchmarkScores()
    for subject, right in [("math", True), ("math", False), ("art", True), ("art", True)]:
        bench.add(subject, right)
    return SimilarityScores(samples=3, bleu4=12.5, rouge1=40.0, rouge2=20.0, rouge_l=35.0), bench


def test_status_and_log_line_carry_every_score() -> None:
    status = evaluation_status(*scores())
    assert (
        status.benchmark is not None and status.benchmark.accuracy == 75.0 and status.benchmark.questions == 4
    )
    assert [(s.subject, s.accuracy, s.questions) for s in status.benchmark.subjects] == [
        ("math", 50.0, 2),
        ("art", 100.0, 2),
    ]
    assert status.to_wire()["predict"] == {
        "samples": 3,
        "bleu4": 12.5,
        "rouge1": 40.0,
        "rouge2": 20.0,
        "rougeL": 35.0,
    }
    line = log_record(status, 7)
    assert line == {
        "step": 7, "predict_bleu-4": 12.5, "predict_rouge-1": 40.0, "predict_rouge-2": 20.0, "predict_rouge-l": 35.0,
        "predict_samples": 3, "benchmark_accuracy": 75.0, "benchmark_accuracy/math": 50.0, "benchmark_accuracy/art": 100.0,
    }  # fmt: skip


def test_scores_say_their_unit_in_the_file_the_log_and_the_field_docs() -> None:
    similarity, bench = scores()
    results = results_document(evaluation_status(similarity, bench), 7)
    assert results["unit"] == "percent" and results["step"] == 7 and results["predict"]["bleu4"] == 12.5
    assert (
        similarity.describe() == "BLEU-4 12.50%, ROUGE-1 40.00%, ROUGE-2 20.00%, ROUGE-L 35.00% (3 samples)"
    )
    for field in ("bleu4", "rouge1", "rouge2", "rougeL"):
        assert "in percent (0-100)" in explain(f"finetunejob.status.evaluation.predict.{field}")
    assert "in percent (0-100)" in explain("finetunejob.status.evaluation.benchmark.accuracy")


def test_reporter_puts_scores_in_the_record_and_the_gauges() -> None:
    metrics = TrainingMetrics()
    before = metrics.exposition().decode()
    assert "finetune_eval_predict_score{" not in before  # labelled gauges expose nothing until set
    reporter = ProgressReporter(metrics=metrics, show_bar=False)
    status = evaluation_status(*scores())
    reporter.on_evaluation(status)
    assert reporter.record.evaluation == status
    assert reporter.record.progress().model_dump().keys().isdisjoint({"evaluation"})
    text = metrics.exposition().decode()
    assert 'finetune_eval_predict_score{metric="bleu-4"} 12.5' in text
    assert 'finetune_eval_predict_score{metric="rouge-l"} 35.0' in text
    assert 'finetune_eval_benchmark_accuracy{subject="all"} 75.0' in text
    assert 'finetune_eval_benchmark_accuracy{subject="math"} 50.0' in text
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed: run hack/install-prometheus.sh")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stderr


def test_answers_stop_at_the_templates_end_of_turn_token(data_tokenizer) -> None:  # type: ignore[no-untyped-def]
    from finetune_trainer.data import get_template
    from finetune_trainer.evaluate.predict import answer_stop_ids

    ids = answer_stop_ids(get_template("auto", data_tokenizer), data_tokenizer)
    assert data_tokenizer.eos_token_id in ids
    assert data_tokenizer.convert_tokens_to_ids("<|im_end|>") in ids
