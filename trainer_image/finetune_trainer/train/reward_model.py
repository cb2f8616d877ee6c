"""The rm recipe: a reward model (sequence-classification head) trained on chosen/rejected pairs.

Reads top to bottom: tokenizer → pairwise rows → model with a one-logit head → adapters → TRL's
RewardTrainer (loss −log σ(r_chosen − r_rejected); logs accuracy and margin, ``eval_accuracy`` on
the validation split) → train (resuming) → save. TRL pads our pre-tokenised rows itself.
"""

from __future__ import annotations

from trl import RewardConfig, RewardTrainer

from ..data import job_processing_config
from ..data.config import AnyDataset
from ..model import build_optimizer, load_model_and_tokenizer, prepare_model_for_training
from ..workspace import Workspace
from .arguments import training_arguments
from .callbacks import run_callbacks
from .loop import tokenize_datasets, train_and_save
from .preference import check_rows
from .recipes import RecipeInputs, TrainOutcome


def reward_rows(ds: AnyDataset) -> AnyDataset:
    """Pairwise rows in TRL's pre-tokenised reward layout: whole sequences as ``chosen_ids``/``rejected_ids``."""
    ds = ds.select_columns(["chosen_input_ids", "rejected_input_ids"])
    return ds.rename_columns({"chosen_input_ids": "chosen_ids", "rejected_input_ids": "rejected_ids"})


def run_reward_model(ws: Workspace, inputs: RecipeInputs) -> TrainOutcome:
    """Train ``ws.spec`` (stage rm) on ``inputs.datasets``."""
    spec = ws.spec
    processing = job_processing_config(spec)

    _, data = tokenize_datasets(ws, inputs.datasets, processing)
    check_rows(data, processing.shape, spec.method.stage)

    loaded = load_model_and_tokenizer(
        spec.model,
        finetuning=spec.method.finetuning,
        precision=spec.training.precision,
        gradient_checkpointing=spec.training.gradient_checkpointing,
        head="sequence_classification",
    )
    loaded.model.config.use_cache = False
    model = prepare_model_for_training(
        loaded.model, spec.method, adapter=loaded.adapter_path, vocab_resized=loaded.vocab_resized
    )
    optimizer = build_optimizer(model, spec.method, spec.training)

    args = training_arguments(
        spec,
        output_dir=ws.work_dir / "trainer",
        has_eval=data.eval is not None,
        # Rows are already cut to training.cutoffLen by the data worker; TRL must not drop any.
        extra={"max_length": None, "dataset_num_proc": None, "pad_to_multiple_of": 8},
    )
    trainer = RewardTrainer(
        model=model,
        args=RewardConfig(**args),
        train_dataset=reward_rows(data.train),
        eval_dataset=reward_rows(data.eval) if data.eval is not None else None,
        processing_class=loaded.tokenizer,
        optimizers=(optimizer, None),
        callbacks=run_callbacks(ws),
    )
    return train_and_save(ws, trainer, loaded.tokenizer, inputs.documents, evaluate=data.eval is not None)
