"""Stage grpo on tiny models: the built-in rewards (pure functions) and a run whose reward rises."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from finetune_api.method import GrpoReward
from finetune_trainer.data import DatasetConfig
from finetune_trainer.model import tiny_model_path
from finetune_trainer.run import execute, plan_run, run_from_files
from finetune_trainer.train.grpo_rewards import (
    builtin_rewards,
    exact_match_reward,
    length_reward,
    regex_reward,
)
from tests.trainer.ppo_helpers import build_full_reward_model
from tests.trainer.stage_jobs import DATA, logged, write_stage_job

PROMPTS = {"source": f"file://{DATA / 'prompts.jsonl'}", "format": "alpaca"}


def test_length_reward_peaks_at_the_target() -> None:
    reward = length_reward(4)
    assert reward(completion_ids=[[1] * 4, [1] * 2, [1] * 6, [1] * 9, []]) == [1.0, 0.5, 0.5, 0.0, 0.0]


def test_regex_reward_matches_the_stripped_completion() -> None:
    reward = regex_reward("^[0-9]+$")
    assert reward(completions=["12", " 12\n", "12 apples", ""]) == [1.0, 1.0, 0.0, 0.0]
    # A pattern that does not compile: examples/invalid/grpo-regex-broken.yaml.


def test_exact_match_reward_compares_with_the_reference() -> None:
    reward = exact_match_reward()
    assert reward(completions=["12", "13 ", "12"], reference=["12", "13", "21"]) == [1.0, 1.0, 0.0]


def test_exact_match_column_must_be_the_response_column() -> None:
    alpaca = DatasetConfig(source="file:///x", name="demo", format="alpaca")
    functions, weights = builtin_rewards(
        [GrpoReward(regex="x", weight=0.5), GrpoReward(exact_match_column="output", weight=2.0)], [alpaca]
    )
    assert len(functions) == 2 and weights == [0.5, 2.0]
    with pytest.raises(
        ValueError, match=r"rewards\[0\].exactMatchColumn: 'answer' must be the response column.*demo: output"
    ):
        builtin_rewards([GrpoReward(exact_match_column="answer")], [alpaca])


@pytest.fixture
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("FINETUNE_METRICS_PORT", "0")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many tiny matmuls: oversubscribed OpenMP is ~10x slower on a shared box
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.usefixtures("_one_thread")
def test_grpo_raises_an_easy_builtin_reward(tmp_path: Path, model_cache_dir: Path) -> None:
    out = tmp_path / "out"
    method = {
        "finetuning": "lora",
        "lora": {"rank": 8},
        # beta 0: nothing holds the policy back, so the (weak, random-model) signal shows within 60 steps
        "grpo": {
            "numGenerations": 8,
            "beta": 0.0,
            "rewards": [{"regex": "^[0-9]"}],
            "generation": {"maxNewTokens": 4},
        },
    }
    training = {
        "maxSteps": 60, "perDeviceBatchSize": 16, "gradientAccumulationSteps": 1, "saveSteps": 30, "learningRate": 1e-2,
    }  # fmt: skip
    job = write_stage_job(
        tmp_path / "grpo.yaml", stage="grpo", method=method, dataset=PROMPTS, out=out, training=training
    )
    outcome = execute(plan_run([str(job)]))

    assert outcome.global_step == 60
    rewards = logged(out, "reward")  # the share of completions starting with a digit
    first, last = sum(rewards[:10]) / 10, sum(rewards[-10:]) / 10
    print(f"\nregex reward: first 10 steps {first:.3f}, last 10 steps {last:.3f}")
    assert last > first + 0.1, f"reward did not rise: {rewards}"
    assert (out / "adapter" / "manifest.json").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-30", "checkpoint-60"]


@pytest.mark.slow
@pytest.mark.usefixtures("_one_thread")
def test_grpo_scores_with_a_reward_model(tmp_path: Path, model_cache_dir: Path) -> None:
    rm = build_full_reward_model(tiny_model_path("tiny://llama"), tmp_path / "rm-full")
    out = tmp_path / "out"
    method = {
        "finetuning": "lora",
        "grpo": {"numGenerations": 4, "rewardModel": f"file://{rm}", "generation": {"maxNewTokens": 4}},
    }
    training = {"maxSteps": 2, "perDeviceBatchSize": 8, "gradientAccumulationSteps": 1}
    job = write_stage_job(
        tmp_path / "grpo.yaml", stage="grpo", method=method, dataset=PROMPTS, out=out, training=training
    )
    assert execute(plan_run([str(job)])).global_step == 2
    spread = logged(out, "reward_std")
    assert spread and all(s > 0 for s in spread), "the reward model's scores must differ between completions"


@pytest.mark.slow
def test_grpo_refuses_a_batch_that_splits_groups(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    method = {"finetuning": "lora", "grpo": {"numGenerations": 3, "rewards": [{"lengthTarget": 4}]}}
    job = write_stage_job(
        tmp_path / "grpo.yaml", stage="grpo", method=method, dataset=PROMPTS, out=tmp_path / "out"
    )
    assert run_from_files([str(job)]) == 1
    assert "must be a multiple of spec.method.grpo.numGenerations (3)" in capsys.readouterr().err
