"""The streaming merge against the model-based one (PEFT's merge_and_unload + save), on tiny models.

Each case builds an adapter with PEFT on a tiny Llama (B matrices, DoRA magnitudes and saved
modules moved away from their initial values, so the merge changes the weights), then writes the
merged weights both ways and compares every tensor: same names, dtypes and values (bitwise: the
streaming merge does PEFT's arithmetic operation for operation), same shard files and index.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune_trainer.export import export_from_files, plan_export
from finetune_trainer.export.adapter import ModuleLora, _merge_linear, unsupported_reason
from finetune_trainer.export.layerwise import layerwise_logits, with_adapter
from finetune_trainer.export.merge import load_model, merge, resolve_source
from finetune_trainer.export.shards import write_weight_shards
from finetune_trainer.export.stream import meta_model, weight_files, write_streamed_shards
from finetune_trainer.export.streaming import StreamPlan, streaming_plan
from finetune_trainer.model.tiny import tiny_model_path

pytestmark = pytest.mark.slow

BASE = "tiny://llama?layers=3&hidden=64&intermediate=128"
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SHARD = "200KB"
CASES: dict[str, dict[str, Any]] = {
    "lora": {"r": 4, "lora_alpha": 8, "target_modules": LINEAR},
    "rslora": {"r": 4, "lora_alpha": 8, "target_modules": LINEAR, "use_rslora": True},
    "rank-alpha-patterns": {"r": 4, "lora_alpha": 8, "target_modules": LINEAR,
                            "rank_pattern": {"q_proj": 8}, "alpha_pattern": {"down_proj": 3}},
    "dora": {"r": 4, "lora_alpha": 8, "target_modules": LINEAR, "use_dora": True},
    "embeddings-and-modules-to-save": {"r": 4, "lora_alpha": 16, "target_modules": ["q_proj", "embed_tokens"],
                                       "modules_to_save": ["lm_head"]},
    "dora-embeddings": {"r": 4, "lora_alpha": 8, "target_modules": ["v_proj", "embed_tokens"], "use_dora": True},
}  # fmt: skip


def make_adapter(folder: Path, options: dict[str, Any]) -> Path:
    """A PEFT adapter with every trained tensor moved off its initial value, saved with the tokenizer."""
    path = tiny_model_path(BASE)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path), LoraConfig(**options))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(k in name for k in ("lora_B", "lora_embedding_B", "magnitude", "modules_to_save")):
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(path).save_pretrained(folder)
    return folder


def export_plan(tmp: Path, adapter: Path, **spec: Any) -> Any:
    doc = {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "Export", "metadata": {"name": "merged"},
        "spec": {"model": BASE, "adapter": f"file://{adapter}", "shardSize": SHARD,
                 "output": {"uri": f"file://{tmp / 'out'}"}, **spec},
    }  # fmt: skip
    (tmp / "export.yaml").write_text(yaml.safe_dump(doc))
    return plan_export([str(tmp / "export.yaml")])


def both_ways(tmp: Path, adapter: Path, dtype: str) -> tuple[Path, Path]:
    """The merged weights written by the model-based path and by the streaming one."""
    plan = export_plan(tmp, adapter, dtype=dtype)
    stream = streaming_plan(plan, resolve_source(plan))
    assert isinstance(stream, StreamPlan), stream
    streamed = tmp / "streamed"
    write_streamed_shards(stream.skeleton, stream.files, stream.adapter, streamed, max_shard_size=200_000)
    model_based = tmp / "model-based"
    write_weight_shards(merge(load_model(resolve_source(plan), BASE)), model_based, max_shard_size=200_000)
    return streamed, model_based


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_streamed_merge_equals_peft_merge_and_save(
    model_cache_dir: Path, tmp_path: Path, case: str, dtype: str
) -> None:
    adapter = make_adapter(tmp_path / "adapter", CASES[case])
    streamed, model_based = both_ways(tmp_path, adapter, dtype)
    changed = assert_same_shards(streamed, model_based, dtype)
    assert changed >= 2, "the adapter must change some weights for the comparison to mean anything"


def make_full_model(folder: Path) -> Path:
    """A full fine-tune's output: the whole model (every weight moved), saved with the tokenizer."""
    path = tiny_model_path(BASE)
    model = AutoModelForCausalLM.from_pretrained(path)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.02)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(path).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_whole_model_streams_like_the_model_based_export(
    model_cache_dir: Path, tmp_path: Path, dtype: str
) -> None:
    full = make_full_model(tmp_path / "full")  # given as the Export's adapter, as a FineTuneJob's output is
    streamed, model_based = both_ways(tmp_path, full, dtype)
    assert assert_same_shards(streamed, model_based, dtype) >= 10  # the trained weights, not the base's


def assert_same_shards(streamed: Path, model_based: Path, dtype: str) -> int:
    """Same shard files, index, names, dtypes and bytes; returns how many tensors differ from the base."""
    names = sorted(p.name for p in model_based.iterdir())
    assert names == sorted(p.name for p in streamed.iterdir()) and len(names) >= 3  # shards + index
    index = "model.safetensors.index.json"
    assert json.loads((streamed / index).read_text()) == json.loads((model_based / index).read_text())
    base = load_file(str(tiny_model_path(BASE) / "model.safetensors"))
    changed = 0
    for name in names:
        if name == index:
            continue
        got, want = load_file(str(streamed / name)), load_file(str(model_based / name))
        assert got.keys() == want.keys()
        for key in want:
            assert got[key].dtype == want[key].dtype == getattr(torch, dtype), key
            assert torch.equal(got[key], want[key]), f"{key} differs by {(got[key] - want[key]).abs().max()}"
            changed += not torch.equal(want[key].float(), base[key].float())
        # Same header layout as safetensors' own writer: the files are byte for byte the same.
        assert (streamed / name).read_bytes() == (model_based / name).read_bytes(), name
    return changed


