"""Tuning types: decide which parameters train (LoRA / QLoRA, freeze, full) and report how many.

Invariant after :func:`prepare_model_for_training`: exactly the parameters the method names have
``requires_grad``, and they are fp32 (master weights; the Trainer's autocast computes in bf16/fp16).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model, prepare_model_for_kbit_training
from transformers import PreTrainedModel

from finetune_api.method import Finetuning, FreezeSpec, LoraSpec, MethodSpec

from .fast_linear import use_fast_linear
from .llama_pro import expand_llama_pro
from .loader import is_quantized

log = logging.getLogger(__name__)

# Output heads are never adapted or projected: lm_head (causal LM), score (sequence classification).
OUTPUT_HEADS = frozenset({"lm_head", "score", "classifier", "v_head"})
PISSA_INIT = "pissa_niter_16"  # fast randomised SVD; exact SVD is minutes on a 7B model for no gain


def is_sequence_classifier(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a ``*ForSequenceClassification`` (reward model) rather than a causal LM."""
    return type(model).__name__.endswith("ForSequenceClassification")


def find_linear_module_names(model: torch.nn.Module) -> list[str]:
    """Sorted short names (e.g. ``q_proj``) of every linear layer except the output head.

    bitsandbytes' ``Linear4bit`` / ``Linear8bitLt`` subclass ``nn.Linear``, so QLoRA finds the same set.
    """
    names = {
        qualified.rsplit(".", 1)[-1]
        for qualified, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }
    return sorted(names - OUTPUT_HEADS)


def module_short_name(model: torch.nn.Module, target: torch.nn.Module) -> str:
    """The last component of ``target``'s qualified name inside ``model``."""
    for qualified, module in model.named_modules():
        if module is target:
            return qualified.rsplit(".", 1)[-1]
    raise ValueError(f"{type(target).__name__} is not part of the model")


def lora_target_modules(model: torch.nn.Module, lora: LoraSpec) -> list[str]:
    """``method.lora.targetModules`` resolved: ``[all]`` → every linear but the head; names are checked.

    Raises:
        ValueError: a named module does not exist in the model.
    """
    linear = find_linear_module_names(model)
    if lora.target_modules == ["all"]:
        return linear
    present = {qualified.rsplit(".", 1)[-1] for qualified, _ in model.named_modules()}
    missing = [name for name in lora.target_modules if name not in present]
    if missing:
        raise ValueError(
            f"method.lora.targetModules: {', '.join(missing)} not found in the model; linear modules: {', '.join(linear)}"
        )
    return list(lora.target_modules)


def lora_config(model: PreTrainedModel, lora: LoraSpec, *, vocab_resized: bool) -> LoraConfig:
    """The PEFT config of ``method.lora``; a resized vocabulary makes both embeddings fully trainable.

    Raises:
        ValueError: PiSSA on a quantized model, or unknown target modules.
    """
    if lora.pissa_init and is_quantized(model):
        raise ValueError(
            "method.lora.pissaInit: PiSSA needs the unquantized base model; drop model.quantization"
        )
    modules_to_save = list(lora.additional_target)
    if vocab_resized:
        for embedding in (model.get_input_embeddings(), model.get_output_embeddings()):
            name = module_short_name(model, embedding) if embedding is not None else None
            if name is not None and name not in modules_to_save:
                modules_to_save.append(name)
    return LoraConfig(
        task_type=TaskType.SEQ_CLS if is_sequence_classifier(model) else TaskType.CAUSAL_LM,
        r=lora.rank,
        lora_alpha=lora.alpha if lora.alpha is not None else 2 * lora.rank,
        lora_dropout=lora.dropout,
        target_modules=lora_target_modules(model, lora),
        use_dora=lora.use_dora,
        use_rslora=lora.use_rslora,
        init_lora_weights=PISSA_INIT if lora.pissa_init else True,
        modules_to_save=modules_to_save or None,
    )


def apply_lora(
    model: PreTrainedModel, lora: LoraSpec, *, adapter: str | None = None, vocab_resized: bool = False
) -> PeftModel:
    """Wrap ``model`` with a new LoRA adapter, or continue ``adapter`` (its own config applies).

    A quantized base is prepared for k-bit training first (QLoRA): norms upcast, base frozen.
    """
    if is_quantized(model):
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=model.is_activation_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    if adapter is not None:
        log.info("continuing adapter %s (its saved LoRA config applies, method.lora is ignored)", adapter)
        return PeftModel.from_pretrained(model, adapter, is_trainable=True)
    return get_peft_model(model, lora_config(model, lora, vocab_resized=vocab_resized))


def decoder_layers_prefix(model: torch.nn.Module, num_layers: int) -> str:
    """Qualified name of the ``ModuleList`` holding the ``num_layers`` decoder layers (e.g. ``model.layers``)."""
    for qualified, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == num_layers:
            return qualified
    raise ValueError("method.freeze: cannot find the model's decoder layers")


