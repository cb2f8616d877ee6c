"""FineTuneJob: one fine-tuning run, declared."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StringConstraints

from .common import (
    ApiModel,
    ConditionedStatus,
    K8sName,
    OutputSpec,
    ResourcesSpec,
    ShortText,
    Uri,
    cel,
    rules,
)
from .evaluation import EVALUATION_SPEC_RULES, EvaluationSpec, EvaluationStatus
from .method import MethodSpec
from .uris import ADAPTER_SCHEMES, MODEL_SCHEMES


class QuantizationSpec(ApiModel):
    """bitsandbytes quantization of the base model while training (QLoRA)."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel("!has(self.type) || self.bits == 4", "type applies to 4-bit only", ".type")
        )
    )

    bits: Literal[4, 8]
    """Bits per weight: 4 or 8."""
    type: Literal["nf4", "fp4"] | None = None
    """4-bit data type; nf4 when unset."""
    double_quant: bool = True
    """Quantize the quantization constants too (4-bit), saving about 0.4 bits per weight."""


class RopeScalingSpec(ApiModel):
    """RoPE scaling to extend the context window."""

    type: Literal["linear", "dynamic", "yarn", "llama3"]
    """Scaling method."""
    factor: float = Field(gt=1.0, le=64.0)
    """Context extension factor."""


class Attention(StrEnum):
    AUTO = "auto"
    SDPA = "sdpa"
    FLASH_ATTENTION_2 = "flash_attention_2"
    EAGER = "eager"


class ModelSpec(ApiModel):
    """The base model."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.source.matches('^(" + "|".join(MODEL_SCHEMES) + ")://.+')",
                "source must be hf://org/name, s3://bucket/path, pvc://claim/path, file://path or tiny://arch",
                ".source",
            ),
            cel(
                "!has(self.adapter) || self.adapter.matches('^(" + "|".join(ADAPTER_SCHEMES) + ")://.+')",
                "adapter must be an hf://, s3://, pvc:// or file:// URI",
                ".adapter",
            ),
            cel(
                "!has(self.shiftAttention) || !self.shiftAttention || !has(self.attention)"
                " || self.attention in ['auto', 'sdpa']",
                "shiftAttention works with attention auto or sdpa",
                ".shiftAttention",
            ),
            cel(
                "!has(self.useFastTokenizer) || self.useFastTokenizer",
                "useFastTokenizer: false cannot be honoured: transformers 5 always loads the fast tokenizer",
                ".useFastTokenizer",
            ),
            cel(
                "!has(self.unsloth) || !self.unsloth || !has(self.ligerKernel) || !self.ligerKernel",
                "unsloth brings its own kernels: do not combine it with ligerKernel",
                ".unsloth",
            ),
        )
    )

    source: Uri
    """Where the model comes from: hf://org/name, s3://bucket/path, pvc://claim/path, file://path, or tiny://llama (a small random model for smoke tests)."""
    revision: ShortText | None = None
    """Hub revision (branch, tag or commit) for hf:// sources."""
    trust_remote_code: bool = False
    """Run modelling code shipped with the model; off by default because it executes arbitrary code."""
    credentials_secret: K8sName | None = None
    """Secret with the credentials for the source (HF_TOKEN, or accessKeyId/secretAccessKey)."""
    quantization: QuantizationSpec | None = None
    """Load the base quantized with bitsandbytes (QLoRA); requires finetuning lora."""
    attention: Attention = Attention.AUTO
    """Attention implementation; auto picks flash_attention_2 when installed on a GPU, else sdpa."""
    rope_scaling: RopeScalingSpec | None = None
    """RoPE scaling for longer contexts."""
    adapter: Uri | None = None
    """An existing adapter to continue training from (hf://, s3://, pvc:// or file://)."""
    use_fast_tokenizer: bool = True
    """Load the fast (Rust) tokenizer. Only true is accepted: transformers 5 has no slow tokenizers to fall back to (LLaMA-Factory's use_fast_tokenizer)."""
    split_special_tokens: bool = False
    """Tokenize special-token strings found in the data (e.g. <|im_end|>) as plain text instead of as the special token."""
    upcast_layernorm: bool = False
    """Keep the normalisation weights in fp32 under a bf16/fp16 load, for stability."""
    upcast_lmhead_output: bool = False
    """Return the logits in fp32 under a bf16/fp16 load, for a more precise loss."""
    shift_attention: bool = False
    """LongLoRA's shift short attention (S²-Attn) while training: attention within groups of a quarter of the sequence, half of the heads shifted by half a group; full attention at inference."""
    llama_pro_blocks: int | None = Field(default=None, ge=1, le=256)
    """LLaMA Pro block expansion: insert this many copies of decoder layers, evenly spaced, with zero output projections (the model's function is unchanged); only the new blocks train. Needs method.finetuning freeze, stage pt or sft, and a layer count divisible by it; method.freeze.trainableLayers is then not used (trainableModules and extraModules still are)."""
    liger_kernel: bool = False
    """Use Liger's fused Triton kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy); needs a CUDA GPU and the liger-kernel package."""
    unsloth: bool = False
    """Load and patch the model with Unsloth's kernels; needs a CUDA GPU and the unsloth package."""


