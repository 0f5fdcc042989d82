"""The SDK against the real embedded broker: everything published is read back."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import ConsumerRecord

from detectors.event import EventError
from pipeline.broker import free_port
from pipeline.client import AsyncClient, Client, Trace
from pipeline.kafka import ensure_topics, make_reader
from pipeline.settings import Settings

pytestmark = pytest.mark.integration

READ_TIMEOUT = 20.0


async def read_records(settings: Settings, expected: int) -> list[ConsumerRecord[bytes, bytes]]:
    """Read the events topic from the start until ``expected`` records arrived (bounded)."""
    reader = make_reader(settings, settings.events_topic)
    await reader.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(READ_TIMEOUT):
                while len(records) < expected:
                    batches = await reader.getmany(timeout_ms=200)
                    for batch in batches.values():
                        records.extend(batch)
    finally:
        await reader.stop()
    return records


def read_back(settings: Settings, expected: int) -> list[ConsumerRecord[bytes, bytes]]:
    return asyncio.run(read_records(settings, expected))


def conversation(trace: Trace, turns: int) -> list[dict[str, Any]]:
    events = []
    for turn in range(turns):
        events.append(trace.prompt(f"question {turn}"))
        events.append(trace.tool_call("kb.search", {"q": f"question {turn}"}, result=["doc"]))
        events.append(trace.response(f"answer {turn}", usage={"prompt_tokens": 10},
                                     latency_ms=turn))
    return events


def assert_one_trace(records: list[ConsumerRecord[bytes, bytes]],
                     events: list[dict[str, Any]], trace: Trace) -> None:
    assert len(records) == len(events)
    assert {r.key for r in records} == {trace.trace_id.encode()}
    assert len({r.partition for r in records}) == 1
    # Same key, same partition: read back in the order published, unchanged.
    assert [orjson.loads(r.value) for r in records] == events


def test_async_client_publishes_one_trace(settings: Settings) -> None:
    trace = Trace(service="support-bot", user_id="u-1", model="gpt-4o")
    events = conversation(trace, 40)  # 120 events

    async def scenario() -> None:
        await ensure_topics(settings)
        async with AsyncClient(settings) as client:
            for event in events[:60]:
                await client.publish(event)
            assert await client.publish_many(events[60:119]) == 59
            await client.publish(events[119], wait=True)
            await client.flush()
            with pytest.raises(EventError, match="missing required field 'trace_id'"):
                await client.publish({"event_id": "x", "kind": "prompt", "ts": events[0]["ts"]})

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert_one_trace(read_back(settings, len(events)), events, trace)


def test_sync_client_publishes_one_trace(settings: Settings) -> None:
    asyncio.run(ensure_topics(settings))
    trace = Trace(service="batch-job", user_id="u-7")
    events = conversation(trace, 30)
    with Client(settings, timeout=30) as client:
        for event in events[:45]:
            client.publish(event)
        client.flush()
        assert client.publish_many(iter(events[45:])) == 45
    assert_one_trace(read_back(settings, len(events)), events, trace)


def test_sync_client_from_several_threads(settings: Settings) -> None:
    asyncio.run(ensure_topics(settings))
    traces = [Trace(service=f"worker-{n}") for n in range(4)]
    published: dict[str, list[dict[str, Any]]] = {t.trace_id: [] for t in traces}
    client = Client(settings.broker, topic=settings.events_topic, timeout=30)
    errors: list[BaseException] = []

    def work(trace: Trace) -> None:
        try:
            for event in conversation(trace, 25):
                client.publish(event)
                published[trace.trace_id].append(event)
        except BaseException as exc:  # reported below, not swallowed
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in traces]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    client.close()
    assert not errors
    records = read_back(settings, 300)
    assert len(records) == 300
    by_trace: dict[bytes, list[dict[str, Any]]] = {}
    for record in records:
        assert record.key is not None
        by_trace.setdefault(record.key, []).append(orjson.loads(record.value))
    assert by_trace == {tid.encode(): events for tid, events in published.items()}


def test_unreachable_broker_fails_fast(settings: Settings) -> None:
    # A port nothing listens on: the first publish raises, and nothing is left unclosed.
    dead = settings.replace(broker=f"kafka://127.0.0.1:{free_port()}")

    async def scenario() -> None:
        client = AsyncClient(dead)
        with pytest.raises(KafkaConnectionError):
            await client.publish(Trace().prompt("x"))
        await client.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def _doc_blocks(language: str) -> list[str]:
    text = (Path(__file__).parents[2] / "docs" / "events.md").read_text("utf-8")
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def test_the_sdk_example_in_the_docs_runs(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncio.run(ensure_topics(settings))
    [example] = [b for b in _doc_blocks("python") if "with Client(" in b]
    assert "kafka://127.0.0.1:9092" in example
    # Client(url) takes every other setting from the environment: point it at this test.
    monkeypatch.setenv("LLMTRAIL_TOPIC_PREFIX", settings.topic_prefix)
    exec(example.replace("kafka://127.0.0.1:9092", settings.broker), {})
    records = read_back(settings, 3)
    assert [orjson.loads(r.value)["kind"] for r in records] == ["prompt", "tool_call", "response"]
    assert len({r.key for r in records}) == 1

