"""LLaMA-Factory's remaining ModelArguments knobs applied to a loaded model: fp32 norms and logits
under a half-precision load, and the optional kernel libraries (Liger, Unsloth) — refused clearly
where they cannot run."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import torch
from transformers import PreTrainedModel

from finetune_api.finetunejob import ModelSpec

log = logging.getLogger(__name__)
HALF = (torch.float16, torch.bfloat16)


def package_installed(name: str) -> bool:
    """Whether ``name`` is importable (without importing it: both libraries patch on import)."""
    return importlib.util.find_spec(name) is not None


def check_kernel_knobs(spec: ModelSpec, *, cuda: bool) -> None:
    """Refuse ligerKernel / unsloth where they cannot run, naming the field.

    Raises:
        ValueError: no CUDA GPU, the package missing, or (unsloth) not supported by this trainer.
    """
    if spec.liger_kernel:
        if not cuda:
            raise ValueError("model.ligerKernel: Liger's Triton kernels need a CUDA GPU")
        if not package_installed("liger_kernel"):
            raise ValueError(
                "model.ligerKernel: the liger-kernel package is not installed in the trainer image"
            )
    if spec.unsloth:
        if not cuda:
            raise ValueError("model.unsloth: Unsloth needs a CUDA GPU")
        if not package_installed("unsloth"):
            raise ValueError("model.unsloth: the unsloth package is not installed in the trainer image")
        # Unsloth loads the model and builds the LoRA adapter itself, replacing this loader and
        # prepare_model_for_training; that path is not wired (nor testable without a GPU build of it).
        raise ValueError(
            "model.unsloth: Unsloth is installed but this trainer does not drive it yet; use ligerKernel"
        )


def apply_liger_kernel(model: PreTrainedModel) -> None:
    """Swap the model's RMSNorm, RoPE, SwiGLU and loss for Liger's fused kernels, in place.

    Raises:
        ValueError: Liger has no kernels for this architecture.
    """
    from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance

    try:
        _apply_liger_kernel_to_instance(model=model)
    except (KeyError, NotImplementedError) as exc:
        raise ValueError(f"model.ligerKernel: no Liger kernels for {model.config.model_type}: {exc}") from exc
    log.info("Liger kernels applied to %s", type(model).__name__)


def is_norm(module: torch.nn.Module) -> bool:
    """LayerNorm, and the RMSNorm classes of the model zoo (LlamaRMSNorm, Qwen2RMSNorm, …)."""
    return isinstance(module, torch.nn.LayerNorm | torch.nn.RMSNorm) or type(module).__name__.endswith(
        ("RMSNorm", "LayerNorm")
    )


def upcast_layernorms(model: torch.nn.Module) -> int:
    """Keep normalisation weights in fp32 (``model.upcastLayernorm``); returns how many tensors were cast."""
    cast = 0
    for module in model.modules():
        if is_norm(module):
            for param in module.parameters(recurse=False):
                if param.dtype in HALF:
                    param.data = param.data.float()
                    cast += 1
    return cast


def _logits_to_fp32(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
    return output.to(torch.float32)


def upcast_lmhead_output(model: PreTrainedModel) -> None:
    """Return the output head's logits in fp32 (``model.upcastLmheadOutput``), via a forward hook."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"model.upcastLmheadOutput: {type(model).__name__} has no output head")
    head.register_forward_hook(_logits_to_fp32)
