"""The LM head and the loss on labelled positions only, for the pt and sft Trainer.

An sft batch learns only the responses: every other position's logits (``batch × seq × vocab`` of
them) are computed, log-softmaxed and thrown away by the loss. transformers 5 lets the forward keep
the hidden states of chosen positions before the head (``logits_to_keep`` as a boolean mask) and take
the already shifted targets (``shift_labels``); the loss is then the same sum over the same tokens,
divided by the same ``num_items_in_batch`` the Trainer counts from the batch's ``labels`` (so gradient
accumulation is unchanged).

Fast path: see finetune_trainer.fastpaths (its reference path and the tests that pin the two equal).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from ..data import IGNORE_INDEX


def labelled_positions(labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """``logits_to_keep`` (positions whose next token is a label) and their targets as ``shift_labels``."""
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # position t predicts token t + 1
    keep = targets != IGNORE_INDEX
    return {"logits_to_keep": keep, "shift_labels": targets[keep]}


def keeps_logits_by_mask(model: torch.nn.Module) -> bool:
    """Whether ``model`` (or the base model of a PeftModel) takes ``logits_to_keep``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


class CausalLMTrainer(Trainer):
    """transformers' Trainer whose training loss runs the LM head on labelled positions only.

    ``head_on_labels_only=False`` (e.g. Liger's fused head, which never builds the logits) keeps
    the stock behaviour. Evaluation and prediction always see the full logits.
    """

    def __init__(self, *args: Any, head_on_labels_only: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_on_labels_only = (
            head_on_labels_only
            and self.label_smoother is None
            and self.compute_loss_func is None
            and keeps_logits_by_mask(self.accelerator.unwrap_model(self.model))
        )

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        """The stock loss, on labelled positions only when training."""
        if self.head_on_labels_only and not return_outputs and isinstance(inputs.get("labels"), torch.Tensor):
            inputs = {**inputs, **labelled_positions(inputs["labels"])}
        return super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
