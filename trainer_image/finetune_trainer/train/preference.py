"""The dpo, orpo, simpo and kto recipe: preference optimisation with ``method.preference.loss``.

Reads top to bottom: tokenizer → pairwise (or kto) rows, refused before any model is loaded if
the data does not fit → policy model → adapters → reference (none for LoRA: adapters disabled;
none for orpo/simpo) → PreferenceTrainer → train (resuming) → save.
"""

from __future__ import annotations

from transformers import TrainingArguments

from finetune_api.method import Stage

from ..data import PreparedData, Shape, job_processing_config, make_collator
from ..data.processor import OUTPUT_COLUMNS
from ..model import build_optimizer, load_model_and_tokenizer, prepare_model_for_training
from ..workspace import Workspace
from .arguments import training_arguments
from .callbacks import run_callbacks
from .loop import tokenize_datasets, train_and_save
from .preference_trainer import PreferenceTrainer
from .recipes import RecipeInputs, TrainOutcome
from .reference import preference_of, reference_model_for


def check_rows(data: PreparedData, shape: Shape, stage: Stage) -> None:
    """Refuse rows that lack what ``stage`` trains on (chosen/rejected pairs, or kto tags), naming the fields.

    Raises:
        ValueError: the prepared rows miss a column the stage needs.
    """
    present = data.train.column_names
    missing = [c for c in OUTPUT_COLUMNS[shape] if present is not None and c not in present]
    if missing:
        need = "ranking: true with chosen/rejected columns" if shape is Shape.PAIRWISE else "columns.ktoTag"
        raise ValueError(
            f"spec.datasets: stage {stage.value} needs rows with {', '.join(missing)} (a Dataset with {need})"
        )


def run_preference(ws: Workspace, inputs: RecipeInputs) -> TrainOutcome:
    """Train ``ws.spec`` (stage dpo, orpo, simpo or kto) on ``inputs.datasets``."""
    spec = ws.spec
    preference = preference_of(spec)
    processing = job_processing_config(spec)

    _, data = tokenize_datasets(ws, inputs.datasets, processing)
    check_rows(data, processing.shape, spec.method.stage)

    loaded = load_model_and_tokenizer(
        spec.model,
        finetuning=spec.method.finetuning,
        precision=spec.training.precision,
        gradient_checkpointing=spec.training.gradient_checkpointing,
    )
    loaded.model.config.use_cache = False
    model = prepare_model_for_training(
        loaded.model, spec.method, adapter=loaded.adapter_path, vocab_resized=loaded.vocab_resized
    )
    reference = reference_model_for(spec, model)
    optimizer = build_optimizer(model, spec.method, spec.training)

    args = training_arguments(spec, output_dir=ws.work_dir / "trainer", has_eval=data.eval is not None)
    trainer = PreferenceTrainer(
        model=model,
        args=TrainingArguments(**args),
        preference=preference,
        ref_model=reference,
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=make_collator(processing, loaded.tokenizer),
        processing_class=loaded.tokenizer,
        optimizers=(optimizer, None),
        callbacks=run_callbacks(ws),
    )
    return train_and_save(ws, trainer, loaded.tokenizer, inputs.documents, evaluate=data.eval is not None)
