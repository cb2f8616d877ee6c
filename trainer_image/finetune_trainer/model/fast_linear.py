"""Faster linear layers for training, exact where they apply: fused LoRA and oneDNN matmuls on CPU.

**Fused LoRA.** PEFT computes ``x Wᵀ + s · (x Aᵀ) Bᵀ``: besides the base matmul, two rank-r matmuls
with a token-sized output, a full-size multiply by the scaling and a full-size add, each again in the
backward pass (plus one more full-size add for the input gradient). Merging the rank-r delta into a
transient weight, ``y = x (W + s·B·A)ᵀ + b``, costs ``out × in × r`` — small next to ``tokens × in ×
out`` once there are more tokens than features — and leaves one big matmul forward and one backward
(``grad_x = g · W_merged``); the adapter gradients come from rank-r products, ``grad_B = s · gᵀ (x Aᵀ)``
and ``grad_A = s · (g B)ᵀ x``. The idea is Unsloth's fast LoRA, here in plain torch on any device.
It runs only where it is PEFT's computation: vanilla LoRA (no DoRA or other variant, no LoRA bias) on
a plain linear layer, one active unmerged adapter, no dropout in effect, fp32 everywhere and no
autocast (merging into a bf16/fp16 weight would round the delta away), no hooks on the wrapped
modules, at least as many tokens as features (below that the merge costs more than it saves, e.g. in
generation). Any other call takes PEFT's own forward.

**oneDNN on CPU.** PyTorch's fp32 ``mm`` on x86 is MKL's, which does not use AVX-512 on non-Intel
CPUs (≈ 90 GFLOP/s per core on an AVX-512 AMD EPYC, where oneDNN — also in every x86 PyTorch build —
reaches ≈ 220). Every matmul of the layers here (forward, input and weight gradients, the rank-r
products) goes through oneDNN's fp32 inner product when its operands are fp32 CPU tensors; the
result is the same fp32 product (another summation order), never a reduced-precision one.

Fast path: see finetune_trainer.fastpaths (its reference path and the tests that pin the two equal).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as LoraLinear

log = logging.getLogger(__name__)


@functools.cache
def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN and its dense-tensor linear op (x86 builds do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _cpu_fp32(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def matmul_nt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ bᵀ (+ bias)`` for ``a`` (…, k) and ``b`` (n, k), any strides: oneDNN for fp32 CPU tensors, else ``F.linear``."""
    operands = (a, b) if bias is None else (a, b, bias)
    if onednn_available() and _cpu_fp32(*operands):
        return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")
    return F.linear(a, b, bias)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


class LinearFunction(torch.autograd.Function):
    """``x Wᵀ + b`` with every product through :func:`matmul_nt`; gradients for whichever inputs require them."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return matmul_nt(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        g, x2 = _flat(grad_out), _flat(x)
        grad_x = matmul_nt(grad_out, weight.t()) if ctx.needs_input_grad[0] else None
        grad_w = matmul_nt(g.t(), x2.t()) if ctx.needs_input_grad[1] else None
        grad_bias = g.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_bias


class FusedLoraFunction(torch.autograd.Function):
    """``x (W + s·B·A)ᵀ + b`` with the gradients of x, A and B (and of W, b when they require them)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scaling: float,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight, lora_a, lora_b)
        ctx.scaling = scaling
        return matmul_nt(x, torch.addmm(weight, lora_b, lora_a, alpha=scaling), bias)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, lora_a, lora_b = ctx.saved_tensors
        scaling: float = ctx.scaling
        g, x2 = _flat(grad_out), _flat(x)
        grad_x = grad_w = grad_bias = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            # Rebuilt rather than saved: out × in × r work instead of a weight-sized buffer per layer.
            merged = torch.addmm(weight, lora_b, lora_a, alpha=scaling)
            grad_x = matmul_nt(grad_out, merged.t())
        if ctx.needs_input_grad[1]:
            grad_w = matmul_nt(g.t(), x2.t())
        if ctx.needs_input_grad[2]:
            grad_bias = g.sum(0)
        if ctx.needs_input_grad[3]:
            g_b = matmul_nt(g, (lora_b * scaling).t())  # s · g B, scaled on the out × r side
            grad_a = matmul_nt(g_b.t(), x2.t())
        if ctx.needs_input_grad[4]:
            x_a = matmul_nt(x2, lora_a) * scaling  # s · x Aᵀ, scaled on the tokens × r side
            grad_b = matmul_nt(x_a.t(), g.t()).t()  # (s · (x Aᵀ)ᵀ g)ᵀ: oneDNN is fast for this order
        return grad_x, grad_w, grad_bias, grad_a, grad_b, None


