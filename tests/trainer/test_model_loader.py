"""The model loader: source resolution, precision/attention choices, RoPE, checkpointing, vocab resize, bitsandbytes.

Pure decisions are tested directly; loading runs for real on tiny models (CPU), S3 sources
against the real S3 server from tests/fixtures/s3.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from bitsandbytes.nn import Linear4bit, Linear8bitLt
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune_api.finetunejob import Attention, ModelSpec, Precision
from finetune_trainer.model import load_model_and_tokenizer, tiny_model_path
from finetune_trainer.model.loader import (
    flash_attn_installed,
    resolve_attention,
    resolve_dtype,
)
from finetune_trainer.model.sources import fetch_source
from finetune_trainer.storage import open_store, upload_with_manifest
from tests.fixtures.s3 import S3Server

from .helpers import weights_sha256

pytestmark = pytest.mark.usefixtures("model_cache_dir")


def spec(**fields: Any) -> ModelSpec:
    return ModelSpec.model_validate({"source": "tiny://llama", **fields})


# ---- pure: sources -------------------------------------------------------------------------------


# How each scheme parses is tests/unit/test_uris.py's; here, what the loader makes of it.


@pytest.mark.parametrize(
    ("uri", "hub_id"), [("hf://Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B"), ("hf://gpt2", "gpt2")]
)
def test_hub_sources_stay_hub_ids(uri: str, hub_id: str) -> None:
    assert fetch_source(uri, field="model.source") == hub_id


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("hf://a/b/c", "must be hf://org/name"),
        ("s3:///key", "has no bucket"),
        ("pvc://claim/../etc", "must not contain '..'"),
        ("ftp://x/y", "unsupported scheme"),
    ],
)
def test_malformed_sources_are_refused_naming_the_field(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"^model\.adapter: ") as err:
        fetch_source(uri, field="model.adapter")
    assert message in str(err.value)


def test_pvc_sources_resolve_below_the_mount_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FINETUNE_PVC_ROOT", str(tmp_path))
    (tmp_path / "weights" / "llama").mkdir(parents=True)
    assert fetch_source("pvc://weights/llama", field="model.source") == str(tmp_path / "weights" / "llama")
    with pytest.raises(ValueError, match=r"model.source: .*does not exist \(is the claim mounted under"):
        fetch_source("pvc://weights/missing", field="model.source")


def test_missing_local_folder_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model.source: .* does not exist"):
        load_model_and_tokenizer(spec(source=f"file://{tmp_path}/nothing"))


# ---- pure: precision, attention, spec combinations -----------------------------------------------


def test_resolve_dtype_on_cpu() -> None:
    assert resolve_dtype(Precision.AUTO, cuda=False) == torch.float32
    assert resolve_dtype(Precision.BF16, cuda=False) == torch.bfloat16
    assert resolve_dtype(Precision.FP32, cuda=False) == torch.float32
    with pytest.raises(ValueError, match=r"training.precision: fp16 needs a CUDA GPU"):
        resolve_dtype(Precision.FP16, cuda=False)


def test_resolve_attention() -> None:
    assert resolve_attention(Attention.AUTO, cuda=False, dtype=torch.bfloat16) == "sdpa"
    assert resolve_attention(Attention.EAGER, cuda=False, dtype=torch.float32) == "eager"
    assert resolve_attention(Attention.SDPA, cuda=True, dtype=torch.float16) == "sdpa"
    with pytest.raises(ValueError, match=r"model.attention: flash_attention_2 cannot be used: no CUDA GPU"):
        resolve_attention(Attention.FLASH_ATTENTION_2, cuda=False, dtype=torch.bfloat16)
    if not flash_attn_installed():
        assert resolve_attention(Attention.AUTO, cuda=True, dtype=torch.bfloat16) == "sdpa"
        with pytest.raises(ValueError, match=r"flash-attn is not installed"):
            resolve_attention(Attention.FLASH_ATTENTION_2, cuda=True, dtype=torch.bfloat16)
    else:
        assert resolve_attention(Attention.AUTO, cuda=True, dtype=torch.bfloat16) == "flash_attention_2"
        assert resolve_attention(Attention.AUTO, cuda=True, dtype=torch.float32) == "sdpa"


# ---- loading tiny models -------------------------------------------------------------------------


def test_loads_tiny_with_defaults_on_cpu() -> None:
    loaded = load_model_and_tokenizer(spec(source="tiny://qwen2"))
    assert loaded.model.config.model_type == "qwen2"
    assert loaded.compute_dtype == torch.float32 and loaded.model.dtype == torch.float32
    assert loaded.attention == "sdpa" and loaded.model.config._attn_implementation == "sdpa"
    assert loaded.vocab_resized is False and loaded.adapter_path is None
    assert loaded.tokenizer.padding_side == "right" and loaded.tokenizer.pad_token == "<|pad|>"
    assert all(p.device.type == "cpu" for p in loaded.model.parameters())


def test_bf16_precision_and_eager_attention_are_honoured() -> None:
    loaded = load_model_and_tokenizer(spec(attention="eager"), precision=Precision.BF16)
    assert loaded.model.dtype == torch.bfloat16
    assert loaded.model.config._attn_implementation == "eager"


@pytest.mark.parametrize("rope_type", ["linear", "dynamic", "yarn", "llama3"])
def test_rope_scaling_goes_into_the_config_and_the_rotary_embedding(rope_type: str) -> None:
    base = load_model_and_tokenizer(spec()).model
    model = load_model_and_tokenizer(spec(ropeScaling={"type": rope_type, "factor": 2.0})).model
    params = model.config.rope_parameters
    assert (params["rope_type"], params["factor"]) == (rope_type, 2.0)
    assert model.model.rotary_emb.rope_type == rope_type
    if rope_type in ("yarn", "llama3"):
        assert params["original_max_position_embeddings"] == base.config.max_position_embeddings
        assert model.config.max_position_embeddings == 2 * base.config.max_position_embeddings
    if rope_type == "linear":
        assert torch.allclose(model.model.rotary_emb.inv_freq, base.model.rotary_emb.inv_freq / 2)
    ids = torch.arange(8).unsqueeze(0)
    assert model(input_ids=ids).logits.shape == (1, 8, base.config.vocab_size)


def test_gradient_checkpointing_recomputes_layers_in_backward() -> None:
    loaded = load_model_and_tokenizer(spec(), gradient_checkpointing=True)
    model = loaded.model
    assert model.is_activation_checkpointing and model.config.use_cache is False
    calls = []
    # A pre-hook: torch stops the recomputation early, before the layer's post-forward hooks would run.
    model.model.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    model.train()
    ids = torch.randint(0, 100, (1, 8))
    # Frozen base (as under LoRA): input grads must still flow for checkpointed layers to backprop.
    model.requires_grad_(False)
    model.model.layers[0].mlp.down_proj.weight.requires_grad_(True)
    model(input_ids=ids, labels=ids).loss.backward()
    assert len(calls) == 2, "the layer runs once forward and once more in backward"
    assert model.model.layers[0].mlp.down_proj.weight.grad is not None


def test_vocab_resize_initialises_new_rows_to_the_mean(tmp_path: Path) -> None:
    folder = tmp_path / "grown"
    shutil.copytree(tiny_model_path("tiny://llama"), folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    old = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<tool_call>", "</tool_call>", "<think>"]})
    tokenizer.save_pretrained(folder)
    original = AutoModelForCausalLM.from_pretrained(folder)

    loaded = load_model_and_tokenizer(spec(source=f"file://{folder}"))
    assert loaded.vocab_resized is True
    model = loaded.model
    assert model.config.vocab_size == old + 3 == len(loaded.tokenizer)
    for new, before in (
        (model.get_input_embeddings().weight, original.get_input_embeddings().weight),
        (model.get_output_embeddings().weight, original.get_output_embeddings().weight),
    ):
        assert new.shape[0] == old + 3
        assert torch.equal(new[:old], before)
        expected = before.mean(dim=0)
        for row in new[old:]:
            assert torch.allclose(row, expected, atol=1e-6)


def test_reward_model_head_loads_with_one_logit() -> None:
    loaded = load_model_and_tokenizer(spec(), head="sequence_classification")
    model = loaded.model
    assert type(model).__name__ == "LlamaForSequenceClassification"
    assert model.config.pad_token_id == loaded.tokenizer.pad_token_id
    batch = loaded.tokenizer(["a good answer", "bad"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 1)


@pytest.mark.parametrize(("quant_type", "double_quant"), [("nf4", True), ("fp4", False)])
def test_four_bit_quantization_on_cpu(quant_type: str, double_quant: bool) -> None:
    quantization = {"bits": 4, "type": quant_type, "doubleQuant": double_quant}
    loaded = load_model_and_tokenizer(spec(quantization=quantization), precision=Precision.BF16)
    model = loaded.model
    q_proj = model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, Linear4bit)
    assert q_proj.weight.quant_state.quant_type == quant_type
    assert (q_proj.weight.quant_state.nested) is double_quant
    assert q_proj.compute_dtype == torch.bfloat16
    assert not isinstance(model.lm_head, Linear4bit), "the output head stays unquantized"
    ids = torch.randint(0, 100, (1, 8))
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)


def test_eight_bit_quantization_on_cpu() -> None:
    model = load_model_and_tokenizer(spec(quantization={"bits": 8})).model
    assert isinstance(model.model.layers[1].mlp.down_proj, Linear8bitLt)
    ids = torch.randint(0, 100, (1, 8))
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)


# ---- S3 sources (real S3 server) -----------------------------------------------------------------


def _upload_plain(folder: Path, uri: str) -> None:
    store = open_store(uri)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            store.put_file(path.relative_to(folder).as_posix(), path)


@pytest.mark.parametrize("with_manifest", [True, False])
def test_s3_source_is_downloaded_once_and_loads(
    with_manifest: bool, s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    folder = tiny_model_path("tiny://llama")
    uri = f"s3://{s3_bucket}/models/tiny-llama"
    if with_manifest:
        upload_with_manifest(folder, open_store(uri))
    else:
        _upload_plain(folder, uri)

    local = Path(fetch_source(uri, field="model.source"))
    assert (local / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    assert ("manifest.json" in {p.name for p in local.iterdir()}) is with_manifest
    # Cached: deleting the bucket's objects does not matter for a second load.
    s3_server.delete_bucket(s3_bucket)
    s3_server.client().create_bucket(Bucket=s3_bucket)
    loaded = load_model_and_tokenizer(spec(source=uri))
    assert weights_sha256(loaded.model) == weights_sha256(AutoModelForCausalLM.from_pretrained(folder))


def test_empty_s3_prefix_names_the_field(
    s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=r"model.adapter: no objects found below"):
        fetch_source(f"s3://{s3_bucket}/nothing-here", field="model.adapter")
