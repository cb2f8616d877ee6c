"""spec.evaluation end to end: its data read before training (bad data fails before any GPU time is
spent), then, after training, predictions and the benchmark scored and published."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from finetune_api.evaluation import EvaluationSpec, EvaluationStatus
from finetune_api.finetunejob import FineTuneJobSpec
from finetune_api.method import Stage

from ..data import ChatTemplate, DatasetConfig, ProcessingConfig, get_template, prepare_dataset
from ..data.loader import load_rows
from ..workspace import Workspace
from .choice import BenchmarkPlan, plan_benchmark, read_questions, score_benchmark
from .predict import answer_stop_ids, generate_predictions
from .report import evaluation_status, publish_evaluation
from .scores import score_predictions

log = logging.getLogger(__name__)


@dataclass
class EvaluationPlan:
    """What :func:`run_evaluation` scores, prepared before training."""

    spec: EvaluationSpec
    template: ChatTemplate
    cutoff_len: int
    predict_rows: list[dict[str, Any]] | None
    benchmark: BenchmarkPlan | None


def _predict_rows(
    job: FineTuneJobSpec,
    train: Sequence[DatasetConfig],
    configs: Mapping[str, DatasetConfig],
    processing: ProcessingConfig,
    tokenizer: Any,
) -> list[dict[str, Any]]:
    """Prompt rows (prompt ids, reference ids, prompt text) of the evaluation Dataset or the validation split."""
    predict = job.evaluation.predict if job.evaluation is not None else None
    assert predict is not None, "called only for a job with evaluation.predict"
    # The prompt shape (ppo's) encodes the prompt alone and keeps the reference answer as labels.
    prompts = replace(processing, stage=Stage.PPO, packing=False, streaming=False)
    if predict.dataset:
        rows = prepare_dataset([configs[predict.dataset]], replace(prompts, val_size=0.0), tokenizer).train
    else:
        if job.method.stage == Stage.PT or not job.training.val_size:
            raise ValueError(
                "spec.evaluation.predict: without a dataset it predicts on the validation split, which needs "
                "training.valSize and conversations (stage sft)"
            )
        rows = prepare_dataset(train, prompts, tokenizer).eval
        assert rows is not None
    if predict.max_samples:
        rows = rows.select(range(min(predict.max_samples, len(rows))))
    return rows.to_list()


def prepare_evaluation(
    job: FineTuneJobSpec,
    *,
    train: Sequence[DatasetConfig],
    evaluation_datasets: Mapping[str, DatasetConfig],
    processing: ProcessingConfig,
    tokenizer: Any,
) -> EvaluationPlan | None:
    """Read and check everything ``job.evaluation`` needs; None when the job has no evaluation.

    ``train`` are the job's Datasets (the validation split comes from them), ``evaluation_datasets``
    every Dataset ``job.evaluation`` names, by name (`finetune run` found them all before it started).

    Raises:
        ValueError: an unusable setting or Dataset, naming the spec field.
    """
    evaluation = job.evaluation
    if evaluation is None:
        return None
    predict_rows = (
        _predict_rows(job, train, evaluation_datasets, processing, tokenizer) if evaluation.predict else None
    )
    plan = None
    if (bench := evaluation.benchmark) is not None:
        questions = read_questions(
            load_rows(evaluation_datasets[bench.dataset], cache_dir=processing.cache_dir),
            field_name="spec.evaluation.benchmark.dataset",
        )
        shots = None
        if bench.shots_dataset:
            rows = load_rows(evaluation_datasets[bench.shots_dataset], cache_dir=processing.cache_dir)
            shots = read_questions(rows, field_name="spec.evaluation.benchmark.shotsDataset")
        plan = plan_benchmark(
            questions,
            n_shot=bench.n_shot,
            subjects=bench.subjects,
            shots=shots,
            max_samples=bench.max_samples,
        )
    template = get_template(processing.template, tokenizer)
    return EvaluationPlan(evaluation, template, processing.cutoff_len, predict_rows, plan)


@contextlib.contextmanager
def _autocast(model: torch.nn.Module, dtype: torch.dtype) -> Iterator[None]:
    """Mixed precision as in training: freeze/LoRA leave fp32 trainable weights beside bf16/fp16 ones."""
    device = next(model.parameters()).device.type
    with torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
        yield


def run_evaluation(
    ws: Workspace,
    plan: EvaluationPlan,
    *,
    model: torch.nn.Module,
    tokenizer: Any,
    compute_dtype: torch.dtype,
    step: int,
) -> EvaluationStatus:
    """Score the trained ``model`` (rank 0 only) and publish the results; returns the status part."""
    predictions = similarity = bench = None
    with _autocast(model, compute_dtype):
        if plan.predict_rows is not None and plan.spec.predict is not None:
            predictions = generate_predictions(
                model,
                tokenizer,
                plan.predict_rows,
                plan.spec.predict.generation,
                stop_ids=answer_stop_ids(plan.template, tokenizer),
                batch_size=plan.spec.predict.batch_size,
            )
            similarity = score_predictions([p.predict for p in predictions], [p.label for p in predictions])
            log.info("predict: %s", similarity.describe())
        if plan.benchmark is not None and plan.spec.benchmark is not None:
            bench = score_benchmark(
                model,
                tokenizer,
                plan.template,
                plan.benchmark,
                language=plan.spec.benchmark.language,
                batch_size=plan.spec.benchmark.batch_size,
                cutoff_len=plan.cutoff_len,
            )
            log.info("benchmark: accuracy %.2f%% of %d questions", bench.accuracy, sum(bench.total.values()))
    return publish_evaluation(ws, evaluation_status(similarity, bench), predictions, step=step)
