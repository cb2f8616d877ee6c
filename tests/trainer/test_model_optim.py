"""Method-specific optimizers: LoRA+ learning-rate groups and GaLore, built for and stepped on tiny models."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from galore_torch import GaLoreAdamW

from finetune_api.finetunejob import ModelSpec, TrainingSpec
from finetune_api.method import MethodSpec
from finetune_trainer.model import build_optimizer, load_model_and_tokenizer, prepare_model_for_training

from .helpers import assert_only_trainable_parameters_change

pytestmark = pytest.mark.usefixtures("model_cache_dir")


def method(finetuning: str = "lora", **fields: Any) -> MethodSpec:
    return MethodSpec.model_validate({"stage": "sft", "finetuning": finetuning, **fields})


def prepared(m: MethodSpec) -> torch.nn.Module:
    loaded = load_model_and_tokenizer(
        ModelSpec.model_validate({"source": "tiny://llama"}), finetuning=m.finetuning
    )
    return prepare_model_for_training(loaded.model, m)


def test_plain_lora_and_full_use_the_trainers_default_optimizer() -> None:
    training = TrainingSpec()
    assert build_optimizer(prepared(method(lora={"rank": 4})), method(lora={"rank": 4}), training) is None
    assert build_optimizer(prepared(method("full")), method("full"), training) is None


def test_loraplus_gives_the_b_matrices_ratio_times_the_learning_rate() -> None:
    m = method(lora={"rank": 4, "loraplusLrRatio": 16.0})
    model = prepared(m)
    training = TrainingSpec(learningRate=1e-3, weightDecay=0.01)
    optimizer = build_optimizer(model, m, training)
    assert isinstance(optimizer, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    lr_of = {names[id(p)]: group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert lr_of.keys() == {n for n, p in model.named_parameters() if p.requires_grad}
    for name, lr in lr_of.items():
        expected = 16e-3 if "lora_B" in name else 1e-3
        assert lr == pytest.approx(expected), name
    assert all(g["weight_decay"] == 0.01 for g in optimizer.param_groups if g["params"] and g["lr"] == 1e-3)
    assert_only_trainable_parameters_change(model, optimizer=optimizer)


@pytest.mark.parametrize("finetuning", ["full", "freeze"])
def test_galore_projects_the_trainable_linear_weights_and_steps(finetuning: str) -> None:
    fields: dict[str, Any] = {"galore": {"rank": 4, "updateInterval": 2, "scale": 0.5}}
    if finetuning == "freeze":
        fields["freeze"] = {"trainableLayers": 1}
    m = method(finetuning, **fields)
    model = prepared(m)
    optimizer = build_optimizer(model, m, TrainingSpec(learningRate=1e-3))
    assert isinstance(optimizer, GaLoreAdamW)
    projected = [g for g in optimizer.param_groups if "rank" in g]
    assert len(projected) == 1
    group = projected[0]
    assert (group["rank"], group["update_proj_gap"], group["scale"], group["proj_type"]) == (4, 2, 0.5, "std")
    expected = {
        id(module.weight)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and not name.endswith("lm_head")
        and module.weight.requires_grad
    }
    assert {id(p) for p in group["params"]} == expected
    grouped = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}
    # Enough steps to cross a projection update (every 2 steps).
    losses = assert_only_trainable_parameters_change(model, optimizer=optimizer, steps=4)
    assert all(torch.isfinite(torch.tensor(losses)))


def test_galore_target_subset_and_errors() -> None:
    m = method("full", galore={"rank": 4, "target": ["q_proj", "v_proj"]})
    optimizer = build_optimizer(prepared(m), m, TrainingSpec())
    assert optimizer is not None
    projected = next(g for g in optimizer.param_groups if "rank" in g)
    assert len(projected["params"]) == 2 * 2  # two layers x (q_proj, v_proj)

    bad_target = method("full", galore={"target": ["qkv"]})
    with pytest.raises(ValueError, match=r"method.galore.target: no trainable linear weight matches qkv"):
        build_optimizer(prepared(bad_target), bad_target, TrainingSpec())
    # With lora: examples/invalid/galore-with-lora.yaml.
