""" "Did you mean" hints for manifest errors, derived from the models' own fields.

An unknown field is matched, in this order, against: the fields at the same level written in
camelCase (``learning_rate`` → ``learningRate``) or another case; close spellings at the same level
(``batchSize`` → ``perDeviceBatchSize``); the same name elsewhere in the kind (``quantization``
under ``method`` belongs under ``spec.model``); and a prefixed name split into a block and its field
(``lora_alpha`` → ``alpha`` under ``spec.method.lora``). Only what no field says is kept in a table:
values people bring from other tools (``finetuning: qlora``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from functools import cache
from typing import Any, get_args

from pydantic import BaseModel
from pydantic.alias_generators import to_camel

# Values that name a concept the API spells differently: (field path suffix, value) → hint.
VALUE_HINTS: dict[tuple[str, str], str] = {
    ("method.finetuning", "qlora"): "QLoRA is finetuning: lora with model.quantization (e.g. bits: 4)",
    ("method.finetuning", "dora"): "DoRA is finetuning: lora with method.lora.useDora: true",
    ("method.finetuning", "pissa"): "PiSSA is finetuning: lora with method.lora.pissaInit: true",
    ("method.stage", "lora"): "LoRA is not a stage: set method.finetuning: lora and a stage such as sft",
}


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """The API models an annotation holds (``X | None``, ``list[X]``, ``dict[str, X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    else:
        for arg in get_args(annotation):
            yield from _models_in(arg)


def _fields(model: type[BaseModel]) -> dict[str, type[BaseModel] | None]:
    """Wire name → the model it holds (None for a plain value)."""
    out = {}
    for name, info in model.model_fields.items():
        inner = next(_models_in(info.annotation), None)
        out[info.alias or name] = inner
    return out


def model_at(root: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model that the object at ``loc`` (a pydantic error location, wire names) is parsed as."""
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int) or model is None:
            continue  # a list index: the items are parsed as the field's model
        fields = _fields(model)
        if part not in fields:
            return None
        model = fields[part]
    return model


@cache
def field_index(root: type[BaseModel]) -> dict[str, tuple[str, ...]]:
    """Every wire field name in ``root``'s tree → the dotted paths of the objects declaring it.

    The status is left out: a hint points at what a manifest may set.
    """
    index: dict[str, list[str]] = {}

    def walk(model: type[BaseModel], path: str, depth: int) -> None:
        for name, inner in _fields(model).items():
            index.setdefault(name, []).append(path)
            if inner is not None and depth < 8 and (path or name != "status"):
                walk(inner, f"{path}.{name}" if path else name, depth + 1)

    walk(root, "", 0)
    return {name: tuple(paths) for name, paths in index.items()}


def _dotted(loc: Sequence[str | int]) -> str:
    return ".".join(p for p in loc if isinstance(p, str))


def unknown_field_hint(root: type[BaseModel], loc: Sequence[str | int]) -> str:
    """A hint for the unknown field at ``loc`` (its last part), or "" when nothing is close."""
    key, parent_loc = loc[-1], loc[:-1]
    parent = model_at(root, parent_loc)
    if not isinstance(key, str) or parent is None:
        return ""
    fields = _fields(parent)
    camel = to_camel(key) if "_" in key else key
    for name in fields:
        if name.lower() == camel.lower():
            return f"did you mean {name}?"
    close = _close_names(camel, list(fields))
    if close:
        return f"did you mean {' or '.join(close)}?"
    here = _dotted(parent_loc)
    elsewhere = [p for p in field_index(root).get(camel, ()) if p and p != here]
    if elsewhere:
        return f"{camel} belongs under {' or '.join(elsewhere)}"
    return _split_hint(root, camel)


def _split_hint(root: type[BaseModel], camel: str) -> str:
    """``loraAlpha`` → "alpha under spec.method.lora": a block's name glued to one of its fields."""
    for name, paths in field_index(root).items():
        for path in paths:
            block = path.rsplit(".", 1)[-1]
            if block and camel.lower() == (block + name).lower():
                return f"did you mean {name} under {path}?"
    return ""


def _close_names(camel: str, names: list[str]) -> list[str]:
    lowered = {n.lower(): n for n in names}
    key = camel.lower()
    found = [n for low, n in lowered.items() if len(key) >= 4 and (low.endswith(key) or key.endswith(low))]
    found += [lowered[m] for m in difflib.get_close_matches(key, list(lowered), n=2, cutoff=0.7)]
    return list(dict.fromkeys(found))[:2]


def value_hint(loc: Sequence[str | int], value: Any) -> str:
    """A hint for a refused enum value that names a concept spelt otherwise here, or ""."""
    path = _dotted(loc)
    if not isinstance(value, str):
        return ""
    for (suffix, known), hint in VALUE_HINTS.items():
        if path.endswith(suffix) and value.lower() == known:
            return hint
    return ""
