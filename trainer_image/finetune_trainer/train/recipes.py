"""What a recipe takes and gives back, and which recipe trains which stage: one explicit branch per
stage family, imported only when used."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from finetune_api.method import Stage

from ..data import DatasetConfig
from ..workspace import Workspace


@dataclass(frozen=True)
class RecipeInputs:
    """What `finetune run` hands a recipe, resolved from the validated manifests."""

    datasets: Sequence[DatasetConfig]
    """spec.datasets, in reference order, each with its weight."""
    evaluation: Mapping[str, DatasetConfig]
    """The Datasets spec.evaluation names, by name (empty without spec.evaluation)."""
    documents: list[dict[str, Any]]
    """The FineTuneJob and every Dataset it names, saved as the resolved spec (job.yaml)."""


@dataclass
class TrainOutcome:
    """What a recipe reports back to `finetune run`."""

    global_step: int
    train_loss: float | None
    adapter_uri: str | None
    resumed_from: str | None
    metrics: dict[str, float]


Recipe = Callable[[Workspace, RecipeInputs], TrainOutcome]

IMPLEMENTED_STAGES: tuple[Stage, ...] = (
    Stage.PT,
    Stage.SFT,
    Stage.RM,
    Stage.DPO,
    Stage.ORPO,
    Stage.SIMPO,
    Stage.KTO,
    Stage.PPO,
    Stage.GRPO,
)


def recipe_for(stage: Stage) -> Recipe:
    """The recipe of ``stage``; a ValueError naming the field for a stage not available yet."""
    if stage in (Stage.PT, Stage.SFT):
        from .causal_lm import run_causal_lm

        return run_causal_lm
    if stage == Stage.RM:
        from .reward_model import run_reward_model

        return run_reward_model
    if stage in (Stage.DPO, Stage.ORPO, Stage.SIMPO, Stage.KTO):
        from .preference import run_preference  # the loss is method.preference.loss

        return run_preference
    if stage == Stage.PPO:
        from .ppo import run_ppo

        return run_ppo
    if stage == Stage.GRPO:
        from .grpo import run_grpo

        return run_grpo
    supported = ", ".join(s.value for s in IMPLEMENTED_STAGES)
    raise ValueError(f"spec.method.stage: {stage.value} is not available yet (supported: {supported})")
