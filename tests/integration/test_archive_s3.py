"""The spine's guarantees with the S3 backend: real broker, real workers, a real S3 API server."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import orjson
import pytest
from moto.server import ThreadedMotoServer

from pipeline.archive import ArchivedRecord, open_reader
from pipeline.settings import Settings
from pipeline.stack import start_worker
from tests.integration.test_pipeline import event, prepare, publish
from tests.s3_helpers import S3_SECRET, s3_client, with_s3

pytestmark = pytest.mark.integration

EXIT_ARCHIVE_FAILED = 75


def wait_for_s3(settings: Settings, count: int, timeout: float, *,
                settle: float = 15.0) -> list[ArchivedRecord]:
    """Poll the bucket until ``count`` events are archived, or ``timeout``, or nothing new
    arrived for ``settle`` s after something new did (a worker still starting under load has not
    stalled yet); return the last read."""
    start = time.monotonic()
    records = list(open_reader(settings).iter())
    baseline, changed = len(records), start
    while len(records) < count and time.monotonic() < start + timeout:
        time.sleep(0.5)
        latest = list(open_reader(settings).iter())
        if len(latest) != len(records):
            records, changed = latest, time.monotonic()
        if len(records) > baseline and time.monotonic() - changed >= settle:
            break
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
    values = [r.value for r in records]
    assert len(values) == len(set(values)), "archived twice"
    assert set(values) <= set(events)
    assert len(values) == len(events), (f"{len(events) - len(values)} events not archived "
                                        f"(killed at {killed_at}); the restarted worker said:\n"
                                        + "\n".join(restarted.lines[-40:]))


class Outage:
    """An S3 server of this test's own, that can go away and come back on the same port (its
    objects survive: they live in this process)."""

    def __init__(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, self.port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{self.port}"

    def down(self) -> None:
        self._server.stop()

    def up(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()


@pytest.fixture
def outage() -> Iterator[Outage]:
    server = Outage()
    try:
        yield server
    finally:
        server.down()


def test_s3_outage_stops_the_worker_without_acknowledging(settings: Settings,
                                                         outage: Outage) -> None:
    bucket = f"llmtrail-{uuid.uuid4().hex[:8]}"
    s3_client(outage.endpoint).create_bucket(Bucket=bucket)
    settings = with_s3(settings, outage.endpoint, bucket)
    prepare(settings)
    events = [orjson.dumps(event(index=i, text=f"question {i}")) for i in range(300)]
    worker = start_worker(settings)
    try:
        publish(settings, events[:150])
        assert len(wait_for_s3(settings, 150, timeout=60)) == 150
        time.sleep(3)  # several commit intervals: the archived offsets are committed
        outage.down()  # every request fails from now on
        publish(settings, events[150:])
        deadline = time.monotonic() + 120
        while worker.returncode is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert worker.returncode == EXIT_ARCHIVE_FAILED, "\n".join(worker.lines[-60:])
    finally:
        worker.stop()
    assert any("archive unavailable; stopping the worker without committing" in line
               for line in worker.lines)
    assert S3_SECRET not in "\n".join(worker.lines)
    outage.up()
    restarted = start_worker(settings)
    try:
        wait_for_s3(settings, 300, timeout=120)
        time.sleep(2)  # give any duplicate a chance to land before counting
        records = wait_for_s3(settings, 0, timeout=1)
    finally:
        restarted.stop()
    values = [r.value for r in records]
    assert len(values) == len(set(values)), "archived twice"
    assert set(events[:150]) <= set(values) <= set(events)
    assert len(values) == len(events), (f"{len(events) - len(values)} events not archived; "
                                        "the restarted worker said:\n"
                                        + "\n".join(restarted.lines[-40:]))
