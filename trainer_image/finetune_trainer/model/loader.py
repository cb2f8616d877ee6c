"""Load the base model and tokenizer a FineTuneJob names, configured for training.

Order: resolve the source → config (+ RoPE scaling) → tokenizer → model (dtype, attention,
bitsandbytes quantization) → vocabulary resize → gradient checkpointing. Adapters and tuning
types are applied afterwards by :func:`finetune_trainer.model.adapters.prepare_model_for_training`.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BitsAndBytesConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from finetune_api.finetunejob import Attention, ModelSpec, Precision, QuantizationSpec, RopeScalingSpec
from finetune_api.method import Finetuning

from .knobs import apply_liger_kernel, check_kernel_knobs, upcast_layernorms, upcast_lmhead_output
from .packed_attention import PACKED_SDPA, register_packed_sdpa, supports_packed_sdpa
from .shift_attention import register_shift_short_attention
from .sources import fetch_source

log = logging.getLogger(__name__)

# causal_lm for pt/sft/dpo/...; sequence_classification (one logit) is the reward-model head for rm.
ModelHead = Literal["causal_lm", "sequence_classification"]


@dataclass
class LoadedModel:
    """What :func:`load_model_and_tokenizer` returns."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    compute_dtype: torch.dtype
    """dtype the weights were loaded in (and the 4-bit compute dtype)."""
    attention: str
    """The attention implementation in use."""
    vocab_resized: bool
    """The embeddings were grown to the tokenizer; the new rows need training (LoRA adds them as targets)."""
    adapter_path: str | None
    """Local path (or hub id) of model.adapter, to continue training from; ``None`` when unset."""


def cuda_available() -> bool:
    """Whether a CUDA device is usable (a seam so the CPU-only decisions are testable)."""
    return torch.cuda.is_available()


def resolve_dtype(precision: Precision, *, cuda: bool) -> torch.dtype:
    """The compute dtype of ``training.precision``: auto is bf16 on GPUs that support it, else fp16; fp32 on CPU.

    Raises:
        ValueError: fp16 without a GPU (mixed fp16 training needs CUDA's gradient scaler).
    """
    if precision == Precision.AUTO:
        if not cuda:
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == Precision.FP16 and not cuda:
        raise ValueError("training.precision: fp16 needs a CUDA GPU; use bf16 or fp32 on CPU")
    return {Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16, Precision.FP32: torch.float32}[
        precision
    ]


def flash_attn_installed() -> bool:
    """Whether the flash-attn package is importable."""
    return importlib.util.find_spec("flash_attn") is not None


def resolve_attention(attention: Attention, *, cuda: bool, dtype: torch.dtype, packing: bool = False) -> str:
    """The ``attn_implementation`` for ``model.attention``: auto is flash_attention_2 when usable, else
    attention per packed sample (:data:`PACKED_SDPA`) on CPU when training packs rows, else sdpa.

    Raises:
        ValueError: flash_attention_2 requested without CUDA, without flash-attn, or in fp32.
    """
    flash_usable = cuda and flash_attn_installed() and dtype in (torch.bfloat16, torch.float16)
    if attention == Attention.AUTO:
        if flash_usable:
            return "flash_attention_2"
        return PACKED_SDPA if packing and not cuda else "sdpa"
    if attention == Attention.FLASH_ATTENTION_2 and not flash_usable:
        why = (
            "no CUDA GPU"
            if not cuda
            else "flash-attn is not installed"
            if not flash_attn_installed()
            else "it needs bf16 or fp16 (training.precision)"
        )
        raise ValueError(f"model.attention: flash_attention_2 cannot be used: {why}; use auto or sdpa")
    return attention.value


def bnb_config(quantization: QuantizationSpec, *, compute_dtype: torch.dtype) -> BitsAndBytesConfig:
    """The bitsandbytes config of ``model.quantization``."""
    if quantization.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization.type or "nf4",
        bnb_4bit_use_double_quant=quantization.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        # Storing the packed weights in the compute dtype lets FSDP/ZeRO-3 shard them with the rest.
        bnb_4bit_quant_storage=compute_dtype,
    )


def apply_rope_scaling(config: PretrainedConfig, rope: RopeScalingSpec) -> None:
    """Write ``model.ropeScaling`` into ``config.rope_parameters`` (transformers v5 layout).

    yarn and llama3 scale from the current context (kept as ``original_max_position_embeddings``),
    and the usable context grows by ``factor``.

    Raises:
        ValueError: the model has no (or per-layer-type) RoPE parameters.
    """
    params = config.rope_parameters if hasattr(config, "rope_parameters") else None
    if not isinstance(params, dict) or "rope_type" not in params:
        raise ValueError(
            f"model.ropeScaling: {config.model_type} has no single set of RoPE parameters to scale"
        )
    scaled: dict[str, Any] = {**params, "rope_type": rope.type, "factor": rope.factor}
    if rope.type in ("yarn", "llama3"):
        original = config.max_position_embeddings
        scaled["original_max_position_embeddings"] = original
        config.max_position_embeddings = math.ceil(original * rope.factor)
    if rope.type == "llama3":
        scaled.setdefault("low_freq_factor", 1.0)
        scaled.setdefault("high_freq_factor", 4.0)
    config.rope_parameters = scaled


