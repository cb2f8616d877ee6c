"""`finetune export` end to end on tiny models, against the real S3 server (tests/fixtures/s3.py).

Each test trains nothing: it builds a LoRA/DoRA adapter with PEFT on a tiny model, moves its B
matrices away from zero (so merging changes the weights), and stores it with the job.yaml and
trainer_log.jsonl a `finetune run` leaves beside it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, GenerationConfig

from finetune_trainer.export import export_from_files
from finetune_trainer.model.tiny import tiny_model_path
from finetune_trainer.storage import download_with_manifest, open_store, upload_with_manifest, verify_artifact
from tests.fixtures.s3 import S3Server

pytestmark = pytest.mark.slow

# ~0.85M parameters (3.4 MB in fp32): with 1MB shards the export has several shards.
BASE = "tiny://llama?layers=4&hidden=128&intermediate=256"
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEADLINE_S = 300.0


def make_run(run_dir: Path, *, base: str = BASE, use_dora: bool = False) -> Path:
    """An adapter folder as `finetune run` leaves it (adapter/, job.yaml, trainer_log.jsonl); returns adapter/."""
    path = tiny_model_path(base)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(path),
        LoraConfig(r=4, lora_alpha=8, target_modules=LINEAR, use_dora=use_dora),
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # B starts at zero: a fresh adapter would merge to a no-op
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    adapter = run_dir / "adapter"
    model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(path).save_pretrained(adapter)
    job = {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "tuned"},
        "spec": {"model": {"source": base}, "datasets": [{"ref": "demo"}],
                 "method": {"stage": "sft", "finetuning": "lora", "lora": {"rank": 4, "useDora": use_dora}},
                 "training": {"learningRate": 0.0007, "maxSteps": 30}},
    }  # fmt: skip
    dataset = {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "Dataset", "metadata": {"name": "demo"},
        "spec": {"source": "file://examples/data/alpaca.jsonl", "format": "alpaca"},
    }  # fmt: skip
    (run_dir / "job.yaml").write_text(yaml.safe_dump_all([job, dataset], sort_keys=False))
    records = [
        {"step": 30, "loss": 1.25, "learning_rate": 0.0001},
        {"step": 30, "train_loss": 1.5, "train_runtime": 3.0},
    ]
    (run_dir / "trainer_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return adapter


def write_export(path: Path, output: str, *, adapter: str, base: str = BASE, **spec: Any) -> Path:
    doc = {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "Export", "metadata": {"name": "merged"},
        "spec": {"model": base, "adapter": adapter, "shardSize": "1MB", "output": {"uri": output}, **spec},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def adapter_logits(
    base: str, adapter: Path, ids: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_path(base), dtype=dtype), adapter
    )
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def probe_ids() -> torch.Tensor:
    return torch.arange(3, 40).reshape(1, -1)


@pytest.fixture
def s3_env(
    s3_server: S3Server, model_cache_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> dict[str, str]:
    """The export's environment: the S3 server's keys, a fresh cache, a termination-log file."""
    env = {**s3_server.env(), "FINETUNE_TERMINATION_LOG": str(tmp_path / "termination-log")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def termination_report(env: dict[str, str]) -> dict[str, Any]:
    return json.loads(Path(env["FINETUNE_TERMINATION_LOG"]).read_text())


def test_merge_shard_upload_round_trip_through_s3(
    s3_server: S3Server, s3_bucket: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    # The operator's contract: the Export, then its FineTuneJob with status; the adapter in S3.
    local_adapter = make_run(tmp_path / "run")
    run_store = open_store(f"s3://{s3_bucket}/runs/tuned")
    upload_with_manifest(local_adapter, run_store.child("adapter"))
    for name in ("job.yaml", "trainer_log.jsonl"):
        run_store.put_file(name, tmp_path / "run" / name)
    job = yaml.safe_load_all((tmp_path / "run" / "job.yaml").read_text()).__next__()
    job["status"] = {"phase": "Succeeded", "outputs": {"adapter": f"s3://{s3_bucket}/runs/tuned/adapter"}}
    export = {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "Export", "metadata": {"name": "merged"},
        "spec": {"fineTuneJobRef": "tuned", "shardSize": "1MB", "ollamaModelfile": True,
                 "output": {"uri": f"s3://{s3_bucket}/models/merged", "endpoint": s3_server.endpoint_url}},
    }  # fmt: skip
    config = tmp_path / "export.yaml"
    config.write_text(yaml.safe_dump_all([export, job], sort_keys=False))

    assert export_from_files([str(config)]) == 0

    report = termination_report(s3_env)
    store = open_store(f"s3://{s3_bucket}/models/merged")
    manifest = verify_artifact(store, deep=True)
    shards = sorted(f.path for f in manifest.files if f.path.startswith("model-"))
    assert len(shards) >= 3 and shards[0].endswith(f"-of-{len(shards):05d}.safetensors")
    assert all(f.size <= 1_000_000 for f in manifest.files if f.path in shards)
    assert {"model.safetensors.index.json", "config.json", "generation_config.json", "tokenizer.json",
            "chat_template.jinja", "README.md", "Modelfile"} <= {f.path for f in manifest.files}  # fmt: skip
    assert report["manifest"] == f"s3://{s3_bucket}/models/merged/manifest.json"
    assert report["sizeBytes"] == manifest.total_size
    assert [f["sha256"] for f in report["files"]] == [f.sha256 for f in manifest.files]
    check = report["verification"]
    assert check["passed"] and "<= 0.0001 *" in check["rule"] and check["maxAbsDiff"] <= check["tolerance"]
    assert check["adapterEffect"] > 100 * check["tolerance"], "a merge that lost the adapter would pass"

    # Independently of the export's own check: the downloaded model is the adapter model, merged.
    local = tmp_path / "downloaded"
    download_with_manifest(store, local)
    merged = AutoModelForCausalLM.from_pretrained(local)
    ids = probe_ids()
    with torch.no_grad():
        got = merged(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model_path(BASE))(input_ids=ids).logits
    want = adapter_logits(BASE, local_adapter, ids)
    assert (want - base).abs().max() > 0.05, (
        "the adapter must change the model for this test to mean anything"
    )
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    tokenizer = AutoTokenizer.from_pretrained(local)
    assert "<|im_start|>" in (tokenizer.chat_template or "")
    base_gen = GenerationConfig.from_pretrained(tiny_model_path(BASE))
    assert GenerationConfig.from_pretrained(local).eos_token_id == base_gen.eos_token_id
    card = (local / "README.md").read_text()
    for expected in (
        BASE,
        "demo",
        "learningRate | 0.0007",
        "train_loss | 1.5",
        "final_loss | 1.25",
        "Verified",
    ):
        assert expected in card
    assert 'PARAMETER stop "<|im_end|>"' in (local / "Modelfile").read_text()


def _objects(client: Any, bucket: str, prefix: str) -> dict[str, tuple[str, Any]]:
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"].removeprefix(prefix): (o["ETag"], o["LastModified"]) for o in listed}


def start_and_kill_after_first_shard(
    config: Path, env: dict[str, str], client: Any, bucket: str, prefix: str
) -> None:
    """Run `finetune export` in a subprocess and SIGKILL it as soon as its first weight shard is in S3."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "finetune_trainer.cli", "export", str(config)],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + DEADLINE_S
        while not any(k.startswith("model-") for k in _objects(client, bucket, prefix)):
            assert proc.poll() is None, f"export ended before its first shard landed: {proc.stderr.read()!r}"  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no shard uploaded in time"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


