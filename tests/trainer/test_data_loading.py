"""Loading: every file type, auto detection, local/file/pvc/https/s3 sources, maxSamples, streaming."""

from __future__ import annotations

import csv
import json
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, IterableDataset

from finetune_trainer.data.config import DatasetConfig, Shape
from finetune_trainer.data.loader import align_rows, file_builder, load_rows

ROWS = [{"instruction": f"question {i}", "input": "", "output": f"answer {i}"} for i in range(12)]


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    """``rows`` in the file type named by ``path``'s extension."""
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".csv":
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif suffix == ".arrow":
        table = pa.Table.from_pylist(rows)
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    else:
        raise AssertionError(suffix)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet", ".arrow"])
def test_each_file_type_loads_by_extension(tmp_path: Path, data_cache_dir: Path, suffix: str) -> None:
    path = write_rows(tmp_path / f"data{suffix}", ROWS)
    ds = load_rows(DatasetConfig(source=str(path)), cache_dir=data_cache_dir)
    assert isinstance(ds, Dataset)
    assert len(ds) == len(ROWS)
    assert ds[5]["instruction"] == "question 5"
    assert ds[5]["output"] == "answer 5"


def test_txt_loads_one_row_per_line_as_text_format(tmp_path: Path, data_cache_dir: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("first line\nsecond line\nthird line\n")
    cfg = DatasetConfig(source=str(path), format="text")
    result = align_rows(load_rows(cfg, cache_dir=data_cache_dir), cfg, Shape.TEXT)
    assert [row["_prompt"][0]["content"] for row in result.dataset] == [
        "first line",
        "second line",
        "third line",
    ]


def test_declared_file_type_overrides_the_extension(tmp_path: Path, data_cache_dir: Path) -> None:
    path = write_rows(tmp_path / "data.jsonl", ROWS)
    renamed = path.rename(tmp_path / "data.dat")
    with pytest.raises(ValueError, match="fileType"):
        load_rows(DatasetConfig(source=str(renamed)), cache_dir=data_cache_dir)
    ds = load_rows(DatasetConfig(source=str(renamed), file_type="jsonl"), cache_dir=data_cache_dir)
    assert len(ds) == len(ROWS)


def test_file_builder_refuses_mixed_folders() -> None:
    with pytest.raises(ValueError, match="fileType"):
        file_builder((Path("a.jsonl"), Path("b.csv")), "auto")
    assert file_builder((Path("a.jsonl"), Path("b.json")), "auto") == "json"


def test_folder_file_uri_and_pvc_sources(
    tmp_path: Path, data_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "claim" / "sets" / "qa"
    folder.mkdir(parents=True)
    write_rows(folder / "part-0.jsonl", ROWS[:5])
    write_rows(folder / "part-1.jsonl", ROWS[5:])
    (folder / "README.md").write_text("not data")
    assert len(load_rows(DatasetConfig(source=str(folder)), cache_dir=data_cache_dir)) == 12
    assert len(load_rows(DatasetConfig(source=folder.as_uri()), cache_dir=data_cache_dir)) == 12
    monkeypatch.setenv("FINETUNE_PVC_ROOT", str(tmp_path))
    ds = load_rows(DatasetConfig(source="pvc://claim/sets/qa/part-1.jsonl"), cache_dir=data_cache_dir)
    assert ds[0]["instruction"] == "question 5"


def test_missing_source_names_it(tmp_path: Path, data_cache_dir: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_rows(DatasetConfig(source=str(tmp_path / "nope.jsonl")), cache_dir=data_cache_dir)
    with pytest.raises(ValueError, match="unsupported scheme"):
        load_rows(DatasetConfig(source="ftp://host/x.jsonl"), cache_dir=data_cache_dir)


def test_max_samples_and_split_slice(tmp_path: Path, data_cache_dir: Path) -> None:
    path = write_rows(tmp_path / "data.parquet", ROWS)
    assert len(load_rows(DatasetConfig(source=str(path), max_samples=4), cache_dir=data_cache_dir)) == 4
    assert len(load_rows(DatasetConfig(source=str(path), split="train[:3]"), cache_dir=data_cache_dir)) == 3


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".txt"])
def test_streaming_returns_an_iterable_dataset(tmp_path: Path, data_cache_dir: Path, suffix: str) -> None:
    path = tmp_path / f"data{suffix}"
    if suffix == ".txt":
        path.write_text("\n".join(r["instruction"] for r in ROWS) + "\n")
        cfg = DatasetConfig(source=str(path), format="text", max_samples=7)
        shape = Shape.TEXT
    else:
        write_rows(path, ROWS)
        cfg, shape = DatasetConfig(source=str(path), max_samples=7), Shape.SUPERVISED
    ds = load_rows(cfg, cache_dir=data_cache_dir, streaming=True)
    assert isinstance(ds, IterableDataset)
    result = align_rows(ds, cfg, shape)
    rows = list(result.dataset)
    assert len(rows) == 7
    assert rows[2]["_prompt"][-1]["content"] == "question 2"


def test_rows_with_disagreeing_types_are_reported_not_fatal(tmp_path: Path, data_cache_dir: Path) -> None:
    """pyarrow needs one schema per file; a row with a string where others have a list must not sink the load."""
    rows: list[dict[str, object]] = [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
        for _ in range(4)
    ]
    rows[2] = {"conversations": "not a list"}
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken json\n")
    cfg = DatasetConfig(source=str(path), format="sharegpt")
    result = align_rows(load_rows(cfg, cache_dir=data_cache_dir), cfg, Shape.SUPERVISED)
    assert result.num_rows == 3
    assert result.errors == [
        "row 2: field 'conversations': expected a list of messages",
        "row 4: field '<json>': invalid JSON (Expecting property name enclosed in double quotes at column 2)",
    ]


@pytest.fixture
def data_http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real HTTP server on 127.0.0.1 serving a folder."""
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(SimpleHTTPRequestHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_https_source_is_downloaded_once(data_http_root: tuple[Path, str], data_cache_dir: Path) -> None:
    root, url = data_http_root
    write_rows(root / "remote.jsonl", ROWS)
    cfg = DatasetConfig(source=f"{url}/remote.jsonl")
    assert len(load_rows(cfg, cache_dir=data_cache_dir)) == 12
    (root / "remote.jsonl").unlink()  # a second load must come from the download cache
    assert len(load_rows(cfg, cache_dir=data_cache_dir)) == 12


def test_s3_object_and_prefix(
    s3_server, s3_bucket: str, tmp_path: Path, data_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_REGION", s3_server.region)
    client = s3_server.client()
    for name, part in (("part-0.jsonl", ROWS[:4]), ("part-1.jsonl", ROWS[4:])):
        client.upload_file(str(write_rows(tmp_path / name, part)), s3_bucket, f"sets/qa/{name}")
    prefix = DatasetConfig(source=f"s3://{s3_bucket}/sets/qa", s3_endpoint=s3_server.endpoint_url)
    assert len(load_rows(prefix, cache_dir=data_cache_dir)) == 12
    single = DatasetConfig(
        source=f"s3://{s3_bucket}/sets/qa/part-1.jsonl", s3_endpoint=s3_server.endpoint_url
    )
    ds = load_rows(single, cache_dir=data_cache_dir)
    assert ds[0]["instruction"] == "question 4"


def test_s3_dataset_read_with_its_own_mounted_keys(
    s3_server, s3_bucket: str, tmp_path: Path, data_cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """In a pod the environment holds the *output* keys; a Dataset's own Secret is a mounted folder."""
    from finetune_api.dataset import DatasetSpec
    from finetune_trainer.data import dataset_config

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the-output-keys-not-these")
    secret = tmp_path / "dataset-secret"
    secret.mkdir()
    (secret / "accessKeyId").write_text(s3_server.access_key)
    (secret / "secretAccessKey").write_text(s3_server.secret_key)
    monkeypatch.setenv("FINETUNE_DATASET_CREDENTIALS", json.dumps({"qa": str(secret)}))
    s3_server.client().upload_file(
        str(write_rows(tmp_path / "qa.jsonl", ROWS)), s3_bucket, "private/qa.jsonl"
    )
    spec = DatasetSpec(source=f"s3://{s3_bucket}/private/qa.jsonl", endpoint=s3_server.endpoint_url)
    cfg = dataset_config(spec, name="qa")
    assert cfg.credentials_dir == str(secret)
    assert len(load_rows(cfg, cache_dir=data_cache_dir)) == 12