def resize_embeddings_to_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> bool:
    """Grow the embeddings when the tokenizer has more tokens; new rows are the mean of the old ones.

    Both the input and (untied) output embeddings are initialised, so new tokens start as an
    "average" token rather than noise. Returns whether anything was resized.
    """
    old = model.get_input_embeddings().weight.shape[0]
    new = len(tokenizer)
    if new <= old:
        return False
    model.resize_token_embeddings(new, mean_resizing=False)
    embeddings = [model.get_input_embeddings(), model.get_output_embeddings()]
    seen: set[int] = set()
    with torch.no_grad():
        for module in embeddings:
            if module is None or id(module.weight) in seen:
                continue
            seen.add(id(module.weight))
            weight = module.weight
            weight[old:] = weight[:old].mean(dim=0, keepdim=True)
    log.info("resized embeddings from %d to %d tokens (new rows = mean of old)", old, new)
    return True


def enable_gradient_checkpointing(model: PreTrainedModel, *, adapters: bool) -> None:
    """Recompute activations in the backward pass (non-reentrant); ``adapters`` makes inputs require grad.

    Raises:
        ValueError: the model does not support gradient checkpointing.
    """
    if not model.supports_gradient_checkpointing:
        raise ValueError(f"training.gradientCheckpointing: {type(model).__name__} does not support it")
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False  # the KV cache is useless in training and conflicts with recomputation
    if adapters:
        # With frozen embeddings nothing before the first adapter requires grad; this keeps the graph alive.
        model.enable_input_require_grads()


def apply_model_knobs(model: PreTrainedModel, spec: ModelSpec) -> None:
    """``model.ligerKernel``, ``upcastLayernorm`` and ``upcastLmheadOutput`` on a loaded model."""
    if spec.liger_kernel:
        apply_liger_kernel(model)
    if spec.upcast_layernorm:
        log.info("upcastLayernorm: %d norm tensors kept in fp32", upcast_layernorms(model))
    if spec.upcast_lmhead_output:
        upcast_lmhead_output(model)


def load_tokenizer(path: str, *, spec: ModelSpec) -> PreTrainedTokenizerBase:
    """The model's tokenizer, right-padded for training, with a pad token (eos when it has none)."""
    tokenizer = AutoTokenizer.from_pretrained(
        path,
        revision=spec.revision,
        trust_remote_code=spec.trust_remote_code,
        split_special_tokens=spec.split_special_tokens,
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_model_and_tokenizer(
    spec: ModelSpec,
    *,
    finetuning: Finetuning = Finetuning.LORA,
    precision: Precision = Precision.AUTO,
    gradient_checkpointing: bool = False,
    head: ModelHead = "causal_lm",
    packing: bool = False,
) -> LoadedModel:
    """Load ``spec``'s model and tokenizer ready for :func:`prepare_model_for_training`.

    ``finetuning``, ``precision`` and ``packing`` come from ``method.finetuning``, ``training.precision``
    and ``training.packing``.
    The model stays on CPU unless quantized (bitsandbytes places it on the current device);
    the Trainer moves it.

    Raises:
        ValueError: an unsupported combination, naming the spec field.
    """
    cuda = cuda_available()
    dtype = resolve_dtype(precision, cuda=cuda)
    attention = resolve_attention(spec.attention, cuda=cuda, dtype=dtype, packing=packing)
    check_kernel_knobs(spec, cuda=cuda)
    if spec.shift_attention:
        attention = register_shift_short_attention()  # SDPA at inference, grouped and shifted in training
    path = fetch_source(spec.source, field="model.source")
    adapter_path = fetch_source(spec.adapter, field="model.adapter") if spec.adapter else None

    config = AutoConfig.from_pretrained(
        path, revision=spec.revision, trust_remote_code=spec.trust_remote_code
    )
    if spec.rope_scaling is not None:
        apply_rope_scaling(config, spec.rope_scaling)
    if attention == PACKED_SDPA:
        attention = register_packed_sdpa() if supports_packed_sdpa(config) else "sdpa"
    tokenizer = load_tokenizer(path, spec=spec)
    kwargs: dict[str, Any] = {}
    if spec.quantization is not None:
        kwargs["quantization_config"] = bnb_config(spec.quantization, compute_dtype=dtype)
        # bitsandbytes quantizes while placing the weights: each rank loads onto its own GPU.
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0")) if cuda else "cpu"}
    if head == "sequence_classification":
        config.num_labels = 1
        config.pad_token_id = tokenizer.pad_token_id  # the head pools the last non-pad token
        auto_class: Any = AutoModelForSequenceClassification
    else:
        auto_class = AutoModelForCausalLM
    model = auto_class.from_pretrained(
        path,
        config=config,
        revision=spec.revision,
        trust_remote_code=spec.trust_remote_code,
        dtype=dtype,
        attn_implementation=attention,
        **kwargs,
    )
    vocab_resized = resize_embeddings_to_tokenizer(model, tokenizer)
    apply_model_knobs(model, spec)
    if gradient_checkpointing:
        enable_gradient_checkpointing(model, adapters=finetuning != Finetuning.FULL)
    log.info("loaded %s (%s, %s, attention=%s)", spec.source, type(model).__name__, dtype, attention)
    return LoadedModel(model, tokenizer, dtype, attention, vocab_resized, adapter_path)


def is_quantized(model: torch.nn.Module) -> bool:
    """Whether the model (or the base of a PeftModel) was loaded with a quantizer (bitsandbytes 4/8-bit)."""
    # transformers sets hf_quantizer only on models it quantized; PeftModel forwards the attribute.
    return getattr(model, "hf_quantizer", None) is not None
