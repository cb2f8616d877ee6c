"""Optimizers that need model-aware parameter groups: LoRA+ and GaLore.

:func:`build_optimizer` returns ``None`` when neither applies: the Trainer then builds its default
``training.optimizer`` itself. Otherwise pass the result as ``Trainer(optimizers=(optimizer, None))``.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import PeftModel
from peft.optimizers import create_loraplus_optimizer

from finetune_api.finetunejob import TrainingSpec
from finetune_api.method import Finetuning, GaloreSpec, MethodSpec

from .adapters import find_linear_module_names
from .loader import cuda_available


def optimizer_class(
    training: TrainingSpec, *, cuda: bool
) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The optimizer class and extra keyword arguments of ``training.optimizer``."""
    name = training.optimizer
    if name in ("adamw_8bit", "paged_adamw_8bit"):
        import bitsandbytes as bnb  # only for the 8-bit optimizers

        return (bnb.optim.PagedAdamW8bit if name == "paged_adamw_8bit" else bnb.optim.AdamW8bit), {}
    if name == "adafactor":
        from transformers.optimization import Adafactor

        # A fixed learning rate from the spec, as HF's Trainer configures it.
        return Adafactor, {"scale_parameter": False, "relative_step": False}
    if name == "sgd":
        return torch.optim.SGD, {}
    return torch.optim.AdamW, {"fused": cuda and name == "adamw_torch_fused"}


def loraplus_optimizer(
    model: PeftModel, *, ratio: float, training: TrainingSpec, cuda: bool = False
) -> torch.optim.Optimizer:
    """LoRA+: the B matrices (and 1-D adapter parameters) learn ``ratio`` times faster than A."""
    cls, extra = optimizer_class(training, cuda=cuda)
    return create_loraplus_optimizer(
        model,
        cls,
        lr=training.learning_rate,
        loraplus_lr_ratio=ratio,
        loraplus_weight_decay=training.weight_decay,
        **extra,
    )


def galore_param_groups(model: torch.nn.Module, galore: GaloreSpec) -> list[dict[str, Any]]:
    """Two groups: the trainable 2-D weights of ``method.galore.target`` linears (projected), and the rest.

    Raises:
        ValueError: no trainable weight matches the targets.
    """
    targets = set(find_linear_module_names(model) if galore.target == ["all"] else galore.target)
    projected = [
        module.weight
        for qualified, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and qualified.rsplit(".", 1)[-1] in targets
        and module.weight.requires_grad
    ]
    if not projected:
        raise ValueError(
            f"method.galore.target: no trainable linear weight matches {', '.join(sorted(targets))}"
        )
    projected_ids = {id(p) for p in projected}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in projected_ids]
    galore_group = {
        "params": projected,
        "rank": galore.rank,
        "update_proj_gap": galore.update_interval,
        "scale": galore.scale,
        "proj_type": galore.proj_type,
    }
    return [{"params": rest}, galore_group] if rest else [galore_group]


def galore_optimizer(
    model: torch.nn.Module, galore: GaloreSpec, training: TrainingSpec
) -> torch.optim.Optimizer:
    """GaLore AdamW (8-bit when ``training.optimizer`` asks for it) over :func:`galore_param_groups`."""
    from galore_torch import GaLoreAdamW, GaLoreAdamW8bit

    groups = galore_param_groups(model, galore)
    if training.optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        return GaLoreAdamW8bit(groups, lr=training.learning_rate, weight_decay=training.weight_decay)
    # galore-torch's AdamW warns that transformers' AdamW it was copied from is deprecated; irrelevant here.
    return GaLoreAdamW(
        groups, lr=training.learning_rate, weight_decay=training.weight_decay, no_deprecation_warning=True
    )


def build_optimizer(
    model: torch.nn.Module, method: MethodSpec, training: TrainingSpec
) -> torch.optim.Optimizer | None:
    """The optimizer ``method`` needs (LoRA+ or GaLore), or ``None`` for the Trainer's default.

    Call it after :func:`prepare_model_for_training`, on the model that will be trained.

    Raises:
        ValueError: GaLore with LoRA (it projects full weight gradients), naming the field.
    """
    if method.galore is not None:  # never with lora (the API's rule)
        return galore_optimizer(model, method.galore, training)
    if method.finetuning == Finetuning.LORA and method.lora is not None and method.lora.loraplus_lr_ratio:
        if not isinstance(model, PeftModel):
            raise ValueError(
                "method.lora.loraplusLrRatio: build the optimizer after prepare_model_for_training"
            )
        return loraplus_optimizer(
            model, ratio=method.lora.loraplus_lr_ratio, training=training, cuda=cuda_available()
        )
    return None
