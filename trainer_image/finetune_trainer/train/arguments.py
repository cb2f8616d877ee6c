"""The spec's training block → transformers' TrainingArguments, and DeepSpeed configs from `distributed`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments

from finetune_api.finetunejob import DistributedSpec, FineTuneJobSpec, Precision

# ZeRO stage and offload for each `distributed.deepspeed` value.
_ZERO: dict[str, tuple[int, bool]] = {
    "zero0": (0, False),
    "zero2": (2, False),
    "zero3": (3, False),
    "zero2_offload": (2, True),
    "zero3_offload": (3, True),
}


def deepspeed_config(distributed: DistributedSpec, *, bf16: bool, fp16: bool) -> dict[str, Any] | None:
    """The DeepSpeed config for ``distributed.deepspeed`` ("auto" values are filled in by the Trainer)."""
    if distributed.deepspeed is None:
        return None
    stage, offload = _ZERO[distributed.deepspeed]
    zero: dict[str, Any] = {"stage": stage}
    if stage >= 2:
        zero |= {
            "overlap_comm": False,
            "contiguous_gradients": True,
            "reduce_bucket_size": "auto",
            "allgather_bucket_size": 5e8,
        }
    if stage == 3:
        zero |= {
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_gather_16bit_weights_on_model_save": True,
        }
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": fp16, "loss_scale": 0, "initial_scale_power": 16},
        "zero_optimization": zero,
    }


def mixed_precision(precision: Precision, *, cuda: bool) -> tuple[bool, bool]:
    """(bf16, fp16) for the Trainer: auto is bf16 where supported, else fp16; always fp32 on CPU."""
    if not cuda or precision == Precision.FP32:
        return False, False
    if precision == Precision.BF16 or (precision == Precision.AUTO and torch.cuda.is_bf16_supported()):
        return True, False
    return False, True


def training_arguments(
    spec: FineTuneJobSpec,
    *,
    output_dir: Path,
    has_eval: bool,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for TrainingArguments (or a TRL config subclass) from ``spec``.

    Returned as a dict so the TRL stages can add their own fields before building their config.
    """
    t = spec.training
    cuda = torch.cuda.is_available()
    bf16, fp16 = mixed_precision(t.precision, cuda=cuda)
    eval_strategy = "steps" if has_eval and t.eval_steps else ("epoch" if has_eval else "no")
    kwargs: dict[str, Any] = {
        "output_dir": str(output_dir),
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps or -1,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler,
        "warmup_steps": t.warmup_ratio,  # a float below 1 is a ratio of the total steps in transformers 5
        "per_device_train_batch_size": t.per_device_batch_size,
        "per_device_eval_batch_size": t.per_device_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "optim": t.optimizer,
        "max_grad_norm": t.max_grad_norm,
        "weight_decay": t.weight_decay,
        "seed": t.seed,
        "data_seed": t.seed,
        "logging_steps": t.logging_steps,
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        # Local copies are only staging for the upload; the bucket keeps saveTotalLimit of them.
        "save_total_limit": None,
        "save_only_model": False,
        "eval_strategy": eval_strategy,
        "eval_steps": t.eval_steps,
        "bf16": bf16,
        "fp16": fp16,
        "use_cpu": not cuda,
        "neftune_noise_alpha": t.neftune_alpha,
        "report_to": [],
        "disable_tqdm": True,  # our own progress bar (ProgressReporter) is in the logs
        "remove_unused_columns": False,
        "include_num_input_tokens_seen": "non_padding",
        "dataloader_num_workers": 0,
        "ddp_find_unused_parameters": False,
        "ddp_backend": None if cuda else "gloo",
        "deepspeed": deepspeed_config(spec.distributed, bf16=bf16, fp16=fp16),
        "log_level": "warning",
    }
    if os.environ.get("WORLD_SIZE", "1") == "1":
        kwargs.pop("ddp_backend")
    kwargs.update(extra or {})
    return kwargs


def build_training_arguments(spec: FineTuneJobSpec, *, output_dir: Path, has_eval: bool) -> TrainingArguments:
    """transformers' TrainingArguments for the pt and sft stages."""
    return TrainingArguments(**training_arguments(spec, output_dir=output_dir, has_eval=has_eval))