def freeze_trainable_names(
    model: PreTrainedModel, freeze: FreezeSpec, *, layer_ids: Sequence[int] | None = None
) -> set[str]:
    """Names of the parameters ``method.freeze`` trains: chosen modules of the last (or first) N layers + extras.

    ``layer_ids`` overrides ``trainableLayers`` (LLaMA Pro trains exactly its new blocks).

    Raises:
        ValueError: more layers than the model has, or module names matching nothing.
    """
    num_layers = model.config.get_text_config().num_hidden_layers
    count = abs(freeze.trainable_layers)
    if layer_ids is not None:
        ids: Sequence[int] = layer_ids
    elif count > num_layers:
        raise ValueError(
            f"method.freeze.trainableLayers: {freeze.trainable_layers} but the model has {num_layers} layers"
        )
    else:
        ids = range(num_layers - count, num_layers) if freeze.trainable_layers > 0 else range(count)
    prefix = decoder_layers_prefix(model, num_layers) + "."
    everything = freeze.trainable_modules == ["all"]
    chosen: set[str] = set()
    matched: set[str] = set()
    for name, _ in model.named_parameters():
        if name.startswith(prefix):
            index, _, rest = name[len(prefix) :].partition(".")
            hits = {m for m in freeze.trainable_modules if m in rest.split(".")}
            if int(index) in ids and (everything or hits):
                chosen.add(name)
                matched |= hits
        else:
            hits = {m for m in freeze.extra_modules if m in name.split(".")}
            if hits:
                chosen.add(name)
                matched |= hits
    wanted = set(freeze.extra_modules) | (set() if everything else set(freeze.trainable_modules))
    if wanted - matched:
        raise ValueError(f"method.freeze: no parameters match {', '.join(sorted(wanted - matched))}")
    return chosen


def apply_freeze(
    model: PreTrainedModel, freeze: FreezeSpec, *, layer_ids: Sequence[int] | None = None
) -> PreTrainedModel:
    """Train only what ``method.freeze`` names (in ``layer_ids`` when given); the rest gets ``requires_grad=False``."""
    trainable = freeze_trainable_names(model, freeze, layer_ids=layer_ids)
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    return model


def upcast_trainable_parameters(model: torch.nn.Module) -> None:
    """Keep trainable weights in fp32 so small updates are not rounded away in bf16/fp16."""
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; 4-bit weights count as unpacked values."""
    if isinstance(model, PeftModel):
        return model.get_nb_trainable_parameters()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def prepare_model_for_training(
    model: PreTrainedModel,
    method: MethodSpec,
    *,
    adapter: str | None = None,
    vocab_resized: bool = False,
    llama_pro_blocks: int | None = None,
    fast_linear: bool = True,
) -> PreTrainedModel | PeftModel:
    """Apply ``method.finetuning`` to a loaded model and return the model to train.

    ``adapter`` and ``vocab_resized`` come from :class:`~finetune_trainer.model.loader.LoadedModel`,
    ``llama_pro_blocks`` from ``model.llamaProBlocks``.
    lora → a PeftModel (QLoRA when the base is quantized); freeze → the same model with only the
    chosen parameters trainable (with LLaMA Pro: in the new blocks only); full → every parameter trainable.
    ``fast_linear`` gives the linear layers the exact faster forms of
    :mod:`~finetune_trainer.model.fast_linear` (fused LoRA, oneDNN matmuls on CPU); False keeps stock modules.

    Raises:
        ValueError: a combination the method cannot honour, naming the spec field.
    """
    if method.finetuning != Finetuning.LORA and is_quantized(model):
        raise ValueError(
            f"model.quantization: needs method.finetuning: lora (QLoRA), not {method.finetuning.value}"
        )
    if method.finetuning == Finetuning.LORA:
        prepared: PreTrainedModel | PeftModel = apply_lora(
            model, method.lora_or_default(), adapter=adapter, vocab_resized=vocab_resized
        )
    elif method.finetuning == Finetuning.FREEZE:
        new_blocks = expand_llama_pro(model, llama_pro_blocks) if llama_pro_blocks else None
        prepared = apply_freeze(model, method.freeze_or_default(), layer_ids=new_blocks)
        if vocab_resized and not model.get_input_embeddings().weight.requires_grad:
            log.warning(
                "new tokens were added but embed_tokens is frozen: add it to method.freeze.extraModules"
            )
    else:
        model.requires_grad_(True)
        prepared = model
    upcast_trainable_parameters(prepared)
    if fast_linear:
        fused, onednn = use_fast_linear(prepared)
        log.info(
            "fast linear layers: %d LoRA layers fused, %d layers on oneDNN for fp32 CPU calls", fused, onednn
        )
    trainable, total = count_parameters(prepared)
    log.info(
        "%s tuning: %d of %d parameters trainable (%.4f%%)",
        method.finetuning.value,
        trainable,
        total,
        100.0 * trainable / max(total, 1),
    )
    return prepared
