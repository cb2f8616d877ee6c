"""The training method of a FineTuneJob: stage, tuning type and each one's knobs."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import ConfigDict, Field

from .common import ApiModel, ShortText, Uri, at_most_one, cel, exactly_one, rules


class Stage(StrEnum):
    """Training stage, as in LLaMA-Factory."""

    PT = "pt"
    SFT = "sft"
    RM = "rm"
    PPO = "ppo"
    DPO = "dpo"
    KTO = "kto"
    ORPO = "orpo"
    SIMPO = "simpo"
    GRPO = "grpo"


PREFERENCE_STAGES = (Stage.DPO, Stage.KTO, Stage.ORPO, Stage.SIMPO)
PAIRWISE_STAGES = (Stage.RM, Stage.DPO, Stage.ORPO, Stage.SIMPO)


class Finetuning(StrEnum):
    """Which parameters are trained."""

    FULL = "full"
    FREEZE = "freeze"
    LORA = "lora"


class LoraSpec(ApiModel):
    """LoRA adapter settings (QLoRA is LoRA plus model.quantization)."""

    rank: int = Field(default=8, ge=1, le=1024)
    """Rank of the LoRA matrices."""
    alpha: int | None = Field(default=None, ge=1, le=4096)
    """LoRA scaling alpha; twice the rank when unset."""
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Dropout on the LoRA input."""
    target_modules: list[ShortText] = Field(default_factory=lambda: ["all"], min_length=1, max_length=64)
    """Module names to adapt, e.g. [q_proj, v_proj]; [all] adapts every linear layer but the output head."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA)."""
    use_rslora: bool = False
    """Rank-stabilised scaling alpha/sqrt(rank)."""
    loraplus_lr_ratio: float | None = Field(default=None, gt=0, le=1024)
    """LoRA+: learning rate of the B matrices relative to A; plain LoRA when unset."""
    pissa_init: bool = False
    """Initialise the adapter from the principal singular values and vectors (PiSSA)."""
    additional_target: list[ShortText] = Field(default_factory=list, max_length=32)
    """Extra modules trained in full and saved with the adapter, e.g. [embed_tokens, lm_head]."""


class FreezeSpec(ApiModel):
    """Freeze-tuning: only some layers or modules are trained."""

    model_config = ConfigDict(
        json_schema_extra=rules(cel("self.trainableLayers != 0", "must not be 0", ".trainableLayers"))
    )

    trainable_layers: int = Field(default=2, ge=-1024, le=1024)
    """Number of trainable decoder layers: the last N when positive, the first N when negative."""
    trainable_modules: list[ShortText] = Field(default_factory=lambda: ["all"], min_length=1, max_length=32)
    """Modules trained inside those layers, e.g. [mlp, self_attn]; [all] trains the whole layer."""
    extra_modules: list[ShortText] = Field(default_factory=list, max_length=32)
    """Modules outside the decoder layers that are trained too, e.g. [embed_tokens]."""


class GaloreSpec(ApiModel):
    """GaLore: gradient low-rank projection for memory-efficient full or freeze tuning."""

    rank: int = Field(default=16, ge=1, le=4096)
    """Rank of the gradient projection."""
    update_interval: int = Field(default=200, ge=1, le=100000)
    """Steps between projection updates."""
    scale: float = Field(default=2.0, gt=0, le=100)
    """Scale of the projected update."""
    proj_type: Literal["std", "reverse_std", "right", "left", "full"] = "std"
    """Projection type."""
    target: list[ShortText] = Field(default_factory=lambda: ["all"], min_length=1, max_length=64)
    """Linear modules whose weights use GaLore; [all] for every linear layer."""


class PreferenceLoss(StrEnum):
    SIGMOID = "sigmoid"
    HINGE = "hinge"
    IPO = "ipo"
    ORPO = "orpo"
    SIMPO = "simpo"
    KTO = "kto"


class PreferenceSpec(ApiModel):
    """Preference optimisation (dpo, kto, orpo, simpo)."""

    loss: PreferenceLoss
    """Preference loss: sigmoid (DPO), hinge, ipo, orpo, simpo; kto for the kto stage."""
    beta: float = Field(default=0.1, gt=0, le=100)
    """Inverse temperature of the preference loss."""
    ftx: float = Field(default=0.0, ge=0, le=100)
    """Weight of the SFT loss mixed into the preference loss."""
    simpo_gamma: float = Field(default=0.5, ge=0, le=100)
    """Target reward margin of SimPO."""
    reference_model: Uri | None = None
    """Reference model source for full tuning; with LoRA the base with adapters disabled is the reference."""
    kto_desirable_weight: float = Field(default=1.0, gt=0, le=100)
    """KTO weight of desirable examples."""
    kto_undesirable_weight: float = Field(default=1.0, gt=0, le=100)
    """KTO weight of undesirable examples."""


class GenerationSpec(ApiModel):
    """Sampling settings for generation during RL."""

    max_new_tokens: int = Field(default=128, ge=1, le=32768)
    """Maximum tokens generated per prompt."""
    temperature: float = Field(default=1.0, gt=0, le=10)
    """Sampling temperature."""
    top_p: float = Field(default=1.0, gt=0, le=1)
    """Nucleus sampling probability mass."""
    top_k: int = Field(default=0, ge=0, le=100000)
    """Top-k sampling; 0 disables it."""


