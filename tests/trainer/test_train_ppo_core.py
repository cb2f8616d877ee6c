"""PPO's arithmetic (train/ppo_core.py) checked against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from finetune_trainer.train.ppo_core import (
    KLController,
    RunningMoments,
    clipped_policy_loss,
    clipped_value_loss,
    gae_advantages,
    kl_penalized_rewards,
    last_token_index,
    masked_mean,
    masked_whiten,
)


def test_masked_statistics_ignore_padding() -> None:
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert masked_mean(values, mask).item() == pytest.approx(2.0)
    whitened = masked_whiten(values, mask)
    assert masked_mean(whitened, mask).item() == pytest.approx(0.0, abs=1e-6)
    kept = whitened[mask.bool()]
    assert kept.var(unbiased=True).item() == pytest.approx(1.0, rel=1e-4)
    shifted = masked_whiten(values, mask, shift_mean=False)
    assert masked_mean(shifted, mask).item() == pytest.approx(2.0, rel=1e-5)


def test_last_token_index_of_right_padded_masks() -> None:
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0]])
    assert last_token_index(mask).tolist() == [2, 0, 1]


def test_score_lands_on_the_last_response_token_and_kl_everywhere() -> None:
    scores = torch.tensor([5.0, -1.0])
    logprobs = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = kl_penalized_rewards(scores, logprobs, ref, mask, kl_coef=0.1)
    assert kl.tolist() == [[0.5, 0.0, -0.5], [0.0, -1.0, 0.0]]
    expected = [[-0.05, 0.0, 0.05 + 5.0], [0.0, 0.1 - 1.0, 0.0]]
    assert torch.allclose(rewards, torch.tensor(expected))


def test_gae_matches_a_hand_computed_recursion() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.4]])
    mask = torch.ones(1, 3)
    gamma, lam = 0.9, 0.8
    # delta_t = r_t + gamma * V_{t+1} - V_t; A_t = delta_t + gamma * lam * A_{t+1}
    d2 = 1.0 - 0.4
    d1 = 0.0 + 0.9 * 0.4 - 0.2
    d0 = 0.0 + 0.9 * 0.2 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    advantages, returns = gae_advantages(rewards, values, mask, gamma=gamma, lam=lam)
    assert torch.allclose(returns, torch.tensor([[a0 + 0.5, a1 + 0.2, a2 + 0.4]]))
    raw = torch.tensor([a0, a1, a2])
    assert torch.allclose(advantages[0], (raw - raw.mean()) / raw.std(), atol=1e-5)


def test_gae_does_not_bootstrap_from_padding() -> None:
    rewards = torch.tensor([[0.0, 1.0, 0.0]])
    values = torch.tensor([[0.3, 0.6, 50.0]])  # the padded position's value must not leak back
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    _, returns = gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
    assert returns[0, :2].tolist() == pytest.approx([1.0, 1.0])


def test_policy_loss_clips_the_ratio() -> None:
    old = torch.zeros(1, 2)
    mask = torch.ones(1, 2)
    advantages = torch.tensor([[1.0, -1.0]])
    # ratio e^1 for both tokens: the positive advantage is clipped at 1.2, the negative one is not.
    new = torch.ones(1, 2)
    loss, clip_fraction = clipped_policy_loss(new, old, advantages, mask, clip=0.2)
    assert loss.item() == pytest.approx((-1.2 + math.e) / 2, rel=1e-5)
    assert clip_fraction.item() == pytest.approx(0.5)
    same_loss, same_fraction = clipped_policy_loss(old, old, advantages, mask, clip=0.2)
    assert same_loss.item() == pytest.approx(0.0) and same_fraction.item() == 0.0


def test_value_loss_takes_the_worse_of_clipped_and_unclipped() -> None:
    old = torch.tensor([[0.0]])
    returns = torch.tensor([[1.0]])
    mask = torch.ones(1, 1)
    # Moving to 1.0 is clipped at 0.2: the clipped error (0.8^2) is the worse one.
    assert clipped_value_loss(torch.tensor([[1.0]]), old, returns, mask, clip=0.2).item() == pytest.approx(
        0.5 * 0.64
    )
    # Overshooting to 3.0: the unclipped error (2^2) is the worse one.
    assert clipped_value_loss(torch.tensor([[3.0]]), old, returns, mask, clip=0.2).item() == pytest.approx(
        0.5 * 4.0
    )


def test_adaptive_kl_controller_moves_towards_the_target() -> None:
    above = KLController(0.2, target=6.0, horizon=100)
    above.update(current_kl=12.0, num_samples=10)  # error clipped to +0.2
    assert above.value == pytest.approx(0.2 * (1 + 0.2 * 10 / 100))
    below = KLController(0.2, target=6.0, horizon=100)
    below.update(current_kl=5.4, num_samples=10)  # error -0.1
    assert below.value == pytest.approx(0.2 * (1 - 0.1 * 10 / 100))
    fixed = KLController(0.2, target=None)
    fixed.update(current_kl=100.0, num_samples=10)
    assert fixed.value == 0.2


def test_running_moments_match_the_statistics_of_everything_seen() -> None:
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, generator=generator) * 3 + 2 for n in (5, 17, 1, 40)]
    moments = RunningMoments()
    for batch in batches:
        moments.update(batch)
    everything = torch.cat(batches).double()
    assert moments.mean == pytest.approx(everything.mean().item(), rel=1e-9)
    assert moments.std == pytest.approx(everything.std(unbiased=False).item(), rel=1e-9)
    normalized = moments.normalize(everything)
    assert normalized.mean().item() == pytest.approx(0.0, abs=1e-9)
