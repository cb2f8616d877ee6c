"""GPU-memory preflight: estimate the peak memory per GPU of a FineTuneJob before any GPU is spent.

A deliberately simple model (mixed-precision rule of thumb + activations with or without
checkpointing + logits), good to tens of percent: enough to refuse a job that cannot fit by a wide
margin, with the numbers that say why. The shape of the model comes from ``tiny://`` options, or
from a size in the model's name (``Qwen2.5-1.5B``, ``Llama-3-8B``) matched to typical shapes.

The operator runs :func:`preflight` before it creates a Job, against the GPU memory the spec
declares, else the smallest labelled node's, else its setting. ``finetune validate`` and the trainer
at start run :func:`preflight_errors`, against the memory the spec declares (what they know).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import FieldError
from .finetunejob import FineTuneJobSpec, Precision
from .method import PAIRWISE_STAGES, Finetuning, Stage
from .tiny import parse_tiny_uri
from .uris import Scheme, scheme_of

GIB = 1024**3
# Fixed per-process cost: CUDA context, NCCL buffers, allocator fragmentation.
OVERHEAD_BYTES = 1.5 * GIB
OVERHEAD_SHARE = 0.10
# (billions of parameters, layers, hidden, intermediate, kv share of hidden, vocab): common open models.
KNOWN_SHAPES = (
    (0.135, 30, 576, 1536, 1 / 3, 49152),
    (0.5, 24, 896, 4864, 1 / 7, 151936),
    (1.5, 28, 1536, 8960, 1 / 6, 151936),
    (3.0, 36, 2048, 11008, 1 / 8, 151936),
    (7.0, 28, 3584, 18944, 1 / 7, 152064),
    (8.0, 32, 4096, 14336, 1 / 4, 128256),
    (14.0, 48, 5120, 13824, 1 / 5, 152064),
    (32.0, 64, 5120, 27648, 1 / 5, 152064),
    (70.0, 80, 8192, 28672, 1 / 8, 128256),
)
SIZE_IN_NAME = re.compile(r"(?<![0-9.])([0-9]+(?:\.[0-9]+)?)\s*([bBmM])(?![a-zA-Z])")


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a model."""

    params: float
    layers: int
    hidden: int
    intermediate: int
    kv_hidden: int
    vocab: int


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes per GPU, by part."""

    weights: float
    training_state: float
    activations: float
    overhead: float

    @property
    def total_gib(self) -> float:
        return (self.weights + self.training_state + self.activations + self.overhead) / GIB

    def describe(self) -> str:
        """The numbers, for a condition message."""
        parts = (
            f"weights {self.weights / GIB:.1f}",
            f"gradients+optimizer {self.training_state / GIB:.1f}",
            f"activations {self.activations / GIB:.1f}",
            f"overhead {self.overhead / GIB:.1f}",
        )
        return f"{self.total_gib:.1f} GiB per GPU ({', '.join(parts)})"


def _tiny_shape(uri: str) -> ModelShape:
    t = parse_tiny_uri(uri)
    h, kv = t.hidden, t.kv_hidden
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * t.intermediate
    return ModelShape(t.layers * per_layer + 2 * t.vocab * h, t.layers, h, t.intermediate, kv, t.vocab)


def model_shape(source: str) -> ModelShape | None:
    """The shape of ``source``'s model, or None when nothing says how big it is (then no preflight)."""
    if scheme_of(source) is Scheme.TINY:
        return _tiny_shape(source)
    match = SIZE_IN_NAME.search(source.rsplit("/", 1)[-1])
    if not match:
        return None
    billions = float(match.group(1)) / (1000 if match.group(2) in "mM" else 1)
    _, layers, h, inter, kv_share, vocab = min(KNOWN_SHAPES, key=lambda s: abs(s[0] - billions) / s[0])
    return ModelShape(billions * 1e9, layers, h, inter, int(h * kv_share), vocab)


def _trainable(spec: FineTuneJobSpec, shape: ModelShape) -> float:
    method = spec.method
    if method.finetuning == Finetuning.FULL:
        return shape.params
    if method.finetuning == Finetuning.FREEZE:
        layers = abs(method.freeze_or_default().trainable_layers)
        return shape.params * min(layers, shape.layers) / shape.layers
    lora = method.lora_or_default()
    rank, targets = lora.rank, lora.target_modules
    h, kv, i = shape.hidden, shape.kv_hidden, shape.intermediate
    per_layer = 7 * h + 2 * kv + 3 * i  # sum of in+out features over q,k,v,o,gate,up,down
    share = 1.0 if "all" in targets else min(len(targets), 7) / 7
    return rank * shape.layers * per_layer * share


