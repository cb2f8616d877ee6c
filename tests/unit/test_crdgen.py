"""The generated CRDs: current with the models, and structural as Kubernetes requires."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_api.crdgen import CRD_DIR, render_crds
from finetune_api.resources import KINDS

FORBIDDEN = {"$ref", "anyOf", "oneOf", "allOf", "not", "title", "$defs", "const", "nullable"}


def _nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if "items" in node:
        yield from _nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _nodes(node["additionalProperties"], f"{path}{{}}")


def _schema(kind: str) -> dict[str, Any]:
    name = f"finetune.dev_{KINDS[kind].plural}.yaml"
    crd = yaml.safe_load(render_crds()[name])
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crds_match_the_models() -> None:
    rendered = render_crds()
    committed = {p.name for p in Path(CRD_DIR).glob("*.yaml")}
    assert committed == set(rendered), "crds/ holds other files than the generator writes"
    for name, text in rendered.items():
        assert (CRD_DIR / name).read_text() == text, f"{name} drifted: run `finetune crds --write`"


@pytest.mark.parametrize("kind", list(KINDS))
def test_schema_is_structural(kind: str) -> None:
    for path, node in _nodes(_schema(kind)):
        leaked = FORBIDDEN & node.keys()
        assert not leaked, f"{kind}{path} carries {leaked}"
        typed = "type" in node or node.get("x-kubernetes-preserve-unknown-fields")
        assert typed, f"{kind}{path} has no type"
        if node.get("exclusiveMinimum") is not None:
            assert node["exclusiveMinimum"] is True and "minimum" in node, f"{kind}{path}: exclusiveMinimum"
        for req in node.get("required", []):
            assert req in node.get("properties", {}), f"{kind}{path}: required {req} is not a property"


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_field_is_documented(kind: str) -> None:
    spec_and_status = _schema(kind)["properties"]
    for top in ("spec", "status"):
        for path, node in _nodes(spec_and_status[top], top):
            if path.endswith("[]") or path.endswith("{}"):
                continue
            assert node.get("description"), f"{kind}.{path} has no description"


def test_conditions_are_a_map_keyed_by_type() -> None:
    for kind in KINDS:
        conditions = _schema(kind)["properties"]["status"]["properties"]["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        assert "type" in conditions["items"]["required"]


def test_finetunejob_crd_shape() -> None:
    crd = yaml.safe_load(render_crds()["finetune.dev_finetunejobs.yaml"])
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Phase",
        "Stage",
        "Model",
        "Progress",
        "Loss",
        "ETA",
        "Reason",
        "Age",
    ]
    assert crd["spec"]["names"]["shortNames"] == ["ftj"]
    assert crd["spec"]["names"]["categories"] == ["finetune"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    immutable = next(r for r in rules if "oldSelf" in r)
    assert "self.model == oldSelf.model" in immutable and "suspend" not in immutable


def test_optional_fields_are_absent_not_null() -> None:
    spec = _schema("FineTuneJob")["properties"]["spec"]
    quantization = spec["properties"]["model"]["properties"]["quantization"]
    assert quantization["type"] == "object" and "default" not in quantization
    assert "quantization" not in spec["properties"]["model"].get("required", [])


def test_free_form_affinity_preserves_unknown_fields() -> None:
    resources = _schema("FineTuneJob")["properties"]["spec"]["properties"]["resources"]
    assert resources["properties"]["affinity"]["x-kubernetes-preserve-unknown-fields"] is True
