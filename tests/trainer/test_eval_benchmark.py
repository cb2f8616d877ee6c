"""Multiple-choice benchmark: the layout is checked row by row, shots and subjects are planned as
documented, and an untrained tiny model scores about chance (25%) on a balanced synthetic set."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from finetune_trainer.data import get_template
from finetune_trainer.evaluate.choice import (
    CHOICES,
    choice_token_ids,
    format_question,
    plan_benchmark,
    prompt_text,
    read_questions,
    score_benchmark,
)


def synthetic_rows(
    n: int, *, answer: str | None = None, subjects: tuple[str, ...] = ("math", "art")
) -> list[dict[str, str]]:
    """``n`` questions; answers cycle A-D (balanced) unless ``answer`` fixes one letter."""
    return [
        {
            "subject": subjects[i % len(subjects)],
            "question": f"Question number {i}: which option is right?",
            "A": f"alpha {i}",
            "B": f"bravo {i}",
            "C": f"charlie {i}",
            "D": f"delta {i}",
            "answer": answer or CHOICES[(i // len(subjects)) % 4],
        }
        for i in range(n)
    ]


def test_rows_without_a_column_or_with_a_bad_answer_are_refused() -> None:
    rows = synthetic_rows(2)
    del rows[1]["C"]
    with pytest.raises(ValueError, match=r"field: row 1: missing column\(s\) C"):
        read_questions(rows, field_name="field")
    rows = synthetic_rows(2)
    rows[0]["answer"] = "E"
    with pytest.raises(ValueError, match="row 0: answer 'E' is not one of A, B, C, D"):
        read_questions(rows, field_name="field")


def test_shots_come_from_each_subjects_first_rows_unless_given() -> None:
    questions = read_questions(synthetic_rows(12), field_name="f")
    plan = plan_benchmark(questions, n_shot=2)
    assert [len(plan.shots[s]) for s in ("math", "art")] == [2, 2]
    assert len(plan.questions) == 8  # 6 per subject, 2 of each are shots
    assert not {id(q) for q in plan.questions} & {id(q) for s in plan.shots.values() for q in s}
    given = read_questions(synthetic_rows(4, subjects=("math",)), field_name="f")
    plan = plan_benchmark(questions, n_shot=3, subjects=["math"], shots=given)
    assert len(plan.questions) == 6 and {q.subject for q in plan.questions} == {"math"}
    assert plan.shots["math"] == given[:3]


def test_unknown_subject_is_refused() -> None:
    questions = read_questions(synthetic_rows(4), field_name="f")
    with pytest.raises(ValueError, match="subjects: physics not in the Dataset"):
        plan_benchmark(questions, n_shot=0, subjects=["physics"])


@pytest.fixture(scope="module")
def tiny(model_cache_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_trainer.model.tiny import tiny_model_path

    path = tiny_model_path("tiny://llama")
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_prompt_renders_system_shots_and_question_with_the_chat_template(tiny) -> None:  # type: ignore[no-untyped-def]
    _, tokenizer = tiny
    questions = read_questions(synthetic_rows(3, subjects=("high_school_math",)), field_name="f")
    text = prompt_text(questions[2], questions[:1], get_template("auto", tokenizer), "en")
    system = "The following are multiple choice questions (with answers) about high school math.\n\n"
    assert text.startswith(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n")
    assert f"{format_question(questions[0], 'en')}<|im_end|>\n<|im_start|>assistant\nA<|im_end|>" in text
    assert text.endswith(f"{format_question(questions[2], 'en')}<|im_end|>\n<|im_start|>assistant\n")
    assert format_question(questions[2], "en").endswith(
        "\nA. alpha 2\nB. bravo 2\nC. charlie 2\nD. delta 2\nAnswer:"
    )
    assert len(set(choice_token_ids(tokenizer))) == 4


def test_untrained_model_scores_about_chance(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = tiny
    questions = read_questions(synthetic_rows(80), field_name="f")
    plan = plan_benchmark(questions, n_shot=1)
    scores = score_benchmark(
        model, tokenizer, get_template("auto", tokenizer), plan, language="en", batch_size=16, cutoff_len=512
    )
    assert sum(scores.total.values()) == 78 and set(scores.total) == {"math", "art"}
    assert 10.0 <= scores.accuracy <= 40.0, scores.accuracy


def test_batching_and_padding_do_not_change_the_answers(tiny) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer = tiny
    rows = synthetic_rows(12)
    rows[3]["question"] = "A much longer question, " * 6  # forces left padding of the others
    plan = plan_benchmark(read_questions(rows, field_name="f"), n_shot=0)
    template = get_template("auto", tokenizer)
    one = score_benchmark(model, tokenizer, template, plan, language="en", batch_size=1, cutoff_len=512)
    many = score_benchmark(model, tokenizer, template, plan, language="en", batch_size=12, cutoff_len=512)
    assert one.correct == many.correct