def test_interrupted_export_resumes_without_reuploading(
    s3_server: S3Server, s3_bucket: str, s3_env: dict[str, str], model_cache_dir: Path, tmp_path: Path
) -> None:
    adapter = make_run(tmp_path / "run")
    client = s3_server.client()
    # Shards go up while later ones are written; the manifest only after the reload check, so the
    # kill lands mid-export unless this process was starved meanwhile: then try a fresh prefix.
    for attempt in range(3):
        prefix = f"models/resumed-{attempt}/"
        config = write_export(
            tmp_path / "export.yaml",
            f"s3://{s3_bucket}/{prefix}",
            adapter=f"file://{adapter}",
            shardSize="200KB",
        )
        start_and_kill_after_first_shard(config, s3_env, client, s3_bucket, prefix)
        before = _objects(client, s3_bucket, prefix)
        if "manifest.json" not in before:
            break
    assert "manifest.json" not in before, "the export finished before each kill; nothing was interrupted"
    assert "README.md" not in before  # written after the self-check, so still missing

    assert export_from_files([str(config)]) == 0

    after = _objects(client, s3_bucket, prefix)
    for key, (etag, modified) in before.items():
        assert after[key] == (etag, modified), f"{key} was uploaded again"
    report = termination_report(s3_env)
    # Requests already sent when the kill landed may still complete on the server after `before` was
    # listed: those count as skipped too. Every file is either skipped or uploaded, never both.
    assert report["skippedFiles"] >= len(before) > 0
    assert report["skippedFiles"] + report["uploadedFiles"] == len(after) - 1  # all but the manifest
    assert {"manifest.json", "README.md"} <= after.keys()
    verify_artifact(open_store(f"s3://{s3_bucket}/{prefix}"), deep=True)


