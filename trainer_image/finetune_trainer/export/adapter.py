"""A LoRA/DoRA adapter as plain tensors, and PEFT's merge arithmetic applied to one weight at a time.

The streaming merge (:mod:`.stream`) never builds the model: it reads each base weight, asks
:meth:`LoraAdapter.merged` for its exported value and writes it. The arithmetic is PEFT's own
``merge(safe_merge=False)`` for ``lora.Linear`` and ``lora.Embedding`` (plain LoRA and DoRA, rsLoRA
scaling, rank/alpha patterns, fan_in_fan_out), operation for operation, so the result is bitwise
the same as ``merge_and_unload`` (tests/trainer/test_export_stream.py compares them).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft.utils.other import get_pattern_key
from safetensors.torch import load_file

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
# Adapter-config keys of LoRA variants whose merge this module does not reproduce: any of them set
# (not None / False / empty) sends the export down the model-based merge.
UNSUPPORTED_OPTIONS = (
    "layer_replication", "lora_bias", "target_parameters", "trainable_token_indices", "use_bdlora",
    "alora_invocation_tokens", "arrow_config", "velora_config", "monteclora_config", "mica",
    "kasa_config", "use_qalora", "megatron_config", "modules_to_tie",
)  # fmt: skip
# init_lora_weights values that leave the base weights as they were (PiSSA, OLoRA, CorDA, LoftQ...
# rewrite them, so the adapter only makes sense on top of the rewritten base).
PLAIN_INITS = (True, False, "gaussian")


@dataclass
class ModuleLora:
    """One adapted module's tensors, as PEFT saved them."""

    a: torch.Tensor | None = None
    b: torch.Tensor | None = None
    magnitude: torch.Tensor | None = None
    """DoRA's learned magnitude vector (absent for plain LoRA)."""
    embedding: bool = False
    """``lora_embedding_A/B`` of an ``nn.Embedding`` (rather than ``lora_A/B.weight`` of a linear layer)."""


@dataclass
class LoraAdapter:
    """An adapter folder read into memory (adapters are small: a rank-r pair per module)."""

    config: dict[str, Any]
    modules: dict[str, ModuleLora] = field(default_factory=dict)
    """By module name in the base model (``model.layers.0.self_attn.q_proj``)."""
    replacements: dict[str, torch.Tensor] = field(default_factory=dict)
    """Whole tensors the adapter carries (modules_to_save, saved embedding layers), by checkpoint name."""

    @property
    def use_dora(self) -> bool:
        return bool(self.config.get("use_dora"))

    def scaling(self, module: str) -> float:
        """``alpha / r`` (rsLoRA: ``alpha / sqrt(r)``), with the config's rank and alpha patterns."""
        config = self.config
        rank_pattern, alpha_pattern = config.get("rank_pattern") or {}, config.get("alpha_pattern") or {}
        r = rank_pattern.get(get_pattern_key(rank_pattern.keys(), module), config["r"])
        alpha = alpha_pattern.get(get_pattern_key(alpha_pattern.keys(), module), config["lora_alpha"])
        return float(alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r)

    def touches(self, name: str) -> bool:
        """Whether the checkpoint tensor ``name`` comes out of the merge different from the base."""
        return name in self.replacements or name.removesuffix(".weight") in self.modules

    def merged(self, name: str, base: torch.Tensor) -> torch.Tensor:
        """The exported value of checkpoint tensor ``name``, given its base value already in the export dtype."""
        weight = self.replacements[name].to(base.dtype) if name in self.replacements else base
        lora = self.modules.get(name.removesuffix(".weight")) if name.endswith(".weight") else None
        if lora is None:
            return weight
        scaling = self.scaling(name.removesuffix(".weight"))
        if lora.embedding:
            return _merge_embedding(weight, lora, scaling)
        return _merge_linear(weight, lora, scaling, fan_in_fan_out=bool(self.config.get("fan_in_fan_out")))


def _delta(b: torch.Tensor, a: torch.Tensor, scaling: float, *, transpose: bool) -> torch.Tensor:
    # PEFT's get_delta_weight on fp32 adapter weights (read_adapter upcasts them, as PEFT's loading does).
    product = b @ a
    return (product.T if transpose else product) * scaling


