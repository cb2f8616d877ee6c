"""Load the base model unquantized in the export dtype, apply the adapter, merge it into the weights.

Loading straight into the export dtype keeps one copy of the model in memory; PEFT computes each
LoRA/DoRA delta in the adapter's fp32 and rounds once when adding it to the base weight.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftConfig, PeftModel
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from ..model.loader import apply_rope_scaling, is_quantized, resize_embeddings_to_tokenizer
from ..model.sources import fetch_source
from .plan import ExportPlan
from .weights import checkpoint_files, load_private_weights

log = logging.getLogger(__name__)
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
ADAPTER_CONFIG = "adapter_config.json"


@dataclass
class SourceModel:
    """The model to export before merging: the base with its adapter applied (or a full model)."""

    model: PreTrainedModel | PeftModel | None
    """``None`` until :func:`load_model` (the streaming merge never loads it)."""
    tokenizer: PreTrainedTokenizerBase
    dtype: torch.dtype
    base_path: str
    adapter_path: str | None
    """Local folder of the adapter; ``None`` when there is nothing to merge."""
    method: str
    """lora, dora or full (a fully fine-tuned model, or a base exported as is)."""
    auto_class: Any
    """The transformers auto class that loads the model back (causal LM, or a reward model's head)."""
    config: PretrainedConfig
    """The base's config as the export writes it (rope scaling applied, a reward head's one label)."""
    revision: str | None = None
    trust_remote_code: bool = False


def export_dtype(requested: str, config: PretrainedConfig) -> torch.dtype:
    """``spec.dtype`` as a torch dtype; auto keeps the base model's (fp32 when it names none)."""
    if requested != "auto":
        return DTYPES[requested]
    stored = getattr(config, "dtype", None)  # v5 configs name it dtype; older checkpoints may not
    if isinstance(stored, torch.dtype):
        return stored
    return DTYPES.get(str(stored), torch.float32)


def refuse_quantized_base(config: PretrainedConfig, source: str) -> None:
    """Refuse a pre-quantized checkpoint as the merge target.

    Raises:
        ValueError: the checkpoint's config carries a quantization_config.
    """
    quant = getattr(config, "quantization_config", None)
    if quant is None:
        return
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", "?")
    raise ValueError(
        f"spec.model: {source} is a quantized checkpoint ({method}); merging an adapter into quantized "
        "weights would round the adapter away. Export from the unquantized base model (a QLoRA adapter "
        "merges into the full-precision base), or set merge: false to export the adapter alone"
    )


def is_adapter_dir(path: str) -> bool:
    """Whether ``path`` holds a PEFT adapter (rather than a full model)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_method(path: str) -> str:
    """lora or dora, from the adapter's config."""
    config = json.loads((Path(path) / ADAPTER_CONFIG).read_text())
    if config.get("peft_type") != "LORA":
        raise ValueError(
            f"spec.adapter: only LoRA/DoRA adapters can be merged, not {config.get('peft_type')}"
        )
    return "dora" if config.get("use_dora") else "lora"


def _auto_class(adapter_path: str | None) -> Any:
    if adapter_path and PeftConfig.from_pretrained(adapter_path).task_type == "SEQ_CLS":
        return AutoModelForSequenceClassification  # a reward model's score head
    return AutoModelForCausalLM


def resolve_source(plan: ExportPlan) -> SourceModel:
    """Fetch the base and adapter and read their configs and tokenizer; no weight is loaded yet.

    A FineTuneJob trained with QLoRA (``model.quantization``) merges into the full-precision base:
    its quantization is deliberately not applied here.

    Raises:
        ValueError: a quantized checkpoint as base, a non-LoRA adapter, or a source that cannot be fetched.
    """
    spec = plan.model
    base_path = fetch_source(spec.source, field="spec.model")
    adapter_path = fetch_source(plan.adapter, field="spec.adapter") if plan.adapter else None
    method, base_label = "full", spec.source
    if adapter_path is not None and not is_adapter_dir(adapter_path):
        # full / freeze fine-tuning wrote a whole model: it replaces the base
        base_path, base_label, adapter_path = adapter_path, str(plan.adapter), None
    elif adapter_path is not None:
        method = adapter_method(adapter_path)
    if spec.quantization is not None and adapter_path is not None:
        log.info(
            "the adapter was trained on a %d-bit base (QLoRA); merging into the unquantized base",
            spec.quantization.bits,
        )
    kwargs: dict[str, Any] = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    config = AutoConfig.from_pretrained(base_path, **kwargs)
    refuse_quantized_base(config, base_label)
    if spec.rope_scaling is not None:
        apply_rope_scaling(config, spec.rope_scaling)
    dtype = export_dtype(plan.spec.dtype, config)
    tokenizer = AutoTokenizer.from_pretrained(adapter_path or base_path, **kwargs)
    auto_class = _auto_class(adapter_path)
    if auto_class is AutoModelForSequenceClassification:
        config.num_labels = 1
    return SourceModel(
        None, tokenizer, dtype, base_path, adapter_path, method, auto_class, config,
        spec.revision, spec.trust_remote_code,
    )  # fmt: skip


def load_model(source: SourceModel, label: str) -> SourceModel:
    """Load the base (unquantized, in the export dtype) with its adapter applied into ``source.model``.

    Raises:
        ValueError: the model loaded quantized.
    """
    kwargs: dict[str, Any] = {"revision": source.revision, "trust_remote_code": source.trust_remote_code}
    config = source.config
    # Stored dtype first: the weights stay an untouched memory map until each is read privately.
    model = source.auto_class.from_pretrained(
        source.base_path, config=config, dtype=export_dtype("auto", config), **kwargs
    )
    load_private_weights(model, checkpoint_files(source.base_path, revision=source.revision), source.dtype)
    if is_quantized(model):  # belt and braces: a quantizer slipped in through remote code
        raise ValueError(f"spec.model: {label} loaded quantized; merging needs the unquantized base")
    resize_embeddings_to_tokenizer(model, source.tokenizer)
    if source.adapter_path is not None:
        model = PeftModel.from_pretrained(model, source.adapter_path)
    model.eval()
    source.model = model
    log.info(
        "loaded %s (%s)%s",
        label,
        source.dtype,
        f" with {source.method} adapter" if source.adapter_path else "",
    )
    return source


def load_source(plan: ExportPlan) -> SourceModel:
    """:func:`resolve_source` and :func:`load_model`: the base with its adapter applied, in memory."""
    return load_model(resolve_source(plan), plan.model.source)


def merge(source: SourceModel) -> PreTrainedModel:
    """Fold the adapter into the base weights in place and return the plain model.

    No ``safe_merge``: its clone of every weight costs memory, and the logits check after the
    export catches a NaN or inf anywhere (it never compares as within tolerance).
    """
    if not isinstance(source.model, PeftModel):
        return source.model
    merged = source.model.merge_and_unload()
    log.info("merged the %s adapter into the base (%s)", source.method, source.dtype)
    return merged
