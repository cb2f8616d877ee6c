"""finetune_trainer.storage: pure helpers directly, everything else against the real S3 server
(tests/fixtures/s3.py) and the local filesystem."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from finetune_trainer.storage import (
    MANIFEST_NAME,
    BackgroundUploader,
    IncompleteArtifactError,
    Manifest,
    ObjectStore,
    S3Settings,
    S3Store,
    UploadError,
    build_manifest,
    download_with_manifest,
    latest_complete_checkpoint,
    list_checkpoints,
    load_s3_settings,
    make_s3_client,
    open_store,
    prune_checkpoints,
    read_json,
    read_text,
    replace_artifact_file,
    restore_latest_checkpoint,
    upload_with_manifest,
    verify_artifact,
    write_json,
    write_text,
)
from tests.fixtures.s3 import S3Server

MiB = 1024 * 1024
# Small parts so that a 6 MiB file really goes up as a multipart upload.
SMALL_PARTS = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=4)


# ---- pure helpers ------------------------------------------------------------------------------


def _make_artifact(root: Path, *, big: bool = False) -> dict[str, bytes]:
    files = {
        "config.json": b'{"a": 1}\n',
        "weights/part-0.bin": os.urandom(1000),
        "weights/deep/empty.txt": b"",
    }
    if big:
        files["weights/big.bin"] = os.urandom(6 * MiB + 7)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def test_build_manifest_lists_every_file_with_size_and_sha256(tmp_path: Path) -> None:
    files = _make_artifact(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{}")  # a stale local manifest is not part of the artifact
    manifest = build_manifest(tmp_path)
    assert [e.path for e in manifest.files] == sorted(files)
    for entry in manifest.files:
        assert entry.size == len(files[entry.path])
        assert entry.sha256 == hashlib.sha256(files[entry.path]).hexdigest()
    assert manifest.total_size == sum(len(d) for d in files.values())
    assert Manifest.from_json(manifest.to_json()) == manifest


@pytest.mark.parametrize("bad_path", ["../outside", "/etc/passwd", "a/../../b", MANIFEST_NAME])
def test_manifest_refuses_paths_that_escape(bad_path: str) -> None:
    doc = {"files": [{"path": bad_path, "size": 1, "sha256": "0" * 64}]}
    with pytest.raises(ValueError, match="invalid artifact file path"):
        Manifest.from_json(json.dumps(doc))


def test_manifest_refuses_malformed_json() -> None:
    with pytest.raises(ValueError, match="malformed"):
        Manifest.from_json('{"files": [{"path": "a"}]}')


def test_settings_from_environment() -> None:
    env = {
        "AWS_ACCESS_KEY_ID": "AK",
        "AWS_SECRET_ACCESS_KEY": "SK",
        "AWS_ENDPOINT_URL": "http://generic:1",
        "AWS_ENDPOINT_URL_S3": "http://s3-specific:2",
        "AWS_REGION": "eu-west-1",
    }
    settings = load_s3_settings(env=env)
    assert settings == S3Settings("http://s3-specific:2", "AK", "SK", None, "eu-west-1")
    assert "SK" not in repr(settings)  # secrets stay out of logs


def test_secret_dir_wins_over_environment_and_endpoint_argument_wins_over_both(tmp_path: Path) -> None:
    (tmp_path / "accessKeyId").write_text("dir-ak\n")
    (tmp_path / "secretAccessKey").write_text("dir-sk\n")
    (tmp_path / "endpoint").write_text("http://from-dir:9000\n")
    env = {"AWS_ACCESS_KEY_ID": "env-ak", "AWS_SECRET_ACCESS_KEY": "env-sk", "AWS_SESSION_TOKEN": "env-tok"}
    settings = load_s3_settings(secret_dir=tmp_path, env=env)
    assert (settings.access_key_id, settings.secret_access_key) == ("dir-ak", "dir-sk")
    assert settings.endpoint_url == "http://from-dir:9000"
    assert settings.session_token is None, "an env token must not be paired with the secret's keys"
    env["FINETUNE_S3_CREDENTIALS_DIR"] = str(tmp_path)
    assert load_s3_settings(endpoint_url="http://spec:1", env=env).endpoint_url == "http://spec:1"


def test_secret_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_s3_settings(secret_dir=tmp_path / "missing", env={})
    (tmp_path / "accessKeyId").write_text("only-half")
    with pytest.raises(ValueError, match="both accessKeyId and secretAccessKey"):
        load_s3_settings(secret_dir=tmp_path, env={})


# ---- against real storage ----------------------------------------------------------------------


def _settings(server: S3Server) -> S3Settings:
    return S3Settings(server.endpoint_url, server.access_key, server.secret_key, None, server.region)


@pytest.fixture(params=["s3", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """The same tests on a real S3 bucket prefix and on a local directory."""
    if request.param == "file":
        return open_store((tmp_path / "bucket" / "runs" / "job-1").as_uri())
    server: S3Server = request.getfixturevalue("s3_server")
    bucket: str = request.getfixturevalue("s3_bucket")
    return open_store(f"s3://{bucket}/runs/job-1", settings=_settings(server), transfer=SMALL_PARTS)


def _assert_same_tree(files: dict[str, bytes], root: Path) -> None:
    for rel, data in files.items():
        assert (root / rel).read_bytes() == data, rel


def test_round_trip_with_manifest(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    files = _make_artifact(src, big=True)
    manifest = upload_with_manifest(src, store.child("adapter"))
    stored = read_json(store.child("adapter"), MANIFEST_NAME)
    assert {f["path"]: f["sha256"] for f in stored["files"]} == {e.path: e.sha256 for e in manifest.files}
    assert stored["totalSize"] == sum(len(d) for d in files.values())
    dest = tmp_path / "dest"
    assert download_with_manifest(store.child("adapter"), dest) == manifest
    _assert_same_tree(files, dest)
    assert Manifest.from_json((dest / MANIFEST_NAME).read_text()) == manifest


def test_replacing_one_file_of_an_artifact_rewrites_its_manifest(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _make_artifact(src)
    adapter = store.child("adapter")
    with pytest.raises(IncompleteArtifactError):  # only a complete artifact is patched
        replace_artifact_file(src, adapter, "README.md")
    before = upload_with_manifest(src, adapter)
    (src / "README.md").write_text("# the card, rewritten\n")
    after = replace_artifact_file(src, adapter, "README.md")
    assert verify_artifact(adapter, deep=True) == after
    assert {e.path for e in after.files} == {e.path for e in before.files} | {"README.md"}
    assert adapter.get_bytes("README.md") == b"# the card, rewritten\n"


class RecordingS3Store(S3Store):
    """The real S3 store, remembering the order in which keys were written; ``fail_on`` makes one
    file's upload fail as a lost connection would."""

    def __init__(self, base: S3Store, *, fail_on: str | None = None) -> None:
        super().__init__(base.uri, base.client, base.transfer)
        self.order: list[str] = []
        self.lock = threading.Lock()
        self.fail_on = fail_on

    def put_file(self, key: str, source: Path) -> None:
        if key == self.fail_on:
            raise OSError(f"connection lost while uploading {key}")
        super().put_file(key, source)
        with self.lock:
            self.order.append(key)

    def put_bytes(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        super().put_bytes(key, data, content_type=content_type)
        with self.lock:
            self.order.append(key)


def test_manifest_is_written_last_and_an_old_one_removed_first(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    base = open_store(f"s3://{s3_bucket}/art", settings=_settings(s3_server))
    assert isinstance(base, S3Store)
    src = tmp_path / "src"
    _make_artifact(src)
    upload_with_manifest(src, base)
    # A re-upload that fails half-way must not leave the old manifest vouching for new files.
    (src / "new.bin").write_bytes(b"x")
    recording = RecordingS3Store(base, fail_on="new.bin")
    with pytest.raises(OSError, match=r"new\.bin"):
        upload_with_manifest(src, recording)
    assert not base.exists(MANIFEST_NAME)
    recording = RecordingS3Store(base)
    upload_with_manifest(src, recording)
    assert recording.order[-1] == MANIFEST_NAME
    assert sorted(recording.order[:-1]) == sorted(e.path for e in build_manifest(src).files)


def _checkpoint(store: ObjectStore, tmp_path: Path, step: int) -> dict[str, bytes]:
    src = tmp_path / f"checkpoint-{step}"
    files = {"adapter.bin": os.urandom(2048), "trainer_state.json": json.dumps({"step": step}).encode()}
    for rel, data in files.items():
        src.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    upload_with_manifest(src, store.child(src.name))
    return files


def test_newest_complete_checkpoint_skips_incomplete_ones(store: ObjectStore, tmp_path: Path) -> None:
    assert latest_complete_checkpoint(store) is None
    _checkpoint(store, tmp_path, 1)
    good = _checkpoint(store, tmp_path, 2)
    _checkpoint(store, tmp_path, 3)
    store.child("checkpoint-3").delete(MANIFEST_NAME)  # crashed before the manifest
    _checkpoint(store, tmp_path, 4)
    size = len(store.child("checkpoint-4").get_bytes("adapter.bin"))
    store.child("checkpoint-4").put_bytes("adapter.bin", b"\0" * size)  # same size, other bytes
    _checkpoint(store, tmp_path, 5)
    store.child("checkpoint-5").delete("adapter.bin")  # a file never arrived
    _checkpoint(store, tmp_path, 10)
    write_text(store.child("checkpoint-10"), MANIFEST_NAME, "{not json")

    assert [r.step for r in list_checkpoints(store)] == [1, 2, 3, 4, 5, 10]
    latest = latest_complete_checkpoint(store, deep=True)
    assert latest is not None and latest.name == "checkpoint-2"
    assert latest.uri == str(store.uri.join("checkpoint-2"))
    # Without re-hashing, a same-size corruption is only caught at download time.
    shallow = latest_complete_checkpoint(store)
    assert shallow is not None and shallow.step == 4

    restored = restore_latest_checkpoint(store, tmp_path / "restore")
    assert restored is not None
    ref, local = restored
    assert ref.step == 2
    _assert_same_tree(good, local)
    assert not (tmp_path / "restore" / "checkpoint-4").exists()


def test_download_refuses_a_mismatching_file(store: ObjectStore, tmp_path: Path) -> None:
    _checkpoint(store, tmp_path, 7)
    ckpt = store.child("checkpoint-7")
    ckpt.put_bytes("trainer_state.json", b'{"step": 8}')
    with pytest.raises(IncompleteArtifactError, match=r"sha256 of trainer_state\.json"):
        download_with_manifest(ckpt, tmp_path / "dest")
    assert not (tmp_path / "dest" / "trainer_state.json").exists()


def test_prune_keeps_the_newest_complete_and_leaves_newer_uploads_alone(
    store: ObjectStore, tmp_path: Path
) -> None:
    for step in (1, 2, 3, 4, 5, 6):
        _checkpoint(store, tmp_path, step)
    store.child("checkpoint-4").delete(MANIFEST_NAME)  # an abandoned upload among the kept ones
    _checkpoint(store, tmp_path, 7)
    store.child("checkpoint-7").delete(MANIFEST_NAME)  # still uploading
    assert prune_checkpoints(store, keep=2) == [
        "checkpoint-1",
        "checkpoint-2",
        "checkpoint-3",
        "checkpoint-4",
    ]
    assert [r.name for r in list_checkpoints(store)] == ["checkpoint-5", "checkpoint-6", "checkpoint-7"]
    assert store.list_files("checkpoint-7")  # the in-flight upload's files are untouched
    with pytest.raises(ValueError, match="at least 1"):
        prune_checkpoints(store, keep=0)


def test_delete_dir_does_not_touch_a_sibling_with_the_same_prefix(store: ObjectStore) -> None:
    store.put_bytes("checkpoint-1/a", b"1")
    store.put_bytes("checkpoint-1/sub/deep/b", b"2")
    store.put_bytes("checkpoint-10/a", b"10")
    assert store.delete_dir("checkpoint-1") == 2
    assert store.list_files() == {"checkpoint-10/a": 2}
    assert store.list_dirs() == ["checkpoint-10"]
    with pytest.raises(ValueError, match="root"):
        store.delete_dir("")


def test_small_objects_and_missing_keys(store: ObjectStore) -> None:
    write_json(store, "meta/state.json", {"b": [1, 2], "a": None})
    write_text(store, "meta/note.txt", "héllo\n")
    assert read_json(store, "meta/state.json") == {"a": None, "b": [1, 2]}
    assert read_text(store, "meta/note.txt") == "héllo\n"
    assert store.exists("meta/note.txt") and not store.exists("meta/nope.txt")
    for call in (lambda: store.get_bytes("nope"), lambda: store.get_file("nope", Path("/tmp/never"))):
        with pytest.raises(FileNotFoundError):
            call()
    assert store.list_dirs() == ["meta"]


def test_credentials_from_a_mounted_secret_dir(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "accessKeyId").write_text(s3_server.access_key)
    (secret / "secretAccessKey").write_text(s3_server.secret_key)
    (secret / "endpoint").write_text(s3_server.endpoint_url)
    settings = load_s3_settings(secret_dir=secret, env={})
    store = open_store(f"s3://{s3_bucket}/x", settings=settings)
    store.put_bytes("ok.txt", b"ok")
    assert s3_server.client().get_object(Bucket=s3_bucket, Key="x/ok.txt")["Body"].read() == b"ok"
    (secret / "secretAccessKey").write_text("wrong")
    client = make_s3_client(load_s3_settings(secret_dir=secret, env={}))
    with pytest.raises(ClientError):
        client.put_object(Bucket=s3_bucket, Key="x/denied.txt", Body=b"no")


def test_background_uploader_does_not_block_and_prunes(store: ObjectStore, tmp_path: Path) -> None:
    gate = threading.Event()
    with BackgroundUploader() as uploader:
        uploader.submit(lambda: gate.wait(timeout=60))
        local = {}
        for step in (10, 20, 30):
            src = tmp_path / f"checkpoint-{step}"
            local[step] = _make_artifact(src)
            uploader.submit_checkpoint(src, store, keep=2)
        # Everything is queued behind the gate: submitting did not wait for any upload.
        assert uploader.pending() == 4
        assert list_checkpoints(store) == []
        gate.set()
        uploader.wait()
        assert uploader.pending() == 0
    assert [r.step for r in list_checkpoints(store)] == [20, 30]
    latest = latest_complete_checkpoint(store, deep=True)
    assert latest is not None and latest.step == 30


def test_background_uploader_surfaces_the_first_error(s3_server: S3Server, tmp_path: Path) -> None:
    missing_bucket = open_store("s3://no-such-bucket-for-this-test/x", settings=_settings(s3_server))
    src = tmp_path / "checkpoint-1"
    _make_artifact(src)
    uploader = BackgroundUploader()
    uploader.submit_checkpoint(src, missing_bucket)
    with pytest.raises(UploadError, match="background upload failed") as info:
        uploader.wait()
    assert isinstance(info.value.__cause__, ClientError)
    with pytest.raises(UploadError):
        uploader.submit(lambda: None)
    with pytest.raises(UploadError):
        uploader.close()
