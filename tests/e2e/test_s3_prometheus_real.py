"""Proof that the S3 and Prometheus fixtures are real servers doing real work."""

from __future__ import annotations

import hashlib
import io
import os
import socket
from collections.abc import Iterator

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from tests.fixtures.prometheus import Prometheus
from tests.fixtures.s3 import S3Server

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024


def test_small_object_round_trip(s3_server: S3Server, s3_bucket: str) -> None:
    client = s3_server.client()
    body = b"hello \x00\xff world\n" * 100
    client.put_object(Bucket=s3_bucket, Key="dir/small.bin", Body=body)
    assert client.get_object(Bucket=s3_bucket, Key="dir/small.bin")["Body"].read() == body
    listed = client.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [("dir/small.bin", len(body))]


def test_multipart_upload_round_trip(s3_server: S3Server, s3_bucket: str) -> None:
    client = s3_server.client()
    data = os.urandom(12 * MiB + 12345)  # three 5 MiB parts, the last one short
    config = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=3)
    client.upload_fileobj(io.BytesIO(data), s3_bucket, "big.bin", Config=config)
    head = client.head_object(Bucket=s3_bucket, Key="big.bin")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3"), "the server did not see a 3-part multipart upload"
    out = io.BytesIO()
    client.download_fileobj(s3_bucket, "big.bin", out)
    assert hashlib.sha256(out.getvalue()).digest() == hashlib.sha256(data).digest()


def test_wrong_secret_is_refused(s3_server: S3Server, s3_bucket: str) -> None:
    bad = s3_server.client(secret_key="not-the-secret")
    with pytest.raises(ClientError) as info:
        bad.put_object(Bucket=s3_bucket, Key="intruder.txt", Body=b"x")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    good = s3_server.client()
    assert "Contents" not in good.list_objects_v2(Bucket=s3_bucket)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def gauge_endpoint() -> Iterator[tuple[str, Gauge]]:
    """A prometheus_client HTTP server on a free port exposing one gauge."""
    registry = CollectorRegistry()
    gauge = Gauge("fixture_proof_value", "A value the proof test sets.", registry=registry)
    port = _free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield f"127.0.0.1:{port}", gauge
    server.shutdown()
    thread.join(timeout=5)


def test_prometheus_scrapes_a_gauge(prometheus: Prometheus, gauge_endpoint: tuple[str, Gauge]) -> None:
    address, gauge = gauge_endpoint
    gauge.set(42.5)
    prometheus.add_target(address, proof="yes")
    selector = f'fixture_proof_value{{instance="{address}",proof="yes"}}'
    assert prometheus.query_value(selector) == 42.5
    # A later value shows the server keeps scraping, not a one-off read.
    gauge.set(7)
    result = prometheus.query(selector, until=lambda r: len(r) == 1 and float(r[0]["value"][1]) == 7)
    assert result[0]["metric"]["job"] == "fixture"
