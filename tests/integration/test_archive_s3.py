"""The spine's guarantees with the S3 backend: real broker, real workers, a real S3 API server."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest

from pipeline.archive import ArchivedRecord, open_reader
from pipeline.settings import Settings
from pipeline.stack import start_worker
from tests.integration.test_pipeline import event, prepare, publish
from tests.s3_helpers import S3_SECRET, s3_client, with_s3

pytestmark = pytest.mark.integration

EXIT_ARCHIVE_FAILED = 75


def wait_for_s3(settings: Settings, count: int, timeout: float) -> list[ArchivedRecord]:
    """Poll the bucket until ``count`` events are archived or ``timeout``; return the last read."""
    deadline = time.monotonic() + timeout
    records: list[ArchivedRecord] = []
    while time.monotonic() < deadline:
        records = list(open_reader(settings).iter())
        if len(records) >= count:
            break
        time.sleep(0.5)
    return records


def test_sigkill_mid_stream_with_s3_loses_and_duplicates_nothing(
        settings: Settings, s3_endpoint: str, s3_bucket: str) -> None:
    settings = with_s3(settings, s3_endpoint, s3_bucket)
    prepare(settings)
    events = [orjson.dumps(event(index=i, text=f"message {i} about invoices"))
              for i in range(2000)]
    worker = start_worker(settings)
    try:
        publish(settings, events[:1000])
        wait_for_s3(settings, 200, timeout=60)
        publish(settings, events[1000:])
        worker.kill()  # SIGKILL mid-stream: some batches uploaded but not yet committed
    finally:
        worker.stop()
    killed_at = len(wait_for_s3(settings, 0, timeout=1))
    restarted = start_worker(settings)
    try:
        wait_for_s3(settings, 2000, timeout=150)
        time.sleep(3)  # give any duplicate a chance to land before counting
        records = wait_for_s3(settings, 0, timeout=1)
    finally:
        restarted.stop()
    assert 0 < killed_at < 2000, f"kill was not mid-stream: {killed_at} archived"
    ids = [orjson.loads(r.value)["event_id"] for r in records]
    assert len(ids) == 2000, f"{len(ids)} archived, {len(set(ids))} distinct"
    assert len(set(ids)) == 2000
    assert {r.value for r in records} == set(events)


def test_unreachable_bucket_stops_the_worker_without_acknowledging(
        settings: Settings, s3_endpoint: str) -> None:
    bucket = f"llmtrail-later-{uuid.uuid4().hex[:8]}"  # does not exist yet: every PUT fails
    settings = with_s3(settings, s3_endpoint, bucket)
    prepare(settings)
    events = [orjson.dumps(event(index=i, text=f"question {i}")) for i in range(200)]
    worker = start_worker(settings)
    try:
        publish(settings, events)
        deadline = time.monotonic() + 90
        while worker.returncode is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert worker.returncode == EXIT_ARCHIVE_FAILED, "\n".join(worker.lines[-20:])
    finally:
        worker.stop()
    assert any("archive unavailable; stopping the worker without committing" in line
               for line in worker.lines)
    assert S3_SECRET not in "\n".join(worker.lines)
    s3_client(s3_endpoint).create_bucket(Bucket=bucket)
    restarted = start_worker(settings)
    try:
        records = wait_for_s3(settings, 200, timeout=150)
    finally:
        restarted.stop()
    values = [r.value for r in records]
    assert len(values) == len(set(values)) == 200, (
        f"{len(values)} archived, {len(set(values))} distinct:\n" + "\n".join(
            restarted.lines[-20:]))
    assert set(values) == set(events)  # nothing was acknowledged without being archived
