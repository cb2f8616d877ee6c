"""LLaMA Pro block expansion: insert copies of decoder layers whose output projections are zero.

A copied layer with zero ``o_proj`` and ``down_proj`` adds nothing to the residual stream, so the
expanded model computes exactly what the original did; training only the copies then adds
capacity without touching (or forgetting) what the original layers know (Wu et al., 2024,
LLaMA-Factory's ``scripts/llama_pro.py`` done at load time).
"""

from __future__ import annotations

import copy
import logging

import torch
from transformers import PreTrainedModel

log = logging.getLogger(__name__)

# Linear layers that write a block's result into the residual stream (attention out, MLP out).
OUTPUT_PROJECTIONS = frozenset({"o_proj", "down_proj"})


def llama_pro_layer_ids(num_layers: int, blocks: int) -> list[int]:
    """Indices of the new blocks in the expanded model: one after every ``num_layers // blocks`` layers.

    Raises:
        ValueError: ``blocks`` does not divide ``num_layers``.
    """
    if blocks < 1 or num_layers % blocks:
        raise ValueError(f"model.llamaProBlocks: {blocks} must divide the model's {num_layers} layers")
    stride = num_layers // blocks
    return [(k + 1) * (stride + 1) - 1 for k in range(blocks)]


def _decoder_layers(model: PreTrainedModel) -> tuple[torch.nn.Module, str, torch.nn.ModuleList]:
    """(parent module, attribute name, layers) of the ModuleList holding the decoder layers."""
    num_layers = model.config.get_text_config().num_hidden_layers
    for qualified, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == num_layers:
            parent_name, _, attribute = qualified.rpartition(".")
            return model.get_submodule(parent_name), attribute, module
    raise ValueError("model.llamaProBlocks: cannot find the model's decoder layers")


def _zero_output_projections(layer: torch.nn.Module) -> None:
    zeroed = 0
    for name, module in layer.named_modules():
        if name.rsplit(".", 1)[-1] in OUTPUT_PROJECTIONS and isinstance(module, torch.nn.Linear):
            with torch.no_grad():
                module.weight.zero_()
                if module.bias is not None:
                    module.bias.zero_()
            zeroed += 1
    if zeroed != len(OUTPUT_PROJECTIONS):
        raise ValueError(f"model.llamaProBlocks: {type(layer).__name__} has no o_proj/down_proj to zero")


def expand_llama_pro(model: PreTrainedModel, blocks: int) -> list[int]:
    """Insert ``blocks`` zero-output copies of decoder layers, evenly spaced; returns the new layers' indices.

    Updates ``num_hidden_layers``, per-layer ``layer_types`` and each attention's ``layer_idx``
    (the KV cache is indexed by it).
    """
    config = model.config.get_text_config()
    num_layers = config.num_hidden_layers
    new_ids = llama_pro_layer_ids(num_layers, blocks)
    parent, attribute, layers = _decoder_layers(model)
    stride = num_layers // blocks
    expanded: list[torch.nn.Module] = []
    layer_types = list(config.layer_types) if getattr(config, "layer_types", None) else None
    new_types: list[str] = []
    for i, layer in enumerate(layers):
        expanded.append(layer)
        new_types += [layer_types[i]] if layer_types else []
        if (i + 1) % stride == 0:
            twin = copy.deepcopy(layer)
            _zero_output_projections(twin)
            expanded.append(twin)
            new_types += [layer_types[i]] if layer_types else []
    for index, layer in enumerate(expanded):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):  # attention modules and some decoder layers carry it
                module.layer_idx = index
    setattr(parent, attribute, torch.nn.ModuleList(expanded))
    config.num_hidden_layers = len(expanded)
    if layer_types:
        config.layer_types = new_types
    log.info("LLaMA Pro: %d → %d layers, new blocks at %s", num_layers, len(expanded), new_ids)
    return new_ids
