"""Pure parts of `finetune export`: sizes, source resolution, the self-check's arithmetic, refusals,
the model card, the Ollama Modelfile and the termination report. No model, no server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from finetune_api.export import ExportQuantizationSpec, ExportSpec
from finetune_api.finetunejob import FineTuneJobSpec
from finetune_api.reports import ExportReport
from finetune_api.resources import Dataset
from finetune_trainer.export.card import (
    CHATML_TEMPLATE,
    CardFacts,
    model_card,
    modelfile,
    ollama_template,
    run_metrics,
)
from finetune_trainer.export.plan import parent_uri, parse_size, plan_export, same_location
from finetune_trainer.export.quantize import check_quantization
from finetune_trainer.export.verify import compare_logits, rtol_for
from finetune_trainer.model.tiny import CHAT_TEMPLATE

JOB: dict[str, Any] = {
    "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "tuned"},
    "spec": {"model": {"source": "hf://org/base", "quantization": {"bits": 4}}, "datasets": [{"ref": "demo"}],
             "method": {"stage": "sft", "finetuning": "lora", "lora": {"rank": 16, "useDora": True}},
             "training": {"learningRate": 0.0002, "epochs": 3}},
}  # fmt: skip


def export_doc(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "finetune.dev/v1alpha1", "kind": "Export", "metadata": {"name": "out"},
            "spec": {"output": {"uri": "s3://bucket/models/out"}, **spec}}  # fmt: skip


def write_docs(path: Path, *docs: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
    return str(path)


@pytest.mark.parametrize(("text", "size"), [("1KB", 1000), ("500MB", 500_000_000), ("2GB", 2_000_000_000)])
def test_parse_size_uses_decimal_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["2G", "0MB", "1.5GB", "2 GB", ""])
def test_parse_size_refuses_other_spellings(text: str) -> None:
    with pytest.raises(ValueError, match=r"spec\.shardSize"):
        parse_size(text)


def test_parent_and_location_helpers() -> None:
    assert parent_uri("s3://b/runs/x/adapter/") == "s3://b/runs/x"
    assert parent_uri("file://runs/x/adapter") == "file://runs/x"
    assert same_location("file://runs/x/adapter", "file://./runs/x/adapter/")
    assert not same_location("s3://b/runs/x/adapter", "s3://b/runs/y/adapter")


def test_job_ref_uses_the_reported_adapter_and_the_jobs_base(tmp_path: Path) -> None:
    job = {**JOB, "status": {"phase": "Succeeded", "outputs": {"adapter": "s3://bucket/runs/tuned/adapter"}}}
    plan = plan_export([write_docs(tmp_path / "e.yaml", export_doc(fineTuneJobRef="tuned"), job)])
    assert plan.adapter == "s3://bucket/runs/tuned/adapter" and plan.run_uri == "s3://bucket/runs/tuned"
    assert plan.model.source == "hf://org/base" and plan.model.quantization is not None
    assert plan.job is not None and plan.job.metadata.name == "tuned"


def test_job_ref_locally_defaults_to_the_run_folder(tmp_path: Path) -> None:
    plan = plan_export([write_docs(tmp_path / "e.yaml", export_doc(fineTuneJobRef="tuned"), JOB)])
    assert plan.adapter == "file://./runs/tuned/adapter" and plan.run_uri == "file://./runs/tuned"


def test_job_ref_must_be_among_the_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"spec\.fineTuneJobRef: FineTuneJob 'tuned' is not among the files"):
        plan_export([write_docs(tmp_path / "e.yaml", export_doc(fineTuneJobRef="tuned"))])


def test_explicit_model_and_adapter_find_the_job_for_the_card(tmp_path: Path) -> None:
    doc = export_doc(model="tiny://llama", adapter="file://runs/tuned/adapter")
    plan = plan_export([write_docs(tmp_path / "e.yaml", doc, JOB)])
    assert plan.model.source == "tiny://llama" and plan.job is not None


def test_invalid_export_is_refused_with_its_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid manifests"):
        plan_export([write_docs(tmp_path / "e.yaml", export_doc(model="tiny://llama", shardSize="2G"))])


def test_gptq_is_refused_on_cpu_and_without_its_packages() -> None:
    gptq = ExportQuantizationSpec(method="gptq", bits=8, calibration_dataset="demo")
    with pytest.raises(
        ValueError, match=r"^spec.quantization.method: gptq \(8-bit\) needs a CUDA GPU.*bitsandbytes"
    ):
        check_quantization(gptq, cuda=False)
    with pytest.raises(ValueError, match="gptq needs optimum, gptqmodel in the trainer image"):
        check_quantization(gptq, cuda=True)  # neither is installed here
    bnb = ExportQuantizationSpec(method="bitsandbytes", bits=4)
    check_quantization(bnb, cuda=False)  # a quantized .bin export: examples/invalid/export-quantized-bin.yaml


def test_logits_check_rule_and_tolerance() -> None:
    ref = [torch.tensor([[[1.0, -4.0], [2.0, 0.5]]])]
    close = [ref[0] + 3e-4]
    check = compare_logits(ref, close, rtol=rtol_for(torch.float32, None), base=[torch.zeros(1, 2, 2)])
    assert check.tolerance == pytest.approx(4e-4) and check.passed and check.top1_agreement == 1.0
    assert (
        check.adapter_effect == 4.0
        and check.to_report().rule == "max|exported-adapter| <= 0.0001 * max|adapter logits|"
    )
    assert not compare_logits(ref, [ref[0] + 5e-4], rtol=1e-4).passed
    assert not compare_logits(ref, [ref[0] * float("nan")], rtol=1e-4).passed
    assert rtol_for(torch.bfloat16, None) == 0.1 and rtol_for(torch.float32, 4) == 0.6


def test_model_card_names_base_method_data_hyperparameters_and_metrics() -> None:
    spec = FineTuneJobSpec.model_validate(JOB["spec"])
    dataset = Dataset.model_validate({"apiVersion": "finetune.dev/v1alpha1", "kind": "Dataset", "metadata": {"name": "demo"},
                                      "spec": {"source": "s3://data/demo.jsonl", "format": "sharegpt"}})  # fmt: skip
    export = ExportSpec.model_validate(
        {"fineTuneJobRef": "tuned", "dtype": "bfloat16", "output": {"uri": "s3://b/m"}}
    )
    records = [
        {"step": 10, "loss": 2.0},
        {"step": 20, "loss": 1.5, "eval_loss": 1.7},
        {"step": 20, "train_loss": 1.8},
    ]
    check = compare_logits([torch.ones(1, 1, 2)], [torch.ones(1, 1, 2)], rtol=0.1)
    facts = CardFacts(
        "out", "hf://org/base", "dora", "s3://b/runs/tuned/adapter", export, spec, [dataset], records, check
    )
    card = model_card(facts)
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "org/base" and front["tags"] == ["finetune-operator", "dora", "sft"]
    for line in ("| rank | 16 |", "| useDora | true |", "| learningRate | 0.0002 |", "| epochs | 3 |",
                 "- `demo`: s3://data/demo.jsonl (sharegpt)", "| final_loss | 1.5 |", "| final_eval_loss | 1.7 |",
                 "| train_loss | 1.8 |", "| dtype | bfloat16 |", "Verified by reloading the export"):  # fmt: skip
        assert line in card, line
    assert card == model_card(facts)  # deterministic: the same facts give the same card


def test_model_card_prints_values_not_python_reprs() -> None:
    job = {**JOB["spec"], "method": {"stage": "sft", "finetuning": "lora", "lora": {"targetModules": ["q_proj", "v_proj"]}},
           "training": {"precision": "bf16", "maxSteps": 20, "learningRate": 2e-5}}  # fmt: skip
    export = ExportSpec.model_validate({"model": "hf://org/base", "adapter": "s3://b/a", "merge": False,
                                        "dtype": "bfloat16", "quantization": {"method": "bitsandbytes", "bits": 4},
                                        "output": {"uri": "s3://b/m"}})  # fmt: skip
    records = [{"step": 20, "loss": 1.23456789, "predict_bleu-4": 35.41, "predict_rouge-l": 40.0}]
    facts = CardFacts(
        "out", "hf://org/base", "lora", "s3://b/a", export, FineTuneJobSpec.model_validate(job), [], records
    )
    card = model_card(facts)
    for line in ("| targetModules | q_proj, v_proj |", "| useDora | false |", "| precision | bf16 |",
                 "| maxSteps | 20 |", "| learningRate | 2e-05 |", "| alpha | 16 (twice the rank) |",
                 "| merged | false |", "| quantization | bitsandbytes 4-bit |", "| final_loss | 1.23457 |",
                 "| predict_bleu-4 | 35.41 % |", "percentages (0-100)", "library_name: peft"):  # fmt: skip
        assert line in card, line
    for repr_ in ("True", "False", "None", "['", "Precision.", "Stage.", "Finetuning."):
        assert repr_ not in card, repr_
    assert "| epochs |" not in card.split("<details>")[0]  # maxSteps decides, epochs would mislead


def test_model_card_without_run_files_says_so() -> None:
    export = ExportSpec.model_validate({"model": "tiny://llama", "output": {"uri": "file://x"}})
    card = model_card(CardFacts("out", "tiny://llama", "full", None, export))
    assert (
        "base_model" not in card
        and "Not recorded (no trainer_log.jsonl" in card
        and "Not recorded (no job.yaml" in card
    )


def test_run_metrics_keeps_the_last_of_each() -> None:
    assert run_metrics([{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}]) == {"step": 2, "final_loss": 2.0}


def test_run_metrics_carry_the_evaluation_scores_into_the_card() -> None:
    records = [
        {"step": 2, "loss": 2.0},
        {"step": 2, "predict_bleu-4": 35.4, "benchmark_accuracy/overall": 100.0},
    ]
    metrics = run_metrics(records)
    assert metrics["predict_bleu-4"] == 35.4 and metrics["benchmark_accuracy/overall"] == 100.0


def test_modelfile_for_chatml_and_unknown_templates() -> None:
    assert ollama_template(CHAT_TEMPLATE) == CHATML_TEMPLATE and ollama_template("{{ messages }}") is None
    text = modelfile(
        chat_template=CHAT_TEMPLATE, stop_tokens=["<|endoftext|>", "<|im_end|>", "<|im_end|>", ""]
    )
    assert text.splitlines()[1:] == [
        "FROM .",
        f'TEMPLATE """{CHATML_TEMPLATE}"""'.splitlines()[0],
        *f'TEMPLATE """{CHATML_TEMPLATE}"""'.splitlines()[1:],
        'PARAMETER stop "<|endoftext|>"',
        'PARAMETER stop "<|im_end|>"',
    ]
    unknown = modelfile(chat_template=None, stop_tokens=[], adapter_only=True, base="hf://org/base")
    assert "FROM hf://org/base\nADAPTER .\n# The chat template is not a known family" in unknown


def test_fit_report_drops_the_file_list_first() -> None:
    files = [
        {"path": f"model-{i:05d}-of-00100.safetensors", "size": 1, "sha256": "f" * 64} for i in range(100)
    ]
    report = {"uri": "s3://b/m", "files": files, "sizeBytes": 100, "manifest": "s3://b/m/manifest.json",
              "verification": {"passed": True, "rule": "adapter copied as is"}}  # fmt: skip
    text = ExportReport.model_validate(report).to_message()
    assert len(text.encode()) <= 4096 and json.loads(text) == {
        k: v for k, v in report.items() if k != "files"
    }
    small = {**report, "files": files[:2]}
    assert json.loads(ExportReport.model_validate(small).to_message()) == small


def test_export_peak_rss_is_the_process_own_not_its_parents() -> None:
    """A parent holding 3 GiB starts the exporter's process: ``ru_maxrss`` would report the
    parent's RSS (it survives exec); the report's figure is the child's own high-water mark."""
    held = bytearray(3 * 2**30)
    held[:: 2**12] = b"x" * len(held[:: 2**12])  # touch every page: resident
    out = subprocess.run(
        [sys.executable, "-c", "from finetune_trainer.export.pipeline import peak_rss_bytes; print(peak_rss_bytes())"],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout  # fmt: skip
    del held
    assert 10 * 2**20 < int(out.strip()) < 2 * 2**30
