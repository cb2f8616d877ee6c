"""The reference model of the preference stages, and the refusal of preference jobs without their block."""

from __future__ import annotations

import copy
import logging

import torch
from peft import PeftModel

from finetune_api.finetunejob import FineTuneJobSpec
from finetune_api.method import Finetuning, PreferenceSpec

from ..model import load_model_and_tokenizer
from .preference_losses import REFERENCE_FREE

log = logging.getLogger(__name__)


def preference_of(spec: FineTuneJobSpec) -> PreferenceSpec:
    """``method.preference``; a ValueError naming the field when a preference stage has none."""
    if spec.method.preference is None:
        raise ValueError(f"spec.method.preference: stage {spec.method.stage.value} needs a preference block")
    return spec.method.preference


def reference_model_for(spec: FineTuneJobSpec, policy: torch.nn.Module) -> torch.nn.Module | None:
    """The frozen reference of ``policy``, or None where no second model is kept in memory.

    None for ORPO/SimPO (reference-free) and for LoRA (the policy with its adapters disabled);
    ``preference.referenceModel`` when given (4/8-bit when ``model.quantization`` is set, i.e. QLoRA);
    otherwise a frozen copy of the policy, taken before any step.
    """
    pref = preference_of(spec)
    if pref.loss in REFERENCE_FREE:
        return None
    if pref.reference_model is not None:
        quantized = spec.method.finetuning == Finetuning.LORA and spec.model.quantization is not None
        ref_spec = spec.model.model_copy(
            update={
                "source": pref.reference_model,
                "adapter": None,
                "quantization": spec.model.quantization if quantized else None,
            }
        )
        # finetuning=lora only lets the loader accept the quantization of a QLoRA job; nothing is trained.
        loaded = load_model_and_tokenizer(
            ref_spec,
            finetuning=Finetuning.LORA,
            precision=spec.training.precision,
            gradient_checkpointing=False,
        )
        reference: torch.nn.Module = loaded.model
    elif isinstance(policy, PeftModel):
        return None
    else:
        log.info("reference: a frozen copy of the %s-tuned policy", spec.method.finetuning.value)
        reference = copy.deepcopy(policy)
    reference.requires_grad_(False)
    return reference.eval()
