"""The progress bar and record step by step: driven through the real TrainerCallback with the
Trainer's own state objects, the bar read back from what tqdm wrote to stderr."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import TrainerControl, TrainerState, TrainingArguments

from finetune_trainer.progress import ProgressReporter
from finetune_trainer.train.callbacks import ProgressCallback


@pytest.fixture
def args(tmp_path: Path) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path), report_to=[])


def test_nothing_is_printed_before_training_starts(capsys: pytest.CaptureFixture[str]) -> None:
    reporter = ProgressReporter()  # made when the workspace opens, before data and model load
    assert capsys.readouterr().err == ""
    reporter.set_total_steps(4)
    assert "0/4" in capsys.readouterr().err
    reporter.finish("Succeeded")


def test_the_bar_moves_every_optimizer_step_not_only_on_logging_steps(args: TrainingArguments) -> None:
    reporter = ProgressReporter()
    callback = ProgressCallback(reporter)
    state, control = TrainerState(max_steps=10, logging_steps=5), TrainerControl()
    callback.on_train_begin(args, state, control)
    for step in (1, 2, 3):
        state.global_step = step
        callback.on_step_end(args, state, control)
        assert reporter.bar_position == step
        assert (reporter.record.step, reporter.record.percent) == (step, step * 10.0)
    assert not control.should_log, "step 3 of 10 is no logging step"
    reporter.finish("Succeeded")


def test_the_last_step_is_always_logged(args: TrainingArguments) -> None:
    # A run shorter than loggingSteps (or not a multiple of it) still logs its final loss.
    reporter = ProgressReporter(show_bar=False)
    state, control = TrainerState(max_steps=3, logging_steps=10), TrainerControl()
    state.global_step = 3
    ProgressCallback(reporter).on_step_end(args, state, control)
    assert control.should_log
    reporter.finish("Succeeded")


def test_the_bar_shows_the_loss_of_the_step_just_logged(capsys: pytest.CaptureFixture[str]) -> None:
    reporter = ProgressReporter()
    reporter.set_total_steps(10)
    reporter.on_step(5)
    capsys.readouterr()
    reporter.on_log(5, loss=1.2345, learning_rate=1e-4)
    assert "loss=1.2345" in capsys.readouterr().err
    reporter.finish("Succeeded")


def test_step_and_percent_agree_when_a_run_resumes_at_its_end() -> None:
    reporter = ProgressReporter(show_bar=False)
    reporter.set_total_steps(20, step=20)  # resumed from the final checkpoint: no step left to log
    final = reporter.finish("Succeeded")
    assert (final.step, final.percent) == (20, 100.0)

    unstarted = ProgressReporter(total_steps=20, show_bar=False).finish("Succeeded")
    assert (unstarted.step, unstarted.percent) == (0, 0.0)