def test_bitsandbytes_4bit_export_on_cpu_reloads_and_generates(
    s3_bucket: str, s3_env: dict[str, str], tmp_path: Path
) -> None:
    adapter = make_run(tmp_path / "run")
    uri = f"s3://{s3_bucket}/models/nf4"
    quant = {"method": "bitsandbytes", "bits": 4}
    config = write_export(tmp_path / "export.yaml", uri, adapter=f"file://{adapter}", quantization=quant)

    assert export_from_files([str(config)]) == 0

    report = termination_report(s3_env)
    assert report["verification"]["passed"] and "0.6" in report["verification"]["rule"]
    local = tmp_path / "nf4"
    download_with_manifest(open_store(uri), local)
    assert json.loads((local / "config.json").read_text())["quantization_config"]["load_in_4bit"] is True
    model = AutoModelForCausalLM.from_pretrained(local, device_map={"": "cpu"})
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    tokenizer = AutoTokenizer.from_pretrained(local)
    prompt = tokenizer("The quick brown fox", return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > prompt.input_ids.shape[1]


def test_gptq_is_refused_on_cpu_before_any_work(
    s3_server: S3Server,
    s3_bucket: str,
    s3_env: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    quant = {"method": "gptq", "bits": 4, "calibrationDataset": "demo"}
    config = write_export(
        tmp_path / "export.yaml",
        f"s3://{s3_bucket}/models/gptq",
        adapter="file:///nonexistent",
        quantization=quant,
    )
    assert export_from_files([str(config)]) == 1
    message = Path(s3_env["FINETUNE_TERMINATION_LOG"]).read_text()
    assert message.startswith("spec.quantization.method: gptq (4-bit) needs a CUDA GPU")
    assert "method: bitsandbytes" in message and message in capsys.readouterr().err
    assert _objects(s3_server.client(), s3_bucket, "") == {}


def test_merge_into_quantized_base_is_refused(
    model_cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINETUNE_TERMINATION_LOG", str(tmp_path / "termination-log"))
    quantized = tmp_path / "nf4-base"
    AutoModelForCausalLM.from_pretrained(
        tiny_model_path(BASE),
        quantization_config=BitsAndBytesConfig(load_in_4bit=True),
        device_map={"": "cpu"},
    ).save_pretrained(quantized)
    adapter = make_run(tmp_path / "run")
    config = write_export(
        tmp_path / "export.yaml",
        f"file://{tmp_path / 'out'}",
        adapter=f"file://{adapter}",
        base=f"file://{quantized}",
    )
    assert export_from_files([str(config)]) == 1
    message = (tmp_path / "termination-log").read_text()
    assert message.startswith(f"spec.model: file://{quantized} is a quantized checkpoint (bitsandbytes)")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_dora_bfloat16_legacy_bin_export(
    model_cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINETUNE_TERMINATION_LOG", str(tmp_path / "termination-log"))
    adapter = make_run(tmp_path / "run", use_dora=True)
    out = tmp_path / "out"
    config = write_export(
        tmp_path / "export.yaml", f"file://{out}", adapter=f"file://{adapter}", dtype="bfloat16", format="bin"
    )
    assert export_from_files([str(config)]) == 0

    report = json.loads((tmp_path / "termination-log").read_text())
    assert report["verification"]["passed"] and "0.1 " in report["verification"]["rule"]
    assert not list(out.glob("*.safetensors"))
    assert (
        len(list(out.glob("pytorch_model-*-of-*.bin"))) >= 2
        and (out / "pytorch_model.bin.index.json").is_file()
    )
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert merged.dtype == torch.bfloat16
    ids = probe_ids()
    with torch.no_grad():
        got = merged(input_ids=ids).logits.float()
    want = adapter_logits(BASE, adapter, ids, dtype=torch.bfloat16)
    assert (got - want).abs().max() <= 0.1 * want.abs().max()
    assert "(dora)" in (out / "README.md").read_text()


def test_adapter_only_export_copies_the_adapter(model_cache_dir: Path, tmp_path: Path) -> None:
    adapter = make_run(tmp_path / "run")
    out = tmp_path / "out"
    config = write_export(
        tmp_path / "export.yaml",
        f"file://{out}",
        adapter=f"file://{adapter}",
        merge=False,
        ollamaModelfile=True,
    )
    assert export_from_files([str(config)]) == 0
    assert (out / "adapter_model.safetensors").read_bytes() == (
        adapter / "adapter_model.safetensors"
    ).read_bytes()
    assert not list(out.glob("model*.safetensors"))
    modelfile = (out / "Modelfile").read_text()
    assert f"FROM {BASE}" in modelfile and "ADAPTER ." in modelfile
    verify_artifact(open_store(f"file://{out}"), deep=True)