def _merge_linear(
    weight: torch.Tensor, lora: ModuleLora, scaling: float, *, fan_in_fan_out: bool
) -> torch.Tensor:
    assert lora.a is not None and lora.b is not None
    delta = _delta(lora.b, lora.a, scaling, transpose=fan_in_fan_out)
    if lora.magnitude is None:
        weight += delta  # in place, as PEFT: computed in the promoted dtype, stored in the weight's
        return weight
    # DoRA (DoraLinearVariant.merge_unsafe): the norm of the unmerged weight plus the delta, per output row.
    oriented = weight.T if fan_in_fan_out else weight
    summed = oriented + (delta.T if fan_in_fan_out else delta)
    norm = torch.linalg.norm(summed, dim=1).to(summed.dtype).detach()
    factor = (lora.magnitude / norm).view(-1, 1)
    factor = factor.T if fan_in_fan_out else factor
    return (factor * (weight + delta)).to(weight.dtype)


def _merge_embedding(weight: torch.Tensor, lora: ModuleLora, scaling: float) -> torch.Tensor:
    assert lora.a is not None and lora.b is not None
    delta = _delta(lora.b, lora.a, scaling, transpose=True)
    if lora.magnitude is None:
        weight += delta.to(weight.dtype)  # lora.Embedding rounds the delta first
        return weight
    # DoraEmbeddingVariant.merge_unsafe: the norm runs over the embedding's columns.
    norm = torch.linalg.norm(weight.T + delta.T, dim=1).to((weight.T + delta.T).dtype).detach()
    factor = (lora.magnitude / norm).view(1, -1)
    return (factor * (weight + delta)).to(weight.dtype)


def unsupported_reason(config: dict[str, Any]) -> str | None:
    """Why this adapter config needs the model-based merge, or ``None`` when the streaming merge applies."""
    if config.get("peft_type") != "LORA":
        return f"peft_type {config.get('peft_type')}"
    if config.get("task_type") not in (None, "CAUSAL_LM"):
        return f"task_type {config.get('task_type')} (the head is not in the base checkpoint)"
    if config.get("bias", "none") != "none":
        return f"bias {config.get('bias')} (trained biases)"
    if config.get("init_lora_weights", True) not in PLAIN_INITS:
        return f"init_lora_weights {config.get('init_lora_weights')} (rewrites the base weights)"
    for key in UNSUPPORTED_OPTIONS:
        if config.get(key) not in (None, False, [], {}):
            return f"{key} is set"
    return None


def read_adapter(folder: str | Path) -> LoraAdapter:
    """Read ``adapter_config.json`` and ``adapter_model.safetensors`` from ``folder``.

    Raises:
        ValueError: a tensor this module does not know how to merge (the caller falls back).
    """
    path = Path(folder)
    config = json.loads((path / ADAPTER_CONFIG).read_text())
    adapter = LoraAdapter(config)
    for key, tensor in load_file(str(path / ADAPTER_WEIGHTS)).items():
        _add_tensor(adapter, key.removeprefix(PEFT_PREFIX), tensor)
    for lora in adapter.modules.values():
        # PEFT creates adapter layers in fp32 (autocast_adapter_dtype) and copies the saved values in.
        lora.a, lora.b, lora.magnitude = (
            None if t is None else t.float() for t in (lora.a, lora.b, lora.magnitude)
        )
    for name, lora in adapter.modules.items():
        if lora.a is None or lora.b is None or lora.a.dim() != 2 or lora.b.dim() != 2:
            raise ValueError(f"{name}: not a pair of LoRA matrices (a convolution, or a partial adapter)")
        if (lora.magnitude is not None) != adapter.use_dora:
            raise ValueError(f"{name}: DoRA magnitude and use_dora disagree")
    return adapter


def _add_tensor(adapter: LoraAdapter, key: str, tensor: torch.Tensor) -> None:
    for suffix, attr, embedding in (
        (".lora_A.weight", "a", False), (".lora_B.weight", "b", False),
        (".lora_embedding_A", "a", True), (".lora_embedding_B", "b", True),
        (".lora_magnitude_vector", "magnitude", None),
    ):  # fmt: skip
        if key.endswith(suffix):
            lora = adapter.modules.setdefault(key.removesuffix(suffix), ModuleLora())
            setattr(lora, attr, tensor)
            if embedding is not None:
                lora.embedding = embedding
            return
    if ".lora_" in key:
        raise ValueError(f"adapter tensor {key}: not a LoRA/DoRA weight this merge knows")
    # save_embedding_layers stores a whole base layer as <module>.base_layer.weight; PEFT loads it
    # over the base's own weight. modules_to_save store <module>.weight, which replaces it too.
    adapter.replacements[key.replace(".base_layer.", ".")] = tensor
