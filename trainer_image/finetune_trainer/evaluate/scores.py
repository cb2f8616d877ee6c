"""BLEU-4 and ROUGE-1/2/L of generated answers, the way LLaMA-Factory scores predictions.

Pure functions, no third-party metric packages:

* BLEU-4 is sentence BLEU over characters, uniform weights, NLTK's ``SmoothingFunction().method3``
  (each zero n-gram precision becomes ``1 / (2^k · total)``, k counting the zero precisions so far)
  and the usual brevity penalty — what LLaMA-Factory gets from
  ``sentence_bleu([list(label)], list(pred), smoothing_function=method3)``.
* ROUGE-N is the F1 of the overlap of distinct n-grams (each n-gram counted once, as the
  ``rouge`` / ``rouge-chinese`` packages LLaMA-Factory calls do) and ROUGE-L the F1 of the
  longest common subsequence, over words. LLaMA-Factory segments with jieba; here CJK characters are one token
  each and other text splits into word and punctuation tokens, which is what jieba yields for
  text without Chinese.

Scores are percentages (0-100) averaged over samples.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

BLEU_ORDER = 4
# One token per CJK ideograph / kana / hangul syllable; words and single punctuation marks otherwise.
_TOKEN = re.compile(
    r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]|[^\W_]+|[^\w\s]|_", re.UNICODE
)


def ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    """Counts of the ``n``-grams of ``tokens``."""
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def sentence_bleu4(hypothesis: Sequence[str], reference: Sequence[str]) -> float:
    """Sentence BLEU-4 of ``hypothesis`` against one ``reference`` in [0, 1], NLTK method3 smoothing.

    0 when nothing matches at unigram level (as NLTK returns) or the hypothesis is empty.
    """
    if not hypothesis:
        return 0.0
    matches, totals = [], []
    for n in range(1, BLEU_ORDER + 1):
        hyp, ref = ngrams(hypothesis, n), ngrams(reference, n)
        matches.append(sum(min(count, ref[gram]) for gram, count in hyp.items()))
        totals.append(max(1, sum(hyp.values())))
    if matches[0] == 0:
        return 0.0
    log_sum, zeros = 0.0, 1
    for hit, total in zip(matches, totals, strict=True):
        if hit == 0:
            zeros *= 2
            precision = 1.0 / (zeros * total)
        else:
            precision = hit / total
        log_sum += math.log(precision) / BLEU_ORDER
    hyp_len, ref_len = len(hypothesis), len(reference)
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_sum)


def f1(overlap: int, hyp_count: int, ref_count: int) -> float:
    """Harmonic mean of precision ``overlap/hyp_count`` and recall ``overlap/ref_count``; 0 when either is 0."""
    if overlap == 0 or hyp_count == 0 or ref_count == 0:
        return 0.0
    precision, recall = overlap / hyp_count, overlap / ref_count
    return 2 * precision * recall / (precision + recall)


def rouge_n(hypothesis: Sequence[str], reference: Sequence[str], n: int) -> float:
    """ROUGE-N F1 in [0, 1] over distinct n-grams."""
    hyp, ref = set(ngrams(hypothesis, n)), set(ngrams(reference, n))
    return f1(len(hyp & ref), len(hyp), len(ref))


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (O(len(a)·len(b)) time, O(len(b)) memory)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(hypothesis: Sequence[str], reference: Sequence[str]) -> float:
    """ROUGE-L F1 (β = 1) in [0, 1]."""
    return f1(lcs_length(hypothesis, reference), len(hypothesis), len(reference))


def word_tokens(text: str) -> list[str]:
    """Tokens for ROUGE: CJK characters one by one, words and punctuation marks otherwise."""
    return _TOKEN.findall(text)


@dataclass(frozen=True)
class SimilarityScores:
    """Mean scores over the samples, in percent."""

    samples: int
    bleu4: float
    rouge1: float
    rouge2: float
    rouge_l: float

    def describe(self) -> str:
        """One log line, the unit said: ``BLEU-4 35.41%, ROUGE-1 ... (6 samples)``."""
        return (
            f"BLEU-4 {self.bleu4:.2f}%, ROUGE-1 {self.rouge1:.2f}%, ROUGE-2 {self.rouge2:.2f}%,"
            f" ROUGE-L {self.rouge_l:.2f}% ({self.samples} samples)"
        )


def score_pair(prediction: str, label: str) -> tuple[float, float, float, float]:
    """(BLEU-4, ROUGE-1, ROUGE-2, ROUGE-L) of one prediction, each in percent."""
    bleu = sentence_bleu4(list(prediction), list(label))
    hyp, ref = word_tokens(prediction), word_tokens(label)
    return (100 * bleu, 100 * rouge_n(hyp, ref, 1), 100 * rouge_n(hyp, ref, 2), 100 * rouge_l(hyp, ref))


def score_predictions(predictions: Sequence[str], labels: Sequence[str]) -> SimilarityScores:
    """Average BLEU-4 and ROUGE-1/2/L (percent) of ``predictions`` against ``labels``, pairwise.

    Raises:
        ValueError: the two lists differ in length or are empty.
    """
    if len(predictions) != len(labels) or not predictions:
        raise ValueError(
            f"need as many predictions as labels, at least one: {len(predictions)} vs {len(labels)}"
        )
    columns = list(zip(*(score_pair(p, r) for p, r in zip(predictions, labels, strict=True)), strict=True))
    means = [round(sum(column) / len(column), 4) for column in columns]
    return SimilarityScores(len(predictions), *means)
