"""Object storage for the trainer: ``s3://bucket/prefix``, ``file://`` and local paths.

Artifacts are directories uploaded file by file with a ``manifest.json`` (path, size, sha256
per file) written last; an artifact without a matching manifest is incomplete and ignored.
"""

from .artifacts import (
    CheckpointRef,
    IncompleteArtifactError,
    download_with_manifest,
    is_complete,
    latest_complete_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    read_json,
    read_manifest,
    read_text,
    replace_artifact_file,
    restore_latest_checkpoint,
    upload_with_manifest,
    verify_artifact,
    write_json,
    write_text,
)
from .credentials import CREDENTIALS_DIR_ENV, S3Settings, load_s3_settings
from .manifest import MANIFEST_NAME, Manifest, ManifestEntry, build_manifest
from .stores import LocalStore, ObjectStore, S3Store, make_s3_client, open_store
from .uploader import BackgroundUploader, UploadError

__all__ = [
    "CREDENTIALS_DIR_ENV",
    "MANIFEST_NAME",
    "BackgroundUploader",
    "CheckpointRef",
    "IncompleteArtifactError",
    "LocalStore",
    "Manifest",
    "ManifestEntry",
    "ObjectStore",
    "S3Settings",
    "S3Store",
    "UploadError",
    "build_manifest",
    "download_with_manifest",
    "is_complete",
    "latest_complete_checkpoint",
    "list_checkpoints",
    "load_s3_settings",
    "make_s3_client",
    "open_store",
    "prune_checkpoints",
    "read_json",
    "read_manifest",
    "read_text",
    "replace_artifact_file",
    "restore_latest_checkpoint",
    "upload_with_manifest",
    "verify_artifact",
    "write_json",
    "write_text",
]
