"""Where the S3 client's endpoint and keys come from.

Order: explicit arguments (the spec's ``output.endpoint``), then a mounted Kubernetes secret
directory (files ``accessKeyId``, ``secretAccessKey`` and optionally ``endpoint``, ``region``,
``sessionToken``), then the standard AWS environment variables. Keys left unset fall through to
boto3's own chain (instance roles, IRSA web identity).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from finetune_api.pod import S3_CREDENTIALS_DIR_ENV as CREDENTIALS_DIR_ENV

# The operator mounts the output credentials secret here and names the directory in this variable.
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class S3Settings:
    """Connection settings for one S3-compatible endpoint; ``None`` means boto3's default."""

    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    region: str = DEFAULT_REGION


def _read_secret_file(directory: Path, name: str) -> str | None:
    path = directory / name
    if not path.is_file():
        return None
    value = path.read_text(encoding="utf-8").strip()
    return value or None


def load_s3_settings(
    *,
    endpoint_url: str | None = None,
    secret_dir: Path | str | None = None,
    env: Mapping[str, str] | None = None,
) -> S3Settings:
    """Resolve S3 settings from arguments, a secret directory and the environment.

    ``secret_dir`` defaults to ``$FINETUNE_S3_CREDENTIALS_DIR`` when set.

    Raises:
        ValueError: the secret directory is missing, or holds only one of the two keys.
    """
    environ = os.environ if env is None else env
    directory = secret_dir if secret_dir is not None else environ.get(CREDENTIALS_DIR_ENV) or None
    from_dir: dict[str, str | None] = {}
    if directory is not None:
        path = Path(directory)
        if not path.is_dir():
            raise ValueError(f"credentials directory {path} does not exist (is the secret mounted?)")
        names = ("accessKeyId", "secretAccessKey", "endpoint", "region", "sessionToken")
        from_dir = {name: _read_secret_file(path, name) for name in names}
        if (from_dir["accessKeyId"] is None) != (from_dir["secretAccessKey"] is None):
            raise ValueError(f"credentials directory {path} must hold both accessKeyId and secretAccessKey")

    def pick(secret_key: str, *env_keys: str) -> str | None:
        if from_dir.get(secret_key):
            return from_dir[secret_key]
        return next((environ[k] for k in env_keys if environ.get(k)), None)

    keys_from_dir = from_dir.get("accessKeyId") is not None
    # A session token belongs to the keys it was issued with: never pair the secret's keys with
    # a token from the environment.
    token = from_dir.get("sessionToken") if keys_from_dir else environ.get("AWS_SESSION_TOKEN") or None
    return S3Settings(
        endpoint_url=endpoint_url or pick("endpoint", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        access_key_id=pick("accessKeyId", "AWS_ACCESS_KEY_ID"),
        secret_access_key=pick("secretAccessKey", "AWS_SECRET_ACCESS_KEY"),
        session_token=token,
        region=pick("region", "AWS_REGION", "AWS_DEFAULT_REGION") or DEFAULT_REGION,
    )
