"""The SDK without a broker: event builders, encoding, and error reporting."""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from datetime import datetime
from types import MappingProxyType
from typing import Any

import orjson
import pytest

from detectors.event import EventError, decode_event
from pipeline.client import (
    AsyncClient,
    Client,
    ClientClosedError,
    PublishError,
    Trace,
    encode_event,
    rfc3339_now,
)
from pipeline.settings import Settings

TS_SHAPE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


def test_rfc3339_now_has_milliseconds_and_z() -> None:
    now = rfc3339_now()
    assert TS_SHAPE.fullmatch(now), now
    assert datetime.fromisoformat(now).utcoffset() is not None


def test_trace_events_share_the_trace_and_chain_parents() -> None:
    trace = Trace(
        service="support-bot",
        user_id="u-1",
        session_id="s-9",
        model="gpt-4o",
        provider="openai",
        environment="prod",
        user={"ip": "203.0.113.9"},
        tags={"feature": "email-draft"},
        request_id="r-1",
    )
    prompt = trace.prompt("hello", messages=[{"role": "user", "content": "hello"}])
    call = trace.tool_call("crm.lookup", {"customer_id": "42"}, result={"name": "Ada"},
                           endpoint="https://crm.internal/api", latency_ms=12)
    answer = trace.response("hi", usage={"prompt_tokens": 3, "completion_tokens": 1},
                            latency_ms=812, filter_flags=[])

    events = [prompt, call, answer]
    assert [e["kind"] for e in events] == ["prompt", "tool_call", "response"]
    assert {e["trace_id"] for e in events} == {trace.trace_id}
    assert len({e["event_id"] for e in events}) == 3
    for event in events:
        uuid.UUID(event["event_id"])
        assert TS_SHAPE.fullmatch(event["ts"])
        assert event["service"] == "support-bot"
        assert event["session_id"] == "s-9"
        assert event["environment"] == "prod"
        assert event["request_id"] == "r-1"
        assert event["user"] == {"ip": "203.0.113.9", "id": "u-1"}
        assert event["model"] == {"name": "gpt-4o", "provider": "openai"}
        assert event["tags"] == {"feature": "email-draft"}
        # What the builders make is what the pipeline accepts.
        assert decode_event(orjson.dumps(event), max_bytes=1 << 20) == event
    assert "parent_id" not in prompt
    assert call["parent_id"] == prompt["event_id"]
    assert answer["parent_id"] == call["event_id"]
    assert trace.last_event_id == answer["event_id"]

    assert prompt["prompt"] == {"text": "hello", "messages": [{"role": "user", "content": "hello"}]}
    assert call["tool"] == {
        "name": "crm.lookup",
        "arguments": {"customer_id": "42"},
        "status": "ok",
        "authenticated": True,
        "result": {"name": "Ada"},
        "endpoint": "https://crm.internal/api",
    }
    assert call["latency_ms"] == 12
    assert answer["response"] == {
        "text": "hi", "finish_reason": "stop", "refusal": False, "filter_flags": [],
    }
    assert answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 1}
    assert answer["latency_ms"] == 812


def test_trace_defaults_and_overrides() -> None:
    trace = Trace(trace_id="t-given")
    prompt = trace.prompt("x")
    assert set(prompt) == {"event_id", "kind", "ts", "trace_id", "prompt"}
    assert prompt["trace_id"] == "t-given"
    assert Trace().trace_id != Trace().trace_id
    # Per-call keywords win, so any field (or an extra one) can be set per event.
    refused = trace.response("no", refusal=True, finish_reason=None, parent_id=prompt["event_id"],
                             x_custom=1)
    assert refused["response"]["refusal"] is True
    assert refused["response"]["finish_reason"] is None
    assert refused["x_custom"] == 1
    failed = trace.tool_call("db.query", "select 1", status="error", authenticated=False,
                             error="permission denied")
    assert failed["tool"]["error"] == "permission denied"
    assert failed["tool"]["authenticated"] is False
    assert Trace(model={"name": "m", "version": "1"}).prompt("x")["model"] == {
        "name": "m", "version": "1",
    }


def test_events_do_not_share_mutable_parts() -> None:
    trace = Trace(user_id="u-1")
    first = trace.prompt("a")
    first["user"]["id"] = "changed"
    assert trace.prompt("b")["user"]["id"] == "u-1"


def test_invalid_builder_input_raises_at_the_call_site_and_keeps_the_chain() -> None:
    trace = Trace()
    first = trace.prompt("a")
    with pytest.raises(EventError, match=r"'prompt\.text': expected a string"):
        trace.prompt(5)  # type: ignore[arg-type]
    with pytest.raises(EventError, match=r"'usage\.prompt_tokens'"):
        trace.response("x", usage={"prompt_tokens": -1})
    assert trace.last_event_id == first["event_id"]
    assert trace.response("ok")["parent_id"] == first["event_id"]