class PpoSpec(ApiModel):
    """PPO with model sharing: one base model, policy/value/reward adapters."""

    reward_model: Uri
    """Reward model: the rm output (adapter) of another FineTuneJob by URI, or a full reward model source."""
    reward_model_type: Literal["lora", "full"] = "lora"
    """lora: an adapter on the same base model (shared in memory); full: a separate reward model."""
    epochs: int = Field(default=4, ge=1, le=100)
    """PPO epochs per batch of rollouts."""
    buffer_size: int = Field(default=1, ge=1, le=1024)
    """Mini-batches collected per PPO optimisation step."""
    target_kl: float | None = Field(default=6.0, gt=0, le=1000, alias="targetKL")
    """Target KL for adaptive KL control; fixed KL coefficient when unset."""
    whiten_rewards: bool = False
    """Whiten rewards before computing advantages."""
    score_norm: bool = False
    """Normalise reward scores with running statistics."""
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    """Rollout generation settings."""


class GrpoReward(ApiModel):
    """One built-in GRPO reward function (exactly one kind per entry)."""

    model_config = ConfigDict(
        json_schema_extra=rules(exactly_one("lengthTarget", "regex", "exactMatchColumn"))
    )

    length_target: int | None = Field(default=None, ge=1, le=32768)
    """Reward completions close to this many tokens."""
    regex: ShortText | None = None
    """Reward completions matching this regular expression (format rewards)."""
    exact_match_column: ShortText | None = None
    """Reward completions equal to the reference answer in this dataset column."""
    weight: float = Field(default=1.0, gt=0, le=100)
    """Weight of this reward in the sum."""


class GrpoSpec(ApiModel):
    """Group relative policy optimisation."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel("size(self.rewards) > 0 || has(self.rewardModel)", "set rewards, rewardModel or both")
        )
    )

    num_generations: int = Field(default=4, ge=2, le=256)
    """Completions sampled per prompt (the group)."""
    beta: float = Field(default=0.04, ge=0, le=100)
    """KL coefficient against the reference policy."""
    rewards: list[GrpoReward] = Field(default_factory=list, max_length=8)
    """Built-in reward functions, summed with their weights."""
    reward_model: Uri | None = None
    """A reward model (e.g. an rm job's output) scored in addition to the built-in rewards."""
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    """Generation settings for the group."""


def _stage_is(*stages: Stage) -> str:
    return "self.stage in [" + ", ".join(f"'{s.value}'" for s in stages) + "]"


class MethodSpec(ApiModel):
    """What is trained and how."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "!has(self.lora) || self.finetuning == 'lora'",
                "lora is only valid with finetuning: lora",
                ".lora",
            ),
            cel(
                "!has(self.freeze) || self.finetuning == 'freeze'",
                "freeze is only valid with finetuning: freeze",
                ".freeze",
            ),
            cel(
                "!has(self.galore) || self.finetuning != 'lora'",
                "galore applies to full or freeze tuning",
                ".galore",
            ),
            cel(
                "has(self.ppo) == (self.stage == 'ppo')",
                "a ppo block goes with stage ppo, and stage ppo needs one",
                ".ppo",
            ),
            cel(
                "has(self.grpo) == (self.stage == 'grpo')",
                "a grpo block goes with stage grpo, and stage grpo needs one",
                ".grpo",
            ),
            cel(
                f"has(self.preference) == ({_stage_is(*PREFERENCE_STAGES)})",
                "stages dpo, kto, orpo and simpo need a preference block (with its loss); other stages take none",
                ".preference",
            ),
            cel(
                "!has(self.preference) || ((self.stage == 'kto') == (self.preference.loss == 'kto'))",
                "preference.loss kto goes with stage kto, and stage kto needs it",
                ".preference.loss",
            ),
            cel(
                "!has(self.preference) || self.stage != 'orpo' || self.preference.loss == 'orpo'",
                "stage orpo needs preference.loss orpo",
                ".preference.loss",
            ),
            cel(
                "!has(self.preference) || self.stage != 'simpo' || self.preference.loss == 'simpo'",
                "stage simpo needs preference.loss simpo",
                ".preference.loss",
            ),
            at_most_one("lora", "freeze"),
        )
    )

    stage: Stage
    """Training stage: pt, sft, rm, ppo, dpo, kto, orpo, simpo or grpo."""
    finetuning: Finetuning = Finetuning.LORA
    """full trains every weight, freeze some layers, lora an adapter (QLoRA: lora with model.quantization)."""
    lora: LoraSpec | None = None
    """LoRA settings; defaults apply when finetuning is lora and this is unset."""
    freeze: FreezeSpec | None = None
    """Freeze-tuning settings; defaults apply when finetuning is freeze and this is unset."""
    galore: GaloreSpec | None = None
    """Use the GaLore optimizer (full or freeze tuning)."""
    preference: PreferenceSpec | None = None
    """Preference loss settings (dpo, kto, orpo, simpo)."""
    ppo: PpoSpec | None = None
    """PPO settings (stage ppo)."""
    grpo: GrpoSpec | None = None
    """GRPO settings (stage grpo)."""

    def lora_or_default(self) -> LoraSpec:
        """The LoRA settings in force: the given block or the defaults."""
        return self.lora or LoraSpec()

    def freeze_or_default(self) -> FreezeSpec:
        """The freeze-tuning settings in force: the given block or the defaults."""
        return self.freeze or FreezeSpec()

    def written_out(self) -> MethodSpec:
        """This method with the LoRA or freeze settings in force filled in where the block is unset."""
        if self.finetuning == Finetuning.LORA:
            return self.model_copy(update={"lora": self.lora_or_default()})
        if self.finetuning == Finetuning.FREEZE:
            return self.model_copy(update={"freeze": self.freeze_or_default()})
        return self
