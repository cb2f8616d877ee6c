"""Logits of a model whose weights stay on disk: each decoder block is read in just before it runs
and dropped right after, so the self-check never holds more than one block (plus the embeddings,
final norm and head, which are read once).

The model is a meta-device skeleton (:func:`.stream.meta_model`), optionally wrapped in a
``PeftModel`` whose adapter weights are real; the forward is the model's own (PEFT's unmerged
LoRA/DoRA included), only the weights arrive lazily through forward hooks.

Fast path: see finetune_trainer.fastpaths (its reference path and the tests that pin the two equal).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import PreTrainedModel

from .adapter import ADAPTER_WEIGHTS
from .weights import parameter_dtype

log = logging.getLogger(__name__)
PEFT_PREFIX = "base_model.model."
# Wrapper segments PEFT adds to a module path; the checkpoint names the wrapped module without them.
PEFT_SEGMENTS = (".base_layer", ".original_module")


@dataclass
class Slot:
    """One place a meta parameter sits: ``module._parameters[attr]`` (tied weights sit in several)."""

    module: torch.nn.Module
    attr: str
    name: str


def checkpoint_key(name: str) -> str:
    """The checkpoint's name for a parameter of the (maybe PEFT-wrapped) model."""
    key = name.removeprefix(PEFT_PREFIX)
    for segment in PEFT_SEGMENTS:
        key = key.replace(segment + ".", ".")
    return key


def _meta_groups(root: torch.nn.Module, prefix: str) -> list[list[Slot]]:
    """Meta parameters under ``root``, grouped by identity (a tied weight is one group of several slots)."""
    groups: dict[int, list[Slot]] = defaultdict(list)
    for module_name, module in root.named_modules(prefix=prefix, remove_duplicate=False):
        for attr, param in module._parameters.items():
            if param is not None and param.is_meta:
                groups[id(param)].append(Slot(module, attr, f"{module_name}.{attr}".lstrip(".")))
    return list(groups.values())


def with_adapter(model: PreTrainedModel, adapter_path: str) -> PeftModel:
    """``model`` (a skeleton) wrapped in its adapter, every adapter weight real (in fp32, as PEFT loads them).

    PEFT moves a new adapter to its base layer's device, which is meta here; the saved tensors are then
    assigned back under the names PEFT saved them with (the adapter name dropped).
    """
    peft_model = PeftModel.from_pretrained(model, adapter_path, low_cpu_mem_usage=True)
    saved = load_file(str(Path(adapter_path) / ADAPTER_WEIGHTS))
    for module_name, module in peft_model.named_modules():
        for attr, param in list(module._parameters.items()):
            if param is None or not param.is_meta or ".lora_" not in f".{module_name}.":
                continue
            key = f"{module_name}.{attr}".replace(".default.", ".").removesuffix(".default")
            key = key.removesuffix(".weight") if key.endswith("lora_magnitude_vector.weight") else key
            if key not in saved:
                raise ValueError(f"adapter weight {key} not in {ADAPTER_WEIGHTS}")
            module._parameters[attr] = torch.nn.Parameter(saved[key].float(), requires_grad=False)
    return peft_model


def _blocks(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The outermost modules of the model's no-split classes (its decoder layers)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    kinds = set(getattr(base, "_no_split_modules", None) or ())
    found: list[tuple[str, torch.nn.Module]] = []
    for name, module in model.named_modules():
        if type(module).__name__ in kinds and not any(name.startswith(f"{outer}.") for outer, _ in found):
            found.append((name, module))
    return found


class LazyWeights:
    """Fills a skeleton's meta parameters from safetensors files: block weights only while the block runs."""

    def __init__(
        self, model: PreTrainedModel | PeftModel, files: dict[str, Path], dtype: torch.dtype
    ) -> None:
        self.model, self.files, self.dtype = model, files, dtype
        self._dtype_model = model.get_base_model() if isinstance(model, PeftModel) else model
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._resident: list[list[Slot]] = []

    def _load(self, groups: list[list[Slot]]) -> None:
        by_file: dict[Path, list[tuple[str, list[Slot]]]] = defaultdict(list)
        for slots in groups:
            key = next((checkpoint_key(s.name) for s in slots if checkpoint_key(s.name) in self.files), None)
            if key is None:
                raise ValueError(f"{checkpoint_key(slots[0].name)}: not in the checkpoint files")
            by_file[self.files[key]].append((key, slots))
        for file, wanted in by_file.items():
            with safe_open(str(file), framework="pt", device="cpu", backend="pread") as handle:
                for key, slots in wanted:
                    tensor = handle.get_tensor(key)
                    tensor = tensor.to(parameter_dtype(self._dtype_model, key, tensor, self.dtype))
                    param = torch.nn.Parameter(tensor, requires_grad=False)
                    for slot in slots:
                        slot.module._parameters[slot.attr] = param

    @staticmethod
    def _drop(groups: list[list[Slot]], metas: list[torch.nn.Parameter]) -> None:
        for slots, meta in zip(groups, metas, strict=True):
            for slot in slots:
                slot.module._parameters[slot.attr] = meta

    @contextmanager
    def attached(self) -> Iterator[None]:
        """Within the block, the model runs with its weights streamed in; afterwards it is a skeleton again."""
        blocks = _blocks(self.model)
        if not blocks:
            raise ValueError(f"{type(self._dtype_model).__name__} names no decoder-layer class to stream by")
        inside = {id(p) for _, block in blocks for p in block.parameters()}
        rest = [
            g for g in _meta_groups(self.model, "") if id(g[0].module._parameters[g[0].attr]) not in inside
        ]
        rest_metas = [g[0].module._parameters[g[0].attr] for g in rest]
        try:
            self._load(rest)
            for name, block in blocks:
                self._hook(block, name)
            yield
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            self._drop(rest, rest_metas)

    def _hook(self, block: torch.nn.Module, name: str) -> None:
        groups = _meta_groups(block, name)
        metas = [g[0].module._parameters[g[0].attr] for g in groups]

        def before(_module: torch.nn.Module, _args: object) -> None:
            self._load(groups)

        def after(_module: torch.nn.Module, _args: object, _output: object) -> None:
            self._drop(groups, metas)

        self._handles.append(block.register_forward_pre_hook(before))
        self._handles.append(block.register_forward_hook(after))


def padded_batch(inputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The probes as one right-padded batch and its attention mask (one pass over the weights for all)."""
    longest = max(ids.shape[1] for ids in inputs)
    ids = torch.zeros(len(inputs), longest, dtype=inputs[0].dtype)
    mask = torch.zeros(len(inputs), longest, dtype=torch.long)
    for row, probe in enumerate(inputs):
        ids[row, : probe.shape[1]] = probe[0]
        mask[row, : probe.shape[1]] = 1
    return ids, mask


@torch.no_grad()
def layerwise_logits(
    model: PreTrainedModel | PeftModel, files: dict[str, Path], dtype: torch.dtype, inputs: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Logits (fp32, one ``[1, n, vocab]`` tensor per probe) with the weights read block by block from ``files``.

    The probes run as one right-padded batch: with a causal mask a real position never sees the padding.
    """
    model.eval()
    ids, mask = padded_batch(inputs)
    with LazyWeights(model, files, dtype).attached():
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
    return [logits[row : row + 1, : probe.shape[1]].clone() for row, probe in enumerate(inputs)]
