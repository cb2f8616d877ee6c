"""Reading the trainer's progress record (``<output.uri>/progress.json``) from object storage.

One signed GET of one small object: botocore signs it (SigV4, the credentials chain of boto3 when
the job names no Secret) and urllib3 sends it. An S3 client would load the whole S3 service model
(~50 MB of memory, ~0.2 CPU-s) to make this same request.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from urllib.parse import quote

import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import BotoCoreError
from botocore.httpsession import get_cert_path
from botocore.session import get_session

from finetune_api.common import OutputSpec
from finetune_api.progress import PROGRESS_KEY
from finetune_api.uris import Scheme, parse_uri, scheme_of

from . import metrics
from .status.finetunejob import ProgressRead

MESSAGE_MAX = 512

# Short timeouts and one retry of a failed connection or a 5xx: a slow store delays this one
# reading, never a reconcile for long (boto3's "standard" mode with max_attempts=2, as before).
_TIMEOUT = urllib3.Timeout(connect=3, read=5)
_RETRY = urllib3.Retry(
    total=1, status_forcelist=(500, 502, 503, 504), backoff_factor=0.2, raise_on_status=False
)
_POOL = urllib3.PoolManager(maxsize=4, ca_certs=get_cert_path(True))  # botocore's CA bundle, as boto3


def progress_location(uri: str) -> tuple[str, str] | None:
    """(bucket, key) of the progress record under an ``s3://bucket/prefix`` URI; None for other schemes."""
    if scheme_of(uri) is not Scheme.S3:
        return None
    try:
        output = parse_uri(uri)
    except ValueError:  # no bucket, or '..' in the key: the trainer cannot write there either
        return None
    return output.bucket, output.join(PROGRESS_KEY).path


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


def _error_code(body: bytes) -> str:
    # S3 says why in an XML <Code> (AccessDenied, NoSuchBucket, SignatureDoesNotMatch...).
    found = re.search(rb"<Code>([A-Za-z0-9.]{1,64})</Code>", body[:4096])
    return f" {found.group(1).decode()}" if found else ""


def _error_text(exc: Exception) -> str:
    cause = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason else exc
    detail = str(cause).rsplit(">: ", 1)[-1]  # urllib3 starts with its connection object's repr
    return f"{type(cause).__name__}: {detail}"[:MESSAGE_MAX]


def read_progress(output: OutputSpec, credentials: dict[str, str] | None) -> ProgressRead:
    """The record (None when absent or unreadable) and, when unreadable, why: an error that names
    neither the credentials nor the signature (the request is signed in its headers, never its URL)."""
    where = progress_location(output.uri)
    if where is None:
        return ProgressRead(None)
    secret = credentials or {}
    region = output.region or secret.get("region") or "us-east-1"
    url = object_url(output.endpoint or secret.get("endpoint"), region, *where)
    try:
        creds = _credentials(secret)
        if creds is None:
            raise ValueError("no credentials")  # boto3 says NoCredentialsError
        response = _signed_get(url, region, creds)
        code = _error_code(response.data) if response.status != 200 else ""
        if response.status == 404 and code != " NoSuchBucket":  # not written yet; a missing bucket is a fault
            metrics.PROGRESS_READS.labels(outcome="absent").inc()
            return ProgressRead(None)
        if response.status != 200:
            metrics.PROGRESS_READS.labels(outcome="error").inc()
            return ProgressRead(None, f"HTTP {response.status}{code}")
        record = json.loads(response.data)
    except (BotoCoreError, urllib3.exceptions.HTTPError, ValueError) as exc:
        metrics.PROGRESS_READS.labels(outcome="error").inc()
        return ProgressRead(None, _error_text(exc))
    metrics.PROGRESS_READS.labels(outcome="ok").inc()
    if not isinstance(record, dict):
        return ProgressRead(None, "the record is not a JSON object")
    return ProgressRead(record)
