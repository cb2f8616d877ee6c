"""examples/cluster/: one FineTuneJob per stage that a cluster runs as written (data and output in the bucket
and with the Secret the README's cluster quick start makes), each the twin of a local example."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from finetune_api.manifests import load_documents
from finetune_api.method import Stage
from finetune_api.validation import validate_documents

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = sorted((ROOT / "examples" / "cluster").glob("*.yaml"))
# What the quick start creates: the Secret with the S3 keys, the bucket, examples/data/* uploaded to data/.
SECRET, BUCKET = "finetune-s3", "finetune-examples"
# Where a cluster twin may differ from its local example: everything that says where things live.
LOCATION_FIELDS = {"output", "resources"}


def bodies(path: Path) -> list[dict[str, Any]]:
    return [d.body for d in load_documents([path])]


def test_every_stage_has_a_cluster_example() -> None:
    stages = {d["spec"]["method"]["stage"] for p in CLUSTER for d in bodies(p) if d["kind"] == "FineTuneJob"}
    assert stages == {s.value for s in Stage}


@pytest.mark.parametrize("path", CLUSTER, ids=lambda p: p.name)
def test_cluster_example_is_valid_for_a_cluster(path: Path) -> None:
    results = validate_documents(bodies(path), cluster=True)  # the cluster-only rules too
    assert all(not errors for errors in results.values()), results


@pytest.mark.parametrize("path", CLUSTER, ids=lambda p: p.name)
def test_cluster_example_reads_and_writes_only_what_the_quick_start_provides(path: Path) -> None:
    for doc in bodies(path):
        spec, name = doc["spec"], doc["metadata"]["name"]
        assert "namespace" not in doc["metadata"]  # applied to the current namespace, beside the Secret
        if doc["kind"] == "Dataset":
            assert spec["credentialsSecret"] == SECRET
            prefix = f"s3://{BUCKET}/data/"
            assert spec["source"].startswith(prefix), spec["source"]
            assert (ROOT / "examples" / "data" / spec["source"].removeprefix(prefix)).is_file()
            continue
        assert spec["output"] == {"uri": f"s3://{BUCKET}/{'exports' if doc['kind'] == 'Export' else 'runs'}/{name}",
                                  "credentialsSecret": SECRET}  # fmt: skip
        assert "endpoint" not in spec["output"]  # the Secret's `endpoint` key says where S3 is
        if doc["kind"] == "FineTuneJob":
            assert spec["resources"]["gpusPerNode"] == 0  # tiny models: any cluster's CPU nodes run them
            assert {"cpu", "memory"} <= spec["resources"].keys()
            reward = (spec["method"].get("ppo") or {}).get("rewardModel")
            assert reward in (
                None,
                f"s3://{BUCKET}/runs/rm-lora/adapter",
            )  # the output of cluster/rm-lora.yaml


def _without_locations(doc: dict[str, Any]) -> dict[str, Any]:
    spec = {k: v for k, v in doc["spec"].items() if k not in LOCATION_FIELDS}
    if doc["kind"] == "Dataset":
        spec.pop("credentialsSecret", None)
        spec["source"] = spec["source"].rsplit("/", 1)[-1]
    if "ppo" in spec.get("method", {}):
        spec["method"] = {**spec["method"], "ppo": {**spec["method"]["ppo"], "rewardModel": "<rm-lora>"}}
    return {"kind": doc["kind"], "name": doc["metadata"]["name"], "spec": spec}


@pytest.mark.parametrize("path", [p for p in CLUSTER if p.name != "export-merge.yaml"], ids=lambda p: p.name)
def test_cluster_example_trains_exactly_what_its_local_twin_trains(path: Path) -> None:
    local = ROOT / "examples" / path.name
    assert [_without_locations(d) for d in bodies(path)] == [_without_locations(d) for d in bodies(local)]
