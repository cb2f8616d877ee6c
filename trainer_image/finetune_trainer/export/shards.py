"""Write a model folder shard by shard: weights (safetensors, or legacy .bin), config, tokenizer.

Each shard is assembled from the live weights, written, handed to ``on_file`` (which uploads it
while the next one is written) and dropped, so memory beyond the model itself is one shard.
This is transformers' own ``save_pretrained`` loop (same tied-weight removal, same reverse weight
conversion, same file names and index), opened up for the per-file hook and the .bin format.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from huggingface_hub import StateDictSplit, split_torch_state_dict_into_shards
from safetensors.torch import save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.core_model_loading import revert_weight_conversion
from transformers.modeling_utils import remove_tied_weights_from_state_dict

WeightFormat = Literal["safetensors", "bin"]
FileHook = Callable[[Path], None]
# (filename pattern, index name) per format: the names from_pretrained looks for.
WEIGHT_FILES: dict[WeightFormat, tuple[str, str]] = {
    "safetensors": ("model{suffix}.safetensors", "model.safetensors.index.json"),
    "bin": ("pytorch_model{suffix}.bin", "pytorch_model.bin.index.json"),
}


def savable_state_dict(model: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The weights as a checkpoint stores them: tied copies dropped, load-time renames reverted.

    The tensors are the model's own (no copy).
    """
    state = remove_tied_weights_from_state_dict(model.state_dict(), model)
    return revert_weight_conversion(model, state)


def write_weight_shards(
    model: PreTrainedModel,
    folder: Path,
    *,
    max_shard_size: int,
    weight_format: WeightFormat = "safetensors",
    on_file: FileHook | None = None,
) -> list[Path]:
    """Write the weights in shards of at most ``max_shard_size`` bytes (plus the index when sharded).

    A single tensor larger than the limit gets a shard of its own. Returns the files written, in order.
    """
    pattern, index_name = WEIGHT_FILES[weight_format]
    state = savable_state_dict(model)
    split = split_torch_state_dict_into_shards(state, filename_pattern=pattern, max_shard_size=max_shard_size)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for filename, names in split.filename_to_tensors.items():
        shard = {name: state.pop(name).contiguous() for name in names}
        path = folder / filename
        if weight_format == "safetensors":
            save_file(shard, str(path), metadata={"format": "pt"})
        else:
            torch.save(shard, path)
        del shard  # before the next shard is assembled
        written.append(path)
        if on_file is not None:
            on_file(path)
    if split.is_sharded:
        written.append(write_shard_index(model, split, folder / index_name))
        if on_file is not None:
            on_file(written[-1])
    return written


def write_shard_index(model: PreTrainedModel, split: StateDictSplit, path: Path) -> Path:
    """The index of a sharded checkpoint (tensor → file), as ``save_pretrained`` writes it."""
    index = {
        "metadata": {"total_parameters": model.num_parameters(), **split.metadata},
        "weight_map": split.tensor_to_filename,
    }
    path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return path


def write_model_metadata(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    folder: Path,
    *,
    on_file: FileHook | None = None,
) -> list[Path]:
    """config.json, generation_config.json and the tokenizer files (chat template included)."""
    folder.mkdir(parents=True, exist_ok=True)
    before = {p for p in folder.iterdir()}
    model.config.dtype = str(model.dtype).removeprefix("torch.")
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(folder)
    if model.can_generate():
        model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    written = sorted(p for p in folder.iterdir() if p not in before and p.is_file())
    if on_file is not None:
        for path in written:
            on_file(path)
    return written
