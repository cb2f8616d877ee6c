"""`finetune explain`: field documentation from the models, like `kubectl explain`."""

from __future__ import annotations

from typing import Any

import yaml

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


def _constraints(node: dict[str, Any], *, with_default: bool = True) -> str:
    parts = []
    if "enum" in node:
        parts.append("one of " + "|".join(str(v) for v in node["enum"]))
    for key, exclusive_key, sign in (
        ("minimum", "exclusiveMinimum", ">"),
        ("maximum", "exclusiveMaximum", "<"),
    ):
        if key in node:
            parts.append(f"{sign if node.get(exclusive_key) else sign + '='} {node[key]}")
    if with_default and "default" in node:
        parts.append(f"default {node['default']!r}")
    return f" ({', '.join(parts)})" if parts else ""


def _scalar(value: Any) -> str:
    """A default as YAML writes it in flow style: ``0.0001``, ``lora``, ``[all]``, ``{}``."""
    return str(yaml.safe_dump(value, default_flow_style=True, width=10_000)).removesuffix("\n...\n").strip()


def _tree(node: dict[str, Any], indent: str) -> list[str]:
    """The fields under ``node`` as commented YAML: ``name: default  # type (bounds). description``."""
    lines = []
    required = set(node.get("required", []))
    for field, sub in node.get("properties", {}).items():
        items = sub
        while items.get("type") == "array":
            items = items.get("items", {})
        flags = ", required" if field in required else ""
        value = f" {_scalar(sub['default'])}" if "default" in sub else ""
        about = " ".join(str(sub.get("description", "")).split())
        lines.append(
            f"{indent}{field}:{value}  # {_type_of(sub)}{_constraints(sub, with_default=False)}{flags}. {about}"
        )
        if items.get("properties") and sub.get("type") == "array":
            children = _tree(items, indent + "  ")
            lines += [f"{indent}- {children[0].lstrip()}", *children[1:]]
        elif items.get("properties"):
            lines += _tree(items, indent + "  ")
    return lines


def explain(target: str, *, recursive: bool = False) -> str:
    """Docs for ``KIND[.field.path]``, e.g. ``finetunejob.spec.method.lora``; with ``recursive``, the
    whole subtree as YAML with its defaults, like ``kubectl explain --recursive``."""
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
    if recursive and node.get("properties"):
        return "\n".join([*lines, "", "FIELDS:", *_tree(node, "  ")])
    required = set(node.get("required", []))
    if node.get("properties"):
        lines += ["", "FIELDS:"]
        for field, sub in node["properties"].items():
            flag = " -required-" if field in required else ""
            lines.append(f"  {field}\t<{_type_of(sub)}>{flag}{_constraints(sub)}")
            lines.append(f"    {sub.get('description', '')}")
    return "\n".join(lines)
