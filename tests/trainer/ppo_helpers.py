"""Reward models built by hand for the PPO tests: their score is a fixed, known function."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import get_peft_model
from transformers import AutoModelForSequenceClassification

from finetune_api.method import LoraSpec
from finetune_trainer.model.adapters import lora_config


def reward_direction(hidden_size: int, *, seed: int = 7) -> torch.Tensor:
    """A fixed random unit direction in hidden space: the score is the last hidden state's projection on it."""
    direction = torch.randn(hidden_size, generator=torch.Generator().manual_seed(seed))
    return direction / direction.norm()


def build_reward_adapter(base: Path, out: Path, *, scale: float = 4.0, perturb: bool = False) -> Path:
    """What an rm job saves (a sequence-classification LoRA adapter with its score head), with a known head.

    Unperturbed, the LoRA matrices keep their init (B = 0) and the reward is ``scale * direction · h_last``
    of the base model; ``perturb`` gives every LoRA matrix random values (the adapter then matters).
    """
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    peft_model = get_peft_model(model, lora_config(model, LoraSpec(rank=4), vocab_resized=False))
    with torch.no_grad():
        if perturb:
            generator = torch.Generator().manual_seed(3)
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
        score = peft_model.base_model.model.score
        score.modules_to_save["default"].weight.copy_(
            scale * reward_direction(model.config.hidden_size)[None]
        )
    peft_model.save_pretrained(str(out))
    return out


def build_full_reward_model(base: Path, out: Path, *, scale: float = 4.0) -> Path:
    """A full sequence-classification reward model (base weights + the known score head) with its tokenizer."""
    from transformers import AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    with torch.no_grad():
        model.score.weight.copy_(scale * reward_direction(model.config.hidden_size)[None])
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(base).save_pretrained(str(out))
    return out
