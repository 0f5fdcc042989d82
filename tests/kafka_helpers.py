"""Bounded waits on real topics and the archive, for integration tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from aiokafka.structs import ConsumerRecord

from pipeline.archive import ArchivedRecord, iter_archive
from pipeline.kafka import make_reader
from pipeline.settings import Settings


def read_topics(settings: Settings, topics: list[str], *, expect: int | None = None,
                done: Callable[[list[ConsumerRecord]], bool] | None = None,
                timeout: float = 60.0, settle: float = 1.0) -> list[ConsumerRecord]:
    """Read from the beginning until ``expect`` records arrived, or ``done(records)`` holds,
    then ``settle`` s more (to catch extras), or until ``timeout`` passed. Counts what it
    actually reads, never end offsets."""
    if done is None:
        wanted = 0 if expect is None else expect
        done = lambda got: len(got) >= wanted  # noqa: E731

    async def read() -> list[ConsumerRecord]:
        reader = make_reader(settings, *topics)
        await reader.start()
        got: list[ConsumerRecord] = []
        deadline = time.monotonic() + timeout
        settled_at: float | None = None
        try:
            while time.monotonic() < deadline:
                batches = await reader.getmany(timeout_ms=200)
                for records in batches.values():
                    got.extend(records)
                if settled_at is None and done(got):
                    settled_at = time.monotonic() + settle
                if settled_at is not None and time.monotonic() >= settled_at:
                    break
        finally:
            await reader.stop()
        return got

    return asyncio.run(read())


def wait_for_archive(root: Path, predicate: Callable[[list[ArchivedRecord]], bool],
                     timeout: float = 60.0) -> list[ArchivedRecord]:
    """Poll the archive until ``predicate(records)`` holds; return the last read either way."""
    deadline = time.monotonic() + timeout
    records: list[ArchivedRecord] = []
    while time.monotonic() < deadline:
        records = list(iter_archive(root)) if root.exists() else []
        if predicate(records):
            break
        time.sleep(0.3)
    return records
