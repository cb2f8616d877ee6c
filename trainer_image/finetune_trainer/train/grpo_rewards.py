"""GRPO's built-in rewards (``method.grpo.rewards``) as TRL reward functions.

Each function takes TRL's keyword arguments (``completions``, ``completion_ids`` and the dataset's
other columns, e.g. ``reference``) and returns one float per completion, in [0, 1].
Completions are compared with surrounding whitespace stripped: a trailing newline is not a
different answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from finetune_api.method import GrpoReward

from ..data import DatasetConfig

RewardFunction = Callable[..., list[float]]
REFERENCE_COLUMN = "reference"
"""Column of the GRPO rows holding each prompt's reference answer (the dataset's response)."""


def length_reward(target: int) -> RewardFunction:
    """1 for exactly ``target`` completion tokens, falling linearly to 0 at a distance of ``target``."""

    def length_target(completion_ids: list[list[int]], **_: Any) -> list[float]:
        return [max(0.0, 1.0 - abs(len(ids) - target) / target) for ids in completion_ids]

    return length_target


def regex_reward(pattern: str) -> RewardFunction:
    """1 when the pattern is found in the completion (anchor it with ^…$ to match the whole), else 0."""
    compiled = re.compile(pattern)  # it compiles: finetune_api.rules.grpo_regexes_compile

    def regex_match(completions: list[str], **_: Any) -> list[float]:
        return [1.0 if compiled.search(text.strip()) else 0.0 for text in completions]

    return regex_match


def exact_match_reward() -> RewardFunction:
    """1 when the completion equals the prompt's reference answer, else 0."""

    def exact_match(completions: list[str], reference: list[str], **_: Any) -> list[float]:
        return [
            1.0 if text.strip() == ref.strip() else 0.0
            for text, ref in zip(completions, reference, strict=True)
        ]

    return exact_match


def check_reference_column(column: str, datasets: Sequence[DatasetConfig], *, field: str) -> None:
    """The reference column must be every dataset's response column: that is what the data worker keeps.

    Raises:
        ValueError: naming ``field`` and the datasets whose response column differs.
    """
    wrong = [
        (cfg.label, cfg.resolved_columns().response)
        for cfg in datasets
        if cfg.resolved_columns().response != column
    ]
    if wrong:
        found = ", ".join(f"{label}: {response or 'none'}" for label, response in wrong)
        raise ValueError(
            f"{field}: {column!r} must be the response column of every dataset (the reference answer); found {found}"
        )


def builtin_rewards(
    rewards: Sequence[GrpoReward], datasets: Sequence[DatasetConfig]
) -> tuple[list[RewardFunction], list[float]]:
    """The reward functions of ``method.grpo.rewards`` and their weights, in order."""
    functions: list[RewardFunction] = []
    weights: list[float] = []
    for i, reward in enumerate(rewards):
        if reward.length_target is not None:
            functions.append(length_reward(reward.length_target))
        elif reward.regex is not None:
            functions.append(regex_reward(reward.regex))
        elif reward.exact_match_column is not None:
            check_reference_column(
                reward.exact_match_column, datasets, field=f"spec.method.grpo.rewards[{i}].exactMatchColumn"
            )
            functions.append(exact_match_reward())
        else:  # the API's CEL rule makes this unreachable for applied objects
            raise ValueError(
                f"spec.method.grpo.rewards[{i}]: set one of lengthTarget, regex, exactMatchColumn"
            )
        weights.append(reward.weight)
    return functions, weights
