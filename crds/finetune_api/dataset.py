"""Dataset: a training data source, validated (and optionally prepared) before any GPU is spent."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints

from .common import ApiModel, ConditionedStatus, K8sName, ShortText, Uri, cel, rules
from .uris import DATASET_SCHEMES


class DatasetFormat(StrEnum):
    ALPACA = "alpaca"
    SHAREGPT = "sharegpt"
    OPENAI = "openai"
    TEXT = "text"


class ColumnMapping(ApiModel):
    """Names of the source columns; unset ones take the format's usual names."""

    prompt: ShortText | None = None
    """Instruction column (alpaca: instruction)."""
    query: ShortText | None = None
    """Input column appended to the instruction (alpaca: input)."""
    response: ShortText | None = None
    """Response column (alpaca: output)."""
    history: ShortText | None = None
    """Earlier turns as [[query, response], ...] (alpaca: history)."""
    messages: ShortText | None = None
    """Conversation column (sharegpt: conversations, openai: messages)."""
    system: ShortText | None = None
    """System prompt column."""
    tools: ShortText | None = None
    """Tool descriptions column."""
    chosen: ShortText | None = None
    """Preferred response column (ranking datasets)."""
    rejected: ShortText | None = None
    """Dispreferred response column (ranking datasets)."""
    kto_tag: ShortText | None = None
    """Boolean column marking desirable (true) or undesirable (false) examples for KTO."""
    text: ShortText | None = None
    """Text column of plain-text datasets (text)."""


class TagMapping(ApiModel):
    """Keys and role values inside sharegpt/openai message lists."""

    role_tag: ShortText | None = None
    """Key holding the role (sharegpt: from, openai: role)."""
    content_tag: ShortText | None = None
    """Key holding the text (sharegpt: value, openai: content)."""
    user_tag: ShortText | None = None
    """Role value of the user (sharegpt: human, openai: user)."""
    assistant_tag: ShortText | None = None
    """Role value of the assistant (sharegpt: gpt, openai: assistant)."""
    observation_tag: ShortText | None = None
    """Role value of tool results (sharegpt: observation, openai: tool)."""
    function_tag: ShortText | None = None
    """Role value of tool calls (sharegpt: function_call)."""
    system_tag: ShortText | None = None
    """Role value of the system prompt (system)."""


class DatasetSpec(ApiModel):
    """Desired state of a Dataset."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.source.matches('^(" + "|".join(DATASET_SCHEMES) + ")://.+')",
                "source must be s3://, hf://, https://, pvc:// or file://",
                ".source",
            ),
            cel(
                "!has(self.columns) || !has(self.columns.ktoTag) || !self.ranking",
                "a dataset is either ranking (chosen/rejected) or KTO (ktoTag), not both",
                ".columns.ktoTag",
            ),
            cel(
                "!self.ranking || self.format != 'text'",
                "ranking datasets are alpaca, sharegpt or openai",
                ".ranking",
            ),
        )
    )

    source: Uri
    """Where the data is: s3://bucket/key, hf://org/name, https://…, pvc://claim/path or file://path (a file or a folder)."""
    file_type: Literal["auto", "json", "jsonl", "csv", "parquet", "arrow", "txt"] = "auto"
    """File type; auto goes by the file extension."""
    format: DatasetFormat = DatasetFormat.ALPACA
    """Row layout: alpaca, sharegpt, openai (messages) or text (pre-training)."""
    ranking: bool = False
    """Preference pairs (chosen/rejected) for rm, dpo, orpo and simpo."""
    columns: ColumnMapping | None = None
    """Column names, when they differ from the format's usual ones."""
    tags: TagMapping | None = None
    """Role and content keys of message lists, when they differ from the format's usual ones."""
    split: ShortText = "train"
    """Split to read (hf:// sources)."""
    subset: ShortText | None = None
    """Subset (configuration) name (hf:// sources)."""
    max_samples: int | None = Field(default=None, ge=1, le=1_000_000_000)
    """Use at most this many samples."""
    credentials_secret: K8sName | None = None
    """Secret with credentials for the source (HF_TOKEN, or accessKeyId/secretAccessKey)."""
    endpoint: ShortText | None = None
    """S3 endpoint URL for s3:// sources on S3-compatible stores."""
    prepare: bool = False
    """Tokenize once and share the result in object storage (s3://<output bucket>/finetune-prepared/<fingerprint>), so that jobs with the same tokenizer, template, cutoff and settings reuse it."""


class DatasetPhase(StrEnum):
    PENDING = "Pending"
    VALIDATING = "Validating"
    READY = "Ready"
    INVALID = "Invalid"


class RowError(ApiModel):
    """A malformed row."""

    row: int = Field(ge=0)
    """Row number (0-based) in the source."""
    field: ShortText = ""
    """Column or key at fault."""
    message: ShortText
    """What is wrong."""


class TokenStats(ApiModel):
    """Token lengths of the formatted samples."""

    min: int = Field(ge=0)
    """Shortest sample."""
    max: int = Field(ge=0)
    """Longest sample."""
    mean: float = Field(ge=0)
    """Mean length."""
    p95: int = Field(ge=0)
    """95th percentile."""
    over_cutoff: int | None = Field(default=None, ge=0)
    """Samples longer than the cutoff they were measured against."""


class DatasetFindings(ApiModel):
    """What validating a Dataset's source found (its validation Job's report carries the same)."""

    samples: int | None = Field(default=None, ge=0)
    """Valid samples found."""
    invalid_samples: int | None = Field(default=None, ge=0)
    """Malformed rows skipped."""
    token_stats: TokenStats | None = None
    """Token-length statistics of the formatted samples."""
    preview: list[Annotated[str, StringConstraints(max_length=4096)]] = Field(
        default_factory=list, max_length=5
    )
    """The first samples, formatted with the chat template."""
    errors: list[RowError] = Field(default_factory=list, max_length=20)
    """The first malformed rows."""


class DatasetStatus(DatasetFindings, ConditionedStatus):
    """Observed state of a Dataset."""

    phase: DatasetPhase | None = None
    """Pending, Validating, Ready or Invalid."""
    reason: ShortText | None = None
    """Why the Dataset is Invalid, e.g. InvalidRows (the Validated condition has the details)."""