class MixStrategy(StrEnum):
    CONCAT = "concat"
    INTERLEAVE_UNDER = "interleave_under"
    INTERLEAVE_OVER = "interleave_over"


class DatasetRef(ApiModel):
    """A Dataset used by the job, with its mixing weight."""

    ref: K8sName
    """Name of a Dataset in the job's namespace (or in the same file for `finetune run`)."""
    weight: float = Field(default=1.0, gt=0, le=1000)
    """Relative sampling weight with interleave mix strategies."""


class Template(StrEnum):
    AUTO = "auto"
    LLAMA3 = "llama3"
    CHATML = "chatml"
    QWEN = "qwen"
    MISTRAL = "mistral"
    GEMMA = "gemma"
    PHI = "phi"
    ALPACA = "alpaca"
    VICUNA = "vicuna"
    DEFAULT = "default"
    EMPTY = "empty"


class Precision(StrEnum):
    AUTO = "auto"
    BF16 = "bf16"
    FP16 = "fp16"
    FP32 = "fp32"


class TrainingSpec(ApiModel):
    """Hyper-parameters of the training loop."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "self.valSize < 1.0 || self.valSize == double(int(self.valSize))",
                "valSize is a fraction below 1 or a whole number of samples",
                ".valSize",
            )
        )
    )

    epochs: float = Field(default=3.0, gt=0, le=1000)
    """Passes over the training data (fractions allowed)."""
    max_steps: int | None = Field(default=None, ge=1, le=10_000_000)
    """Stop after this many optimizer steps; overrides epochs."""
    learning_rate: float = Field(default=1e-4, gt=0, le=1)
    """Peak learning rate."""
    lr_scheduler: Literal[
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "constant",
        "constant_with_warmup",
        "inverse_sqrt",
    ] = "cosine"
    """Learning-rate schedule."""
    warmup_ratio: float = Field(default=0.0, ge=0, le=1)
    """Share of the steps spent warming the learning rate up."""
    per_device_batch_size: int = Field(default=2, ge=1, le=4096)
    """Sequences per device per micro-batch."""
    gradient_accumulation_steps: int = Field(default=4, ge=1, le=4096)
    """Micro-batches per optimizer step."""
    cutoff_len: int = Field(default=2048, ge=8, le=1_048_576)
    """Maximum tokens per sequence; longer samples are truncated, keeping a share for the response."""
    packing: bool = False
    """Pack several samples into one sequence without cross-attention between them."""
    train_on_prompt: bool = False
    """Also compute the loss on prompt tokens (by default only responses are learned)."""
    mask_history: bool = False
    """Learn only the last turn of multi-turn conversations."""
    template: Template = Template.AUTO
    """Chat template; auto uses the tokenizer's own."""
    precision: Precision = Precision.AUTO
    """Compute precision; auto: bf16 where the GPU supports it, else fp16; fp32 on CPU."""
    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass to save memory; false is LLaMA-Factory's disableGradientCheckpointing."""
    optimizer: Literal[
        "adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "adafactor", "sgd"
    ] = "adamw_torch"
    """Optimizer (ignored when method.galore is set; stage ppo takes adamw_torch only)."""
    max_grad_norm: float = Field(default=1.0, ge=0, le=1e6)
    """Gradient clipping norm; 0 disables clipping."""
    weight_decay: float = Field(default=0.0, ge=0, le=10)
    """Decoupled weight decay."""
    seed: int = Field(default=42, ge=0, le=2**31 - 1)
    """Random seed for data order and initialisation."""
    val_size: float = Field(default=0.0, ge=0, le=10_000_000)
    """Validation split: a fraction below 1, or a number of samples."""
    eval_steps: int | None = Field(default=None, ge=1, le=10_000_000)
    """Evaluate every N steps (needs valSize); at the end only when unset."""
    save_steps: int = Field(default=500, ge=1, le=10_000_000)
    """Write a checkpoint to the output location every N steps."""
    save_total_limit: int | None = Field(default=3, ge=1, le=1000)
    """Checkpoints kept in the output location; all when unset."""
    neftune_alpha: float | None = Field(default=None, gt=0, le=100)
    """NEFTune noise on embeddings; off when unset."""
    logging_steps: int = Field(default=10, ge=1, le=100000)
    """Log loss, learning rate and throughput every N steps."""


