"""HTTP ingest against the real embedded broker: what is accepted is on the topic, byte for byte."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from pipeline.broker import EmbeddedBroker, free_port
from pipeline.client import Trace
from pipeline.ingest import create_ingest_app, run_ingest
from pipeline.kafka import ensure_topics, make_producer, make_reader
from pipeline.settings import Secret, Settings, SettingsError

pytestmark = pytest.mark.integration

KEY = "ingest-test-key"
OTHER_KEY = "second-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
READ_TIMEOUT = 20.0


def keyed(settings: Settings, **changes: Any) -> Settings:
    return settings.replace(api_keys=(Secret(KEY), Secret(OTHER_KEY)), **changes)


async def read_records(
    settings: Settings, expected: int, *, until: bytes | None = None
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read the events topic from the start until ``expected`` records (or the record whose
    value is ``until``) arrived; bounded by READ_TIMEOUT."""
    reader = make_reader(settings, settings.events_topic)
    await reader.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(READ_TIMEOUT):
                while len(records) < expected and not any(r.value == until for r in records):
                    batches = await reader.getmany(timeout_ms=200)
                    for batch in batches.values():
                        records.extend(batch)
    finally:
        await reader.stop()
    return records


@contextlib.asynccontextmanager
async def ingest(
    settings: Settings, *, allow_anonymous: bool = False
) -> AsyncIterator[TestClient[Any, Any]]:
    await ensure_topics(settings)
    producer = make_producer(settings)
    await producer.start()
    try:
        app = create_ingest_app(settings, producer, allow_anonymous=allow_anonymous)
        async with TestClient(TestServer(app)) as client:
            yield client
    finally:
        await producer.stop()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 120))


def test_single_event_is_published_byte_identical(settings: Settings) -> None:
    event = Trace(service="svc", user_id="u-1").prompt("hello")
    # Odd spacing and key order: the bytes must reach the topic exactly as sent.
    body = b'  {"prompt": {"text": "hello"},\n "kind":"prompt", ' + orjson.dumps(
        {k: v for k, v in event.items() if k not in ("prompt", "kind")}
    )[1:] + b"\n"

    async def scenario() -> None:
        async with ingest(keyed(settings)) as client:
            response = await client.post("/v1/events", data=body, headers=AUTH)
            assert response.status == 202
            assert await response.json() == {"accepted": 1}
            assert response.content_type == "application/json"
        records = await read_records(settings, 1)
        assert [r.value for r in records] == [body]
        assert records[0].key == event["trace_id"].encode()

    run(scenario)


def test_array_is_published_whole_and_x_api_key_works(settings: Settings) -> None:
    trace = Trace(service="svc")
    events = [trace.prompt(f"q{i}") if i % 2 == 0 else trace.response(f"a{i}") for i in range(7)]
    other = Trace().tool_call("crm.lookup", {"id": "42"}, x_custom={"kept": True})
    events.append(other)

    async def scenario() -> None:
        async with ingest(keyed(settings)) as client:
            response = await client.post(
                "/v1/events", data=orjson.dumps(events), headers={"X-API-Key": OTHER_KEY}
            )
            assert response.status == 202, await response.text()
            assert await response.json() == {"accepted": 8}
        records = await read_records(settings, 8)
        assert len(records) == 8
        assert sorted(r.value for r in records) == sorted(orjson.dumps(e) for e in events)
        for record in records:
            assert record.key == orjson.loads(record.value)["trace_id"].encode()
        # One trace = one key = one partition, in the order sent.
        in_trace = [orjson.loads(r.value) for r in records if r.key == trace.trace_id.encode()]
        assert in_trace == events[:7]

    run(scenario)


