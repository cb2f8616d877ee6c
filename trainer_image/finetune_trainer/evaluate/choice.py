"""Multiple-choice benchmarks in the MMLU / C-Eval layout, scored like LLaMA-Factory's evaluator.

Layout of a benchmark Dataset (one row per question): ``question``, ``A``, ``B``, ``C``, ``D``
(the options), ``answer`` (one of the letters A-D) and ``subject`` (optional; "all" when absent).

Each question becomes a conversation: a system line naming the subject, ``nShot`` solved questions
of the same subject as earlier turns, then the question, rendered with the job's chat template.
The model's answer is the letter among A-D with the highest next-token logit after the prompt.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..data import ChatTemplate
from ..data.processor import batch_encode

CHOICES = ("A", "B", "C", "D")
REQUIRED_COLUMNS = ("question", *CHOICES, "answer")
DEFAULT_SUBJECT = "all"
Language = Literal["en", "zh"]

# LLaMA-Factory's eval templates (src/llamafactory/data/eval_template... "en" and "zh").
SYSTEM = {
    "en": "The following are multiple choice questions (with answers) about {subject}.\n\n",
    "zh": "以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n",
}
ANSWER_CUE = {"en": "\nAnswer:", "zh": "\n答案："}


@dataclass(frozen=True)
class Question:
    """One multiple-choice question."""

    subject: str
    question: str
    options: tuple[str, str, str, str]
    answer: str
    """The correct letter, A-D."""


def read_questions(rows: Iterable[Mapping[str, Any]], *, field_name: str) -> list[Question]:
    """Rows in the benchmark layout as questions.

    Raises:
        ValueError: a missing column or an answer that is not A-D, naming ``field_name`` and the row.
    """
    questions = []
    for n, row in enumerate(rows):
        missing = [c for c in REQUIRED_COLUMNS if row.get(c) is None]
        if missing:
            raise ValueError(
                f"{field_name}: row {n}: missing column(s) {', '.join(missing)} (need {', '.join(REQUIRED_COLUMNS)})"
            )
        answer = str(row["answer"]).strip().upper()
        if answer not in CHOICES:
            raise ValueError(f"{field_name}: row {n}: answer {row['answer']!r} is not one of A, B, C, D")
        subject = str(row.get("subject") or DEFAULT_SUBJECT)
        options = (str(row["A"]), str(row["B"]), str(row["C"]), str(row["D"]))
        questions.append(Question(subject, str(row["question"]), options, answer))
    if not questions:
        raise ValueError(f"{field_name}: the Dataset has no rows")
    return questions


def by_subject(questions: Iterable[Question]) -> dict[str, list[Question]]:
    """Questions grouped by subject, in first-seen order."""
    groups: dict[str, list[Question]] = defaultdict(list)
    for q in questions:
        groups[q.subject].append(q)
    return dict(groups)


@dataclass
class BenchmarkPlan:
    """The questions to score and the few-shot examples of each subject."""

    questions: list[Question]
    shots: dict[str, list[Question]]


def plan_benchmark(
    questions: Sequence[Question],
    *,
    n_shot: int,
    subjects: Sequence[str] = (),
    shots: Sequence[Question] | None = None,
    max_samples: int | None = None,
) -> BenchmarkPlan:
    """Pick the scored questions and each subject's ``n_shot`` examples.

    Without ``shots`` the first ``n_shot`` questions of each subject are the examples (not scored).

    Raises:
        ValueError: a requested subject is absent, or nothing is left to score.
    """
    groups = by_subject(questions)
    unknown = [s for s in subjects if s not in groups]
    if unknown:
        raise ValueError(
            f"evaluation.benchmark.subjects: {', '.join(unknown)} not in the Dataset (has {', '.join(groups)})"
        )
    chosen = {s: groups[s] for s in (subjects or groups)}
    shot_groups = by_subject(shots) if shots is not None else None
    plan = BenchmarkPlan([], {})
    for subject, items in chosen.items():
        if shot_groups is None:
            plan.shots[subject], items = items[:n_shot], items[n_shot:]
        else:
            plan.shots[subject] = shot_groups.get(subject, [])[:n_shot]
        plan.questions.extend(items)
    plan.questions = plan.questions[:max_samples] if max_samples else plan.questions
    if not plan.questions:
        raise ValueError(
            "evaluation.benchmark: no questions left to score (fewer rows per subject than nShot?)"
        )
    return plan


def format_question(q: Question, language: Language) -> str:
    """The user turn: the question, the lettered options and the answer cue."""
    options = "".join(f"\n{letter}. {text}" for letter, text in zip(CHOICES, q.options, strict=True))
    return f"{q.question.strip()}{options}{ANSWER_CUE[language]}"


def prompt_text(q: Question, shots: Sequence[Question], template: ChatTemplate, language: Language) -> str:
    """The whole prompt (system, solved shots, the question) rendered up to where the answer starts."""
    messages: list[dict[str, str]] = []
    for shot in shots:
        messages += [
            {"role": "user", "content": format_question(shot, language)},
            {"role": "assistant", "content": shot.answer},
        ]
    messages += [
        {"role": "user", "content": format_question(q, language)},
        {"role": "assistant", "content": ""},
    ]
    system = SYSTEM[language].format(subject=q.subject.replace("_", " "))
    pairs = template.render_pairs(messages, system, "")
    return "".join(a + b for a, b in pairs[:-1]) + pairs[-1][0]


def choice_token_ids(tokenizer: Any) -> list[int]:
    """The token id of each letter as the answer's first token (the last piece of its encoding)."""
    return [tokenizer.encode(letter, add_special_tokens=False)[-1] for letter in CHOICES]