class DistributedSpec(ApiModel):
    """Multi-GPU and multi-node strategy."""

    deepspeed: Literal["zero0", "zero2", "zero3", "zero2_offload", "zero3_offload"] | None = None
    """DeepSpeed ZeRO stage (offload variants move optimizer state to CPU); plain DDP when unset."""


def _immutable_except(*mutable: str) -> Any:
    """A spec-level transition rule: every field keeps its value after creation, except ``mutable``."""

    def add_rule(schema: dict[str, Any], model: type[ApiModel]) -> None:
        required = set(schema.get("required", []))
        terms = []
        for name, field in model.model_fields.items():
            wire = field.alias or name
            if wire in mutable:
                continue
            if wire in required:
                terms.append(f"self.{wire} == oldSelf.{wire}")
            else:
                terms.append(
                    f"has(self.{wire}) == has(oldSelf.{wire}) && (!has(self.{wire}) || self.{wire} == oldSelf.{wire})"
                )
        rule = " && ".join(f"({t})" for t in terms)
        schema.setdefault("x-kubernetes-validations", []).extend(
            [
                cel(rule, f"spec is immutable after creation, except {', '.join(mutable)}"),
                *SPEC_RULES,
            ]
        )

    return add_rule


SPEC_RULES = [
    cel(
        "!has(self.model.quantization) || self.method.finetuning == 'lora'",
        "quantization requires finetuning: lora (QLoRA)",
        ".model.quantization",
    ),
    cel(
        "self.datasets.all(d, self.datasets.exists_one(e, e.ref == d.ref))",
        "each Dataset may be referenced once",
        ".datasets",
    ),
    cel(
        "!has(self.model.llamaProBlocks) || (self.method.finetuning == 'freeze' && self.method.stage in ['pt', 'sft'])",
        "llamaProBlocks trains only the new blocks: it needs finetuning freeze and stage pt or sft",
        ".model.llamaProBlocks",
    ),
    *EVALUATION_SPEC_RULES,
]


class FineTuneJobSpec(ApiModel):
    """Desired state of a FineTuneJob."""

    model_config = ConfigDict(json_schema_extra=_immutable_except("suspend"))

    model: ModelSpec
    """The base model."""
    datasets: list[DatasetRef] = Field(min_length=1, max_length=16)
    """Datasets to train on, by reference, with weights."""
    mix_strategy: MixStrategy = MixStrategy.CONCAT
    """How several datasets are combined: concat, or interleaved with under- or over-sampling."""
    method: MethodSpec
    """Stage, tuning type and their settings."""
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    """Hyper-parameters of the training loop."""
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    """Compute for the training pods."""
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)
    """Multi-GPU and multi-node strategy."""
    output: OutputSpec | None = None
    """Where checkpoints, the adapter and logs go; required on a cluster, file://./runs/<name> for local runs."""
    suspend: bool = False
    """Suspend the job (deletes its pods; resumes from the last checkpoint when set back to false)."""
    active_deadline_seconds: int | None = Field(default=None, ge=1, le=31_536_000)
    """Fail the job when it runs longer than this."""
    backoff_limit: int = Field(default=2, ge=0, le=100)
    """Retries after a pod failure; each retry resumes from the last checkpoint."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=31_536_000)
    """Delete the job's pods and children this long after it finishes (the FineTuneJob and its status stay)."""
    queue_name: K8sName | None = None
    """Kueue LocalQueue; the Job is created suspended for Kueue to admit."""
    image: Uri | None = None
    """Override of the trainer image."""
    image_pull_secrets: list[K8sName] | None = Field(default=None, max_length=8)
    """Secrets in this namespace the kubelet pulls the image with (added to the operator's own)."""
    evaluation: EvaluationSpec | None = None
    """Evaluate the trained model: predictions scored with BLEU-4 / ROUGE, a multiple-choice benchmark, or both."""


