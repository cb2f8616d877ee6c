"""The generated CRDs on the real API server: every example is accepted, every invalid one is refused
with its stated message, the spec is immutable except suspend, and status is a subresource."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from finetune_api.manifests import load_documents
from tests.fixtures.cluster import Cluster

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
INVALID = sorted((ROOT / "examples" / "invalid").glob("*.yaml"))

pytestmark = pytest.mark.e2e


def _apply_dry_run(cluster: Cluster, namespace: str, docs: list[dict[str, object]]) -> tuple[int, str]:
    for doc in docs:
        doc.setdefault("metadata", {})["namespace"] = namespace  # type: ignore[index]
    text = yaml.safe_dump_all(docs, sort_keys=False)
    result = cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=text, check=False)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_accepted(cluster: Cluster, namespace: str, path: Path) -> None:
    code, output = _apply_dry_run(cluster, namespace, [d.body for d in load_documents([path])])
    assert code == 0, output
    assert "(server dry run)" in output


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_example_is_refused_with_its_message(cluster: Cluster, namespace: str, path: Path) -> None:
    match = re.search(r"^# apiserver: (.+)$", path.read_text(), re.MULTILINE)
    assert match, f"{path} states no '# apiserver:' expectation"
    expected = match.group(1).strip()
    code, output = _apply_dry_run(cluster, namespace, [d.body for d in load_documents([path])])
    if expected.startswith("accepts"):
        assert code == 0, output  # a cross-object problem: the operator reports it, not the schema
    else:
        assert code != 0, output
        assert expected in output, output


def _job(name: str, namespace: str, **training: object) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "model": {"source": "tiny://llama"},
                "datasets": [{"ref": "data"}],
                "method": {"stage": "sft"},
                "training": {"maxSteps": 10, **training},
            },
        }
    )


def test_spec_is_immutable_except_suspend(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-f", "-", stdin=_job("frozen", namespace))
    changed = cluster.kubectl("apply", "-f", "-", stdin=_job("frozen", namespace, maxSteps=20), check=False)
    assert changed.returncode != 0
    assert "spec is immutable after creation, except suspend" in changed.stderr
    added = cluster.kubectl(
        "patch",
        "ftj",
        "frozen",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"queueName":"q"}}',
        check=False,
    )
    assert added.returncode != 0 and "immutable" in added.stderr
    cluster.kubectl(
        "patch", "ftj", "frozen", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}'
    )
    stored = cluster.kubectl("get", "ftj", "frozen", "-n", namespace, "-o", "yaml")
    assert yaml.safe_load(stored.stdout)["spec"]["suspend"] is True


def test_status_is_a_subresource_and_printer_columns_show_it(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-f", "-", stdin=_job("watched", namespace))
    ignored = cluster.kubectl(
        "patch", "ftj", "watched", "-n", namespace, "--type=merge", "-p", '{"status":{"phase":"Running"}}'
    )
    assert "no change" in ignored.stdout  # the main resource ignores status writes
    cluster.kubectl(
        "patch", "ftj", "watched", "-n", namespace, "--subresource=status", "--type=merge", "-p",
        '{"status":{"phase":"Pending","reason":"PodsPending","progress":{"step":5,"percent":50,"loss":1.25,'
        '"eta":"2m","display":{"percent":"50%","loss":"1.25"}}}}',
    )  # fmt: skip
    table = cluster.kubectl("get", "ftj", "watched", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "STAGE", "MODEL", "PROGRESS", "LOSS", "ETA", "REASON", "AGE"]
    assert table[1].split()[:8] == [
        "watched",
        "Pending",
        "sft",
        "tiny://llama",
        "50%",
        "1.25",
        "2m",
        "PodsPending",
    ]
    listed = cluster.kubectl("get", "finetune", "-n", namespace).stdout  # the category lists all our kinds
    assert "finetunejob.finetune.dev/watched" in listed
    explained = cluster.kubectl("explain", "finetunejob.spec.method.lora.rank").stdout
    assert "Rank of the LoRA matrices." in explained
