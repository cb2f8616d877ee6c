"""Rules across fields that the CRD's CEL rules do not express, beside the models they read.

They read the parsed spec, so the models' defaults apply (the CRD schema has none for the
``training``, ``resources`` and ``distributed`` blocks, which CEL would have to repeat), and Python's
own regular expressions (GRPO's regex rewards are matched with :mod:`re`, not CEL's RE2).

One entry point per kind, run everywhere a spec is accepted:
- ``finetune validate`` and ``finetune run`` (through :func:`finetune_api.validation.validate_manifest`);
- the operator, before it creates anything (a FineTuneJob or Export is Failed with ``InvalidSpec``);
- the trainer at start (the pod validates its documents the same way).

Each rule is one function returning ``FieldError``s at API-server field paths; add a rule by writing
one and listing it in ``JOB_RULES`` or ``EXPORT_RULES``, with an invalid example of it in
examples/invalid/ (tests/unit/test_validation.py and the e2e tests refuse each with its message).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .errors import FieldError
from .export import ExportSpec
from .finetunejob import FineTuneJobSpec
from .method import Finetuning, Stage
from .tiny import parse_tiny_uri
from .uris import Scheme, scheme_of

ZERO3: tuple[str, ...] = ("zero3", "zero3_offload")
"""DeepSpeed stages that shard the parameters themselves."""

PPO_OPTIMIZER = "adamw_torch"
"""The one optimizer stage ppo runs (``torch.optim.AdamW`` over the policy adapter and value head)."""


def _tiny_source(uri: str | None, field: str) -> list[FieldError]:
    if uri is None or scheme_of(uri) is not Scheme.TINY:
        return []
    try:
        parse_tiny_uri(uri, field=field)
    except ValueError as exc:
        path, _, message = str(exc).partition(": ")
        return [FieldError(path, message)]
    return []


def tiny_source_parses(spec: FineTuneJobSpec) -> list[FieldError]:
    """A ``tiny://`` model's options name a shape the trainer can build."""
    return _tiny_source(spec.model.source, "spec.model.source")


def tiny_export_source_parses(spec: ExportSpec) -> list[FieldError]:
    return _tiny_source(spec.model, "spec.model")


def adapter_needs_lora(spec: FineTuneJobSpec) -> list[FieldError]:
    if spec.model.adapter is not None and spec.method.finetuning != Finetuning.LORA:
        return [
            FieldError(
                "spec.model.adapter",
                f"continuing an adapter needs method.finetuning: lora, not {spec.method.finetuning.value}",
            )
        ]
    return []


def ppo_limits(spec: FineTuneJobSpec) -> list[FieldError]:
    """Stage ppo shares one base model between policy, reference and reward in one process."""
    if spec.method.stage != Stage.PPO:
        return []
    errors = []
    if spec.method.finetuning != Finetuning.LORA:
        errors.append(
            FieldError(
                "spec.method.finetuning",
                "stage ppo shares one base model between policy, reference and reward, "
                f"which needs lora, not {spec.method.finetuning.value}",
            )
        )
    elif spec.method.lora_or_default().loraplus_lr_ratio is not None:
        errors.append(FieldError("spec.method.lora.loraplusLrRatio", "not supported by stage ppo"))
    if spec.distributed.deepspeed is not None:
        errors.append(
            FieldError("spec.distributed.deepspeed", "stage ppo runs in one process on one device; drop it")
        )
    if spec.resources.nodes > 1 or spec.resources.gpus_per_node > 1:
        errors.append(
            FieldError(
                "spec.resources",
                "stage ppo runs in one process on one device: use nodes 1 and at most one GPU per node",
            )
        )
    if spec.training.optimizer != PPO_OPTIMIZER:
        errors.append(
            FieldError(
                "spec.training.optimizer",
                f"stage ppo trains with {PPO_OPTIMIZER} only, not {spec.training.optimizer}",
            )
        )
    return errors


def grpo_whole_groups(spec: FineTuneJobSpec) -> list[FieldError]:
    grpo = spec.method.grpo
    if grpo is None:
        return []
    t = spec.training
    batch = t.per_device_batch_size * t.gradient_accumulation_steps
    if batch % grpo.num_generations:
        return [
            FieldError(
                "spec.training.perDeviceBatchSize",
                f"times gradientAccumulationSteps ({batch}) must be a multiple of "
                f"spec.method.grpo.numGenerations ({grpo.num_generations}): each batch holds whole groups",
            )
        ]
    return []


def grpo_regexes_compile(spec: FineTuneJobSpec) -> list[FieldError]:
    errors = []
    for i, reward in enumerate(spec.method.grpo.rewards if spec.method.grpo else []):
        if reward.regex is None:
            continue
        try:
            re.compile(reward.regex)
        except re.error as exc:
            errors.append(
                FieldError(
                    f"spec.method.grpo.rewards[{i}].regex", f"{reward.regex!r} does not compile: {exc}"
                )
            )
    return errors


def evaluation_not_sharded(spec: FineTuneJobSpec) -> list[FieldError]:
    if spec.evaluation is not None and spec.distributed.deepspeed in ZERO3:
        return [
            FieldError(
                "spec.evaluation",
                "runs on one process and cannot use a ZeRO-3 sharded model; drop it or use zero2",
            )
        ]
    return []


def quantized_export_is_safetensors(spec: ExportSpec) -> list[FieldError]:
    if spec.quantization is not None and spec.format != "safetensors":
        return [FieldError("spec.format", "quantized exports are written as safetensors; drop format: bin")]
    return []


JOB_RULES: tuple[Callable[[FineTuneJobSpec], list[FieldError]], ...] = (
    tiny_source_parses,
    adapter_needs_lora,
    ppo_limits,
    grpo_whole_groups,
    grpo_regexes_compile,
    evaluation_not_sharded,
)
EXPORT_RULES: tuple[Callable[[ExportSpec], list[FieldError]], ...] = (
    tiny_export_source_parses,
    quantized_export_is_safetensors,
)


def job_rule_errors(spec: FineTuneJobSpec) -> list[FieldError]:
    """Every cross-field rule a FineTuneJob spec breaks."""
    return [error for rule in JOB_RULES for error in rule(spec)]


def export_rule_errors(spec: ExportSpec) -> list[FieldError]:
    """Every cross-field rule an Export spec breaks."""
    return [error for rule in EXPORT_RULES for error in rule(spec)]
