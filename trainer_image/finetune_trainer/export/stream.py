"""The streaming merge: base safetensors in, merged safetensors shards out, one tensor in memory at a time.

The model is only built on the meta device (no weights), which gives exactly the names, shapes,
dtypes, shard split and index that ``save_pretrained`` of the merged model would write
(:func:`.shards.savable_state_dict`). Each output shard's header is written first (every size is
known up front), then each tensor is read from the base files with ``pread``, merged, written and
dropped, so the merge's memory is a tensor or two, never the model.

Fast path: see finetune_trainer.fastpaths (its reference path and the tests that pin the two equal).
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open
from transformers import PretrainedConfig, PreTrainedModel

from .adapter import LoraAdapter
from .shards import WEIGHT_FILES, FileHook, savable_state_dict, write_shard_index
from .weights import parameter_dtype

log = logging.getLogger(__name__)
# safetensors' names, in the order its writer lays tensors out (larger dtypes first, then by name).
DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.uint64: "U64", torch.int64: "I64", torch.float64: "F64", torch.float32: "F32",
    torch.uint32: "U32", torch.int32: "I32", torch.bfloat16: "BF16", torch.float16: "F16",
    torch.uint16: "U16", torch.int16: "I16", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip
DTYPE_RANK = {dtype: rank for rank, dtype in enumerate(DTYPE_NAMES)}
FORMAT_METADATA = {"format": "pt"}


def meta_model(auto_class: Any, config: PretrainedConfig, dtype: torch.dtype) -> PreTrainedModel:
    """The model's structure without weights: parameters on the meta device, buffers (RoPE) real.

    Parameters take the dtypes loading them in ``dtype`` would give (fp32 where the model keeps them).
    """
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model: PreTrainedModel = auto_class.from_config(config, dtype=dtype)
    for name, param in model.named_parameters():
        wanted = parameter_dtype(model, name, param, dtype)
        if param.dtype != wanted:
            param.data = param.data.to(wanted)
    # As from_pretrained leaves it when the checkpoint needed no renaming; saving then orders the
    # tensors the same way (revert_weight_conversion sorts them), so the shard split matches too.
    model._weight_conversions = []
    model.eval()
    return model


def weight_files(folder: Path) -> dict[str, Path]:
    """Checkpoint tensor name → the safetensors file of ``folder`` that holds it."""
    found: dict[str, Path] = {}
    for file in sorted(folder.glob("*.safetensors")):
        if file.name.startswith("adapter_"):
            continue
        with safe_open(str(file), framework="pt") as handle:
            found.update(dict.fromkeys(handle.keys(), file))
    return found


def missing_tensors(model: PreTrainedModel, files: dict[str, Path], adapter: LoraAdapter | None) -> list[str]:
    """Tensors the export writes that neither the base files nor the adapter provide (then: no streaming)."""
    extra = set(adapter.replacements) if adapter is not None else set()
    return [name for name in savable_state_dict(model) if name not in files and name not in extra]


def shard_header(layout: list[tuple[str, torch.Tensor]]) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """The safetensors header for tensors shaped like ``layout`` (in file order), and each one's byte range."""
    header: dict[str, object] = {"__metadata__": FORMAT_METADATA}
    offsets: dict[str, tuple[int, int]] = {}
    start = 0
    for name, like in layout:
        end = start + like.numel() * like.element_size()
        header[name] = {
            "dtype": DTYPE_NAMES[like.dtype],
            "shape": list(like.shape),
            "data_offsets": [start, end],
        }
        offsets[name] = (start, end)
        start = end
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors pads it
    return struct.pack("<Q", len(text)) + text, offsets


def file_order(names: list[str], state: dict[str, torch.Tensor]) -> list[str]:
    """The order ``safetensors.save_file`` lays these tensors out in: by dtype, largest first, then name."""
    unknown = [n for n in names if state[n].dtype not in DTYPE_RANK]
    if unknown:
        raise ValueError(f"no safetensors name for the dtype of {unknown[0]} ({state[unknown[0]].dtype})")
    return sorted(names, key=lambda n: (DTYPE_RANK[state[n].dtype], n))


def read_merged(
    names: list[str], state: dict[str, torch.Tensor], files: dict[str, Path], adapter: LoraAdapter | None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Each tensor's exported value, in the order of ``names``, read privately (pread) one at a time."""
    handles: dict[Path, object] = {}
    try:
        for name in names:
            like = state[name]
            if name in files:
                file = files[name]
                if file not in handles:
                    handles[file] = safe_open(str(file), framework="pt", device="cpu", backend="pread")
                base = handles[file].get_tensor(name).to(like.dtype)  # type: ignore[attr-defined]
            else:  # a tensor only the adapter has (checked by missing_tensors)
                assert adapter is not None
                base = adapter.replacements[name].to(like.dtype)
            tensor = adapter.merged(name, base) if adapter is not None else base
            if tensor.shape != like.shape or tensor.dtype != like.dtype:
                raise ValueError(f"{name}: merged to {tuple(tensor.shape)} {tensor.dtype}, expected "
                                 f"{tuple(like.shape)} {like.dtype}")  # fmt: skip
            yield name, tensor.contiguous()
    finally:
        handles.clear()


def write_shard(
    path: Path, layout: list[tuple[str, torch.Tensor]], tensors: Iterator[tuple[str, torch.Tensor]]
) -> None:
    """Write one safetensors file: the header from ``layout``, then each tensor's bytes as it arrives."""
    header, offsets = shard_header(layout)
    with path.open("wb") as out:
        out.write(header)
        for name, tensor in tensors:
            start, end = offsets[name]
            data = tensor.reshape(-1).view(torch.uint8).numpy() if tensor.numel() else b""
            if len(data) != end - start:
                raise ValueError(f"{name}: {len(data)} bytes, the header says {end - start}")
            out.write(memoryview(data))
            del tensor, data  # before the next one is read


def write_streamed_shards(
    model: PreTrainedModel,
    files: dict[str, Path],
    adapter: LoraAdapter | None,
    folder: Path,
    *,
    max_shard_size: int,
    on_file: FileHook | None = None,
) -> list[Path]:
    """Write ``model``'s weights (meta) as safetensors shards from the base files merged with ``adapter``.

    Same file names, tensor names, dtypes, split and index as :func:`.shards.write_weight_shards` of the
    merged model. Returns the files written, in order.
    """
    pattern, index_name = WEIGHT_FILES["safetensors"]
    state = savable_state_dict(model)
    split = split_torch_state_dict_into_shards(state, filename_pattern=pattern, max_shard_size=max_shard_size)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    hook: Callable[[Path], None] = on_file or (lambda _path: None)
    for filename, names in split.filename_to_tensors.items():
        order = file_order(list(names), state)
        path = folder / filename
        write_shard(path, [(n, state[n]) for n in order], read_merged(order, state, files, adapter))
        written.append(path)
        hook(path)
    if split.is_sharded:
        written.append(write_shard_index(model, split, folder / index_name))
        hook(written[-1])
    log.info("streamed %d tensors into %d files", len(state), len(written))
    return written
