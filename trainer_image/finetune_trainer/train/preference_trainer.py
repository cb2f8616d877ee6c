"""A Trainer for the preference stages on the data worker's own batches.

dpo/orpo/simpo read :class:`~finetune_trainer.data.PairwiseCollator` batches (chosen rows, then
rejected rows) and kto reads :class:`~finetune_trainer.data.KtoCollator` batches. TRL's trainers
re-tokenise text themselves, and ORPO/SimPO live in its experimental package with yet another
data layout, so the losses (``preference_losses``) run here on the rows the data worker already
templated, truncated and cached. The reference is ``ref_model`` when given; with ``ref_model=None``
and a LoRA policy it is the same model with its adapters disabled (no second copy in memory).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from peft import PeftModel
from transformers import Trainer

from finetune_api.method import PreferenceLoss, PreferenceSpec

from .preference_losses import REFERENCE_FREE, SequenceLogps, kto_loss, pairwise_loss, sequence_logps

Batch = dict[str, torch.Tensor]


class PreferenceTrainer(Trainer):
    """transformers' Trainer with ``method.preference``'s loss; logs rewards, margins and accuracies."""

    def __init__(
        self, *args: Any, preference: PreferenceSpec, ref_model: torch.nn.Module | None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.preference = preference
        needs_reference = preference.loss not in REFERENCE_FREE
        if needs_reference and ref_model is None and not isinstance(self.model, PeftModel):
            raise ValueError(
                f"method.preference.loss: {preference.loss.value} needs a reference model: "
                "use finetuning lora, or give a frozen reference (preference.referenceModel)"
            )
        self.ref_model = ref_model.to(self.args.device).eval() if ref_model is not None else None
        # Our losses are already means over the batch: the Trainer must still divide by accumulation steps.
        self.model_accepts_loss_kwargs = False
        self._metrics: dict[str, defaultdict[str, list[float]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: Batch,
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        if self.preference.loss == PreferenceLoss.KTO:
            loss = self._kto_loss(model, inputs)
        else:
            loss = self._pairwise_loss(model, inputs)
        return (loss, {}) if return_outputs else loss

    def _pairwise_loss(self, model: torch.nn.Module, inputs: Batch) -> torch.Tensor:
        pref = self.preference
        chosen, rejected = self._logps(model, inputs).split()
        ref_chosen = ref_rejected = None
        if pref.loss not in REFERENCE_FREE:
            ref_chosen, ref_rejected = self._reference_logps(model, inputs).split()
        out = pairwise_loss(
            pref.loss,
            chosen,
            rejected,
            beta=pref.beta,
            simpo_gamma=pref.simpo_gamma,
            ref_chosen=ref_chosen,
            ref_rejected=ref_rejected,
        )
        loss = out.losses.mean()
        if pref.ftx > 0:  # the SFT loss of the chosen answers, mixed in
            loss = loss + pref.ftx * (-chosen.mean).mean()
        self._record("rewards/chosen", out.chosen_rewards)
        self._record("rewards/rejected", out.rejected_rewards)
        self._record("rewards/margins", out.chosen_rewards - out.rejected_rewards)
        self._record("rewards/accuracies", (out.chosen_rewards > out.rejected_rewards).float())
        self._record("logps/chosen", chosen.total.detach())
        self._record("logps/rejected", rejected.total.detach())
        return loss

    def _kto_loss(self, model: torch.nn.Module, inputs: Batch) -> torch.Tensor:
        pref = self.preference
        kl_inputs = {key.removeprefix("kl_"): value for key, value in inputs.items() if key.startswith("kl_")}
        policy = self._logps(model, inputs)
        with torch.no_grad():  # the KL estimate is a detached reference point
            policy_kl = self._logps(model, kl_inputs)
        desirable = inputs["kto_tags"]
        out = kto_loss(
            policy.total,
            self._reference_logps(model, inputs).total,
            policy_kl.total,
            self._reference_logps(model, kl_inputs).total,
            desirable,
            beta=pref.beta,
            desirable_weight=pref.kto_desirable_weight,
            undesirable_weight=pref.kto_undesirable_weight,
        )
        loss = out.losses.mean()
        if pref.ftx > 0 and desirable.any():
            loss = loss + pref.ftx * (-policy.mean[desirable]).mean()
        self._record("kl", out.kl.reshape(1))
        self._record("rewards/chosen", out.rewards[desirable])
        self._record("rewards/rejected", out.rewards[~desirable])
        self._record("rewards/margins", out.adjusted)
        return loss

    def _logps(self, model: torch.nn.Module, inputs: Batch) -> SequenceLogps:
        logits = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False
        ).logits
        return sequence_logps(logits, inputs["labels"])

    @torch.no_grad()
    def _reference_logps(self, model: torch.nn.Module, inputs: Batch) -> SequenceLogps:
        if self.ref_model is not None:
            return self._logps(self.ref_model, inputs)
        with self.accelerator.unwrap_model(model).disable_adapter():  # LoRA: the base model is the reference
            return self._logps(model, inputs)

    def _record(self, name: str, values: torch.Tensor) -> None:
        """Accumulate a metric as (sum, count) across ranks, so an empty subset on one rank is harmless."""
        mode = "train" if self.model.training else "eval"
        pair = torch.stack([values.float().sum(), torch.tensor(float(values.numel()), device=values.device)])
        total, count = self.accelerator.gather(pair.reshape(1, 2)).sum(0).tolist()
        if count:
            self._metrics[mode][name].append(total / count)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the means of the recorded metrics since the last log (``eval_`` prefixed in evaluation)."""
        mode = "train" if self.model.training else "eval"
        prefix = "eval_" if mode == "eval" else ""
        logs.update({prefix + k: sum(v) / len(v) for k, v in self._metrics[mode].items() if v})
        self._metrics[mode].clear()
        super().log(logs, start_time)

    def prediction_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> tuple[torch.Tensor, None, None]:
        """Evaluation computes the preference loss (and its metrics), never logits."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        assert isinstance(loss, torch.Tensor)
        return loss.detach(), None, None
