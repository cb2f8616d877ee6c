"""Where evaluation scores go: eval_results.json and predictions.jsonl beside the adapter, a line in
trainer_log.jsonl, the progress record (→ status.evaluation) and the Prometheus gauges."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from finetune_api.evaluation import SCORE_UNIT, BenchmarkResult, EvaluationStatus, PredictResult, SubjectScore

from ..export.card import CARD, write_run_card
from ..storage import replace_artifact_file
from ..workspace import ADAPTER, EVAL_RESULTS, PREDICTIONS, RESOLVED_SPEC, TRAINER_LOG, Workspace
from .choice import BenchmarkScores
from .predict import Prediction
from .scores import SimilarityScores

MAX_STATUS_SUBJECTS = 256  # the status schema's bound; eval_results.json keeps every subject


def evaluation_status(
    predict: SimilarityScores | None, benchmark: BenchmarkScores | None
) -> EvaluationStatus:
    """The scores as the API's status object (no URIs yet)."""
    predict_result = None
    if predict is not None:
        predict_result = PredictResult(
            samples=predict.samples,
            bleu4=predict.bleu4,
            rouge1=predict.rouge1,
            rouge2=predict.rouge2,
            rouge_l=predict.rouge_l,
        )
    bench_result = None
    if benchmark is not None:
        bench_result = BenchmarkResult(
            accuracy=round(benchmark.accuracy, 4),
            questions=sum(benchmark.total.values()),
            subjects=[
                SubjectScore(subject=s[:256], accuracy=round(benchmark.subject_accuracy(s), 4), questions=n)
                for s, n in list(benchmark.total.items())[:MAX_STATUS_SUBJECTS]
            ],
        )
    return EvaluationStatus(predict=predict_result, benchmark=bench_result)


def log_record(status: EvaluationStatus, step: int) -> dict[str, Any]:
    """One trainer_log.jsonl line with the scores (LLaMA-Factory's predict_* key names)."""
    record: dict[str, Any] = {"step": step}
    if status.predict is not None:
        p = status.predict
        record |= {
            "predict_bleu-4": p.bleu4,
            "predict_rouge-1": p.rouge1,
            "predict_rouge-2": p.rouge2,
            "predict_rouge-l": p.rouge_l,
            "predict_samples": p.samples,
        }
    if status.benchmark is not None:
        record["benchmark_accuracy"] = status.benchmark.accuracy
        record |= {f"benchmark_accuracy/{s.subject}": s.accuracy for s in status.benchmark.subjects}
    return record


def results_document(status: EvaluationStatus, step: int) -> dict[str, Any]:
    """eval_results.json: the step, the unit of every score, and the status object's scores."""
    return {"step": step, "unit": SCORE_UNIT, **status.to_wire()}


def write_predictions(path: Path, predictions: Sequence[Prediction]) -> None:
    """predictions.jsonl: one ``{"prompt", "label", "predict"}`` object per line."""
    with path.open("w", encoding="utf-8") as fh:
        for p in predictions:
            fh.write(json.dumps(p.to_dict(), ensure_ascii=False) + "\n")


def publish_evaluation(
    ws: Workspace, status: EvaluationStatus, predictions: Sequence[Prediction] | None, *, step: int
) -> EvaluationStatus:
    """Write the files beside the adapter, append to (and re-upload) the log, report progress and metrics.

    Returns ``status`` with the URIs of eval_results.json and predictions.jsonl filled in.
    """
    root = ws.store.uri
    if predictions is not None:
        local = ws.work_dir / PREDICTIONS
        write_predictions(local, predictions)
        ws.store.put_file(PREDICTIONS, local)
        status = status.model_copy(update={"predictions": str(root.join(PREDICTIONS))})
    status = status.model_copy(update={"results": str(root.join(EVAL_RESULTS))})
    body = results_document(status, step)
    ws.store.put_bytes(EVAL_RESULTS, json.dumps(body, indent=2).encode(), content_type="application/json")
    with ws.local_log.open("a") as fh:
        fh.write(json.dumps(log_record(status, step)) + "\n")
    ws.store.put_file(TRAINER_LOG, ws.local_log)
    refresh_run_card(ws)
    if ws.reporter is not None:
        ws.reporter.on_evaluation(status)
    return status


def refresh_run_card(ws: Workspace) -> None:
    """Rewrite adapter/README.md with the scores just logged (the card went up with the adapter, before
    evaluation), the adapter's manifest updated with it."""
    adapter = ws.store.child(ADAPTER)
    documents = [d for d in yaml.safe_load_all(ws.store.get_bytes(RESOLVED_SPEC)) if isinstance(d, dict)]
    folder = ws.work_dir / "card"
    folder.mkdir(exist_ok=True)
    write_run_card(folder, name=ws.name, documents=documents, log=ws.local_log, uri=str(adapter.uri))
    replace_artifact_file(folder, adapter, CARD)
