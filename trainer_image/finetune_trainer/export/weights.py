"""Give a freshly loaded model private copies of its weights without doubling resident memory.

``from_pretrained`` memory-maps safetensors files (copy-on-write) and, when no dtype conversion is
needed, leaves the weights as views of the map. Merging writes into every weight: each written
page is copied while the file's page stays mapped, so the process ends up holding the model twice.
Reading each tensor with ``pread(2)`` into its own memory instead, before anything touches the
map, keeps one copy; the untouched map costs nothing and goes away with the old tensors.

Fast path: see finetune_trainer.fastpaths (its reference path and the tests that pin the two equal).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import PreTrainedModel

log = logging.getLogger(__name__)


def checkpoint_files(folder: str | Path, *, revision: str | None = None) -> list[Path]:
    """The safetensors weight files of a local model folder or a hub id already in the local cache."""
    path = Path(folder)
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        try:
            path = Path(
                snapshot_download(
                    str(folder), revision=revision, allow_patterns=["*.safetensors"], local_files_only=True
                )
            )
        except Exception as exc:  # any cache miss just means the model keeps its memory map
            log.info("weights of %s not found locally (%s); keeping the memory map", folder, exc)
            return []
    return sorted(p for p in path.glob("*.safetensors") if not p.name.startswith("adapter_"))


def parameter_dtype(
    model: PreTrainedModel, name: str, tensor: torch.Tensor, dtype: torch.dtype
) -> torch.dtype:
    """The dtype ``from_pretrained(dtype=dtype)`` gives parameter ``name``: fp32 in the modules the model
    keeps in fp32, the stored dtype for non-floating tensors, else ``dtype``."""
    if not tensor.is_floating_point():
        return tensor.dtype
    return torch.float32 if set(model._keep_in_fp32_modules or ()) & set(name.split(".")) else dtype


def load_private_weights(model: PreTrainedModel, files: list[Path], dtype: torch.dtype) -> int:
    """Replace each parameter by a pread copy converted to ``dtype``, one tensor at a time.

    Load the model in its stored dtype first (no conversion, so nothing touches the map). Modules the
    model keeps in fp32 stay fp32, and buffers (RoPE frequencies) keep the dtype the model gave them,
    as ``from_pretrained(dtype=...)`` would. A parameter the files name differently (a load-time
    rename) is converted from its memory map instead; correctness never depends on the swap.
    Returns how many parameters were read privately.
    """
    params = dict(model.named_parameters())

    def wanted(name: str, tensor: torch.Tensor) -> torch.dtype:
        return parameter_dtype(model, name, tensor, dtype)

    done: set[str] = set()
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu", backend="pread") as handle:
            for key in handle.keys():  # noqa: SIM118 - a safetensors handle is not iterable
                param = params.get(key)
                if param is None or param.device.type != "cpu":
                    continue
                tensor = handle.get_tensor(key)
                param.data = tensor.to(wanted(key, tensor))
                done.add(key)
    for name, param in params.items():
        if name not in done and param.dtype != wanted(name, param):
            param.data = param.data.to(wanted(name, param))
    log.info("read %d of %d parameters into private memory (%s)", len(done), len(params), dtype)
    return len(done)
