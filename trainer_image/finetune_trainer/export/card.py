"""The model card (README.md) and the optional Ollama Modelfile of an export.

Both are pure functions of what the export knows (no timestamps), so re-running an interrupted
export writes the same bytes and the upload can skip them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from finetune_api.export import ExportSpec
from finetune_api.finetunejob import FineTuneJobSpec, TrainingSpec
from finetune_api.method import LoraSpec
from finetune_api.resources import Dataset, FineTuneJob
from finetune_api.uris import hf_repo

from .usage import usage_lines
from .verify import LogitsCheck

CHATML_TEMPLATE = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
LLAMA3_TEMPLATE = (
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>"
    "{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
CARD = "README.md"
# Evaluation scores in trainer_log.jsonl (and the card) are percentages, as LLaMA-Factory reports them.
PERCENT_KEYS = ("predict_bleu", "predict_rouge", "benchmark_")
SCORE_UNITS = "BLEU-4, ROUGE-1/2/L and benchmark accuracy are percentages (0-100), averaged over the samples."


@dataclass(frozen=True)
class CardFacts:
    """Everything the model card says."""

    name: str
    base: str
    """The base model's source URI as the spec names it (``hf://org/name``, ``tiny://llama``)."""
    method: str
    """lora, dora, freeze or full."""
    adapter: str | None
    """Where the adapter (or the fine-tuned model) is stored."""
    export: ExportSpec | None = None
    """The export described; None for the card a run writes into its own adapter/ folder."""
    training: FineTuneJobSpec | None = None
    datasets: list[Dataset] = field(default_factory=list)
    log_records: list[dict[str, Any]] = field(default_factory=list)
    """trainer_log.jsonl, one dict per line."""
    check: LogitsCheck | None = None

    @property
    def is_adapter(self) -> bool:
        """Whether the card's folder holds a PEFT adapter (not a whole model)."""
        adapter_kind = self.method in ("lora", "dora")
        return adapter_kind and (self.export is None or not self.export.merge)


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
        metrics |= {k: v for k, v in record.items() if k.startswith(PERCENT_KEYS)}
    return metrics


def cell(value: Any) -> str:
    """A table cell as people read YAML, never a Python repr: true/false, lists comma-separated,
    enums by value, floats to 6 significant digits, mappings as ``key: value`` pairs."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return cell(value.value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        return ", ".join(cell(v) for v in value) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {cell(v)}" for k, v in value.items()) or "none"
    return str(value).replace("|", "\\|")


def _table(rows: dict[str, Any]) -> list[str]:
    lines = ["| | |", "|---|---|"]
    return lines + [f"| {k} | {cell(v)} |" for k, v in rows.items() if v is not None]


def _front_matter(facts: CardFacts) -> str:
    tags = ["finetune-operator", facts.method]
    if facts.training is not None:
        tags.append(facts.training.method.stage.value)
    library = "peft" if facts.is_adapter else "transformers"
    meta: dict[str, Any] = {"library_name": library, "pipeline_tag": "text-generation", "tags": tags}
    if (base := hf_repo(facts.base)) is not None:
        meta["base_model"] = base
    hub_data = [repo for d in facts.datasets if (repo := hf_repo(d.spec.source)) is not None]
    if hub_data:
        meta["datasets"] = hub_data
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def main_hyperparameters(training: TrainingSpec) -> dict[str, Any]:
    """The settings that decide a run, as a reader compares two runs (the rest are in job.yaml)."""
    batch = f"{training.per_device_batch_size} per device × {training.gradient_accumulation_steps} accumulation steps"
    rows: dict[str, Any] = {
        "learningRate": training.learning_rate,
        "lrScheduler": f"{training.lr_scheduler}, warmupRatio {cell(training.warmup_ratio)}",
        "epochs": None if training.max_steps else training.epochs,
        "maxSteps": training.max_steps,
        "batch": batch,
        "cutoffLen": training.cutoff_len,
        "precision": training.precision,
        "seed": training.seed,
    }
    return rows


def lora_rows(lora: LoraSpec) -> dict[str, Any]:
    """The adapter's settings, alpha included when it defaults to twice the rank."""
    alpha = lora.alpha if lora.alpha is not None else f"{2 * lora.rank} (twice the rank)"
    return {"rank": lora.rank, "alpha": alpha} | lora.to_wire()