def dataset_paths(spec: FineTuneJobSpec) -> list[tuple[str, str]]:
    """Every Dataset a job reads, as (field path, name): training data first, then evaluation data."""
    paths = [(f"spec.datasets[{i}].ref", ref.ref) for i, ref in enumerate(spec.datasets)]
    if spec.evaluation is not None:
        known = {name for _, name in paths}
        paths += [("spec.evaluation", name) for name in spec.evaluation.dataset_refs() if name not in known]
    return paths


class Phase(StrEnum):
    PENDING = "Pending"
    PREPARING = "Preparing"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class ProgressDisplay(ApiModel):
    """The progress as ``kubectl get`` prints it (a printer column prints a value, it cannot format one)."""

    percent: ShortText | None = None
    """Share of the planned steps done, in whole percent rounded down, e.g. 42%."""
    loss: ShortText | None = None
    """Latest training loss to 4 significant digits, e.g. 1.235."""


def format_percent(percent: float) -> str:
    """``42%``: whole percent, rounded down so that 100% means done."""
    return f"{int(percent)}%"


def format_loss(loss: float) -> str:
    """A loss to 4 significant digits: ``1.235``, ``0.0001235``, ``1235``."""
    return f"{loss:.4g}"


class TrainingProgress(ApiModel):
    """Live progress, from the trainer's progress record."""

    step: int = Field(default=0, ge=0)
    """Optimizer steps done."""
    total_steps: int | None = Field(default=None, ge=0)
    """Planned optimizer steps."""
    epoch: float | None = Field(default=None, ge=0)
    """Fractional epoch reached."""
    percent: float | None = Field(default=None, ge=0, le=100)
    """Share of the planned steps done."""
    loss: float | None = None
    """Latest training loss."""
    learning_rate: float | None = Field(default=None, ge=0)
    """Current learning rate."""
    tokens_per_second: float | None = Field(default=None, ge=0)
    """Training throughput in real (non-padding) tokens per second, all ranks."""
    eta_seconds: int | None = Field(default=None, ge=0)
    """Estimated seconds to completion."""
    eta: ShortText | None = None
    """The same estimate for people, e.g. 1h05m."""
    updated_at: str | None = None
    """When the trainer wrote this record (RFC 3339)."""
    display: ProgressDisplay | None = None
    """Percent and loss formatted for people (set by the operator from the fields above)."""

    def with_display(self) -> TrainingProgress:
        """A copy with :attr:`display` computed from the percent (else step of totalSteps) and loss."""
        percent = self.percent
        if percent is None and self.total_steps:
            percent = min(100.0, 100.0 * self.step / self.total_steps)
        display = ProgressDisplay(
            percent=format_percent(percent) if percent is not None else None,
            loss=format_loss(self.loss) if self.loss is not None else None,
        )
        return self.model_copy(update={"display": display})


class JobOutputs(ApiModel):
    """Artifacts of a FineTuneJob."""

    adapter: Uri | None = None
    """URI of the final adapter (or full model) with its manifest."""
    checkpoints: Uri | None = None
    """URI under which checkpoints are written."""
    loss_plot: Uri | None = None
    """URI of the loss-curve PNG."""
    metrics: Uri | None = None
    """URI of trainer_log.jsonl."""


class FineTuneJobStatus(ConditionedStatus):
    """Observed state of a FineTuneJob."""

    phase: Phase | None = None
    """Pending, Preparing, Running, Succeeded, Failed or Suspended."""
    reason: ShortText | None = None
    """Why the job waits or failed, e.g. DatasetNotReady, PodsPending or OutOfMemory (the conditions
    carry the details); unset while it runs and once it succeeded."""
    progress: TrainingProgress | None = None
    """Live training progress."""
    start_time: str | None = None
    """When the training Job started (RFC 3339)."""
    completion_time: str | None = None
    """When the job succeeded or failed (RFC 3339)."""
    restarts: int = Field(default=0, ge=0)
    """Pod failures retried so far."""
    last_checkpoint: Uri | None = None
    """URI of the newest complete checkpoint."""
    outputs: JobOutputs | None = None
    """Artifacts written."""
    job_name: K8sName | None = None
    """Name of the batch/v1 Job running the trainer."""
    gpu_memory_estimate: Annotated[str, StringConstraints(max_length=32)] | None = None
    """Estimated peak memory per GPU (the preflight's), as a quantity, e.g. 50.2Gi."""
    evaluation: EvaluationStatus | None = None
    """Scores of spec.evaluation, once computed."""
