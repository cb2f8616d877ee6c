"""Tuning types on tiny models (CPU): exactly the right parameters train, and training moves exactly those."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from bitsandbytes.nn import Linear4bit
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from finetune_api.finetunejob import ModelSpec, Precision
from finetune_api.method import MethodSpec
from finetune_trainer.model import (
    LoadedModel,
    count_parameters,
    find_linear_module_names,
    load_model_and_tokenizer,
    prepare_model_for_training,
)

from .helpers import assert_only_trainable_parameters_change, random_tokens, train_steps, trainable_names

pytestmark = pytest.mark.usefixtures("model_cache_dir")

ALL_LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def method(finetuning: str = "lora", **fields: Any) -> MethodSpec:
    return MethodSpec.model_validate({"stage": "sft", "finetuning": finetuning, **fields})


def load(source: str = "tiny://llama", *, finetuning: str = "lora", **model_fields: Any) -> LoadedModel:
    spec = ModelSpec.model_validate({"source": source, **model_fields})
    return load_model_and_tokenizer(spec, finetuning=method(finetuning).finetuning)


def prepared(m: MethodSpec, source: str = "tiny://llama", **model_fields: Any) -> torch.nn.Module:
    loaded = load(source, finetuning=m.finetuning.value, **model_fields)
    return prepare_model_for_training(
        loaded.model, m, adapter=loaded.adapter_path, vocab_resized=loaded.vocab_resized
    )


def lora_layers(model: torch.nn.Module) -> dict[str, LoraLayer]:
    return {name: module for name, module in model.named_modules() if isinstance(module, LoraLayer)}


# ---- LoRA ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_lora_all_adapts_every_linear_but_the_head(arch: str) -> None:
    base = load(f"tiny://{arch}").model
    linear = {
        n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")
    }
    assert find_linear_module_names(base) == ALL_LINEAR
    model = prepare_model_for_training(base, method(lora={"rank": 4}))
    assert isinstance(model, PeftModel)
    adapted = {name.removeprefix("base_model.model.") for name in lora_layers(model)}
    assert adapted == linear
    assert all(("lora_A" in n or "lora_B" in n) for n in trainable_names(model))
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    trainable, total = count_parameters(model)
    expected = sum(4 * (m.in_features + m.out_features) for n, m in base.named_modules() if n in linear)
    assert trainable == expected and total > trainable
    assert_only_trainable_parameters_change(model)


def test_lora_explicit_targets_alpha_and_rslora() -> None:
    model = prepared(method(lora={"rank": 4, "targetModules": ["q_proj", "v_proj"]}))
    layers = lora_layers(model)
    assert {name.rsplit(".", 1)[-1] for name in layers} == {"q_proj", "v_proj"}
    assert all(layer.scaling["default"] == 2.0 for layer in layers.values()), "alpha defaults to 2 x rank"
    rs = prepared(method(lora={"rank": 4, "alpha": 8, "useRslora": True}))
    assert all(math.isclose(layer.scaling["default"], 8 / math.sqrt(4)) for layer in lora_layers(rs).values())


def test_lora_unknown_target_names_the_field() -> None:
    with pytest.raises(
        ValueError, match=r"method.lora.targetModules: qkv_proj not found.*linear modules: down_proj"
    ):
        prepared(method(lora={"targetModules": ["q_proj", "qkv_proj"]}))


def test_dora_adds_trainable_magnitude_vectors() -> None:
    model = prepared(method(lora={"rank": 4, "useDora": True}))
    layers = lora_layers(model)
    magnitudes = {n for n in trainable_names(model) if "lora_magnitude_vector" in n}
    assert len(magnitudes) == len(layers) == 2 * len(ALL_LINEAR)
    for layer in layers.values():
        assert layer.lora_magnitude_vector["default"].weight.shape == (layer.out_features,)
    assert_only_trainable_parameters_change(model)


def test_pissa_init_keeps_the_output_and_moves_the_principal_part_into_the_adapter() -> None:
    base = load().model
    ids = random_tokens(base)
    with torch.no_grad():
        reference = base(input_ids=ids).logits
    q_before = base.model.layers[0].self_attn.q_proj.weight.detach().clone()
    model = prepare_model_for_training(base, method(lora={"rank": 4, "pissaInit": True}))
    layer = lora_layers(model)["base_model.model.model.layers.0.self_attn.q_proj"]
    assert layer.lora_B["default"].weight.abs().sum() > 0, "PiSSA starts B from singular vectors, not zeros"
    assert not torch.equal(layer.base_layer.weight, q_before), "the base keeps only the residual"
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, reference, atol=1e-4)
    assert_only_trainable_parameters_change(model)


def test_additional_targets_are_trained_in_full() -> None:
    model = prepared(method(lora={"rank": 4, "additionalTarget": ["embed_tokens", "lm_head"]}))
    names = trainable_names(model)
    assert any("embed_tokens.modules_to_save" in n for n in names)
    assert any("lm_head.modules_to_save" in n for n in names)
    assert_only_trainable_parameters_change(model)


def test_resized_vocabulary_makes_the_embeddings_trainable() -> None:
    loaded = load()
    model = prepare_model_for_training(loaded.model, method(lora={"rank": 4}), vocab_resized=True)
    names = trainable_names(model)
    assert any("embed_tokens.modules_to_save" in n for n in names)
    assert any("lm_head.modules_to_save" in n for n in names)


def test_continuing_an_adapter_restores_it_trainable(tmp_path: Path) -> None:
    first = prepared(method(lora={"rank": 4, "targetModules": ["q_proj", "o_proj"]}))
    train_steps(first, steps=2)
    first.save_pretrained(tmp_path / "adapter")
    saved = {n: p.detach().clone() for n, p in first.named_parameters() if p.requires_grad}

    # method.lora differs on purpose: a continued adapter keeps its own saved config.
    model = prepared(method(lora={"rank": 8}), adapter=f"file://{tmp_path / 'adapter'}")
    assert isinstance(model, PeftModel)
    assert {name.rsplit(".", 1)[-1] for name in lora_layers(model)} == {"q_proj", "o_proj"}
    restored = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert restored.keys() == saved.keys()
    assert all(torch.equal(restored[n], saved[n]) for n in saved)
    assert_only_trainable_parameters_change(model)


# ---- QLoRA -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_qlora_four_bit_trains_on_cpu_and_the_loss_falls() -> None:
    spec = ModelSpec.model_validate({"source": "tiny://llama", "quantization": {"bits": 4}})
    loaded = load_model_and_tokenizer(spec, precision=Precision.BF16, gradient_checkpointing=True)
    model = prepare_model_for_training(loaded.model, method(lora={"rank": 8}))
    wrapped = lora_layers(model)
    assert len(wrapped) == 2 * len(ALL_LINEAR)
    assert all(isinstance(layer.base_layer, Linear4bit) for layer in wrapped.values())
    batch = random_tokens(model, batch=2, length=24)
    losses = assert_only_trainable_parameters_change(model, steps=2, input_ids=batch)
    losses += train_steps(model, steps=18, input_ids=batch, lr=5e-3)
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < 0.5 * losses[0], f"loss did not fall: {losses}"


def test_quantized_model_refuses_non_lora_tuning() -> None:
    spec = ModelSpec.model_validate({"source": "tiny://llama", "quantization": {"bits": 4}})
    base = load_model_and_tokenizer(spec).model
    with pytest.raises(ValueError, match=r"model.quantization: needs method.finetuning: lora"):
        prepare_model_for_training(base, method("freeze"))
    with pytest.raises(ValueError, match=r"method.lora.pissaInit: PiSSA needs the unquantized base"):
        prepare_model_for_training(base, method(lora={"pissaInit": True}))


# ---- freeze and full -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("freeze", "expected_prefixes"),
    [
        ({"trainableLayers": 1}, ["model.layers.1."]),
        ({"trainableLayers": -1}, ["model.layers.0."]),
        ({"trainableLayers": 2, "trainableModules": ["mlp"]}, ["model.layers.0.mlp.", "model.layers.1.mlp."]),
        (
            {
                "trainableLayers": 1,
                "trainableModules": ["self_attn"],
                "extraModules": ["embed_tokens", "norm"],
            },
            ["model.layers.1.self_attn.", "model.embed_tokens.", "model.norm."],
        ),
    ],
)
def test_freeze_trains_only_the_chosen_layers_and_modules(
    freeze: dict[str, Any], expected_prefixes: list[str]
) -> None:
    model = prepared(method("freeze", freeze=freeze))
    all_names = {n for n, _ in model.named_parameters()}
    expected = {n for n in all_names if any(n.startswith(prefix) for prefix in expected_prefixes)}
    assert expected and trainable_names(model) == expected
    assert_only_trainable_parameters_change(model)


@pytest.mark.parametrize(
    ("freeze", "message"),
    [
        ({"trainableLayers": 3}, "method.freeze.trainableLayers: 3 but the model has 2 layers"),
        ({"trainableModules": ["mlp", "attention"]}, "method.freeze: no parameters match attention"),
        ({"extraModules": ["wte"]}, "method.freeze: no parameters match wte"),
    ],
)
def test_freeze_rejects_what_the_model_lacks(freeze: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prepared(method("freeze", freeze=freeze))


def test_full_tuning_trains_everything_in_fp32() -> None:
    loaded = load_model_and_tokenizer(
        ModelSpec.model_validate({"source": "tiny://qwen2"}), finetuning=method("full").finetuning,
        precision=Precision.BF16,
    )  # fmt: skip
    assert loaded.model.dtype == torch.bfloat16
    model = prepare_model_for_training(loaded.model, method("full"))
    assert all(p.requires_grad and p.dtype == torch.float32 for p in model.parameters())
    assert count_parameters(model)[0] == count_parameters(model)[1]
    assert_only_trainable_parameters_change(model)


def test_lora_on_the_reward_head_trains_the_score_layer_too() -> None:
    spec = ModelSpec.model_validate({"source": "tiny://qwen2"})
    base = load_model_and_tokenizer(spec, head="sequence_classification").model
    model = prepare_model_for_training(base, method(lora={"rank": 4}))
    names = trainable_names(model)
    assert any("score.modules_to_save" in n for n in names), "PEFT's SEQ_CLS task saves the head"
    assert not any("score.lora_" in n for n in names), "the head itself is not adapted"

    def reward_loss(m: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        return -m(input_ids=ids).logits.mean()

    assert_only_trainable_parameters_change(model, loss_fn=reward_loss)
