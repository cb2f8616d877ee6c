"""finetune_api.uris: the one reading of the project's URIs, shared by the API's rules, the operator's
builders, storage, the model loader, the data worker and the export."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune_api.uris import (
    DATASET_SCHEMES,
    MODEL_SCHEMES,
    Location,
    Scheme,
    StorageURI,
    hf_repo,
    is_local,
    local_path,
    parse_location,
    parse_uri,
    prepared_root,
    pvc_claim,
    scheme_of,
)

# ---- file:// and plain paths -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("file:///data/x.jsonl", "/data/x.jsonl"),
        ("file://localhost/data/x", "/data/x"),
        ("/abs/plain", "/abs/plain"),
    ],
)
def test_absolute_forms(uri: str, expected: str) -> None:
    assert local_path(uri) == Path(expected)


def test_relative_forms_resolve_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert local_path("file://runs/job") == tmp_path / "runs" / "job"
    assert local_path("file://./runs/job") == tmp_path / "runs" / "job"
    assert local_path("file://examples/data/a%20b.jsonl") == tmp_path / "examples" / "data" / "a b.jsonl"
    assert local_path("runs/job") == tmp_path / "runs" / "job"


def test_local_path_refuses_other_schemes() -> None:
    with pytest.raises(ValueError, match=r"^uri: unsupported scheme 's3' in 's3://b/k' \(use file://\)$"):
        local_path("s3://b/k")


# ---- each scheme -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("hf://Qwen/Qwen2.5-0.5B", Location("hf://Qwen/Qwen2.5-0.5B", Scheme.HF, path="Qwen/Qwen2.5-0.5B")),
        ("hf://gpt2", Location("hf://gpt2", Scheme.HF, path="gpt2")),
        ("hf://org/name@v1", Location("hf://org/name@v1", Scheme.HF, path="org/name", revision="v1")),
        ("s3://models/base/llama", Location("s3://models/base/llama", Scheme.S3, "models", "base/llama")),
        ("s3://bucket/", Location("s3://bucket/", Scheme.S3, "bucket", "")),
        (
            "pvc://weights/llama-3/8b",
            Location("pvc://weights/llama-3/8b", Scheme.PVC, "weights", "llama-3/8b"),
        ),
        ("pvc://claim/a%20b/", Location("pvc://claim/a%20b/", Scheme.PVC, "claim", "a b")),
        ("file:///srv/models/x", Location("file:///srv/models/x", Scheme.FILE, path="/srv/models/x")),
        ("/srv/models/x", Location("/srv/models/x", Scheme.PATH, path="/srv/models/x")),
        ("tiny://qwen2?layers=3", Location("tiny://qwen2?layers=3", Scheme.TINY, "qwen2")),
        ("https://host/d/x.jsonl", Location("https://host/d/x.jsonl", Scheme.HTTPS)),
    ],
)
def test_parse_location(uri: str, expected: Location) -> None:
    assert parse_location(uri) == expected


def test_accessors_of_each_scheme() -> None:
    s3 = parse_location("s3://models/base/llama")
    assert (s3.bucket, s3.key) == ("models", "base/llama")
    pvc = parse_location("pvc://weights/llama-3/8b")
    assert (pvc.claim, pvc.path) == ("weights", "llama-3/8b")
    hf = parse_location("hf://org/name@main")
    assert (hf.repo, hf.revision, hf.hub_id) == ("org/name", "main", "org/name@main")
    assert parse_location("hf://org/name").hub_id == "org/name"
    assert parse_location("file:///srv/x").local_path == Path("/srv/x")
    with pytest.raises(ValueError, match=r"'s3://models/base/llama' is not a pvc:// URI"):
        _ = s3.claim
    with pytest.raises(ValueError, match=r"^'hf://org/name@main' is not a file:// URI$"):
        _ = hf.local_path


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("", "spec.model.source: must not be empty"),
        ("s3:///key", "spec.model.source: 's3:///key' has no bucket (expected s3://bucket/prefix)"),
        ("s3://bucket/a/../b", "spec.model.source: 's3://bucket/a/../b' must not contain '..' segments"),
        ("s3://../b", "spec.model.source: 's3://../b' must not contain '..' segments"),
        ("pvc:///data", "spec.model.source: 'pvc:///data' has no claim (expected pvc://claim/path)"),
        ("pvc://claim/../etc", "spec.model.source: 'pvc://claim/../etc' must not contain '..' segments"),
        (
            "pvc://claim/%2e%2e/etc",
            "spec.model.source: 'pvc://claim/%2e%2e/etc' must not contain '..' segments",
        ),
        ("hf://", "spec.model.source: 'hf://' must be hf://org/name"),
        ("hf://a/b/c", "spec.model.source: 'hf://a/b/c' must be hf://org/name"),
        (
            "ftp://x/y",
            "spec.model.source: unsupported scheme 'ftp' in 'ftp://x/y' "
            "(use hf://, s3://, pvc://, file:// or tiny://)",
        ),
        (
            "https://x/y",
            "spec.model.source: unsupported scheme 'https' in 'https://x/y' "
            "(use hf://, s3://, pvc://, file:// or tiny://)",
        ),
        ("s3://[bucket/x", "spec.model.source: 's3://[bucket/x' is not a URI"),
    ],
)
def test_malformed_uris_are_refused_naming_the_field(uri: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_location(uri, field="spec.model.source", schemes=MODEL_SCHEMES)
    assert str(info.value).startswith(message)


def test_dataset_schemes_take_the_web_and_not_tiny() -> None:
    assert parse_location("http://h/x.csv", schemes=DATASET_SCHEMES).scheme is Scheme.HTTP
    with pytest.raises(
        ValueError, match=r"^source: unsupported scheme 'tiny' in 'tiny://llama' \(use s3://, hf://"
    ):
        parse_location("tiny://llama", field="source", schemes=DATASET_SCHEMES)


# ---- the helpers: they read one thing and never raise -----------------------------------------


@pytest.mark.parametrize(
    ("uri", "scheme"),
    [
        ("hf://org/name", Scheme.HF),
        ("S3://bucket", Scheme.S3),
        ("pvc:///no-claim", Scheme.PVC),
        ("file://x", Scheme.FILE),
        ("tiny://llama?layers=2", Scheme.TINY),
        ("https://h/x", Scheme.HTTPS),
        ("http://h/x", Scheme.HTTP),
        ("relative/path", Scheme.PATH),
        ("/abs/path", Scheme.PATH),
        ("gs://bucket", None),
        ("s3://[bad", Scheme.S3),
    ],
)
def test_scheme_of(uri: str, scheme: Scheme | None) -> None:
    assert scheme_of(uri) is scheme


def test_is_local() -> None:
    assert is_local("file://./runs/x") and is_local("/abs") and is_local("rel/x")
    assert not is_local("s3://b/x") and not is_local("pvc://c/x") and not is_local("hf://o/n")


def test_pvc_claim() -> None:
    assert pvc_claim("pvc://weights/llama/8b") == "weights"
    assert pvc_claim("pvc://weights") == "weights"
    assert pvc_claim("s3://weights/llama") is None
    assert pvc_claim("pvc:///llama") is None
    assert pvc_claim("pvc://c/../x") is None


def test_hf_repo() -> None:
    assert hf_repo("hf://org/name") == "org/name"
    assert hf_repo("hf://org/name@v2") == "org/name"
    assert hf_repo("hf://gpt2") == "gpt2"
    assert hf_repo("s3://org/name") is None
    assert hf_repo("hf://a/b/c") is None


# ---- storage locations -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://bucket", StorageURI("s3", "bucket", "")),
        ("s3://bucket/", StorageURI("s3", "bucket", "")),
        ("s3://bucket/runs/job-1/", StorageURI("s3", "bucket", "runs/job-1")),
        ("file:///tmp/out", StorageURI("file", "", "/tmp/out")),
        ("file://localhost/tmp/out", StorageURI("file", "", "/tmp/out")),
        ("/tmp/out/../out2", StorageURI("file", "", "/tmp/out2")),
    ],
)
def test_parse_uri(uri: str, expected: StorageURI) -> None:
    assert parse_uri(uri) == expected


def test_parse_relative_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_uri("out/run") == StorageURI("file", "", str(tmp_path / "out" / "run"))


@pytest.mark.parametrize(
    ("uri", "needle"),
    [
        ("", "must not be empty"),
        ("s3:///prefix", "no bucket"),
        ("gs://bucket/x", "unsupported scheme 'gs'"),
        ("s3://bucket/a/../b", "'..'"),
    ],
)
def test_parse_uri_errors_name_the_field(uri: str, needle: str) -> None:
    with pytest.raises(ValueError, match=r"output\.uri") as info:
        parse_uri(uri, field="output.uri")
    assert needle in str(info.value)


def test_join_and_str_round_trip() -> None:
    base = parse_uri("s3://bucket/runs")
    assert str(base.join("checkpoint-5", "model.bin")) == "s3://bucket/runs/checkpoint-5/model.bin"
    assert str(parse_uri("s3://bucket").join("a/")) == "s3://bucket/a"
    assert parse_uri(str(base.join("x"))) == base.join("x")
    with pytest.raises(ValueError):
        base.join("../escape")


def test_prepared_root_refuses_what_is_not_storage() -> None:
    assert prepared_root("s3://bucket/team/job-a") == "s3://bucket/finetune-prepared"
    with pytest.raises(ValueError, match=r"^spec\.output\.uri: unsupported scheme 'hf'"):
        prepared_root("hf://org/name")
