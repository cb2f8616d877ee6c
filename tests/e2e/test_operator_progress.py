"""The operator's progress reader (a botocore-signed GET, no S3 client) against the real S3 server."""

from __future__ import annotations

import json
import socket

import pytest

from finetune_api.common import OutputSpec
from finetune_operator.progress import read_progress
from finetune_operator.status.finetunejob import ProgressRead
from tests.fixtures.s3 import S3Server

pytestmark = pytest.mark.e2e


def _output(s3: S3Server, bucket: str, prefix: str) -> OutputSpec:
    return OutputSpec(uri=f"s3://{bucket}/{prefix}", endpoint=s3.endpoint_url, region=s3.region)


def _secret(s3: S3Server, secret_key: str | None = None) -> dict[str, str]:
    return {"accessKeyId": s3.access_key, "secretAccessKey": secret_key or s3.secret_key}


def test_reads_the_record_that_boto3_wrote(s3_server: S3Server, s3_bucket: str) -> None:
    record = {"step": 7, "totalSteps": 10, "loss": 1.5, "note": "a key with spaces/and+signs"}
    s3_server.client().put_object(
        Bucket=s3_bucket, Key="runs/odd name+1/progress.json", Body=json.dumps(record).encode()
    )

    assert (
        read_progress(_output(s3_server, s3_bucket, "runs/odd name+1"), _secret(s3_server)).record == record
    )


def test_absent_record_reads_as_none_and_refused_credentials_say_why(
    s3_server: S3Server, s3_bucket: str
) -> None:
    s3_server.client().put_object(Bucket=s3_bucket, Key="runs/here/progress.json", Body=b'{"step": 1}')

    assert read_progress(_output(s3_server, s3_bucket, "runs/missing"), _secret(s3_server)) == ProgressRead(
        None
    )
    wrong = _secret(s3_server, secret_key="not-the-key")
    refused = read_progress(_output(s3_server, s3_bucket, "runs/here"), wrong)
    assert refused.record is None and refused.error == "HTTP 403 SignatureDoesNotMatch"
    assert "not-the-key" not in refused.error and s3_server.access_key not in refused.error
    assert read_progress(_output(s3_server, s3_bucket, "runs/here"), _secret(s3_server)).record == {"step": 1}
    no_bucket = read_progress(_output(s3_server, "no-such-bucket", "runs/here"), _secret(s3_server))
    assert no_bucket == ProgressRead(None, "HTTP 404 NoSuchBucket")


def test_an_unreachable_store_and_a_torn_record_say_why(s3_server: S3Server, s3_bucket: str) -> None:
    s3_server.client().put_object(Bucket=s3_bucket, Key="runs/torn/progress.json", Body=b'{"step": ')

    torn = read_progress(_output(s3_server, s3_bucket, "runs/torn"), _secret(s3_server))
    assert torn.record is None and torn.error is not None and torn.error.startswith("JSONDecodeError")
    closed = OutputSpec(uri=f"s3://{s3_bucket}/runs/x", endpoint=f"http://127.0.0.1:{_closed_port()}")
    unreachable = read_progress(closed, _secret(s3_server))
    assert unreachable.record is None and unreachable.error is not None
    assert unreachable.error.startswith("NewConnectionError") and "object at 0x" not in unreachable.error


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once it is closed
