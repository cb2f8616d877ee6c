"""`finetune explain`: field documentation from the models, like `kubectl explain`."""

from __future__ import annotations

from typing import Any

from .crdgen import model_schema
from .resources import KINDS
from .validation import spec_schema


def _find_kind(name: str) -> str:
    lowered = name.lower()
    for kind, info in KINDS.items():
        if lowered in (kind.lower(), info.plural, info.singular, *info.short_names):
            return kind
    raise ValueError(f"unknown kind {name!r}; one of {', '.join(KINDS)}")


def _type_of(node: dict[str, Any]) -> str:
    kind = node.get("type", "object")
    if kind == "array":
        return f"[]{_type_of(node.get('items', {}))}"
    if kind == "object" and "additionalProperties" in node:
        return f"map[string]{_type_of(node['additionalProperties'])}"
    return str(kind)


def _constraints(node: dict[str, Any]) -> str:
    parts = []
    if "enum" in node:
        parts.append("one of " + "|".join(str(v) for v in node["enum"]))
    for key, exclusive_key, sign in (
        ("minimum", "exclusiveMinimum", ">"),
        ("maximum", "exclusiveMaximum", "<"),
    ):
        if key in node:
            parts.append(f"{sign if node.get(exclusive_key) else sign + '='} {node[key]}")
    if "default" in node:
        parts.append(f"default {node['default']!r}")
    return f" ({', '.join(parts)})" if parts else ""


def explain(target: str) -> str:
    """Docs for ``KIND[.field.path]``, e.g. ``finetunejob.spec.method.lora``."""
    name, _, dotted = target.partition(".")
    kind = _find_kind(name)
    info = KINDS[kind]
    path = [p for p in dotted.split(".") if p]
    root = {"spec": spec_schema(kind), "status": model_schema(info.status)}
    node: dict[str, Any] = {
        "type": "object",
        "description": (info.model.__doc__ or "").strip(),
        "properties": root,
    }
    for i, part in enumerate(path):
        while node.get("type") == "array":
            node = node["items"]
        props = node.get("properties", {})
        if part not in props:
            where = ".".join(path[:i]) or kind
            raise ValueError(f"{where} has no field {part!r}; fields: {', '.join(props) or 'none'}")
        node = props[part]
    lines = [f"KIND:     {kind}", f"VERSION:  {info.model.model_fields['api_version'].default}"]
    if path:
        lines.append(f"FIELD:    {'.'.join(path)} <{_type_of(node)}>{_constraints(node)}")
    lines += ["", "DESCRIPTION:", f"    {node.get('description', '')}"]
    while node.get("type") == "array":
        node = node["items"]
    required = set(node.get("required", []))
    if node.get("properties"):
        lines += ["", "FIELDS:"]
        for field, sub in node["properties"].items():
            flag = " -required-" if field in required else ""
            lines.append(f"  {field}\t<{_type_of(sub)}>{flag}{_constraints(sub)}")
            lines.append(f"    {sub.get('description', '')}")
    return "\n".join(lines)
