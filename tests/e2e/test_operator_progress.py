"""The operator's progress reader (a botocore-signed GET, no S3 client) against the real S3 server."""

from __future__ import annotations

import json

import pytest

from finetune_api.common import OutputSpec
from finetune_operator.progress import read_progress
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

    assert read_progress(_output(s3_server, s3_bucket, "runs/odd name+1"), _secret(s3_server)) == record


def test_absent_record_and_refused_credentials_read_as_none(s3_server: S3Server, s3_bucket: str) -> None:
    s3_server.client().put_object(Bucket=s3_bucket, Key="runs/here/progress.json", Body=b'{"step": 1}')

    assert read_progress(_output(s3_server, s3_bucket, "runs/missing"), _secret(s3_server)) is None
    wrong = _secret(s3_server, secret_key="not-the-key")
    assert read_progress(_output(s3_server, s3_bucket, "runs/here"), wrong) is None
    assert read_progress(_output(s3_server, s3_bucket, "runs/here"), _secret(s3_server)) == {"step": 1}


def test_a_record_that_is_not_json_reads_as_none(s3_server: S3Server, s3_bucket: str) -> None:
    s3_server.client().put_object(Bucket=s3_bucket, Key="runs/torn/progress.json", Body=b'{"step": ')

    assert read_progress(_output(s3_server, s3_bucket, "runs/torn"), _secret(s3_server)) is None