def test_empty_array_accepts_nothing(settings: Settings) -> None:
    async def scenario() -> None:
        async with ingest(keyed(settings)) as client:
            response = await client.post("/v1/events", data=b"[]", headers=AUTH)
            assert response.status == 202
            assert await response.json() == {"accepted": 0}

    run(scenario)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-key"),
        pytest.param({"Authorization": "Bearer wrong"}, id="wrong-bearer"),
        pytest.param({"Authorization": f"Basic {KEY}"}, id="not-bearer"),
        pytest.param({"Authorization": "Bearer "}, id="empty-bearer"),
        pytest.param({"X-API-Key": KEY + "x"}, id="wrong-x-api-key"),
        pytest.param({"X-API-Key": KEY[:-1]}, id="prefix-of-key"),
    ],
)
def test_missing_or_wrong_key_is_401_and_publishes_nothing(
    settings: Settings, headers: dict[str, str]
) -> None:
    trace = Trace()
    rejected = trace.prompt("should not arrive")
    sentinel = orjson.dumps(trace.prompt("sentinel"))

    async def scenario() -> None:
        async with ingest(keyed(settings)) as client:
            response = await client.post("/v1/events", data=orjson.dumps(rejected),
                                         headers=headers)
            assert response.status == 401
            assert "API key" in (await response.json())["error"]
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            ok = await client.post("/v1/events", data=sentinel, headers=AUTH)
            assert ok.status == 202
        # Same trace => same partition: anything published before the sentinel shows up.
        records = await read_records(settings, 10, until=sentinel)
        assert [r.value for r in records] == [sentinel]

    run(scenario)


@pytest.mark.parametrize(
    ("body", "error", "index", "field"),
    [
        pytest.param(b"{nope", "invalid JSON", None, None, id="invalid-json"),
        pytest.param(b"", "invalid JSON", None, None, id="empty-body"),
        pytest.param(b'"\xff"', "invalid UTF-8", None, None, id="invalid-utf8"),
        pytest.param(b"42", "expected a JSON object or an array of objects, got int", None,
                     None, id="number"),
        pytest.param(b"null", "got null", None, None, id="null"),
        pytest.param(b'{"kind": "prompt"}', "missing required field 'event_id'", None,
                     "event_id", id="missing-field"),
        pytest.param(orjson.dumps({**Trace().prompt("x"), "kind": "alert"}),
                     "expected one of prompt, response, tool_call", None, "kind",
                     id="unknown-kind"),
        pytest.param(orjson.dumps({**Trace().prompt("x"), "ts": "2026-11-22 14:03"}),
                     "RFC 3339", None, "ts", id="bad-ts"),
        pytest.param(orjson.dumps([Trace().prompt("x"), Trace().prompt("y"), 5]),
                     "expected a JSON object, got int", 2, None, id="array-non-object"),
        pytest.param(orjson.dumps([Trace().prompt("x"), {**Trace().prompt("y"), "prompt": None}]),
                     "'prompt': expected an object, got null", 1, "prompt",
                     id="array-bad-payload"),
    ],
)
def test_invalid_input_is_400_with_the_reason(
    settings: Settings, body: bytes, error: str, index: int | None, field: str | None
) -> None:
    async def scenario() -> None:
        async with ingest(keyed(settings)) as client:
            response = await client.post("/v1/events", data=body, headers=AUTH)
            assert response.status == 400
            answer = await response.json()
            assert error in answer["error"]
            assert answer["index"] == index
            assert answer["field"] == field

    run(scenario)


def test_array_with_one_invalid_event_publishes_none_of_it(settings: Settings) -> None:
    trace = Trace()
    batch = [trace.prompt("a"), trace.prompt("b"), {**trace.prompt("c"), "latency_ms": -1}]
    sentinel = orjson.dumps(trace.prompt("sentinel"))

    async def scenario() -> None:
        async with ingest(keyed(settings)) as client:
            response = await client.post("/v1/events", data=orjson.dumps(batch), headers=AUTH)
            assert response.status == 400
            assert await response.json() == {
                "error": "field 'latency_ms': must not be negative",
                "index": 2,
                "field": "latency_ms",
            }
            assert (await client.post("/v1/events", data=sentinel, headers=AUTH)).status == 202
        records = await read_records(settings, 10, until=sentinel)
        assert [r.value for r in records] == [sentinel]

    run(scenario)


def test_oversize_body_is_413(settings: Settings) -> None:
    small = keyed(settings, http_max_body_bytes=2048)
    event = Trace().prompt("x" * 4096)
    body = orjson.dumps(event)

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 512):
            yield body[start:start + 512]

    async def scenario() -> None:
        async with ingest(small) as client:
            # Declared too large: refused from the Content-Length.
            response = await client.post("/v1/events", data=body, headers=AUTH)
            assert response.status == 413
            assert "2048 bytes" in (await response.json())["error"]
            # No Content-Length (chunked): refused while streaming.
            response = await client.post("/v1/events", data=chunked(), headers=AUTH)
            assert response.status == 413
            # Just under the limit is fine.
            fits = orjson.dumps(Trace().prompt("y" * 1500))
            assert len(fits) <= 2048
            response = await client.post("/v1/events", data=fits, headers=AUTH)
            assert response.status == 202

    run(scenario)