@dataclass
class BenchmarkScores:
    """Correct answers and question counts per subject."""

    correct: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)

    def add(self, subject: str, right: bool) -> None:
        """Count one answered question."""
        self.correct[subject] = self.correct.get(subject, 0) + int(right)
        self.total[subject] = self.total.get(subject, 0) + 1

    @property
    def accuracy(self) -> float:
        """Share of all questions answered correctly, in percent (micro average)."""
        return 100.0 * sum(self.correct.values()) / max(1, sum(self.total.values()))

    def subject_accuracy(self, subject: str) -> float:
        """Accuracy on ``subject`` in percent."""
        return 100.0 * self.correct[subject] / self.total[subject]


def left_padded(batch: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of token lists padded on the left to the longest."""
    width = max(map(len, batch))
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, seq in enumerate(batch):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
    return ids, mask


@torch.inference_mode()
def score_benchmark(
    model: torch.nn.Module,
    tokenizer: Any,
    template: ChatTemplate,
    plan: BenchmarkPlan,
    *,
    language: Language,
    batch_size: int,
    cutoff_len: int,
) -> BenchmarkScores:
    """Answer every planned question by the argmax over the A-D next-token logits."""
    letters = torch.tensor(choice_token_ids(tokenizer))
    texts = [prompt_text(q, plan.shots.get(q.subject, []), template, language) for q in plan.questions]
    # Keep the end of an over-long prompt: the question itself must survive, old shots may not.
    encoded = [ids[-cutoff_len:] for ids in batch_encode(tokenizer, texts)]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scores = BenchmarkScores()
    model.eval()
    for start in range(0, len(encoded), batch_size):
        ids, mask = left_padded(encoded[start : start + batch_size], pad)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        # Left padding puts every prompt's last token at the end: only that position's logits are needed.
        logits = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            logits_to_keep=1,
        ).logits[:, -1]
        picks = logits[:, letters.to(device)].argmax(dim=-1).tolist()
        for q, pick in zip(plan.questions[start : start + batch_size], picks, strict=True):
            scores.add(q.subject, CHOICES[pick] == q.answer)
    return scores
