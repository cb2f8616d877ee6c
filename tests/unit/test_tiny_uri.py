"""The API's tiny:// URI grammar (finetune_api.tiny): its defaults, overrides and refusals, each naming the field."""

from __future__ import annotations

import pytest

from finetune_api.tiny import TinySpec, parse_tiny_uri
from finetune_api.validation import validate_manifest


def test_parse_defaults_and_overrides() -> None:
    assert parse_tiny_uri("tiny://llama") == TinySpec(arch="llama")
    spec = parse_tiny_uri("tiny://qwen2?layers=4&hidden=256&heads=8&kv_heads=2&seed=0")
    assert (spec.arch, spec.layers, spec.hidden, spec.heads, spec.kv_heads) == ("qwen2", 4, 256, 8, 2)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("tiny://gpt5", "tiny://<arch>"),
        ("tiny://llama/extra", "tiny://<arch>"),
        ("tiny://llama?depth=3", "unknown tiny:// option 'depth'"),
        ("tiny://llama?layers=two", "layers='two' must be a positive integer"),
        ("tiny://llama?layers=0", "must be a positive integer"),
        ("tiny://llama?hidden=65", "hidden must be a multiple of heads"),
        ("tiny://llama?heads=4&kv_heads=3", "heads a multiple of kv_heads"),
        ("tiny://llama?layers", "key=value pairs"),
        ("tiny://llama?layers=2&&", "key=value pairs"),
    ],
)
def test_parse_rejects_bad_uris_naming_the_field(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"^spec\.model\.source: ") as err:
        parse_tiny_uri(uri)
    assert message in str(err.value)


def test_validate_refuses_a_bad_tiny_source_in_a_job_and_an_export() -> None:
    job = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "j"},
           "spec": {"model": {"source": "tiny://llama?hidden=65"}, "datasets": [{"ref": "d"}],
                    "method": {"stage": "sft"}}}  # fmt: skip
    assert [e.path for e in validate_manifest(job)] == ["spec.model.source"]
    export = {"apiVersion": "finetune.dev/v1alpha1", "kind": "Export", "metadata": {"name": "e"},
              "spec": {"model": "tiny://llama?depth=2", "adapter": "s3://b/a", "output": {"uri": "s3://b/o"}}}  # fmt: skip
    assert [str(e) for e in validate_manifest(export)] == [
        "spec.model: unknown tiny:// option 'depth'; known: "
        "heads, hidden, intermediate, kv_heads, layers, max_positions, seed, vocab"
    ]
