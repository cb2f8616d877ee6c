"""The pt and sft recipe: next-token prediction on plain text (pt) or on responses (sft).

Reads top to bottom: tokenizer → data and evaluation data (fails on bad data before any model is
loaded) → model → adapters → optimizer → Trainer → train (resuming from the newest complete
checkpoint) → save → evaluate (spec.evaluation).
"""

from __future__ import annotations

import logging

from ..data import job_processing_config, make_collator
from ..evaluate import prepare_evaluation, run_evaluation
from ..model import build_optimizer, load_model_and_tokenizer, prepare_model_for_training
from ..workspace import Workspace
from .arguments import build_training_arguments
from .callbacks import run_callbacks
from .label_head import CausalLMTrainer
from .loop import tokenize_datasets, train_and_save
from .recipes import RecipeInputs, TrainOutcome

log = logging.getLogger(__name__)


def run_causal_lm(ws: Workspace, inputs: RecipeInputs) -> TrainOutcome:
    """Train ``ws.spec`` (stage pt or sft) on ``inputs.datasets``."""
    spec = ws.spec
    processing = job_processing_config(spec)

    tokenizer, data = tokenize_datasets(ws, inputs.datasets, processing)
    evaluation = prepare_evaluation(
        spec,
        train=inputs.datasets,
        evaluation_datasets=inputs.evaluation,
        processing=processing,
        tokenizer=tokenizer,
    )

    # Built before the model: under ZeRO-3 the arguments make from_pretrained load the weights sharded.
    args = build_training_arguments(spec, output_dir=ws.work_dir / "trainer", has_eval=data.eval is not None)
    loaded = load_model_and_tokenizer(
        spec.model,
        finetuning=spec.method.finetuning,
        precision=spec.training.precision,
        gradient_checkpointing=spec.training.gradient_checkpointing,
        packing=processing.packing,
    )
    # The KV cache is for generation; with it on, transformers drops the packed per-sample mask.
    loaded.model.config.use_cache = False
    model = prepare_model_for_training(
        loaded.model,
        spec.method,
        adapter=loaded.adapter_path,
        vocab_resized=loaded.vocab_resized,
        llama_pro_blocks=spec.model.llama_pro_blocks,
    )
    optimizer = build_optimizer(model, spec.method, spec.training)

    trainer = CausalLMTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=make_collator(processing, loaded.tokenizer, attn_implementation=loaded.attention),
        processing_class=loaded.tokenizer,
        optimizers=(optimizer, None),
        callbacks=run_callbacks(ws),
        head_on_labels_only=not spec.model.liger_kernel,  # Liger's fused head never builds the logits
    )
    outcome = train_and_save(ws, trainer, loaded.tokenizer, inputs.documents, evaluate=data.eval is not None)
    if ws.is_main and evaluation is not None:  # after the adapter is safe in storage
        run_evaluation(
            ws, evaluation, model=trainer.model, tokenizer=loaded.tokenizer,
            compute_dtype=loaded.compute_dtype, step=outcome.global_step,
        )  # fmt: skip
    return outcome
