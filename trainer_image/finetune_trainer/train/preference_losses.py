"""Preference losses as pure tensor functions (torchtune's shape): sequence log-probs in, loss and rewards out.

Pairwise losses take the summed and the per-token-averaged log-probabilities of the chosen and
rejected answers; reference-based ones (sigmoid, hinge, ipo) also take the reference model's.
Formulas follow the papers as TRL and LLaMA-Factory implement them:
DPO (Rafailov et al. 2023), hinge (SLiC, Zhao et al. 2023), IPO (Azar et al. 2023, length-averaged),
ORPO (Hong et al. 2024), SimPO (Meng et al. 2024), KTO (Ethayarajh et al. 2024).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from finetune_api.method import PreferenceLoss

from ..data import IGNORE_INDEX

REFERENCE_FREE = frozenset({PreferenceLoss.ORPO, PreferenceLoss.SIMPO})


@dataclass
class SequenceLogps:
    """Log-probabilities of the labelled tokens of each sequence."""

    total: torch.Tensor
    """Sum over the labelled tokens, shape ``(batch,)``."""
    mean: torch.Tensor
    """Per-token average (length-normalised), shape ``(batch,)``."""

    def split(self) -> tuple[SequenceLogps, SequenceLogps]:
        """The first and second half of the batch: (chosen, rejected) for a pairwise batch."""
        t1, t2 = self.total.chunk(2)
        m1, m2 = self.mean.chunk(2)
        return SequenceLogps(t1, m1), SequenceLogps(t2, m2)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> SequenceLogps:
    """Log-probabilities of ``labels`` under ``logits`` (next-token shifted), ignoring ``IGNORE_INDEX``."""
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != IGNORE_INDEX
    # cross_entropy avoids materialising a full log-softmax copy of the (batch, length, vocab) logits.
    per_token = -F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
    total = (per_token * mask).sum(-1)
    return SequenceLogps(total, total / mask.sum(-1).clamp(min=1))


@dataclass
class PreferenceOutput:
    """Per-example losses and the implicit rewards the loss pushes apart."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def pairwise_loss(
    loss: PreferenceLoss,
    chosen: SequenceLogps,
    rejected: SequenceLogps,
    *,
    beta: float,
    simpo_gamma: float = 0.5,
    ref_chosen: SequenceLogps | None = None,
    ref_rejected: SequenceLogps | None = None,
) -> PreferenceOutput:
    """The pairwise preference loss ``loss`` of each pair, with its rewards.

    DPO-family rewards are ``beta * (log π − log π_ref)``; ORPO and SimPO rewards are ``beta`` times
    the length-averaged log-probabilities (they have no reference).

    Raises:
        ValueError: a reference-based loss without reference log-probs, or a non-pairwise loss.
    """
    if loss in REFERENCE_FREE:
        chosen_rewards, rejected_rewards = beta * chosen.mean.detach(), beta * rejected.mean.detach()
        if loss == PreferenceLoss.ORPO:
            # log odds(p) = log p − log(1 − p), on the average per-token probability of each answer.
            log_odds = (chosen.mean - rejected.mean) - (
                torch.log1p(-torch.exp(chosen.mean)) - torch.log1p(-torch.exp(rejected.mean))
            )
            losses = -chosen.mean - beta * F.logsigmoid(log_odds)
        else:
            losses = -F.logsigmoid(beta * (chosen.mean - rejected.mean) - simpo_gamma)
        return PreferenceOutput(losses, chosen_rewards, rejected_rewards)
    if ref_chosen is None or ref_rejected is None:
        raise ValueError(f"method.preference.loss: {loss.value} needs reference log-probabilities")
    chosen_ratio = chosen.total - ref_chosen.total
    rejected_ratio = rejected.total - ref_rejected.total
    delta = chosen_ratio - rejected_ratio
    if loss == PreferenceLoss.SIGMOID:
        losses = -F.logsigmoid(beta * delta)
    elif loss == PreferenceLoss.HINGE:
        losses = torch.relu(1 - beta * delta)
    elif loss == PreferenceLoss.IPO:
        # Length-averaged log-ratios keep the squared target 1/(2β) independent of the answer lengths.
        averaged = (chosen.mean - ref_chosen.mean) - (rejected.mean - ref_rejected.mean)
        losses = (averaged - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"method.preference.loss: {loss.value} is not a pairwise loss")
    return PreferenceOutput(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


@dataclass
class KtoOutput:
    """Per-example KTO losses, the KL estimate, and each example's KL-adjusted reward (signed by its tag)."""

    losses: torch.Tensor
    kl: torch.Tensor
    rewards: torch.Tensor
    """``beta * (log π − log π_ref)`` per example."""
    adjusted: torch.Tensor
    """``beta * (r − z)`` for desirable, ``beta * (z − r)`` for undesirable examples: what the loss raises."""


def kto_loss(
    policy: torch.Tensor,
    reference: torch.Tensor,
    policy_kl: torch.Tensor,
    reference_kl: torch.Tensor,
    desirable: torch.Tensor,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> KtoOutput:
    """KTO on summed log-probs: completions (``policy``/``reference``) and mismatched KL pairs (``*_kl``).

    The reference point ``z`` is the batch's KL estimate, clamped at 0 and detached (as in the paper).
    """
    ratio = policy - reference
    kl = (policy_kl - reference_kl).mean().clamp(min=0).detach()
    adjusted = torch.where(desirable, beta * (ratio - kl), beta * (kl - ratio))
    weights = torch.where(desirable, desirable_weight, undesirable_weight).to(ratio.dtype)
    losses = weights * (1 - torch.sigmoid(adjusted))
    return KtoOutput(losses, kl, beta * ratio.detach(), adjusted.detach())
