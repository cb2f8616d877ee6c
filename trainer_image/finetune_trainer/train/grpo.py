"""The grpo recipe: group relative policy optimisation with TRL's GRPOTrainer.

Reads top to bottom: tokenizer → prompt rows (the rendered prompt and its reference answer) →
model + adapters → rewards (the spec's built-in functions and/or a reward model) → GRPOConfig →
train (resuming) → save. With LoRA the reference policy is the base with the adapter disabled.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase
from trl import GRPOConfig, GRPOTrainer

from finetune_api.finetunejob import FineTuneJobSpec
from finetune_api.method import GrpoSpec

from ..data import job_processing_config
from ..data.config import AnyDataset
from ..model import build_optimizer, load_model_and_tokenizer, prepare_model_for_training
from ..model.sources import fetch_source
from ..workspace import Workspace
from .arguments import training_arguments
from .callbacks import run_callbacks
from .grpo_rewards import REFERENCE_COLUMN, builtin_rewards
from .loop import tokenize_datasets, train_and_save
from .recipes import RecipeInputs, TrainOutcome

log = logging.getLogger(__name__)
REWARD_MODEL_FIELD = "spec.method.grpo.rewardModel"


def grpo_of(spec: FineTuneJobSpec) -> GrpoSpec:
    """The grpo block (its batch holds whole groups: finetune_api.rules.grpo_whole_groups).

    Raises:
        ValueError: no grpo block.
    """
    grpo = spec.method.grpo
    if grpo is None:
        raise ValueError("spec.method.grpo: stage grpo needs a grpo block")
    return grpo


def grpo_rows(ds: AnyDataset, tokenizer: PreTrainedTokenizerBase) -> AnyDataset:
    """TRL's rows: ``prompt`` (the rendered template, generated from as text) and ``reference`` (the answer)."""

    def decode(batch: dict[str, list[Any]]) -> dict[str, list[str]]:
        return {REFERENCE_COLUMN: tokenizer.batch_decode(batch["labels"], skip_special_tokens=True)}

    ds = ds.map(decode, batched=True)
    return ds.select_columns(["prompt", REFERENCE_COLUMN])


def load_reward_model(
    uri: str, spec: FineTuneJobSpec, tokenizer: PreTrainedTokenizerBase
) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """A frozen sequence-classification reward model: an rm job's adapter on this job's base (merged), or a full model."""
    path = Path(fetch_source(uri, field=REWARD_MODEL_FIELD))
    if (path / "adapter_config.json").is_file():
        base = AutoModelForSequenceClassification.from_pretrained(
            fetch_source(spec.model.source, field="spec.model.source"), num_labels=1
        )
        model: torch.nn.Module = PeftModel.from_pretrained(base, str(path)).merge_and_unload()
        reward_tokenizer = tokenizer
    else:
        model = AutoModelForSequenceClassification.from_pretrained(str(path))
        reward_tokenizer = AutoTokenizer.from_pretrained(str(path))
        if reward_tokenizer.pad_token is None:
            reward_tokenizer.pad_token = reward_tokenizer.eos_token
    if model.config.num_labels != 1:
        raise ValueError(
            f"{REWARD_MODEL_FIELD}: a reward model has one output label, this one has {model.config.num_labels}"
        )
    model.config.pad_token_id = reward_tokenizer.pad_token_id  # the head pools the last non-pad token
    return model.requires_grad_(False).eval(), reward_tokenizer


def run_grpo(ws: Workspace, inputs: RecipeInputs) -> TrainOutcome:
    """Train ``ws.spec`` (stage grpo) on the prompts of ``inputs.datasets``."""
    spec = ws.spec
    grpo = grpo_of(spec)
    processing = job_processing_config(spec)
    reward_funcs: list[Any]
    reward_funcs, weights = builtin_rewards(
        grpo.rewards, inputs.datasets
    )  # bad reward settings fail before any work

    tokenizer, data = tokenize_datasets(ws, inputs.datasets, processing)
    if data.eval is not None:
        log.warning("spec.training.valSize: stage grpo does not evaluate; the validation rows are left out")
    reward_tokenizers: list[PreTrainedTokenizerBase | None] = [None] * len(reward_funcs)
    if grpo.reward_model is not None:
        reward_model, reward_tokenizer = load_reward_model(grpo.reward_model, spec, tokenizer)
        reward_funcs.append(reward_model)
        reward_tokenizers.append(reward_tokenizer)
        weights.append(1.0)

    loaded = load_model_and_tokenizer(
        spec.model,
        finetuning=spec.method.finetuning,
        precision=spec.training.precision,
        gradient_checkpointing=spec.training.gradient_checkpointing,
    )
    model = prepare_model_for_training(
        loaded.model, spec.method, adapter=loaded.adapter_path, vocab_resized=loaded.vocab_resized
    )
    optimizer = build_optimizer(model, spec.method, spec.training)

    gen = grpo.generation
    args = training_arguments(
        spec,
        output_dir=ws.work_dir / "trainer",
        has_eval=False,
        extra={
            "num_generations": grpo.num_generations,
            "beta": grpo.beta,
            "reward_weights": weights,
            "max_completion_length": gen.max_new_tokens,
            "temperature": gen.temperature,
            "top_p": gen.top_p,
            "top_k": gen.top_k,
            "gradient_checkpointing": False,  # the loader already applied training.gradientCheckpointing
            "log_completions": False,
            # GRPO's batches are prompts, not input_ids; TRL logs the generated tokens as num_tokens.
            "include_num_input_tokens_seen": "no",
        },
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=GRPOConfig(**args),
        train_dataset=grpo_rows(data.train, loaded.tokenizer),
        processing_class=loaded.tokenizer,
        reward_processing_classes=reward_tokenizers,
        callbacks=run_callbacks(ws),
        optimizers=(optimizer, None),
    )
    return train_and_save(ws, trainer, loaded.tokenizer, inputs.documents, evaluate=False)