class OneDnnLinear(torch.nn.Linear):
    """``nn.Linear`` whose fp32 CPU calls go through :class:`LinearFunction` (oneDNN); any other call is stock."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not onednn_available() or torch.is_autocast_enabled("cpu") or not _cpu_fp32(input, self.weight):
            return super().forward(input)
        return LinearFunction.apply(input, self.weight, self.bias)


def _hooked(module: torch.nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


class FusedLoraLinear(LoraLinear):
    """PEFT's LoRA ``Linear`` whose forward merges the adapter into the matmul where that is exact."""

    def _fused_adapter(self, x: torch.Tensor) -> str | None:
        """The adapter to fuse for this call, or ``None`` when PEFT's forward must run."""
        if self.disable_adapters or self.merged or len(self.active_adapters) != 1:
            return None
        name = self.active_adapters[0]
        if name not in self.lora_A or name in self.lora_variant:
            return None
        base, lora_a, lora_b = self.base_layer, self.lora_A[name], self.lora_B[name]
        dropout = self.lora_dropout[name]
        if dropout.training and not isinstance(dropout, torch.nn.Identity):
            return None
        if (
            lora_a.bias is not None
            or lora_b.bias is not None
            or any(map(_hooked, (base, lora_a, lora_b, dropout)))
        ):
            return None
        tensors = (x, base.weight, lora_a.weight, lora_b.weight)
        if any(t.dtype != torch.float32 for t in tensors) or torch.is_autocast_enabled(x.device.type):
            return None
        tokens = x.numel() // max(x.shape[-1], 1)
        return name if tokens >= max(base.in_features, base.out_features) else None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = None if args or kwargs else self._fused_adapter(x)
        if name is None:
            return super().forward(x, *args, **kwargs)
        base = self.base_layer
        return FusedLoraFunction.apply(
            x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name]
        )


def _plain_fp32_linear(module: torch.nn.Module) -> bool:
    return type(module) in (torch.nn.Linear, OneDnnLinear) and module.weight.dtype == torch.float32


def fusable(module: torch.nn.Module) -> bool:
    """Whether ``module`` is PEFT's LoRA ``Linear`` over a plain fp32 linear layer without a variant (DoRA, …)."""
    return (
        type(module) is LoraLinear
        and _plain_fp32_linear(module.base_layer)
        and not module.fan_in_fan_out
        and not module.lora_variant
    )


def use_fast_linear(model: torch.nn.Module) -> tuple[int, int]:
    """Swap, in place, fusable LoRA layers to :class:`FusedLoraLinear` and, where oneDNN is available,
    plain fp32 linear layers (LoRA's base layers included) to :class:`OneDnnLinear`.

    Parameters, state dict, saving and merging are unchanged. Returns ``(fused LoRA layers, oneDNN layers)``.
    """
    fused = [module for module in model.modules() if fusable(module)]
    for module in fused:
        module.__class__ = FusedLoraLinear
    plain = [
        module for module in model.modules() if type(module) is torch.nn.Linear and _plain_fp32_linear(module)
    ] if onednn_available() else []  # fmt: skip
    for module in plain:
        module.__class__ = OneDnnLinear
    return len(fused), len(plain)