def _weight_bytes(spec: FineTuneJobSpec) -> float:
    quant = spec.model.quantization
    if quant is not None:
        return 0.55 if quant.bits == 4 else 1.05
    return 4.0 if spec.training.precision == Precision.FP32 else 2.0


def _state_bytes_per_trainable(spec: FineTuneJobSpec) -> float:
    """Gradient + optimizer state (+ the fp32 master copy of mixed-precision full tuning) per trainable parameter."""
    optimizer = spec.training.optimizer
    if spec.method.galore is not None or optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        opt = 2.0
    elif optimizer == "adafactor":
        opt = 1.0
    elif optimizer == "sgd":
        opt = 4.0
    else:
        opt = 8.0
    if spec.method.finetuning == Finetuning.LORA:
        return 4.0 + opt  # adapters train in fp32: no separate master copy
    return opt + (4.0 if spec.training.precision == Precision.FP32 else 2.0 + 4.0)


def estimate_memory(spec: FineTuneJobSpec, shape: ModelShape) -> MemoryEstimate:
    """Peak memory per GPU of ``spec`` training a model of ``shape``."""
    world = spec.resources.nodes * max(spec.resources.gpus_per_node, 1)
    zero = spec.distributed.deepspeed or "zero0"
    trainable = _trainable(spec, shape)
    weights = shape.params * _weight_bytes(spec)
    if spec.method.finetuning == Finetuning.LORA:
        weights += trainable * 4.0  # the adapters, in fp32
    if spec.method.stage in (Stage.PPO,) or (
        spec.method.stage in (Stage.DPO, Stage.KTO) and spec.method.finetuning != Finetuning.LORA
    ):
        weights += shape.params * _weight_bytes(spec)  # a reference or reward model beside the policy
    state = trainable * _state_bytes_per_trainable(spec)
    if zero.endswith("offload"):
        state = trainable * 2.0  # optimizer state and master weights live in CPU memory
    if zero.startswith(("zero2", "zero3")):
        state /= world
    if zero.startswith("zero3"):
        weights /= world
    seqs = spec.training.per_device_batch_size * (2 if spec.method.stage in PAIRWISE_STAGES else 1)
    tokens = seqs * spec.training.cutoff_len
    layer_activations = tokens * shape.hidden * 34.0  # bf16 activations of one layer (flash/sdpa attention)
    if spec.training.gradient_checkpointing:
        activations = tokens * shape.hidden * 2.0 * shape.layers + layer_activations
    else:
        activations = layer_activations * shape.layers
    activations += tokens * shape.vocab * 8.0  # fp32 logits and their gradient
    subtotal = weights + state + activations
    return MemoryEstimate(weights, state, activations, OVERHEAD_BYTES + OVERHEAD_SHARE * subtotal)


@dataclass(frozen=True)
class PreflightResult:
    """The estimate (None when the model's size is unknown) and, when it cannot fit, why."""

    estimate_gib: float | None
    refusal: str | None = None


def preflight(
    spec: FineTuneJobSpec, capacity_gib: float | None, capacity_source: str = ""
) -> PreflightResult:
    """Estimate ``spec``'s memory per GPU; refuse it when ``capacity_gib`` is known and too small.

    Raises:
        ValueError: the model source cannot be understood (e.g. a bad tiny:// option).
    """
    shape = model_shape(spec.model.source)
    if shape is None:
        return PreflightResult(None)
    estimate = estimate_memory(spec, shape)
    total = round(estimate.total_gib, 2)
    if spec.resources.gpus_per_node == 0 or capacity_gib is None or total <= capacity_gib:
        return PreflightResult(total)
    refusal = (
        f"estimated {estimate.describe()} exceeds the {capacity_gib:g} GiB of one GPU ({capacity_source}); "
        "use LoRA or QLoRA, a smaller perDeviceBatchSize or cutoffLen, gradientCheckpointing, "
        "or deepspeed zero3/offload over more GPUs"
    )
    return PreflightResult(total, refusal)


def preflight_errors(spec: FineTuneJobSpec) -> list[FieldError]:
    """The preflight against ``spec.resources.gpuMemoryGiB`` (none when the spec declares no GPU memory,
    or its model's size is unknown); a model source it cannot read is the spec rules' to report."""
    capacity = spec.resources.gpu_memory_gib
    if not capacity:
        return []
    try:
        result = preflight(spec, capacity, "spec.resources.gpuMemoryGiB")
    except ValueError:
        return []
    return [FieldError("spec.resources.gpuMemoryGiB", result.refusal)] if result.refusal else []
