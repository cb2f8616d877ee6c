"""The preference losses as pure functions: log-probs of labelled tokens, each pairwise loss's shape, KTO."""

from __future__ import annotations

import math

import pytest
import torch

from finetune_api.method import PreferenceLoss
from finetune_trainer.data import IGNORE_INDEX
from finetune_trainer.train.preference_losses import (
    PreferenceOutput,
    SequenceLogps,
    kto_loss,
    pairwise_loss,
    sequence_logps,
)


def logps(total: list[float], mean: list[float] | None = None) -> SequenceLogps:
    t = torch.tensor(total)
    return SequenceLogps(t, torch.tensor(mean) if mean is not None else t / 2)


def test_sequence_logps_counts_only_labelled_next_tokens() -> None:
    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 1], [IGNORE_INDEX, 2, IGNORE_INDEX, IGNORE_INDEX]])
    out = sequence_logps(logits, labels)
    table = logits.log_softmax(-1)
    # Position t predicts labels[t + 1].
    expected = torch.stack([table[0, 1, 3] + table[0, 2, 1], table[1, 0, 2]])
    assert torch.allclose(out.total, expected, atol=1e-5)
    assert torch.allclose(out.mean, expected / torch.tensor([2.0, 1.0]), atol=1e-5)


def test_split_gives_chosen_then_rejected_halves() -> None:
    chosen, rejected = logps([1.0, 2.0, 3.0, 4.0]).split()
    assert chosen.total.tolist() == [1.0, 2.0] and rejected.total.tolist() == [3.0, 4.0]


def dpo(loss: PreferenceLoss, chosen_ratio: float, beta: float = 0.1) -> PreferenceOutput:
    """One pair whose chosen answer gained ``chosen_ratio`` nats over the reference (2 tokens each)."""
    return pairwise_loss(
        loss,
        logps([chosen_ratio - 5.0], [(chosen_ratio - 5.0) / 2]),
        logps([-5.0], [-2.5]),
        beta=beta,
        ref_chosen=logps([-5.0], [-2.5]),
        ref_rejected=logps([-5.0], [-2.5]),
    )


def test_sigmoid_is_log2_at_zero_margin_and_falls_as_the_margin_grows() -> None:
    at_zero = dpo(PreferenceLoss.SIGMOID, 0.0)
    assert at_zero.losses.item() == pytest.approx(math.log(2))
    assert dpo(PreferenceLoss.SIGMOID, 5.0).losses.item() < at_zero.losses.item()
    grown = dpo(PreferenceLoss.SIGMOID, 5.0)
    assert (grown.chosen_rewards - grown.rejected_rewards).item() == pytest.approx(0.5)


def test_hinge_is_zero_beyond_margin_one_over_beta() -> None:
    assert dpo(PreferenceLoss.HINGE, 0.0).losses.item() == pytest.approx(1.0)
    assert dpo(PreferenceLoss.HINGE, 10.0).losses.item() == 0.0  # beta * 10 = 1


def test_ipo_is_minimal_at_its_target_margin() -> None:
    beta = 0.5  # target (length-averaged) margin 1 / (2 beta) = 1, i.e. a summed ratio of 2 over 2 tokens
    at_target = dpo(PreferenceLoss.IPO, 2.0, beta=beta).losses.item()
    assert at_target == pytest.approx(0.0)
    assert dpo(PreferenceLoss.IPO, 6.0, beta=beta).losses.item() > at_target


def test_reference_losses_refuse_to_run_without_reference() -> None:
    with pytest.raises(ValueError, match=r"method\.preference\.loss: sigmoid needs reference"):
        pairwise_loss(PreferenceLoss.SIGMOID, logps([-1.0]), logps([-2.0]), beta=0.1)
    with pytest.raises(ValueError, match="kto is not a pairwise loss"):
        pairwise_loss(
            PreferenceLoss.KTO,
            logps([-1.0]),
            logps([-2.0]),
            beta=0.1,
            ref_chosen=logps([0.0]),
            ref_rejected=logps([0.0]),
        )


def test_simpo_shifts_the_margin_by_gamma() -> None:
    chosen, rejected = logps([-2.0], [-1.0]), logps([-2.0], [-1.0])
    no_gamma = pairwise_loss(PreferenceLoss.SIMPO, chosen, rejected, beta=2.0, simpo_gamma=0.0)
    with_gamma = pairwise_loss(PreferenceLoss.SIMPO, chosen, rejected, beta=2.0, simpo_gamma=1.0)
    assert no_gamma.losses.item() == pytest.approx(math.log(2))
    assert with_gamma.losses.item() == pytest.approx(-math.log(1 / (1 + math.e)))


def test_orpo_adds_the_chosen_nll_to_the_odds_ratio_term() -> None:
    chosen, rejected = logps([-1.0], [-0.5]), logps([-1.0], [-0.5])
    out = pairwise_loss(PreferenceLoss.ORPO, chosen, rejected, beta=0.1)
    assert out.losses.item() == pytest.approx(0.5 + 0.1 * math.log(2))
    better = pairwise_loss(PreferenceLoss.ORPO, chosen, logps([-4.0], [-2.0]), beta=0.1)
    assert better.losses.item() < out.losses.item()


def test_kto_weights_each_side_and_clamps_the_kl_estimate() -> None:
    policy = torch.tensor([-1.0, -1.0])
    reference = torch.tensor([-2.0, -2.0])  # log-ratio +1 for both
    desirable = torch.tensor([True, False])
    # The KL pairs moved down: a negative estimate is clamped to 0.
    out = kto_loss(policy, reference, torch.tensor([-3.0]), torch.tensor([-2.0]), desirable, beta=1.0)
    assert out.kl.item() == 0.0
    assert out.adjusted.tolist() == pytest.approx([1.0, -1.0])
    assert out.losses.tolist() == pytest.approx(
        [1 - torch.sigmoid(torch.tensor(1.0)).item(), 1 - torch.sigmoid(torch.tensor(-1.0)).item()]
    )
    weighted = kto_loss(
        policy, reference, torch.tensor([-3.0]), torch.tensor([-2.0]), desirable,
        beta=1.0, desirable_weight=2.0, undesirable_weight=0.5,
    )  # fmt: skip
    assert weighted.losses.tolist() == pytest.approx([2 * out.losses[0].item(), 0.5 * out.losses[1].item()])


def test_kto_reference_point_is_the_kl_of_the_mismatched_pairs() -> None:
    out = kto_loss(
        torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([-1.0, -1.0]), torch.tensor([-3.0, -2.0]),
        torch.tensor([True]), beta=1.0,
    )  # fmt: skip
    assert out.kl.item() == pytest.approx(1.5)
    assert out.adjusted.item() == pytest.approx(-1.5)  # no gain over the reference point yet