def test_trace_is_thread_safe() -> None:
    trace = Trace()
    made: list[dict[str, Any]] = []
    lock = threading.Lock()

    def build() -> None:
        for _ in range(200):
            event = trace.prompt("x")
            with lock:
                made.append(event)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    ids = [e["event_id"] for e in made]
    assert len(set(ids)) == 800
    # Every event but one has a parent, and no two events share a parent: one chain.
    parents = [e.get("parent_id") for e in made]
    assert parents.count(None) == 1
    assert len({p for p in parents if p}) == 799
    assert set(ids) - {p for p in parents if p} == {trace.last_event_id}


def test_encode_event() -> None:
    event = Trace(trace_id="t-\u00e9").prompt("hello")
    key, value = encode_event(event, max_bytes=10_000)
    assert key == "t-\u00e9".encode()
    assert orjson.loads(value) == event
    # Any Mapping is accepted.
    key2, value2 = encode_event(MappingProxyType(event), max_bytes=10_000)
    assert (key2, value2) == (key, value)


INT_KEY: dict[Any, Any] = {**Trace().prompt("x"), 1: "int key"}


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"kind": "prompt"}, "missing required field 'event_id'"),
        ([1], "expected a JSON object, got list"),
        ({**Trace().prompt("x"), "blob": object()}, "cannot serialise the event as JSON"),
        (INT_KEY, "cannot serialise"),
        (Trace().prompt("x" * 200), "exceeds the limit of 100 bytes"),
    ],
)
def test_encode_event_rejects(event: Any, reason: str) -> None:
    with pytest.raises(EventError) as caught:
        encode_event(event, max_bytes=100 if "limit" in reason else 10_000)
    assert reason in caught.value.reason


class _FailingProducer:
    """Stands in for a started producer whose deliveries fail (no broker needed)."""

    def __init__(self) -> None:
        self.sent = 0
        self.stopped = False

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]:
        self.sent += 1
        delivery: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, delivery.set_exception,
                                              RuntimeError(f"lost {self.sent}"))
        return delivery

    async def flush(self) -> None:
        await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.stopped = True


def _unstarted_settings() -> Settings:
    return Settings.from_env({}, broker="kafka://127.0.0.1:1")


def test_failed_deliveries_surface_in_flush_and_close() -> None:
    async def scenario() -> None:
        client = AsyncClient(_unstarted_settings(), topic="t")
        producer = _FailingProducer()
        client._producer = producer  # aiokafka is untyped, so no ignore is needed
        trace = Trace()
        await client.publish(trace.prompt("a"))
        await client.publish_many([trace.prompt("b"), trace.prompt("c")])
        with pytest.raises(PublishError) as caught:
            await client.flush()
        assert len(caught.value.errors) == 3
        assert "3 event(s) were not acknowledged" in str(caught.value)
        await client.flush()  # reported once, then cleared

        with pytest.raises(RuntimeError, match="lost 4"):
            await client.publish(trace.prompt("d"), wait=True)
        await client.publish(trace.prompt("e"))
        with pytest.raises(PublishError) as caught:
            await client.close()
        assert [str(e) for e in caught.value.errors] == ["lost 5"]  # "lost 4" was raised already
        assert producer.stopped
        with pytest.raises(ClientClosedError):
            await client.publish(trace.prompt("f"))
        await client.close()  # idempotent

    asyncio.run(scenario())


def test_publish_many_is_all_or_nothing() -> None:
    async def scenario() -> None:
        client = AsyncClient(_unstarted_settings(), topic="t")
        trace = Trace()
        events = [trace.prompt("a"), {"kind": "prompt"}, trace.prompt("b")]
        with pytest.raises(EventError) as caught:
            await client.publish_many(events)
        assert caught.value.reason.startswith("event 1: missing required field 'event_id'")
        assert caught.value.field == "event_id"
        assert client._producer is None  # validation failed before connecting
        assert await client.publish_many([]) == 0
        await client.close()

    asyncio.run(scenario())


def test_sync_client_closes_without_connecting() -> None:
    client = Client(_unstarted_settings(), topic="t", timeout=5)
    with pytest.raises(EventError, match="missing required field"):
        client.publish({"kind": "prompt"})
    client.close()
    client.close()
    assert not client._thread.is_alive()
    with pytest.raises(ClientClosedError):
        client.publish(Trace().prompt("x"))


def test_client_from_url_uses_default_topic() -> None:
    client = AsyncClient("kafka://10.0.0.1:9093")
    assert client.settings.bootstrap_servers == ["10.0.0.1:9093"]
    assert client.topic == client.settings.events_topic
