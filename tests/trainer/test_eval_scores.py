"""BLEU-4 and ROUGE-1/2/L against values worked out by hand (the workings are in each test)."""

from __future__ import annotations

import math

import pytest

from finetune_trainer.evaluate.scores import (
    lcs_length,
    rouge_l,
    rouge_n,
    score_pair,
    score_predictions,
    sentence_bleu4,
    word_tokens,
)


def test_identical_strings_score_100_everywhere() -> None:
    assert score_pair("abcd efg", "abcd efg") == pytest.approx((100.0, 100.0, 100.0, 100.0))


def test_bleu_short_hypothesis_with_smoothing_and_brevity_penalty() -> None:
    # "abc" vs "abcd" (characters): p1 = 3/3, p2 = 2/2, p3 = 1/1; no 4-gram in the hypothesis, so
    # p4 = 0/1, smoothed (method3, first zero) to 1/(2·1). Brevity: c=3 < r=4 → exp(1 - 4/3).
    expected = math.exp(1 - 4 / 3) * (1 * 1 * 1 * 0.5) ** 0.25
    assert sentence_bleu4(list("abc"), list("abcd")) == pytest.approx(expected)
    assert expected == pytest.approx(0.60253, abs=1e-5)


def test_bleu_two_zero_precisions_are_smoothed_geometrically() -> None:
    # "abd" vs "abc": p1 = 2/3, p2 = 1/2 (ab of ab,bd), p3 = 0/1 → 1/2, p4 = 0/1 (no 4-gram) → 1/4;
    # equal lengths → no brevity penalty. BLEU = (2/3 · 1/2 · 1/2 · 1/4)^(1/4) = (1/24)^(1/4).
    assert sentence_bleu4(list("abd"), list("abc")) == pytest.approx((1 / 24) ** 0.25)


def test_bleu_single_matching_character() -> None:
    # "C" vs "C": p1 = 1/1, p2..p4 = 0/1 → 1/2, 1/4, 1/8; BLEU = (1/64)^(1/4) ≈ 0.35355.
    assert sentence_bleu4(["C"], ["C"]) == pytest.approx(64**-0.25)


def test_bleu_is_zero_without_unigram_overlap_or_hypothesis() -> None:
    assert sentence_bleu4(list("xyz"), list("abc")) == 0.0
    assert sentence_bleu4([], list("abc")) == 0.0


def test_rouge_on_an_english_pair() -> None:
    pred, ref = word_tokens("The cat sat on the mat."), word_tokens("The cat is on the mat.")
    assert pred == ["The", "cat", "sat", "on", "the", "mat", "."]
    # Distinct unigrams: pred {The,cat,sat,on,the,mat,.} (7), ref {The,cat,is,on,the,mat,.} (7), 6 shared.
    assert rouge_n(pred, ref, 1) == pytest.approx(6 / 7)
    # Bigrams: 6 distinct each; shared: The cat, on the, the mat, mat . → 4 → F1 = 4/6.
    assert rouge_n(pred, ref, 2) == pytest.approx(4 / 6)
    # LCS: The cat · on the mat . → 6 of 7 both ways.
    assert lcs_length(pred, ref) == 6
    assert rouge_l(pred, ref) == pytest.approx(6 / 7)


def test_rouge_counts_each_ngram_once() -> None:
    # As the rouge / rouge-chinese packages do: "a a a" vs "a" shares {a} → P = R = 1.
    assert rouge_n(["a", "a", "a"], ["a"], 1) == 1.0
    # LCS still counts positions: 1 of 3 and 1 of 1 → F1 = 2·(1/3·1)/(1/3+1) = 0.5.
    assert rouge_l(["a", "a", "a"], ["a"]) == pytest.approx(0.5)


def test_rouge_on_chinese_uses_one_token_per_character() -> None:
    pred, ref = word_tokens("我爱北京"), word_tokens("我爱上海")
    assert pred == ["我", "爱", "北", "京"]
    assert rouge_n(pred, ref, 1) == pytest.approx(0.5)  # {我, 爱} of 4 each
    assert rouge_n(pred, ref, 2) == pytest.approx(1 / 3)  # {我爱} of 3 each
    assert rouge_l(pred, ref) == pytest.approx(0.5)


def test_empty_prediction_scores_zero() -> None:
    assert score_pair("", "some answer") == (0.0, 0.0, 0.0, 0.0)


def test_scores_are_percent_means_over_samples() -> None:
    scores = score_predictions(["abcd", "xyz"], ["abcd", "abc"])
    assert scores.samples == 2
    assert scores.bleu4 == pytest.approx(50.0)  # (100 + 0) / 2
    assert scores.rouge1 == pytest.approx(50.0)
    assert scores.rouge_l == pytest.approx(50.0)


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="as many predictions as labels"):
        score_predictions(["a"], [])
