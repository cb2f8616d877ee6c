"""The loader knobs from LLaMA-Factory's ModelArguments, each changing what it should on tiny models
(or refused clearly where it cannot run: Liger / Unsloth without a GPU, the slow tokenizer)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from finetune_api.finetunejob import ModelSpec, Precision
from finetune_api.method import Finetuning, MethodSpec
from finetune_api.validation import validate_manifest
from finetune_trainer.data.processor import batch_encode
from finetune_trainer.model import load_model_and_tokenizer, prepare_model_for_training
from finetune_trainer.model.knobs import check_kernel_knobs, is_norm
from finetune_trainer.model.llama_pro import llama_pro_layer_ids
from finetune_trainer.model.shift_attention import SHIFT_SHORT_ATTENTION

from .helpers import assert_only_trainable_parameters_change, random_tokens

pytestmark = pytest.mark.usefixtures("model_cache_dir")


def spec(**fields: Any) -> ModelSpec:
    return ModelSpec.model_validate({"source": "tiny://llama", **fields})


# ---- LLaMA Pro ---------------------------------------------------------------------------------


def test_llama_pro_layer_ids_follow_each_stride() -> None:
    assert llama_pro_layer_ids(4, 2) == [2, 5]  # L0 L1 new L2 L3 new
    assert llama_pro_layer_ids(4, 4) == [1, 3, 5, 7]
    assert llama_pro_layer_ids(4, 1) == [4]
    with pytest.raises(ValueError, match="llamaProBlocks: 3 must divide the model's 4 layers"):
        llama_pro_layer_ids(4, 3)


def test_llama_pro_adds_blocks_that_keep_the_function_and_alone_train() -> None:
    ids = random_tokens(load_model_and_tokenizer(spec(source="tiny://llama?layers=4")).model, length=12)
    base = load_model_and_tokenizer(spec(source="tiny://llama?layers=4")).model.eval()
    loaded = load_model_and_tokenizer(
        spec(source="tiny://llama?layers=4", llamaProBlocks=2), finetuning=Finetuning.FREEZE
    )
    method = MethodSpec.model_validate(
        {"stage": "sft", "finetuning": "freeze", "freeze": {"trainableLayers": 1}}
    )
    model = prepare_model_for_training(loaded.model, method, llama_pro_blocks=2)

    layers = model.model.layers
    assert len(layers) == 6 and model.config.num_hidden_layers == 6
    assert [layer.self_attn.layer_idx for layer in layers] == list(range(6))
    trainable_layers = {int(n.split(".")[2]) for n, p in model.named_parameters() if p.requires_grad}
    assert trainable_layers == {2, 5}  # the copies, not freeze.trainableLayers' last layer
    assert all(
        p.requires_grad == (".layers.2." in n or ".layers.5." in n) for n, p in model.named_parameters()
    )
    assert not layers[5].mlp.down_proj.weight.any() and not layers[2].self_attn.o_proj.weight.any()
    torch.testing.assert_close(model.eval()(input_ids=ids).logits, base(input_ids=ids).logits)
    # Generation uses the KV cache, indexed by layer_idx: it must run on the expanded model.
    assert model.generate(ids[:, :4], max_new_tokens=3, do_sample=False).shape == (2, 7)
    assert_only_trainable_parameters_change(model, steps=2, input_ids=ids)


def test_llama_pro_needs_freeze_tuning() -> None:
    # With LoRA: examples/invalid/llama-pro-with-lora.yaml. With freeze, only stages pt and sft:
    errors = validate_manifest(
        {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "j"},
         "spec": {"model": {"source": "tiny://llama", "llamaProBlocks": 2}, "datasets": [{"ref": "d"}],
                  "method": {"stage": "dpo", "finetuning": "freeze", "preference": {"loss": "sigmoid"}}}}
    )  # fmt: skip
    assert any(e.path == "spec.model.llamaProBlocks" for e in errors), errors


# ---- precision knobs ---------------------------------------------------------------------------


def norm_dtypes(model: torch.nn.Module) -> set[torch.dtype]:
    return {p.dtype for m in model.modules() if is_norm(m) for p in m.parameters(recurse=False)}


def test_upcast_layernorm_keeps_norms_fp32_under_a_bf16_load() -> None:
    plain = load_model_and_tokenizer(spec(), precision=Precision.BF16).model
    assert norm_dtypes(plain) == {torch.bfloat16}
    model = load_model_and_tokenizer(spec(upcastLayernorm=True), precision=Precision.BF16).model
    assert norm_dtypes(model) == {torch.float32}
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert (
        len(norm_dtypes(model)) == 1 and sum(1 for m in model.modules() if is_norm(m)) == 5
    )  # 2 per layer + final
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as the Trainer runs it
        loss = model(input_ids=random_tokens(model), labels=random_tokens(model)).loss
    assert torch.isfinite(loss)


def test_upcast_lmhead_output_gives_fp32_logits() -> None:
    ids = torch.tensor([[1, 2, 3, 4]])
    assert (
        load_model_and_tokenizer(spec(), precision=Precision.BF16).model(input_ids=ids).logits.dtype
        == torch.bfloat16
    )
    model = load_model_and_tokenizer(spec(upcastLmheadOutput=True), precision=Precision.BF16).model
    assert model(input_ids=ids).logits.dtype == torch.float32


# ---- tokenizer knobs ---------------------------------------------------------------------------


def test_split_special_tokens_tokenizes_them_as_text_also_in_the_data_worker() -> None:
    text = "hi<|im_end|>"
    plain = load_model_and_tokenizer(spec()).tokenizer
    split = load_model_and_tokenizer(spec(splitSpecialTokens=True)).tokenizer
    end = plain.convert_tokens_to_ids("<|im_end|>")
    assert end in batch_encode(plain, [text])[0]
    assert end not in batch_encode(split, [text])[0] and len(batch_encode(split, [text])[0]) > 2
    assert end not in split(text, add_special_tokens=False)["input_ids"]


# useFastTokenizer: false is refused by the API: examples/invalid/slow-tokenizer.yaml.


# ---- kernels -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "cuda", "message"),
    [
        ("ligerKernel", False, "ligerKernel: Liger's Triton kernels need a CUDA GPU"),
        ("ligerKernel", True, "ligerKernel: the liger-kernel package is not installed"),
        ("unsloth", False, "unsloth: Unsloth needs a CUDA GPU"),
        ("unsloth", True, "unsloth: the unsloth package is not installed"),
    ],
)
def test_kernel_libraries_are_refused_where_they_cannot_run(field: str, cuda: bool, message: str) -> None:
    from finetune_trainer.model.knobs import package_installed

    if cuda and package_installed("liger_kernel" if field == "ligerKernel" else "unsloth"):
        pytest.skip(f"{field} is installed here")
    with pytest.raises(ValueError, match=message):
        check_kernel_knobs(spec(**{field: True}), cuda=cuda)


def test_liger_kernel_on_this_cpu_machine_fails_before_loading() -> None:
    with pytest.raises(ValueError, match=r"model\.ligerKernel"):
        load_model_and_tokenizer(spec(ligerKernel=True))


# ---- shift short attention ---------------------------------------------------------------------


def test_shift_attention_groups_in_training_and_is_full_attention_in_eval() -> None:
    one_layer = "tiny://llama?layers=1"
    model = load_model_and_tokenizer(spec(source=one_layer, shiftAttention=True)).model
    full = load_model_and_tokenizer(spec(source=one_layer)).model
    assert model.config._attn_implementation == SHIFT_SHORT_ATTENTION
    a = random_tokens(model, batch=1, length=16)
    b = a.clone()
    b[0, 0] = (a[0, 0] + 1) % 100
    # Eval: plain SDPA, the same numbers as the model loaded without the knob.
    model.eval()
    torch.testing.assert_close(model(input_ids=a).logits, full.eval()(input_ids=a).logits)
    # Training, 16 tokens → groups of 4; token 0 reaches positions 0-3 (its group) and, through the heads
    # shifted by 2, the wrapped group {14, 15, 0, 1}; positions 4-13 never see it.
    model.train()
    changed = (model(input_ids=a).logits - model(input_ids=b).logits).abs().amax(dim=-1)[0]
    assert (changed[4:14] == 0).all(), changed
    assert (changed[[0, 1, 2, 3, 14, 15]] > 0).all(), changed
    full_changed = (full.train()(input_ids=a).logits - full(input_ids=b).logits).abs().amax(dim=-1)[0]
    assert (full_changed > 0).all()


def test_shift_attention_trains_with_padding_and_refuses_flash() -> None:
    model = load_model_and_tokenizer(spec(shiftAttention=True)).model.train()
    ids = random_tokens(model, batch=2, length=16)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0  # right padding fills a whole group of row 1
    loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
    loss.backward()
    assert torch.isfinite(loss) and all(
        torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None
    )
    # With attention eager: examples/invalid/shift-attention-eager.yaml.
    with pytest.raises(ValueError, match="multiple of 8"):
        model(input_ids=random_tokens(model, batch=1, length=12))


# ---- gradient checkpointing (LLaMA-Factory's disable_gradient_checkpointing) ------------------------


@pytest.mark.parametrize("enabled", [True, False])
def test_training_gradient_checkpointing_is_the_one_switch(enabled: bool) -> None:
    model = load_model_and_tokenizer(spec(), gradient_checkpointing=enabled).model
    assert model.is_activation_checkpointing == enabled
