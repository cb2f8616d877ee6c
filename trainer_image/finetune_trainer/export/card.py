"""The model card (README.md) and the optional Ollama Modelfile of an export.

Both are pure functions of what the export knows (no timestamps), so re-running an interrupted
export writes the same bytes and the upload can skip them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from finetune_api.export import ExportSpec
from finetune_api.finetunejob import FineTuneJobSpec
from finetune_api.resources import Dataset

from .verify import LogitsCheck

CHATML_TEMPLATE = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
LLAMA3_TEMPLATE = (
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
    "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)


@dataclass(frozen=True)
class CardFacts:
    """Everything the model card says."""

    name: str
    base: str
    method: str
    """lora, dora or full."""
    adapter: str | None
    export: ExportSpec
    training: FineTuneJobSpec | None = None
    datasets: list[Dataset] = field(default_factory=list)
    log_records: list[dict[str, Any]] = field(default_factory=list)
    """trainer_log.jsonl, one dict per line."""
    check: LogitsCheck | None = None


def run_metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's headline metrics from trainer_log.jsonl: final summary, last logged and eval losses,
    and the evaluation scores."""
    metrics: dict[str, Any] = {}
    for record in records:
        for key in ("loss", "eval_loss", "learning_rate", "epoch", "step"):
            if key in record:
                metrics["final_" + key if key in ("loss", "eval_loss") else key] = record[key]
        for key in ("train_loss", "train_runtime", "train_samples_per_second", "num_input_tokens_seen"):
            if key in record:
                metrics[key] = record[key]
        # spec.evaluation's scores (BLEU/ROUGE of predictions, benchmark accuracy per subject)
        metrics |= {k: v for k, v in record.items() if k.startswith(("predict_", "benchmark_"))}
    return metrics


def _table(rows: dict[str, Any]) -> list[str]:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {k} | {json.dumps(v) if isinstance(v, (dict, list)) else v} |" for k, v in rows.items()]
    return lines


def _front_matter(facts: CardFacts) -> str:
    tags = ["finetune-operator", facts.method]
    if facts.training is not None:
        tags.append(facts.training.method.stage.value)
    meta: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "text-generation", "tags": tags}
    if facts.base.startswith("hf://"):
        meta["base_model"] = facts.base.removeprefix("hf://")
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _training_sections(facts: CardFacts) -> list[str]:
    lines: list[str] = []
    if facts.training is not None:
        method = facts.training.method
        lines += [
            "",
            "## Method",
            "",
            f"Stage `{method.stage.value}`, fine-tuning `{method.finetuning.value}`.",
        ]
        if method.lora is not None and facts.method in ("lora", "dora"):
            lines += ["", *_table(method.lora.to_wire())]
        lines += ["", "## Hyper-parameters", "", *_table(facts.training.training.to_wire())]
    lines += ["", "## Data", ""]
    if facts.datasets:
        lines += [f"- `{d.metadata.name}`: {d.spec.source} ({d.spec.format.value})" for d in facts.datasets]
    elif facts.training is not None:
        lines += [f"- `{ref.ref}` (weight {ref.weight})" for ref in facts.training.datasets]
    else:
        lines += ["Not recorded (no job.yaml beside the adapter)."]
    metrics = run_metrics(facts.log_records)
    lines += ["", "## Metrics of the run", ""]
    lines += _table(metrics) if metrics else ["Not recorded (no trainer_log.jsonl beside the adapter)."]
    return lines


def model_card(facts: CardFacts) -> str:
    """README.md: base, method, data, hyper-parameters, metrics of the run, and how it was exported."""
    spec = facts.export
    lines = [f"# {facts.name}", "", f"Fine-tuned from `{facts.base}` with finetune-operator."]
    lines += [
        "",
        "## Base model",
        "",
        f"- base: `{facts.base}`",
        f"- adapter: `{facts.adapter or 'none'}` ({facts.method})",
    ]
    lines += _training_sections(facts)
    export_rows: dict[str, Any] = {
        "merged": spec.merge,
        "dtype": spec.dtype,
        "format": spec.format,
        "shardSize": spec.shard_size,
    }
    if spec.quantization is not None:
        export_rows["quantization"] = f"{spec.quantization.method} {spec.quantization.bits}-bit"
    lines += ["", "## Export", "", *_table(export_rows)]
    if facts.check is not None:
        lines += ["", f"Verified by reloading the export: {facts.check.describe()}."]
    return _front_matter(facts) + "\n" + "\n".join(lines) + "\n"


def ollama_template(chat_template: str | None) -> str | None:
    """The Go template Ollama needs for a known Jinja chat template family; ``None`` when unknown."""
    if not chat_template:
        return None
    if "<|im_start|>" in chat_template:
        return CHATML_TEMPLATE
    if "<|start_header_id|>" in chat_template:
        return LLAMA3_TEMPLATE
    return None


def modelfile(
    *, chat_template: str | None, stop_tokens: list[str], adapter_only: bool = False, base: str = ""
) -> str:
    """An Ollama Modelfile for the exported folder (``ollama create NAME -f Modelfile`` run inside it)."""
    lines = ["# Ollama Modelfile written by finetune-operator; run `ollama create <name>` in this folder."]
    if adapter_only:
        lines += [f"# Replace with the Ollama name of the base model {base}.", f"FROM {base}", "ADAPTER ."]
    else:
        lines.append("FROM .")
    template = ollama_template(chat_template)
    if template is not None:
        lines.append(f'TEMPLATE """{template}"""')
    else:
        lines.append("# The chat template is not a known family (ChatML, Llama 3): Ollama's default applies.")
    lines += [f"PARAMETER stop {json.dumps(tok)}" for tok in dict.fromkeys(stop_tokens) if tok]
    return "\n".join(lines) + "\n"