def _method_lines(facts: CardFacts, spec: FineTuneJobSpec) -> list[str]:
    method = spec.method
    lines = ["", "## Method", "", f"Stage `{method.stage.value}`, fine-tuning `{method.finetuning.value}`."]
    quant = spec.model.quantization
    if quant is not None:
        lines[-1] += f" Base quantized to {quant.bits} bits while training (QLoRA)."
    if facts.method in ("lora", "dora"):
        lines += ["", *_table(lora_rows(method.lora_or_default()))]
    lines += ["", "## Hyper-parameters", "", *_table(main_hyperparameters(spec.training))]
    lines += ["", "<details><summary>Every training setting</summary>", ""]
    return [*lines, *_table(spec.training.to_wire()), "", "</details>"]


def _metric_rows(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: f"{cell(v)} %" if k.startswith(PERCENT_KEYS) else v for k, v in metrics.items()}


def _training_sections(facts: CardFacts) -> list[str]:
    lines: list[str] = []
    if facts.training is not None:
        lines += _method_lines(facts, facts.training)
    lines += ["", "## Data", ""]
    weights = {ref.ref: ref.weight for ref in facts.training.datasets} if facts.training else {}
    if facts.datasets:
        for d in facts.datasets:
            weight = f", weight {cell(weights[d.metadata.name])}" if d.metadata.name in weights else ""
            lines.append(f"- `{d.metadata.name}`: {d.spec.source} ({d.spec.format.value}){weight}")
    elif facts.training is not None:
        lines += [f"- `{ref.ref}` (weight {cell(ref.weight)})" for ref in facts.training.datasets]
    else:
        lines += ["Not recorded (no job.yaml beside the adapter)."]
    metrics = run_metrics(facts.log_records)
    lines += ["", "## Metrics of the run", ""]
    lines += (
        _table(_metric_rows(metrics))
        if metrics
        else ["Not recorded (no trainer_log.jsonl beside the adapter)."]
    )
    if any(k.startswith(PERCENT_KEYS) for k in metrics):
        lines += ["", SCORE_UNITS]
    elif facts.export is None and facts.training is not None and facts.training.evaluation is not None:
        lines += [
            "",
            "The scores of spec.evaluation are added here once it has run (they are in `eval_results.json` too).",
        ]
    return lines


def model_card(facts: CardFacts) -> str:
    """README.md: base, method, data, hyper-parameters, metrics of the run, how to use it, and how it was exported."""
    lines = [f"# {facts.name}", "", f"Fine-tuned from `{facts.base}` with finetune-operator."]
    lines += ["", "## Base model", "", f"- base: `{facts.base}`"]
    if facts.export is not None:
        lines.append(f"- adapter: `{facts.adapter or 'none'}` ({facts.method})")
    lines += _training_sections(facts)
    folder = facts.export.output.uri if facts.export is not None else facts.adapter
    lines += usage_lines(
        name=facts.name, base=facts.base, folder_uri=folder, is_adapter=facts.is_adapter,
        exported=facts.export is not None,
    )  # fmt: skip
    spec = facts.export
    if spec is not None:
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


def write_run_card(folder: Path, *, name: str, documents: list[dict[str, Any]], log: Path, uri: str) -> None:
    """Write ``folder/README.md`` (over PEFT's template) from the run's documents and its log file, if any."""
    lines = log.read_text().splitlines() if log.is_file() else []
    records = [json.loads(line) for line in lines if line.strip()]
    (folder / CARD).write_text(run_card(name, documents, records, uri), encoding="utf-8")


def run_card(
    name: str, documents: list[dict[str, Any]], records: list[dict[str, Any]], adapter_uri: str
) -> str:
    """The README.md of a run's adapter/ folder (PEFT's empty template replaced): the run's resolved
    FineTuneJob and Datasets (``documents``) and its trainer_log.jsonl ``records``."""
    job = next(FineTuneJob.model_validate(d) for d in documents if d.get("kind") == "FineTuneJob")
    datasets = [Dataset.model_validate(d) for d in documents if d.get("kind") == "Dataset"]
    spec = job.spec
    lora = spec.method.lora
    method = spec.method.finetuning.value
    if method == "lora" and lora is not None and lora.use_dora:
        method = "dora"
    facts = CardFacts(name, spec.model.source, method, adapter_uri, None, spec, datasets, records)
    return model_card(facts)


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
