"""The model-based export's load (stored dtype, then each weight read privately and converted) against
``from_pretrained`` in the export dtype: the same tensors, in the same dtypes, none left in the file's map."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from finetune_trainer.export.merge import export_dtype
from finetune_trainer.export.weights import checkpoint_files, load_private_weights
from finetune_trainer.model.tiny import tiny_model_path

BASE = "tiny://llama?layers=2&hidden=64&intermediate=128"


def mapped_ranges(files: list[Path]) -> list[tuple[int, int]]:
    """Address ranges of this process's memory maps of ``files`` (Linux's /proc/self/maps)."""
    names = {str(f.resolve()) for f in files}
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] in names:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def in_map(model: PreTrainedModel, ranges: list[tuple[int, int]]) -> list[str]:
    return [
        name
        for name, p in model.named_parameters()
        if any(start <= p.data_ptr() < end for start, end in ranges)
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_private_weights_equal_from_pretrained_in_the_export_dtype(
    model_cache_dir: Path, dtype: torch.dtype
) -> None:
    path = tiny_model_path(BASE)
    files = checkpoint_files(path)
    assert files
    want = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    # As merge.load_model does: the stored dtype first, so nothing touches the map before the swap.
    model = AutoModelForCausalLM.from_pretrained(path, dtype=export_dtype("auto", want.config))
    if dtype == torch.float32:  # control: without the swap the weights are views of the mapped file
        assert in_map(model, mapped_ranges(files))
    assert load_private_weights(model, files, dtype) == len(dict(model.named_parameters()))
    assert in_map(model, mapped_ranges(files)) == []
    got, reference = model.state_dict(), want.state_dict()
    assert got.keys() == reference.keys()
    for name, tensor in reference.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), name
