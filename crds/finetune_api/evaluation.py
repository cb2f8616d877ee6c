"""Evaluation after training: predictions scored with BLEU-4 / ROUGE, and multiple-choice benchmarks.

``FineTuneJob.spec.evaluation`` declares what runs once training has finished; the scores come back
in ``FineTuneJob.status.evaluation`` (through the trainer's progress record), in
``<output.uri>/eval_results.json`` (the later Export's model card reads it) and in the metrics.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from .common import ApiModel, K8sName, ShortText, Uri, cel, rules

# Scores are percentages (0-100), as LLaMA-Factory reports them; files that carry them say so.
Percent = float
SCORE_UNIT = "percent"


class GenerationSettings(ApiModel):
    """How answers are generated for scoring (transformers' GenerationConfig)."""

    do_sample: bool = False
    """Sample instead of decoding greedily (or with beams); off by default so scores are reproducible."""
    temperature: float = Field(default=1.0, gt=0, le=10)
    """Softmax temperature when sampling."""
    top_p: float = Field(default=1.0, gt=0, le=1)
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches topP."""
    top_k: int = Field(default=50, ge=0, le=10_000)
    """Keep the K most likely tokens when sampling; 0 keeps all."""
    num_beams: int = Field(default=1, ge=1, le=16)
    """Beam-search width; 1 is greedy (or plain sampling)."""
    max_new_tokens: int = Field(default=128, ge=1, le=32_768)
    """Most tokens generated per answer."""
    repetition_penalty: float = Field(default=1.0, gt=0, le=10)
    """Penalty on tokens already present (1.0: none)."""
    length_penalty: float = Field(default=1.0, ge=-10, le=10)
    """Beam search: exponent on the length in the score; above 0 favours longer answers."""


class PredictSpec(ApiModel):
    """Generate an answer to each prompt and score it against the reference with BLEU-4 and ROUGE-1/2/L."""

    dataset: K8sName | None = None
    """A Dataset (conversations, like the training data) to predict on; the validation split (training.valSize) when unset."""
    max_samples: int | None = Field(default=None, ge=1, le=1_000_000)
    """Score at most this many samples (the first ones); all when unset."""
    batch_size: int = Field(default=8, ge=1, le=1024)
    """Prompts generated for at once."""
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    """Decoding settings."""


class BenchmarkSpec(ApiModel):
    """A multiple-choice benchmark in the MMLU / C-Eval layout, scored from the next-token logits of A/B/C/D.

    The Dataset's rows have the columns question, A, B, C, D, answer (one of the letters A-D) and
    subject. Give it format text with columns.text: question (the operator's Dataset check then
    looks at the question column).
    """

    dataset: K8sName
    """The Dataset with the questions to score."""
    shots_dataset: K8sName | None = None
    """A Dataset (same layout) with the few-shot examples, like MMLU's dev split; when unset, the first nShot rows of each subject in dataset are the examples and are not scored."""
    n_shot: int = Field(default=5, ge=0, le=25)
    """Solved examples of the same subject put before each question."""
    subjects: list[ShortText] = Field(default_factory=list, max_length=256)
    """Subjects to score; all subjects in the Dataset when empty."""
    language: Literal["en", "zh"] = "en"
    """Prompt wording: en (MMLU) or zh (C-Eval, CMMLU)."""
    batch_size: int = Field(default=8, ge=1, le=1024)
    """Questions scored at once."""
    max_samples: int | None = Field(default=None, ge=1, le=1_000_000)
    """Score at most this many questions (the first ones after the subject filter); all when unset."""


class EvaluationSpec(ApiModel):
    """What is evaluated after training: predictions, a benchmark, or both."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel("has(self.predict) || has(self.benchmark)", "set predict, benchmark or both"),
        )
    )

    predict: PredictSpec | None = None
    """Generate answers and score them with BLEU-4 and ROUGE-1/2/L; predictions.jsonl is saved."""
    benchmark: BenchmarkSpec | None = None
    """Multiple-choice accuracy, per subject and overall."""

    def dataset_refs(self) -> list[str]:
        """Names of the Datasets the evaluation reads (they must exist, like spec.datasets)."""
        names = [self.predict.dataset] if self.predict and self.predict.dataset else []
        if self.benchmark:
            names.append(self.benchmark.dataset)
            if self.benchmark.shots_dataset:
                names.append(self.benchmark.shots_dataset)
        return list(dict.fromkeys(names))


# Spec-level rules (FineTuneJobSpec), kept here with the feature they guard.
EVALUATION_SPEC_RULES = [
    cel(
        "!has(self.evaluation) || self.method.stage in ['pt', 'sft']",
        "evaluation runs after stages pt and sft",
        ".evaluation",
    ),
    cel(
        "!has(self.evaluation) || !has(self.evaluation.predict) || has(self.evaluation.predict.dataset)"
        " || (self.method.stage == 'sft' && has(self.training) && has(self.training.valSize) && self.training.valSize > 0.0)",
        "evaluation.predict needs a dataset, or a validation split (training.valSize) of conversations (stage sft)",
        ".evaluation.predict",
    ),
]


class PredictResult(ApiModel):
    """Scores of the predictions, each in percent (0-100, as LLaMA-Factory reports them; 100 is a perfect match)."""

    samples: int = Field(ge=0)
    """Samples scored."""
    bleu4: Percent = Field(ge=0, le=100)
    """Sentence BLEU-4 over characters (NLTK method3 smoothing), in percent (0-100), averaged over samples."""
    rouge1: Percent = Field(ge=0, le=100)
    """ROUGE-1 F1 over words, in percent (0-100), averaged over samples."""
    rouge2: Percent = Field(ge=0, le=100)
    """ROUGE-2 F1 over words, in percent (0-100), averaged over samples."""
    rouge_l: Percent = Field(ge=0, le=100)
    """ROUGE-L (longest common subsequence) F1 over words, in percent (0-100), averaged over samples."""


class SubjectScore(ApiModel):
    """Accuracy on one subject."""

    subject: ShortText
    """Subject name as in the Dataset."""
    accuracy: Percent = Field(ge=0, le=100)
    """Share of questions answered correctly, in percent (0-100)."""
    questions: int = Field(ge=0)
    """Questions scored."""


class BenchmarkResult(ApiModel):
    """Multiple-choice accuracy overall and per subject."""

    accuracy: Percent = Field(ge=0, le=100)
    """Share of all questions answered correctly, in percent (0-100)."""
    questions: int = Field(ge=0)
    """Questions scored."""
    subjects: list[SubjectScore] = Field(default_factory=list, max_length=256)
    """Accuracy per subject."""


class EvaluationStatus(ApiModel):
    """Scores of spec.evaluation, once the trainer has computed them."""

    predict: PredictResult | None = None
    """BLEU-4 / ROUGE of the predictions, in percent (0-100)."""
    benchmark: BenchmarkResult | None = None
    """Multiple-choice accuracy, in percent (0-100)."""
    results: Uri | None = None
    """URI of eval_results.json: the same scores (every subject), with "unit": "percent"."""
    predictions: Uri | None = None
    """URI of predictions.jsonl (prompt, label, predict per line)."""
