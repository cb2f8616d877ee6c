"""Reading the trainer's progress record (``<output.uri>/progress.json``) from object storage."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from finetune_api.common import OutputSpec
from finetune_api.progress import PROGRESS_KEY

from . import metrics

log = logging.getLogger(__name__)
# Short timeouts and one retry: a slow store delays this one reading, never a reconcile for long.
_CONFIG = Config(
    connect_timeout=3,
    read_timeout=5,
    retries={"max_attempts": 2, "mode": "standard"},
    s3={"addressing_style": "path"},
)


def progress_location(uri: str) -> tuple[str, str] | None:
    """(bucket, key) of the progress record under an ``s3://bucket/prefix`` URI; None for other schemes."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        return None
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/{PROGRESS_KEY}" if prefix else PROGRESS_KEY


def read_progress(output: OutputSpec, credentials: dict[str, str] | None) -> dict[str, Any] | None:
    """The record as a dict, or None when absent or unreadable (logged without the credentials)."""
    where = progress_location(output.uri)
    if where is None:
        return None
    creds = credentials or {}
    s3 = boto3.client(
        "s3",
        endpoint_url=output.endpoint or creds.get("endpoint"),
        region_name=output.region or creds.get("region") or "us-east-1",
        aws_access_key_id=creds.get("accessKeyId"),
        aws_secret_access_key=creds.get("secretAccessKey"),
        aws_session_token=creds.get("sessionToken"),
        config=_CONFIG,
    )
    try:
        body = s3.get_object(Bucket=where[0], Key=where[1])["Body"].read()
        record = json.loads(body)
    except ClientError as exc:
        outcome = "absent" if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404") else "error"
        metrics.PROGRESS_READS.labels(outcome=outcome).inc()
        if outcome == "error":
            log.warning("reading %s failed: %s", output.uri, exc.response.get("Error", {}).get("Code"))
        return None
    except (BotoCoreError, ValueError) as exc:
        metrics.PROGRESS_READS.labels(outcome="error").inc()
        log.warning("reading %s failed: %s", output.uri, type(exc).__name__)
        return None
    metrics.PROGRESS_READS.labels(outcome="ok").inc()
    return record if isinstance(record, dict) else None