def test_event_over_max_event_bytes_is_400(settings: Settings) -> None:
    tight = keyed(settings, max_event_bytes=600)
    big = Trace().prompt("x" * 700)

    async def scenario() -> None:
        async with ingest(tight) as client:
            for body, index in [(orjson.dumps(big), None), (orjson.dumps([big]), 0)]:
                response = await client.post("/v1/events", data=body, headers=AUTH)
                assert response.status == 400
                answer = await response.json()
                assert "exceeds the limit of 600 bytes" in answer["error"]
                assert answer["index"] == index

    run(scenario)


def test_no_keys_refuses_to_start_unless_anonymous_is_allowed(settings: Settings) -> None:
    assert settings.api_keys == ()
    event = Trace().prompt("anonymous")

    async def scenario() -> None:
        producer = make_producer(settings)
        with pytest.raises(SettingsError, match="LLMTRAIL_API_KEYS is empty"):
            create_ingest_app(settings, producer)
        await producer.stop()
        with pytest.raises(SettingsError, match="LLMTRAIL_API_KEYS is empty"):
            await run_ingest(settings.replace(http_port=free_port()))
        async with ingest(settings, allow_anonymous=True) as client:
            response = await client.post("/v1/events", data=orjson.dumps(event))
            assert response.status == 202
        records = await read_records(settings, 1)
        assert [orjson.loads(r.value) for r in records] == [event]

    run(scenario)


def test_healthz(settings: Settings) -> None:
    async def scenario() -> None:
        async with ingest(keyed(settings)) as client:
            response = await client.get("/healthz")
            assert response.status == 200
            assert await response.json() == {"status": "ok"}
            assert (await client.get("/v1/events")).status == 405

    run(scenario)


def test_broker_down_is_503(settings: Settings, tmp_path: Path) -> None:
    """A broker that dies after start: the request fails with 503 within the ack timeout."""
    event = Trace().prompt("lost?")

    async def scenario() -> None:
        with EmbeddedBroker(log_file=tmp_path / "doomed.log") as doomed:
            local = keyed(settings, broker=doomed.url)
            await ensure_topics(local)
            producer = AIOKafkaProducer(
                bootstrap_servers=local.bootstrap_servers,
                request_timeout_ms=2000,
                retry_backoff_ms=100,
            )
            await producer.start()
            try:
                app = create_ingest_app(local, producer, ack_timeout=3.0)
                async with TestClient(TestServer(app)) as client:
                    warm = await client.post("/v1/events", data=orjson.dumps(event), headers=AUTH)
                    assert warm.status == 202
                    doomed.stop()
                    async with asyncio.timeout(15):
                        response = await client.post(
                            "/v1/events", data=orjson.dumps(event), headers=AUTH
                        )
                    assert response.status == 503
                    assert "broker unavailable" in (await response.json())["error"]
            finally:
                async with asyncio.timeout(30):
                    await producer.stop()

    run(scenario)


def test_run_ingest_serves_on_a_real_port(settings: Settings) -> None:
    served = keyed(settings, http_port=free_port())
    url = f"http://{served.http_host}:{served.http_port}"
    event = Trace().prompt("over a real socket")

    async def scenario() -> None:
        await ensure_topics(served)
        server = asyncio.create_task(run_ingest(served))
        try:
            async with aiohttp.ClientSession() as session:
                async with asyncio.timeout(20):
                    while True:
                        assert not server.done(), server
                        with contextlib.suppress(aiohttp.ClientConnectionError):
                            async with session.get(f"{url}/healthz") as health:
                                if health.status == 200:
                                    break
                        await asyncio.sleep(0.05)
                async with session.post(f"{url}/v1/events", data=orjson.dumps(event),
                                        headers=AUTH) as response:
                    assert response.status == 202
        finally:
            server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server
        records = await read_records(served, 1)
        assert [orjson.loads(r.value) for r in records] == [event]
        # Port 0 means "ingest disabled": returns at once.
        async with asyncio.timeout(1):
            await run_ingest(served.replace(http_port=0))

    run(scenario)
