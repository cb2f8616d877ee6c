"""Reading the trainer's progress record (``<output.uri>/progress.json``) from object storage.

One signed GET of one small object: botocore signs it (SigV4, the credentials chain of boto3 when
the job names no Secret) and urllib3 sends it. An S3 client would load the whole S3 service model
(~50 MB of memory, ~0.2 CPU-s) to make this same request.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache
from typing import Any
from urllib.parse import quote, urlsplit

import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError
from botocore.httpsession import get_cert_path
from botocore.session import get_session

from finetune_api.common import OutputSpec
from finetune_api.progress import PROGRESS_KEY

from . import metrics

log = logging.getLogger(__name__)
# Short timeouts and one retry of a failed connection or a 5xx: a slow store delays this one
# reading, never a reconcile for long (boto3's "standard" mode with max_attempts=2, as before).
_TIMEOUT = urllib3.Timeout(connect=3, read=5)
_RETRY = urllib3.Retry(
    total=1, status_forcelist=(500, 502, 503, 504), backoff_factor=0.2, raise_on_status=False
)
_POOL = urllib3.PoolManager(maxsize=4, ca_certs=get_cert_path(True))  # botocore's CA bundle, as boto3


def progress_location(uri: str) -> tuple[str, str] | None:
    """(bucket, key) of the progress record under an ``s3://bucket/prefix`` URI; None for other schemes."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        return None
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/{PROGRESS_KEY}" if prefix else PROGRESS_KEY


def object_url(endpoint: str | None, region: str, bucket: str, key: str) -> str:
    """Path-style URL of an object: on the endpoint, else AWS's regional S3 endpoint."""
    base = (endpoint or f"https://s3.{region}.amazonaws.com").rstrip("/")
    return f"{base}/{bucket}/{quote(key)}"


@lru_cache(maxsize=1)
def _default_credentials() -> Credentials | None:
    # boto3's chain (environment, shared files, web identity, container/instance metadata), resolved once;
    # botocore refreshes temporary ones itself.
    return get_session().get_credentials()


def _credentials(secret: dict[str, str]) -> Credentials | None:
    if secret.get("accessKeyId") and secret.get("secretAccessKey"):
        return Credentials(secret["accessKeyId"], secret["secretAccessKey"], secret.get("sessionToken"))
    return _default_credentials()


def _signed_get(url: str, region: str, creds: Credentials) -> urllib3.BaseHTTPResponse:
    request = AWSRequest(method="GET", url=url)
    S3SigV4Auth(creds, "s3", region).add_auth(request)
    return _POOL.request("GET", url, headers=dict(request.headers.items()), timeout=_TIMEOUT, retries=_RETRY)


def read_progress(output: OutputSpec, credentials: dict[str, str] | None) -> dict[str, Any] | None:
    """The record as a dict, or None when absent or unreadable (logged without the credentials)."""
    where = progress_location(output.uri)
    if where is None:
        return None
    secret = credentials or {}
    region = output.region or secret.get("region") or "us-east-1"
    url = object_url(output.endpoint or secret.get("endpoint"), region, *where)
    try:
        creds = _credentials(secret)
        if creds is None:
            raise ValueError("no credentials")  # boto3 says NoCredentialsError
        response = _signed_get(url, region, creds)
        if response.status != 200:
            outcome = "absent" if response.status == 404 else "error"
            metrics.PROGRESS_READS.labels(outcome=outcome).inc()
            if outcome == "error":
                log.warning("reading %s failed: HTTP %s", output.uri, response.status)
            return None
        record = json.loads(response.data)
    except (BotoCoreError, urllib3.exceptions.HTTPError, ValueError) as exc:
        metrics.PROGRESS_READS.labels(outcome="error").inc()
        log.warning("reading %s failed: %s", output.uri, type(exc).__name__)
        return None
    metrics.PROGRESS_READS.labels(outcome="ok").inc()
    return record if isinstance(record, dict) else None