def test_fan_in_fan_out_merges_the_transposed_weight() -> None:
    # PEFT only sets fan_in_fan_out for Conv1D (GPT-2) layers, whose weight is stored [in, out].
    generator = torch.Generator().manual_seed(0)
    weight, a, b = (torch.randn(s, generator=generator) for s in ((6, 5), (2, 5), (6, 2)))
    magnitude = torch.rand(6, generator=generator) + 0.5
    for mag in (None, magnitude):
        plain = _merge_linear(weight.clone(), ModuleLora(a, b, mag), 2.0, fan_in_fan_out=False)
        conv1d = _merge_linear(weight.T.clone(), ModuleLora(a, b, mag), 2.0, fan_in_fan_out=True)
        torch.testing.assert_close(conv1d, plain.T, rtol=0, atol=1e-6)


def test_unsupported_adapters_name_their_reason() -> None:
    plain = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "bias": "none", "init_lora_weights": True}
    assert unsupported_reason(plain) is None
    assert "pissa" in str(unsupported_reason({**plain, "init_lora_weights": "pissa_niter_4"}))
    assert "SEQ_CLS" in str(unsupported_reason({**plain, "task_type": "SEQ_CLS"}))
    assert "lora_only" in str(unsupported_reason({**plain, "bias": "lora_only"}))
    assert "layer_replication" in str(unsupported_reason({**plain, "layer_replication": [[0, 2]]}))
    assert "IA3" in str(unsupported_reason({**plain, "peft_type": "IA3"}))


def test_quantized_and_bin_exports_take_the_model_based_path(model_cache_dir: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path / "adapter", CASES["lora"])
    bin_plan = export_plan(tmp_path, adapter, format="bin")
    assert streaming_plan(bin_plan, resolve_source(bin_plan)) == "format bin"
    nf4 = export_plan(tmp_path, adapter, quantization={"method": "bitsandbytes", "bits": 4})
    assert "quantized" in str(streaming_plan(nf4, resolve_source(nf4)))


@pytest.mark.parametrize("case", ["dora", "embeddings-and-modules-to-save"])
def test_layerwise_logits_match_the_loaded_adapter_model(
    model_cache_dir: Path, tmp_path: Path, case: str
) -> None:
    adapter = make_adapter(tmp_path / "adapter", CASES[case])
    path = tiny_model_path(BASE)
    inputs = [torch.arange(3, 30).reshape(1, -1), torch.arange(40, 47).reshape(1, -1)]
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), adapter).eval()
    with torch.no_grad():
        want = [loaded(input_ids=ids).logits for ids in inputs]
        with loaded.disable_adapter():
            want_base = [loaded(input_ids=ids).logits for ids in inputs]
    skeleton = with_adapter(meta_model(AutoModelForCausalLM, loaded.config, torch.float32), str(adapter))
    got = layerwise_logits(skeleton, weight_files(path), torch.float32, inputs)
    with skeleton.disable_adapter():
        got_base = layerwise_logits(skeleton, weight_files(path), torch.float32, inputs)
    for g, w in zip(got + got_base, want + want_base, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    assert (want[0] - want_base[0]).abs().max() > 0.01, "the adapter must change the logits"
    assert all(p.is_meta for n, p in skeleton.named_parameters() if "lora" not in n and "modules_to_save" not in n
               and "embed_tokens.base_layer" not in n), "weights must be dropped after the forward"  # fmt: skip


def test_export_command_streams_a_whole_model_and_checks_itself(
    model_cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FINETUNE_TERMINATION_LOG", str(tmp_path / "termination-log"))
    full = make_full_model(tmp_path / "full")
    export_plan(tmp_path, full, dtype="bfloat16")
    with caplog.at_level(logging.INFO):
        assert export_from_files([str(tmp_path / "export.yaml")]) == 0
    assert "merge path: streaming" in caplog.text and "re-sharded the whole full model" in caplog.text
    check = json.loads((tmp_path / "termination-log").read_text())["verification"]
    assert check["passed"] and "adapterEffect" not in check
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    trained = AutoModelForCausalLM.from_pretrained(full, dtype=torch.bfloat16)
    assert exported.dtype == torch.bfloat16
    for (name, got), (_, want) in zip(
        exported.state_dict().items(), trained.state_dict().items(), strict=True
    ):
        assert torch.equal(got, want), name


def test_export_command_streams_and_checks_itself(
    model_cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FINETUNE_TERMINATION_LOG", str(tmp_path / "termination-log"))
    adapter = make_adapter(tmp_path / "adapter", CASES["dora"])
    export_plan(tmp_path, adapter)
    with caplog.at_level(logging.INFO):
        assert export_from_files([str(tmp_path / "export.yaml")]) == 0
    assert "merge path: streaming" in caplog.text
    check = json.loads((tmp_path / "termination-log").read_text())["verification"]
    assert check["passed"] and check["adapterEffect"] > 100 * check["tolerance"]
    out = tmp_path / "out"
    merged = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.arange(3, 40).reshape(1, -1)
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path(BASE)), adapter)
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids=ids).logits, loaded(input_ids=ids).logits, rtol=1e-4, atol=1e-4
        )
    assert {"config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja"} <= {
        p.name for p in out.iterdir()
    }
