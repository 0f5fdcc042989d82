"""A real S3 API server on loopback (moto's server mode) and archive test helpers.

``s3_endpoint`` (session) starts one server on a free port; ``s3_bucket`` makes a fresh bucket per
test. ``archive_settings`` builds unit-test settings for either backend without a broker.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from moto.server import ThreadedMotoServer

from pipeline.archive import RawRecord, open_store
from pipeline.settings import Secret, Settings

S3_KEY_ID = "llmtrail-test-key-id"
S3_SECRET = "llmtrail-test-secret-access-key"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The URL of an S3 server on 127.0.0.1 (a free port), for the whole session."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def s3_client(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=S3_KEY_ID, aws_secret_access_key=S3_SECRET)


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new, empty bucket on the session's S3 server."""
    name = f"llmtrail-{uuid.uuid4().hex[:12]}"
    s3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


def with_s3(settings: Settings, endpoint: str, bucket: str) -> Settings:
    """``settings`` pointed at ``bucket`` on the test S3 server."""
    return settings.replace(
        archive_backend="s3", archive_s3_bucket=bucket, archive_s3_endpoint=endpoint,
        archive_s3_prefix="archive", archive_s3_access_key_id=Secret(S3_KEY_ID),
        archive_s3_secret_access_key=Secret(S3_SECRET))


def archive_settings(tmp_path: Path, backend: str, endpoint: str | None = None,
                     bucket: str | None = None, **changes: Any) -> Settings:
    """Broker-free settings for archive unit tests, on the local or the S3 backend."""
    settings = Settings.from_env({}, data_dir=tmp_path / "data", **changes)
    if backend == "s3":
        assert endpoint is not None and bucket is not None
        return with_s3(settings, endpoint, bucket)
    return settings


@pytest.fixture(params=["local", "s3"])
def backend_name(request: pytest.FixtureRequest) -> str:
    """Runs a test once on the local directory and once on the S3 server."""
    name: str = request.param
    return name


@pytest.fixture
def any_settings(backend_name: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """Archive settings on the backend of ``backend_name`` (a fresh bucket for S3)."""
    if backend_name == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        bucket = request.getfixturevalue("s3_bucket")
        return archive_settings(tmp_path, "s3", endpoint, bucket)
    return archive_settings(tmp_path, "local")


# -- archived test events -------------------------------------------------------------------

TOPIC = "llm.events"
T0 = datetime(2026, 11, 22, 14, 0, tzinfo=UTC)


def event(index: int, *, kind: str = "prompt", trace: str = "t-1", user: str = "u-1",
          text: str = "What is our refund policy?", minutes: float = 0.0) -> dict[str, Any]:
    """An Event v1 at ``T0 + minutes``."""
    ts = T0 + timedelta(minutes=minutes)
    body: dict[str, Any] = {
        "event_id": f"e-{index}", "kind": kind, "trace_id": trace,
        "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "service": "support-bot", "user": {"id": user, "ip": "203.0.113.9"},
    }
    if kind == "prompt":
        body["prompt"] = {"text": text}
    elif kind == "response":
        body["response"] = {"text": text, "finish_reason": "stop", "refusal": False}
    else:
        body["tool"] = {"name": "crm.lookup", "arguments": {"customer_id": str(index)},
                        "result": text, "status": "ok", "authenticated": True}
    return body


def records_of(events: list[dict[str, Any]], *, partitions: int = 2,
               first_offset: int = 0) -> list[RawRecord]:
    """Kafka-like records: event i on partition i % partitions, offsets counting up there."""
    offsets = dict.fromkeys(range(partitions), first_offset)
    out = []
    for i, body in enumerate(events):
        partition = i % partitions
        ts_ms = int(datetime.fromisoformat(body["ts"]).timestamp() * 1000)
        out.append(RawRecord(TOPIC, partition, offsets[partition], ts_ms,
                             body["trace_id"].encode(), orjson.dumps(body), body["event_id"]))
        offsets[partition] += 1
    return out


def fill(settings: Settings, events: list[dict[str, Any]], *, batch: int = 10,
         partitions: int = 2) -> None:
    """Archive ``events`` through the writer the settings select, in batches, then close it."""
    store = open_store(settings)
    records = records_of(events, partitions=partitions)
    try:
        for start in range(0, len(records), batch):
            store.append(records[start: start + batch])
    finally:
        store.close()
