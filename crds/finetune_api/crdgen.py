"""crdgen: the API models → apiextensions.k8s.io/v1 CustomResourceDefinitions.

Pydantic writes JSON Schema (draft 2020-12); Kubernetes wants a *structural* OpenAPI v3 schema:
no ``$ref``, ``anyOf``/``oneOf``/``allOf`` or ``title``, every node typed, optional fields simply
absent (null is pruned), ``exclusiveMinimum`` as a boolean beside ``minimum``, free-form objects
marked ``x-kubernetes-preserve-unknown-fields``. This module does that conversion and nothing else.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import core_schema

from .common import GROUP, VERSION
from .resources import KINDS, KindInfo

CRD_DIR = Path(__file__).resolve().parent.parent
CATEGORY = "finetune"
# Keeps the API server's CEL cost estimate bounded for maps the models leave open.
DEFAULT_MAX_PROPERTIES = 64

_DROP = {"title", "additionalProperties", "$defs", "discriminator"}


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline ``$ref`` and the single-member ``allOf`` wrapper pydantic sometimes emits."""
    while True:
        if "$ref" in node:
            target = defs[node["$ref"].rsplit("/", 1)[-1]]
            node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        elif "allOf" in node and len(node["allOf"]) == 1:
            node = {**node["allOf"][0], **{k: v for k, v in node.items() if k != "allOf"}}
        else:
            return node


def _drop_null(node: dict[str, Any]) -> dict[str, Any]:
    """``X | None`` → X: an unset optional field is absent, never null."""
    variants = node.get("anyOf")
    if variants is None:
        return node
    kept = [v for v in variants if v.get("type") != "null"]
    if len(kept) != 1:
        raise ValueError(f"unions other than X | None are not structural: {node}")
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    if rest.get("default", ...) is None:
        rest.pop("default")
    return {**kept[0], **rest}


def structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Convert one pydantic JSON-schema node (recursively) into a structural CRD schema node."""
    node = _drop_null(_resolve(node, defs))
    node = _drop_null(_resolve(node, defs))
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "properties":
            out[key] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = structural(value, defs)
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        else:
            out[key] = copy.deepcopy(value)
    if "enum" in out and "type" not in out:
        out["type"] = _enum_type(out["enum"])
    additional = node.get("additionalProperties")
    if out.get("type") == "object":
        if additional is True or (isinstance(additional, dict) and not additional):
            out["x-kubernetes-preserve-unknown-fields"] = True
        elif isinstance(additional, dict):
            out["additionalProperties"] = structural(additional, defs)
            out.setdefault("maxProperties", DEFAULT_MAX_PROPERTIES)
    if "type" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        raise ValueError(f"schema node without a type: {node}")
    return out


def _enum_type(values: list[Any]) -> str:
    if all(isinstance(v, bool) for v in values):
        return "boolean"
    if all(isinstance(v, int) for v in values):
        return "integer"
    return "string"


class _SchemaWithListDefaults(GenerateJsonSchema):
    """Pydantic leaves ``default_factory`` defaults out of the schema; a non-empty list of plain
    values (e.g. targetModules: [all]) is worth showing and applying, so this puts those in."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            value = factory()  # type: ignore[call-arg]
            if isinstance(value, list) and value and all(isinstance(v, str | int | float) for v in value):
                return value
            return NoDefault
        return super().get_default_value(schema)


def model_schema(model: type[Any]) -> dict[str, Any]:
    """The structural schema of one API model."""
    raw = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_SchemaWithListDefaults)
    return structural(raw, raw.get("$defs", {}))


def build_crd(kind: str, info: KindInfo) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    spec_schema = model_schema(info.spec)
    status_schema = model_schema(info.status)
    columns = [
        {
            "name": c.name,
            "type": c.type,
            "jsonPath": c.json_path,
            **({"description": c.description} if c.description else {}),
            **({"priority": c.priority} if c.priority else {}),
        }
        for c in info.columns
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{info.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": list(info.short_names),
                "categories": [CATEGORY],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (info.model.__doc__ or kind).strip(),
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "API version of the object."},
                                "kind": {"type": "string", "description": "Kind of the object."},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def crd_file_name(info: KindInfo) -> str:
    return f"{GROUP}_{info.plural}.yaml"


def render_crds() -> dict[str, str]:
    """File name → YAML text of every CRD, exactly as committed under crds/."""
    header = "# Generated by `finetune crds --write` from the API models. Do not edit.\n"
    return {
        crd_file_name(info): header + yaml.safe_dump(build_crd(kind, info), sort_keys=False, width=120)
        for kind, info in KINDS.items()
    }


def write_crds(directory: Path = CRD_DIR) -> list[Path]:
    """Write every CRD under ``directory``; returns the paths written."""
    written = []
    for name, text in render_crds().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written
