"""Evaluation after training (spec.evaluation): predictions scored with BLEU-4 / ROUGE-1/2/L and
multiple-choice benchmarks (MMLU / C-Eval layout).

In a recipe::

    plan = prepare_evaluation(spec, train=inputs.datasets, evaluation_datasets=inputs.evaluation,
                              processing=processing, tokenizer=tokenizer)
    ...train, save...
    if plan is not None and ws.is_main:
        run_evaluation(ws, plan, model=trainer.model, tokenizer=tokenizer, compute_dtype=dtype, step=step)
"""

from .choice import (
    CHOICES,
    BenchmarkPlan,
    BenchmarkScores,
    Question,
    plan_benchmark,
    read_questions,
    score_benchmark,
)
from .predict import Prediction, generate_predictions
from .report import evaluation_status, log_record
from .runner import EvaluationPlan, prepare_evaluation, run_evaluation
from .scores import SimilarityScores, score_predictions, sentence_bleu4

__all__ = [
    "CHOICES",
    "BenchmarkPlan",
    "BenchmarkScores",
    "EvaluationPlan",
    "Prediction",
    "Question",
    "SimilarityScores",
    "evaluation_status",
    "generate_predictions",
    "log_record",
    "plan_benchmark",
    "prepare_evaluation",
    "read_questions",
    "run_evaluation",
    "score_benchmark",
    "score_predictions",
    "sentence_bleu4",
]
