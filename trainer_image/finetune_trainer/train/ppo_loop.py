"""The PPO loop: rollout → reward → reference and old log-probs → advantages → PPO epochs → KL control.

Batching follows LLaMA-Factory: a rollout holds ``perDeviceBatchSize × gradientAccumulationSteps ×
bufferSize`` prompts; each PPO epoch walks it in optimizer steps of ``perDeviceBatchSize ×
gradientAccumulationSteps`` (mini-batches of ``perDeviceBatchSize``); the LR schedule advances once
per rollout. The Workspace's Trainer callbacks (progress, JSONL log, checkpoint upload) are driven
through transformers' CallbackHandler, so a PPO run reports and checkpoints like every other stage.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch.utils.data import DataLoader
from transformers import DefaultFlowCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import CallbackHandler

from finetune_api.finetunejob import TrainingSpec
from finetune_api.method import GenerationSpec, PpoSpec

from .ppo_core import (
    KLController,
    RunningMoments,
    clipped_policy_loss,
    clipped_value_loss,
    gae_advantages,
    kl_penalized_rewards,
    masked_whiten,
)
from .ppo_models import POLICY_ADAPTER, RewardScorer, Rollout, ValueHead, policy_forward, save_value_head

INIT_KL_COEF = 0.2  # TRL's and LLaMA-Factory's default
GAMMA, LAM = 1.0, 0.95
CLIP_RANGE, CLIP_RANGE_VALUE, VALUE_COEF = 0.2, 0.2, 0.1


@dataclass
class PpoSettings:
    """The loop's settings: the spec's ppo and training sections, and what only the run knows."""

    ppo: PpoSpec
    training: TrainingSpec
    max_steps: int
    """Optimisation steps: training.maxSteps, else training.epochs over the prompts (:func:`total_steps`)."""
    stop_token_ids: list[int]
    pad_token_id: int

    @property
    def backward_batch(self) -> int:
        return self.training.per_device_batch_size * self.training.gradient_accumulation_steps

    @property
    def rollout_batch(self) -> int:
        return self.backward_batch * self.ppo.buffer_size


def select(rollout: Rollout, rows: torch.Tensor) -> Rollout:
    """The rows ``rows`` of a rollout."""
    return Rollout(
        rollout.input_ids[rows],
        rollout.attention_mask[rows],
        rollout.prompt_length,
        rollout.response_mask[rows],
    )


def response_mask_of(responses: torch.Tensor, stop_ids: torch.Tensor) -> torch.Tensor:
    """1 on each response token up to and including its first stop token, 0 after it."""
    is_stop = torch.isin(responses, stop_ids).long()
    after_first_stop = (is_stop.cumsum(dim=1) - is_stop) > 0
    return (~after_first_stop).long()


class PpoLoop:
    """Owns the optimisation state of one PPO run; ``train`` runs it to ``max_steps``."""

    def __init__(
        self,
        *,
        model: PeftModel,
        value_head: ValueHead,
        reward: RewardScorer,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        settings: PpoSettings,
        callbacks: list[Any],
        output_dir: Path,
    ) -> None:
        self.model, self.value_head, self.reward = model, value_head, reward
        self.optimizer, self.scheduler, self.s = optimizer, scheduler, settings
        self.output_dir = output_dir
        self.kl_ctl = KLController(INIT_KL_COEF, settings.ppo.target_kl)
        self.score_moments = RunningMoments()
        self.device = next(model.parameters()).device
        self.args = TrainingArguments(
            output_dir=str(output_dir), report_to=[], use_cpu=self.device.type == "cpu"
        )
        self.state = TrainerState(max_steps=settings.max_steps, logging_steps=settings.training.logging_steps)
        self.control = TrainerControl()
        # DefaultFlowCallback only silences the handler's warning: this loop decides when to log and save.
        self.handler = CallbackHandler([DefaultFlowCallback(), *callbacks], model, None, optimizer, scheduler)
        self.generator = torch.Generator().manual_seed(settings.training.seed)
        self.history: list[dict[str, float]] = []

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad] + list(self.value_head.parameters())

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor]) -> Rollout:
        """Sample one response per prompt with the policy adapter (KV cache on, dropout off)."""
        gen: GenerationSpec = self.s.ppo.generation
        prompt_ids = batch["input_ids"].to(self.device)
        prompt_mask = batch["attention_mask"].to(self.device)
        was_training = self.model.training
        self.model.eval()
        out = self.model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            do_sample=True,
            max_new_tokens=gen.max_new_tokens,
            temperature=gen.temperature,
            top_p=gen.top_p,
            top_k=gen.top_k,
            eos_token_id=self.s.stop_token_ids,
            pad_token_id=self.s.pad_token_id,
            use_cache=True,
        )
        self.model.train(was_training)
        responses = out[:, prompt_ids.shape[1] :]
        mask = response_mask_of(responses, torch.tensor(self.s.stop_token_ids, device=self.device))
        responses = responses.masked_fill(mask == 0, self.s.pad_token_id)
        return Rollout(
            torch.cat([prompt_ids, responses], dim=1),
            torch.cat([prompt_mask, mask], dim=1),
            prompt_ids.shape[1],
            mask,
        )

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One PPO step on one batch of prompts; returns its statistics."""
        rollout = self.generate(batch)
        mask = rollout.response_mask.float()
        temperature = self.s.ppo.generation.temperature
        with torch.no_grad():
            raw_scores = self.reward(rollout).float()
            scores = raw_scores
            if self.s.ppo.score_norm:
                self.score_moments.update(raw_scores)
                scores = self.score_moments.normalize(raw_scores)
            old_logprobs, old_values = policy_forward(
                self.model, self.value_head, rollout, temperature=temperature
            )
            with self.model.disable_adapter():  # the reference policy: the base model, no second copy
                ref_logprobs, _ = policy_forward(self.model, None, rollout, temperature=temperature)
            rewards, kl = kl_penalized_rewards(
                scores, old_logprobs, ref_logprobs, mask, kl_coef=self.kl_ctl.value
            )
            if self.s.ppo.whiten_rewards:
                rewards = masked_whiten(rewards, mask, shift_mean=False) * mask
            assert old_values is not None
            advantages, returns = gae_advantages(rewards, old_values, mask, gamma=GAMMA, lam=LAM)
        losses = self.optimize(rollout, old_logprobs, old_values, advantages, returns)
        self.scheduler.step()
        mean_kl = kl.sum(dim=1).mean().item()
        stats = {
            **losses,
            "reward": raw_scores.mean().item(),
            "kl": mean_kl,
            "kl_coef": self.kl_ctl.value,
            "response_length": rollout.response_mask.sum(dim=1).float().mean().item(),
        }
        self.kl_ctl.update(mean_kl, rollout.input_ids.shape[0])
        self.state.num_input_tokens_seen += int(rollout.attention_mask.sum())
        return stats

    def optimize(
        self,
        rollout: Rollout,
        old_logprobs: torch.Tensor,
        old_values: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
    ) -> dict[str, float]:
        """``ppo.epochs`` passes of clipped policy and value updates over the rollout."""
        size = rollout.input_ids.shape[0]
        params = self.trainable_parameters()
        temperature = self.s.ppo.generation.temperature
        totals = {"loss": 0.0, "policy_loss": 0.0, "value_loss": 0.0, "clip_fraction": 0.0}
        count = 0
        self.model.train()
        for _ in range(self.s.ppo.epochs):
            order = torch.randperm(size, generator=self.generator).to(self.device)
            for start in range(0, size, self.s.backward_batch):
                backward_rows = order[start : start + self.s.backward_batch]
                self.optimizer.zero_grad(set_to_none=True)
                for rows in backward_rows.split(self.s.training.per_device_batch_size):
                    sub, mask = select(rollout, rows), rollout.response_mask[rows].float()
                    logprobs, values = policy_forward(
                        self.model, self.value_head, sub, temperature=temperature
                    )
                    assert values is not None
                    pg, clip_frac = clipped_policy_loss(
                        logprobs, old_logprobs[rows], advantages[rows], mask, clip=CLIP_RANGE
                    )
                    vf = clipped_value_loss(
                        values, old_values[rows], returns[rows], mask, clip=CLIP_RANGE_VALUE
                    )
                    loss = pg + VALUE_COEF * vf
                    (loss * len(rows) / len(backward_rows)).backward()
                    for key, value in (
                        ("loss", loss),
                        ("policy_loss", pg),
                        ("value_loss", vf),
                        ("clip_fraction", clip_frac),
                    ):
                        totals[key] += value.item()
                    count += 1
                if self.s.training.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, self.s.training.max_grad_norm)
                self.optimizer.step()
        return {k: v / max(count, 1) for k, v in totals.items()}

    def batches(self, loader: DataLoader[Any], skip: int) -> Iterator[dict[str, torch.Tensor]]:
        """Endless rollout batches, reshuffled each pass; the first ``skip`` are passed over (resume)."""
        seen = 0
        while True:
            for batch in loader:
                seen += 1
                if seen > skip:
                    yield batch

    def train(self, loader: DataLoader[Any]) -> None:
        """Run PPO steps until ``max_steps``, logging and checkpointing on the spec's intervals."""
        self.handler.on_train_begin(self.args, self.state, self.control)
        per_epoch = max(len(loader), 1)
        batches = self.batches(loader, skip=self.state.global_step)
        while self.state.global_step < self.s.max_steps:
            stats = self.step(next(batches))
            self.history.append(stats)
            self.state.global_step += 1
            self.state.epoch = self.state.global_step / per_epoch
            self.handler.on_step_end(self.args, self.state, self.control)  # the bar moves every step
            if (
                self.state.global_step % self.s.training.logging_steps == 0
                or self.state.global_step == self.s.max_steps
            ):
                self.log(stats)
            if (
                self.state.global_step % self.s.training.save_steps == 0
                or self.state.global_step == self.s.max_steps
            ):
                self.save_checkpoint()
        self.handler.on_train_end(self.args, self.state, self.control)

    def log(self, stats: dict[str, float]) -> None:
        logs = {**stats, "learning_rate": self.scheduler.get_last_lr()[0]}
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self.handler.on_log(self.args, self.state, self.control, logs)

    def save_checkpoint(self) -> None:
        """``checkpoint-<step>``: policy adapter, value head, optimizer, scheduler and loop state; then uploaded."""
        folder = self.output_dir / f"checkpoint-{self.state.global_step}"
        self.model.save_pretrained(str(folder), selected_adapters=[POLICY_ADAPTER])
        save_value_head(self.value_head, folder)
        torch.save(self.optimizer.state_dict(), folder / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), folder / "scheduler.pt")
        state = {
            "global_step": self.state.global_step,
            "kl_coef": self.kl_ctl.value,
            "score_moments": asdict(self.score_moments),
            "generator": self.generator.get_state().tolist(),
        }
        (folder / "ppo_state.json").write_text(json.dumps(state))
        self.handler.on_save(self.args, self.state, self.control)

    def restore(self, folder: Path, state: dict[str, Any]) -> None:
        """Continue from a checkpoint written by :meth:`save_checkpoint` (adapter and head already loaded)."""
        self.optimizer.load_state_dict(
            torch.load(folder / "optimizer.pt", map_location=self.device, weights_only=True)
        )
        self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
        self.state.global_step = int(state["global_step"])
        self.kl_ctl.value = float(state["kl_coef"])
        self.score_moments = RunningMoments(**state["score_moments"])
        self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))


def total_steps(max_steps: int | None, epochs: float, num_prompts: int, rollout_batch: int) -> int:
    """PPO steps: ``training.maxSteps``, else ``epochs`` passes over the prompts in rollouts."""
    if max_steps:
        return max_steps
    return max(1, math.ceil(epochs * math.ceil(num_prompts / rollout_batch)))


def mean_over(history: list[dict[str, float]], key: str) -> float:
    """Mean of one statistic over a run's steps (NaN when there are none)."""
    values = [h[key] for h in history if key in h]
    return sum(values) / len(values) if values else float("nan")
