"""Fused LoRA and oneDNN linear layers: the same outputs and gradients as PEFT's and torch's own layers,
PEFT's path wherever fusing would not be exact, and a LoRA run that trains and saves a plain adapter."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear
from transformers import LlamaForCausalLM

from finetune_api.method import MethodSpec
from finetune_trainer.model import fast_linear, prepare_model_for_training
from finetune_trainer.model.fast_linear import FusedLoraLinear, OneDnnLinear, matmul_nt, use_fast_linear

from .helpers import assert_only_trainable_parameters_change, random_tokens, tiny_llama_config

ONEDNN = [False, True] if fast_linear.onednn_available() else [False]


@pytest.fixture(params=ONEDNN, ids=lambda on: "onednn" if on else "stock")
def onednn(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both matmul paths of :func:`matmul_nt` (oneDNN only where this PyTorch build has it)."""
    if not request.param:
        monkeypatch.setattr(fast_linear, "onednn_available", lambda: False)
    return bool(request.param)


class Projection(torch.nn.Module):
    def __init__(self, features_in: int, features_out: int, *, bias: bool) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(features_in, features_out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def lora_pair(features_in: int, features_out: int, *, bias: bool = False, **lora: Any) -> tuple[Any, Any]:
    """A PEFT LoRA model with non-zero B (as after some training) and a copy given the fast layers."""
    torch.manual_seed(0)
    config = LoraConfig(target_modules=["proj"], **{"r": 4, "lora_alpha": 8, **lora})
    model = get_peft_model(Projection(features_in, features_out, bias=bias), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "lora_magnitude" in name:
                param.normal_(0.0, 0.1)
    fast = copy.deepcopy(model)
    use_fast_linear(fast)
    return model, fast


def forward_and_grads(
    model: torch.nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    out = model(x)
    out.pow(2).sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return out, {"x": x.grad, **grads}


def assert_same(
    ours: tuple[torch.Tensor, dict[str, torch.Tensor]], peft: tuple[torch.Tensor, dict[str, torch.Tensor]]
) -> None:
    torch.testing.assert_close(ours[0], peft[0], rtol=1e-5, atol=1e-5)
    assert ours[1].keys() == peft[1].keys()
    for name in peft[1]:
        torch.testing.assert_close(ours[1][name], peft[1][name], rtol=1e-4, atol=1e-4, msg=name)


def test_matmul_nt_is_a_linear_on_any_strides(onednn: bool) -> None:
    a, b, bias = torch.randn(3, 40, 24), torch.randn(16, 24), torch.randn(16)
    torch.testing.assert_close(matmul_nt(a, b, bias), F.linear(a, b, bias))
    a_t, b_t = torch.randn(24, 40).t(), torch.randn(24, 16).t()  # transposed views, as in the backward
    torch.testing.assert_close(matmul_nt(a_t, b_t), a_t @ b_t.t())
    torch.testing.assert_close(matmul_nt(a[:, ::2], b), F.linear(a[:, ::2], b))


@pytest.mark.parametrize(
    ("features_in", "features_out", "lora"),
    [
        (32, 48, {}),
        (48, 32, {"r": 8, "lora_alpha": 32}),
        (32, 32, {"r": 4, "lora_alpha": 16, "use_rslora": True}),
    ],
)
@pytest.mark.parametrize("bias", [False, True])
def test_fused_lora_matches_peft(
    onednn: bool, features_in: int, features_out: int, lora: dict[str, Any], bias: bool
) -> None:
    model, fast = lora_pair(features_in, features_out, bias=bias, **lora)
    assert type(fast.base_model.model.proj) is FusedLoraLinear
    x = torch.randn(2, 30, features_in)
    ours = forward_and_grads(fast, x)
    assert type(ours[0].grad_fn).__name__ == "FusedLoraFunctionBackward"
    assert_same(ours, forward_and_grads(model, x))


def test_base_weight_and_bias_gradients_when_they_train(onednn: bool) -> None:
    model, fast = lora_pair(24, 40, bias=True)
    for m in (model, fast):
        m.base_model.model.proj.base_layer.requires_grad_(True)
    x = torch.randn(64, 24)
    assert_same(forward_and_grads(fast, x), forward_and_grads(model, x))


def test_frozen_input_gets_no_gradient_work() -> None:
    _, fast = lora_pair(24, 40)
    out = fast(torch.randn(64, 24))  # the input does not require grad, e.g. the first layer's
    out.sum().backward()
    layer = fast.base_model.model.proj
    assert layer.lora_A["default"].weight.grad is not None and layer.lora_B["default"].weight.grad is not None


@pytest.mark.parametrize(
    ("lora", "why"),
    [({"lora_dropout": 0.5}, "dropout while training"), ({"use_dora": True}, "DoRA")],
)
def test_peft_path_where_fusing_is_not_exact(lora: dict[str, Any], why: str) -> None:
    model, fast = lora_pair(32, 48, **lora)
    x = torch.randn(2, 30, 32)
    torch.manual_seed(1)
    ours = forward_and_grads(fast, x)
    torch.manual_seed(1)
    reference = forward_and_grads(model, x)
    assert type(ours[0].grad_fn).__name__ != "FusedLoraFunctionBackward", why
    assert_same(ours, reference)


def test_peft_path_for_few_tokens_disabled_adapters_and_autocast() -> None:
    model, fast = lora_pair(32, 48)
    few = torch.randn(1, 3, 32)  # fewer tokens than features: the merge would cost more than it saves
    assert type(fast(few).grad_fn).__name__ != "FusedLoraFunctionBackward"
    torch.testing.assert_close(fast(few), model(few))
    x = torch.randn(2, 30, 32)
    with fast.disable_adapter(), model.disable_adapter():
        torch.testing.assert_close(fast(x), model(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(x)
        assert out.dtype == torch.bfloat16  # PEFT's forward under autocast, not an fp32 merged weight
        torch.testing.assert_close(out, model(x))


def test_onednn_linear_matches_torch(onednn: bool) -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(24, 40)
    fast = copy.deepcopy(layer)
    fast.__class__ = OneDnnLinear
    x = torch.randn(3, 20, 24)
    assert_same(forward_and_grads(fast, x), forward_and_grads(layer, x))


def test_lora_run_trains_and_saves_a_plain_peft_adapter(tmp_path: Path) -> None:
    base = LlamaForCausalLM(tiny_llama_config(hidden_size=32, intermediate_size=48))
    spec = MethodSpec.model_validate({"stage": "sft", "finetuning": "lora", "lora": {"rank": 4}})
    model = prepare_model_for_training(copy.deepcopy(base), spec)
    layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    assert layers and all(type(m) is FusedLoraLinear for m in layers)
    tokens = random_tokens(model, batch=2, length=64)
    losses = assert_only_trainable_parameters_change(model, steps=4, input_ids=tokens)
    assert losses[-1] < losses[0]

    model.save_pretrained(tmp_path / "adapter")
    plain = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    assert not any(isinstance(m, FusedLoraLinear | OneDnnLinear) for m in plain.modules())
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(tokens).logits, plain(tokens).logits, rtol=1e-4, atol=1e-4)


def test_fast_linear_off_keeps_stock_modules() -> None:
    base = LlamaForCausalLM(tiny_llama_config())
    spec = MethodSpec.model_validate({"stage": "sft", "finetuning": "lora", "lora": {"rank": 4}})
    model = prepare_model_for_training(base, spec, fast_linear=False)
    assert not any(isinstance(m, FusedLoraLinear | OneDnnLinear) for m in model.modules())
