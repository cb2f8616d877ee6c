"""The ppo recipe: RLHF with model sharing (LLaMA-Factory's design, implemented here since TRL 1.13
dropped PPO).

One base model in memory: the policy is its LoRA adapter, the reference is the base with adapters
disabled, the critic is a value head on the policy's hidden states, and an rm job's adapter is a
second named adapter on the same base (rewardModelType lora); a full reward model
(rewardModelType full) is the one separate model.

Reads top to bottom: checks → tokenizer → prompts → model + policy adapter → reward → value head →
optimizer and schedule → resume → PPO loop → save the policy adapter (with its value head).
"""

from __future__ import annotations

import logging
import os

import torch
from peft import PeftModel
from torch.utils.data import DataLoader
from transformers import get_scheduler

from finetune_api.finetunejob import FineTuneJobSpec
from finetune_api.method import PpoSpec

from ..data import (
    job_processing_config,
    make_collator,
    pad_token_id,
    stop_token_ids,
)
from ..model import load_model_and_tokenizer, prepare_model_for_training
from ..model.sources import fetch_source
from ..workspace import Workspace
from .callbacks import rescale_learning_rate, run_callbacks
from .loop import save_final, tokenize_datasets
from .ppo_loop import PpoLoop, PpoSettings, mean_over, total_steps
from .ppo_models import (
    REWARD_FIELD,
    RewardScorer,
    ValueHead,
    attach_reward_adapter,
    load_full_reward,
    load_policy_checkpoint,
    save_value_head,
)
from .recipes import RecipeInputs, TrainOutcome

log = logging.getLogger(__name__)


def check_ppo_spec(spec: FineTuneJobSpec) -> PpoSpec:
    """The ppo block, after refusing what model-sharing PPO cannot do (naming the field).

    Raises:
        ValueError: no ppo block, or launched as several processes.
    """
    ppo = spec.method.ppo
    if ppo is None:
        raise ValueError("spec.method.ppo: stage ppo needs a ppo block")
    # What the spec alone decides (LoRA, no LoRA+, no DeepSpeed, one GPU, AdamW) is the API's rule
    # (finetune_api.rules.ppo_limits); what only the launch decides is checked here.
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("spec.resources: stage ppo runs in one process on one device; launch one process")
    return ppo


def build_reward(ppo: PpoSpec, model: PeftModel, tokenizer: object, dtype: torch.dtype) -> RewardScorer:
    """The reward: the rm adapter attached to the shared model, or a separate full reward model."""
    path = fetch_source(ppo.reward_model, field=REWARD_FIELD)
    if ppo.reward_model_type == "lora":
        return attach_reward_adapter(model, path)
    reward = load_full_reward(path, policy_tokenizer=tokenizer, dtype=dtype)
    reward.model.to(next(model.parameters()).device)
    return reward


def disable_dropout(model: torch.nn.Module) -> None:
    """PPO's probability ratio starts at exactly 1 only when the forward pass is deterministic."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def run_ppo(ws: Workspace, inputs: RecipeInputs) -> TrainOutcome:
    """Train ``ws.spec`` (stage ppo) on the prompts of ``inputs.datasets``."""
    spec = ws.spec
    ppo = check_ppo_spec(spec)
    processing = job_processing_config(spec)

    _, data = tokenize_datasets(ws, inputs.datasets, processing)

    loaded = load_model_and_tokenizer(
        spec.model,
        finetuning=spec.method.finetuning,
        precision=spec.training.precision,
        gradient_checkpointing=spec.training.gradient_checkpointing,
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = prepare_model_for_training(
        loaded.model, spec.method, adapter=loaded.adapter_path, vocab_resized=loaded.vocab_resized
    )
    assert isinstance(model, PeftModel)
    model.to(device)
    disable_dropout(model)
    reward = build_reward(ppo, model, loaded.tokenizer, loaded.compute_dtype)
    value_head = ValueHead(model.config.get_text_config().hidden_size).to(device)

    t = spec.training
    settings = PpoSettings(
        ppo=ppo,
        training=t,
        max_steps=0,
        stop_token_ids=stop_token_ids(data.template, loaded.tokenizer),
        pad_token_id=pad_token_id(loaded.tokenizer),
    )
    train_rows = data.train.remove_columns([c for c in ("labels", "prompt") if c in data.train.column_names])
    loader = DataLoader(
        train_rows,
        batch_size=settings.rollout_batch,
        shuffle=True,
        drop_last=len(train_rows) >= settings.rollout_batch,
        collate_fn=make_collator(processing, loaded.tokenizer),
        generator=torch.Generator().manual_seed(t.seed),
    )
    settings.max_steps = total_steps(t.max_steps, t.epochs, len(train_rows), settings.rollout_batch)
    policy_params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": policy_params}, {"params": list(value_head.parameters())}],
        lr=t.learning_rate,
        weight_decay=t.weight_decay,
    )
    scheduler = get_scheduler(
        t.lr_scheduler,
        optimizer,
        num_warmup_steps=round(t.warmup_ratio * settings.max_steps),
        num_training_steps=settings.max_steps,
    )

    loop = PpoLoop(
        model=model,
        value_head=value_head,
        reward=reward,
        optimizer=optimizer,
        scheduler=scheduler,
        settings=settings,
        callbacks=run_callbacks(ws),
        output_dir=ws.work_dir / "trainer",
    )
    resume = ws.resume_checkpoint()
    if resume is not None:
        loop.restore(resume, load_policy_checkpoint(model, value_head, resume))
        rescale_learning_rate(optimizer, scheduler, ws.learning_rate_scale)  # --resume with a new rate
    loop.train(loader)

    adapter_uri = None
    if ws.is_main:
        final = ws.work_dir / "final"
        model.save_pretrained(str(final), selected_adapters=["default"])
        save_value_head(value_head, final)
        loaded.tokenizer.save_pretrained(str(final))
        adapter_uri = save_final(ws, final, inputs.documents)
    metrics = {key: mean_over(loop.history, key) for key in ("reward", "kl", "loss")}
    return TrainOutcome(
        global_step=loop.state.global_step,
        train_loss=metrics["loss"],
        adapter_uri=adapter_uri,
        resumed_from=str(resume) if resume else None,
        metrics=metrics,
    )
