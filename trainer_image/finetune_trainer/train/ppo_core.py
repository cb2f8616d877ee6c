"""PPO's arithmetic, free of models: masked statistics, KL-shaped rewards, GAE, the clipped losses
and the KL controllers (the formulation of TRL's former PPOTrainer, which LLaMA-Factory builds on).

Tensors are ``(batch, response_length)`` with a 0/1 ``mask`` over the real response tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance of ``values`` where ``mask`` is 1 (0 for fewer than two values)."""
    count = mask.sum()
    if count < 2:
        return torch.zeros((), dtype=values.dtype, device=values.device)
    mean = masked_mean(values, mask)
    return ((values - mean) ** 2 * mask).sum() / (count - 1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, *, shift_mean: bool = True) -> torch.Tensor:
    """``values`` scaled to unit variance over the mask (and centred unless ``shift_mean`` is False)."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of a right-padded ``mask`` (0 for an empty row)."""
    return (mask.sum(dim=1).long() - 1).clamp(min=0)


def kl_penalized_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: ``-kl_coef * (logp - ref_logp)`` on every token, plus the score on the last one.

    Returns ``(rewards, kl)`` where ``kl`` is the per-token estimate ``logp - ref_logp`` (masked).
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    rows = torch.arange(scores.shape[0], device=scores.device)
    rewards[rows, last_token_index(mask)] += scores
    return rewards * mask, kl


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the response; returns ``(advantages, returns)``.

    Advantages are whitened over the mask (as in TRL); returns are the unwhitened advantages + values.
    """
    values = values * mask
    rewards = rewards * mask
    length = rewards.shape[1]
    last = torch.zeros_like(rewards[:, 0])
    reversed_adv = []
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        reversed_adv.append(last)
    advantages = torch.stack(reversed_adv[::-1], dim=1)
    returns = advantages + values
    return masked_whiten(advantages, mask) * mask, returns


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (to minimise); returns ``(loss, clip_fraction)``."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).float(), mask)


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, *, clip: float
) -> torch.Tensor:
    """Half the squared error of the value head, with updates clipped around the rollout values."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    worst = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * masked_mean(worst, mask)


@dataclass
class KLController:
    """The KL coefficient: adaptive towards ``target`` (Ziegler et al. 2019) or fixed when ``target`` is None."""

    value: float
    target: float | None = None
    horizon: int = 10_000

    def update(self, current_kl: float, num_samples: int) -> None:
        """Move the coefficient so the observed KL drifts to the target (proportional error clipped to ±20%)."""
        if self.target is None:
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * num_samples / self.horizon


@dataclass
class RunningMoments:
    """Running mean and standard deviation of all values seen (Chan et al.'s parallel update)."""

    mean: float = 0.0
    var: float = 1.0
    count: float = 1e-24

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def update(self, values: torch.Tensor) -> None:
        """Fold a batch of values into the statistics."""
        values = values.detach().double().flatten()
        n = values.numel()
        if n == 0:
            return
        batch_mean = values.mean().item()
        batch_var = values.var(unbiased=False).item()
        delta = batch_mean - self.mean
        total = self.count + n
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var = m2 / total
        self.count = total

    def normalize(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` standardised by the running statistics."""
        return (values - self.mean) / max(self.std, 1e-8)
