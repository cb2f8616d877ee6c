"""The data worker's own settings, unpacked once from the API objects.

Everything below the public entry points works on these small frozen dataclasses, so that the
loader, aligner and processors never reach into pydantic models (and tests can build them
directly with keyword arguments).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Literal, TypeAlias

from datasets import Dataset, IterableDataset

from finetune_api.finetunejob import MixStrategy
from finetune_api.method import Stage
from finetune_api.pod import CACHE_DIR_ENV, DATA_NUM_PROC_ENV

FileType = Literal["auto", "json", "jsonl", "csv", "parquet", "arrow", "txt"]
DataFormat = Literal["alpaca", "sharegpt", "openai", "text"]

IGNORE_INDEX = -100
AnyDataset: TypeAlias = Dataset | IterableDataset


class Shape(StrEnum):
    """What a stage needs from each aligned row."""

    TEXT = "text"  # pt: plain text
    SUPERVISED = "supervised"  # sft: prompt + one response
    PAIRWISE = "pairwise"  # rm/dpo/orpo/simpo: prompt + chosen + rejected
    KTO = "kto"  # kto: prompt + one response + desirable tag
    PROMPT = "prompt"  # ppo/grpo: prompt, response optional


STAGE_SHAPE: dict[Stage, Shape] = {
    Stage.PT: Shape.TEXT,
    Stage.SFT: Shape.SUPERVISED,
    Stage.RM: Shape.PAIRWISE,
    Stage.DPO: Shape.PAIRWISE,
    Stage.ORPO: Shape.PAIRWISE,
    Stage.SIMPO: Shape.PAIRWISE,
    Stage.KTO: Shape.KTO,
    Stage.PPO: Shape.PROMPT,
    Stage.GRPO: Shape.PROMPT,
}


@dataclass(frozen=True)
class ColumnNames:
    """Column names in the source rows; ``None`` means "not present". Defaults follow LLaMA-Factory."""

    prompt: str | None = None
    query: str | None = None
    response: str | None = None
    history: str | None = None
    messages: str | None = None
    system: str | None = None
    tools: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    kto_tag: str | None = None


@dataclass(frozen=True)
class RoleTags:
    """Keys and role values inside sharegpt/openai messages."""

    role_tag: str = "from"
    content_tag: str = "value"
    user_tag: str = "human"
    assistant_tag: str = "gpt"
    observation_tag: str = "observation"
    function_tag: str = "function_call"
    system_tag: str = "system"


SHAREGPT_TAGS = RoleTags()
OPENAI_TAGS = RoleTags(
    role_tag="role",
    content_tag="content",
    user_tag="user",
    assistant_tag="assistant",
    observation_tag="tool",
    function_tag="function_call",
    system_tag="system",
)


def default_columns(fmt: DataFormat, *, ranking: bool) -> ColumnNames:
    """LLaMA-Factory's dataset_info defaults for a format."""
    pair = {"chosen": "chosen", "rejected": "rejected"} if ranking else {}
    if fmt == "alpaca":
        return ColumnNames(prompt="instruction", query="input", response="output", **pair)
    if fmt == "sharegpt":
        return ColumnNames(messages="conversations", **pair)
    if fmt == "openai":
        return ColumnNames(messages="messages", **pair)
    return ColumnNames(prompt="text")


def merge_columns(base: ColumnNames, override: dict[str, str | None]) -> ColumnNames:
    """``base`` with the non-empty entries of ``override`` (snake_case keys) replacing its defaults."""
    given = {k: v for k, v in override.items() if v}
    return ColumnNames(**{**base.__dict__, **given})


@dataclass(frozen=True)
class DatasetConfig:
    """One dataset to load: where it is, how it is laid out, how much of it to use."""

    source: str
    name: str = ""
    file_type: FileType = "auto"
    format: DataFormat = "alpaca"
    ranking: bool = False
    columns: ColumnNames | None = None
    tags: RoleTags | None = None
    split: str = "train"
    subset: str | None = None
    max_samples: int | None = None
    weight: float = 1.0
    s3_endpoint: str | None = None
    credentials_dir: str | None = None
    """Mounted Secret folder with this Dataset's S3 keys (pods); the environment's keys otherwise."""

    @property
    def label(self) -> str:
        """The name used in messages: the Dataset's name, else its source."""
        return self.name or self.source

    def resolved_columns(self) -> ColumnNames:
        """The column names in force: given ones over the format's defaults."""
        base = default_columns(self.format, ranking=self.ranking)
        return merge_columns(base, self.columns.__dict__) if self.columns else base

    def resolved_tags(self) -> RoleTags:
        """The role tags in force: given ones, else the format's defaults."""
        if self.tags is not None:
            return self.tags
        return OPENAI_TAGS if self.format == "openai" else SHAREGPT_TAGS


def default_cache_dir() -> Path:
    """``FINETUNE_CACHE_DIR`` or ``~/.cache/finetune-operator/data``."""
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env) if env else Path.home() / ".cache" / "finetune-operator" / "data"


@dataclass(frozen=True)
class ProcessingConfig:
    """How aligned rows become model inputs (from FineTuneJob.spec.training and method)."""

    stage: Stage = Stage.SFT
    template: str = "auto"
    cutoff_len: int = 2048
    packing: bool = False
    train_on_prompt: bool = False
    mask_history: bool = False
    response_reserve_ratio: float = 0.25
    val_size: float = 0.0
    seed: int = 42
    mix_strategy: MixStrategy = MixStrategy.CONCAT
    streaming: bool = False
    num_proc: int | None = None
    cache_dir: Path = field(default_factory=default_cache_dir)

    @property
    def shape(self) -> Shape:
        """What each aligned row must provide for this stage."""
        return STAGE_SHAPE[self.stage]


# Measured on 2 cores (bench/README.md): one process whose tokenizer runs on both cores beats two
# forked workers up to ~50k alpaca rows (10k: 0.90 vs 1.04 s; 50k: 4.6 vs 4.4 s) at less CPU.
IN_PROCESS_ROWS = 40_000
ROWS_PER_WORKER = 4000  # below this a forked worker costs more than it saves


def resolve_num_proc(requested: int | None, num_rows: int) -> int:
    """Worker processes for ``datasets.map``: ``requested``, else env ``FINETUNE_DATA_NUM_PROC``, else auto.

    Auto runs in-process below ``IN_PROCESS_ROWS`` (the Rust tokenizer then uses every core itself),
    else one worker per usable CPU. Never more than one worker per ``ROWS_PER_WORKER`` rows.
    """
    if requested is None:
        env = os.environ.get(DATA_NUM_PROC_ENV)
        if not env and num_rows < IN_PROCESS_ROWS:
            return 1
        requested = int(env) if env else len(os.sched_getaffinity(0))
    useful = max(1, num_rows // ROWS_PER_WORKER)
    return max(1, min(requested, useful))
