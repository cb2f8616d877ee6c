"""Quantized exports: bitsandbytes 4/8-bit serialization (CPU or GPU) and GPTQ (GPU only).

Both start from the merged model written unquantized to a staging folder, so the merge itself
never touches quantized weights.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, GPTQConfig, PreTrainedTokenizerBase

from finetune_api.export import ExportQuantizationSpec

from ..model.loader import cuda_available
from .plan import ExportPlan

log = logging.getLogger(__name__)
GPTQ_PACKAGES = ("optimum", "gptqmodel")  # transformers' GPTQ quantizer needs both


def check_quantization(quant: ExportQuantizationSpec | None, *, cuda: bool) -> None:
    """Refuse what cannot run here, before any weight is loaded (a quantized .bin export is the API's
    rule: finetune_api.rules.quantized_export_is_safetensors).

    Raises:
        ValueError: GPTQ without a CUDA GPU or without its packages.
    """
    if quant is None:
        return
    if quant.method != "gptq":
        return
    if not cuda:
        raise ValueError(
            f"spec.quantization.method: gptq ({quant.bits}-bit) needs a CUDA GPU to calibrate, and this export "
            "runs on CPU; give it a GPU (spec.resources.gpusPerNode: 1) or use method: bitsandbytes, which "
            "quantizes on CPU"
        )
    missing = [name for name in GPTQ_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(
            f"spec.quantization.method: gptq needs {', '.join(missing)} in the trainer image; use method: bitsandbytes"
        )


def _placement() -> dict[str, Any]:
    return {"": 0} if cuda_available() else {"": "cpu"}


def quantize_bitsandbytes(
    merged_dir: Path, out_dir: Path, *, bits: int, dtype: torch.dtype, max_shard_size: int
) -> None:
    """Load the merged model through bitsandbytes (quantizing tensor by tensor) and save it serialized.

    4-bit uses NF4 with double quantization and computes in ``dtype``; 8-bit is LLM.int8().
    """
    if bits == 8:
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    model = AutoModelForCausalLM.from_pretrained(
        merged_dir, quantization_config=config, dtype=dtype, device_map=_placement()
    )
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    log.info("quantized with bitsandbytes %d-bit", bits)


def calibration_texts(plan: ExportPlan, quant: ExportQuantizationSpec, work_dir: Path) -> list[str]:
    """Up to ``samples`` texts from the calibration Dataset: each row's string fields joined.

    Raises:
        ValueError: the Dataset is not among the documents, or yields no text.
    """
    from ..data import dataset_config
    from ..data.loader import load_rows

    name = quant.calibration_dataset
    dataset = plan.datasets.get(name or "")
    if dataset is None:
        raise ValueError(f"spec.quantization.calibrationDataset: Dataset {name!r} is not among the documents")
    rows = load_rows(dataset_config(dataset.spec, name=dataset.metadata.name), cache_dir=work_dir / "data")
    texts: list[str] = []
    for row in rows:
        text = "\n".join(str(v) for v in row.values() if isinstance(v, str) and v)
        if text:
            texts.append(text)
        if len(texts) >= quant.samples:
            break
    if not texts:
        raise ValueError(
            f"spec.quantization.calibrationDataset: Dataset {name!r} has no text to calibrate on"
        )
    return texts


def quantize_gptq(
    merged_dir: Path,
    out_dir: Path,
    *,
    quant: ExportQuantizationSpec,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    max_shard_size: int,
) -> None:
    """GPTQ-quantize the merged model on the GPU with the calibration texts and save it."""
    config = GPTQConfig(bits=quant.bits, dataset=texts, tokenizer=tokenizer, model_seqlen=quant.max_length)
    model = AutoModelForCausalLM.from_pretrained(merged_dir, quantization_config=config, device_map={"": 0})
    model.save_pretrained(out_dir, max_shard_size=max_shard_size)
    log.info("quantized with GPTQ %d-bit on %d calibration samples", quant.bits, len(texts))
