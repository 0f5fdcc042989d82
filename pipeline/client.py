"""The Python SDK: publish Event v1 to llmtrail from your service.

Three pieces:

- :class:`Trace` builds valid Event v1 dicts that share one ``trace_id``, each
  linked to the previous one by ``parent_id``.
- :class:`AsyncClient` publishes them from asyncio code.
- :class:`Client` is its twin for ordinary (threaded, non-async) code.

Every event is checked with the same validator the pipeline uses
(:func:`detectors.event.validate_event`) before it is sent, so a bad event
fails in your service with the reason, not later in the dead-letter topic. The
Kafka message key is the event's ``trace_id`` (all events of a trace land on
one partition, in order) and the value is the event serialised with orjson.

Example::

    from pipeline.client import Client, Trace

    with Client("kafka://127.0.0.1:9092") as client:
        trace = Trace(service="support-bot", user_id="u-1", model="gpt-4o")
        client.publish(trace.prompt("Summarise my last invoice"))
        client.publish(trace.response("Your last invoice was ...", latency_ms=812))
    # leaving the block flushes: every event is acknowledged by the broker, or it raises

``publish`` returns once the event is queued in the producer's batch (linger and
batch size come from the settings); :meth:`AsyncClient.flush` and
:meth:`AsyncClient.close` wait until the broker has acknowledged every queued
event and raise :class:`PublishError` if any was not.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import uuid
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources
from types import TracebackType
from typing import Any, TypeVar

import orjson
from aiokafka import AIOKafkaProducer

from detectors.event import EventError, validate_event
from pipeline.kafka import make_producer
from pipeline.settings import Settings

__all__ = [
    "AsyncClient",
    "Client",
    "ClientClosedError",
    "EventError",
    "PublishError",
    "Trace",
    "encode_event",
    "event_schema",
    "rfc3339_now",
]

_T = TypeVar("_T")
EVENT_SCHEMA_FILE = "schemas/event-v1.json"


class PublishError(RuntimeError):
    """Events were queued but the broker did not acknowledge them.

    ``errors`` holds the delivery error of each lost event (the first one is also the
    ``__cause__``). Retrying may duplicate events that did arrive; consumers can
    deduplicate by ``event_id``.
    """

    def __init__(self, errors: Sequence[BaseException]) -> None:
        self.errors = list(errors)
        first = self.errors[0] if self.errors else None
        super().__init__(
            f"{len(self.errors)} event(s) were not acknowledged by the broker: {first!r}"
        )


class ClientClosedError(RuntimeError):
    """The client was closed; create a new one to publish again."""


def event_schema() -> dict[str, Any]:
    """The Event v1 JSON Schema (draft 2020-12) shipped in ``pipeline/schemas/``."""
    text = resources.files("pipeline").joinpath(EVENT_SCHEMA_FILE).read_bytes()
    schema: dict[str, Any] = orjson.loads(text)
    return schema


def rfc3339_now() -> str:
    """Now in UTC as RFC 3339 with milliseconds and ``Z``, e.g. ``2026-11-22T14:03:07.120Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_event(event: Any, *, max_bytes: int) -> tuple[bytes, bytes]:
    """Validate one event and serialise it: returns ``(key, value)`` for Kafka.

    The key is the UTF-8 ``trace_id``, the value the orjson bytes of the event.
    Raises :class:`EventError` with the reason if the event is not a valid Event v1,
    cannot be serialised, or its value is larger than ``max_bytes``.
    """
    if isinstance(event, Mapping) and not isinstance(event, dict):
        event = dict(event)
    validated = validate_event(event)
    try:
        value = orjson.dumps(validated)
    except orjson.JSONEncodeError as exc:
        raise EventError(f"cannot serialise the event as JSON: {exc}") from None
    if len(value) > max_bytes:
        raise EventError(f"event of {len(value)} bytes exceeds the limit of {max_bytes} bytes")
    key: str = validated["trace_id"]
    return key.encode("utf-8"), value


def _settings_of(target: Settings | str | None) -> Settings:
    if isinstance(target, Settings):
        return target
    if target is None:
        return Settings.from_env()
    return Settings.from_env(broker=target)


class AsyncClient:
    """Publish Event v1 from asyncio code.

    ``target`` is a :class:`~pipeline.settings.Settings`, a broker URL such as
    ``"kafka://127.0.0.1:9092"`` (every other setting then comes from the
    ``LLMTRAIL_*`` environment), or ``None`` for the environment alone. Events go
    to ``settings.events_topic`` unless ``topic`` is given.

    Example::

        async with AsyncClient(settings) as client:
            trace = Trace(service="support-bot", user_id="u-1")
            await client.publish(trace.prompt("hello"))
            await client.publish_many([trace.response("hi"), trace.response("more")])
        # closed: everything acknowledged, or PublishError was raised

    The producer starts on first use (or on ``start()`` / entering the context) and
    is stopped by :meth:`close`, which flushes first. Use one client per event loop.
    """

    def __init__(self, target: Settings | str | None = None, *, topic: str | None = None) -> None:
        self.settings = _settings_of(target)
        self.topic = topic or self.settings.events_topic
        self._producer: AIOKafkaProducer | None = None
        self._start_lock = asyncio.Lock()
        self._closed = False
        self._pending: set[asyncio.Future[Any]] = set()
        self._failures: list[BaseException] = []

    async def start(self) -> None:
        """Connect the producer (done for you on first publish)."""
        await self._ready()

    async def publish(self, event: Mapping[str, Any], *, wait: bool = False) -> None:
        """Validate ``event`` and queue it for sending.

        Raises :class:`EventError` (with ``.reason`` and ``.field``) for an invalid
        event; nothing is sent then. With ``wait=True`` it returns only once the
        broker has acknowledged this event (slower: no batching across calls).
        """
        key, value = encode_event(event, max_bytes=self.settings.max_event_bytes)
        producer = await self._ready()
        delivery = await producer.send(self.topic, value, key=key)
        # With wait=True a failure is raised here, so flush() does not report it again.
        self._track(delivery, report=not wait)
        if wait:
            await asyncio.shield(delivery)

    async def publish_many(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Validate every event, then queue them all; returns how many were queued.

        Validation is all-or-nothing: if any event is invalid, :class:`EventError`
        names its index (``"event 3: ..."``) and nothing is sent.
        """
        records: list[tuple[bytes, bytes]] = []
        for index, event in enumerate(events):
            try:
                records.append(encode_event(event, max_bytes=self.settings.max_event_bytes))
            except EventError as exc:
                raise EventError(f"event {index}: {exc.reason}", exc.field) from None
        if not records:
            return 0
        producer = await self._ready()
        for key, value in records:
            self._track(await producer.send(self.topic, value, key=key))
        return len(records)

    async def flush(self) -> None:
        """Wait until the broker has acknowledged every queued event.

        Raises :class:`PublishError` if any event queued since the last flush was
        not acknowledged.
        """
        if self._producer is not None:
            await self._producer.flush()
        if self._pending:
            await asyncio.wait(set(self._pending))
        self._raise_failures()

    async def close(self) -> None:
        """Flush, then stop the producer. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        async with self._start_lock:
            producer, self._producer = self._producer, None
        if producer is None:
            self._raise_failures()
            return
        try:
            await producer.flush()
            if self._pending:
                await asyncio.wait(set(self._pending))
        finally:
            await producer.stop()
        self._raise_failures()

    async def __aenter__(self) -> AsyncClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- internals -----------------------------------------------------------------------

    async def _ready(self) -> AIOKafkaProducer:
        if self._closed:
            raise ClientClosedError("the client is closed")
        if self._producer is not None:
            return self._producer
        async with self._start_lock:
            if self._closed:
                raise ClientClosedError("the client is closed")
            if self._producer is None:
                producer = make_producer(self.settings)
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    def _track(self, delivery: asyncio.Future[Any], *, report: bool = True) -> None:
        self._pending.add(delivery)
        delivery.add_done_callback(self._settled if report else self._pending.discard)

    def _settled(self, delivery: asyncio.Future[Any]) -> None:
        self._pending.discard(delivery)
        if delivery.cancelled():
            self._failures.append(asyncio.CancelledError("delivery was cancelled"))
        elif (error := delivery.exception()) is not None:
            self._failures.append(error)

    def _raise_failures(self) -> None:
        if self._failures:
            failures, self._failures = self._failures, []
            raise PublishError(failures) from failures[0]


class Client:
    """The synchronous twin of :class:`AsyncClient`, for code without an event loop.

    It runs its own event loop in a background thread; every method may be called
    from any thread. ``timeout`` (seconds) bounds each call; a call that times out
    raises :class:`TimeoutError`.

    Example::

        with Client(settings) as client:
            trace = Trace(service="batch-job", user_id="u-7")
            client.publish(trace.prompt("hello"))
            client.flush()          # optional: close() flushes too

    Always close it (or use ``with``): events still queued when the process exits
    without ``close()`` are lost.
    """

    def __init__(
        self,
        target: Settings | str | None = None,
        *,
        topic: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.timeout = timeout
        self._client = AsyncClient(target, topic=topic)
        self.settings = self._client.settings
        self.topic = self._client.topic
        self._lock = threading.Lock()
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="llmtrail-client", daemon=True)
        self._thread.start()

    def start(self) -> None:
        """Connect the producer now rather than on first publish."""
        self._call(self._client.start())

    def publish(self, event: Mapping[str, Any], *, wait: bool = False) -> None:
        """See :meth:`AsyncClient.publish`."""
        self._call(self._client.publish(event, wait=wait))

    def publish_many(self, events: Iterable[Mapping[str, Any]]) -> int:
        """See :meth:`AsyncClient.publish_many`."""
        return self._call(self._client.publish_many(list(events)))

    def flush(self) -> None:
        """See :meth:`AsyncClient.flush`."""
        self._call(self._client.flush())

    def close(self) -> None:
        """Flush, stop the producer and the background loop. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._submit(self._client.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(self.timeout)

    def __enter__(self) -> Client:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        with self._lock:
            if self._closed:
                coro.close()
                raise ClientClosedError("the client is closed")
        return self._submit(coro)

    def _submit(self, coro: Coroutine[Any, Any, _T]) -> _T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(self.timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"llmtrail client call took longer than {self.timeout} s") from None

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            # Like asyncio.run: cancel what is left (only after a timed-out close).
            leftovers = asyncio.all_tasks(self._loop)
            for task in leftovers:
                task.cancel()
            if leftovers:
                self._loop.run_until_complete(
                    asyncio.gather(*leftovers, return_exceptions=True)
                )
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()


class Trace:
    """Builds the Event v1 dicts of one trace (a request or a conversation).

    Every event gets a fresh ``event_id`` (uuid4), ``ts`` (now, UTC, ms), the shared
    ``trace_id`` and a ``parent_id`` pointing at the event built before it. The
    fields given here (``service``, ``user``, ``model``, ...) are copied into each
    event; keyword arguments of a builder method are added last and win, so any
    field of Event v1 (or your own extra field) can be set per event. Each built
    event is validated; a bad value raises :class:`EventError` at the call site.

    Example::

        trace = Trace(service="support-bot", user_id="u-1", session_id="s-9",
                      model="gpt-4o", provider="openai", environment="prod")
        prompt = trace.prompt("Look up customer 42")
        call = trace.tool_call("crm.lookup", {"customer_id": "42"}, result="found")
        answer = trace.response("Customer 42 is ...", usage={"prompt_tokens": 120},
                                latency_ms=812)
        assert call["parent_id"] == prompt["event_id"]

    Safe to use from several threads (the parent chain is then in build order).
    """

    def __init__(
        self,
        *,
        service: str | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        model: str | Mapping[str, Any] | None = None,
        provider: str | None = None,
        environment: str | None = None,
        user: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        trace_id: str | None = None,
        **common: Any,
    ) -> None:
        self.trace_id = trace_id or f"t-{uuid.uuid4().hex}"
        self.last_event_id: str | None = None
        shared: dict[str, Any] = {}
        if session_id is not None:
            shared["session_id"] = session_id
        if service is not None:
            shared["service"] = service
        if environment is not None:
            shared["environment"] = environment
        user_fields = dict(user or {})
        if user_id is not None:
            user_fields["id"] = user_id
        if user_fields:
            shared["user"] = user_fields
        model_fields = {"name": model} if isinstance(model, str) else dict(model or {})
        if provider is not None:
            model_fields["provider"] = provider
        if model_fields:
            shared["model"] = model_fields
        if tags is not None:
            shared["tags"] = dict(tags)
        shared.update(common)
        self._shared = shared
        self._lock = threading.Lock()

    def prompt(
        self, text: str, messages: Sequence[Mapping[str, Any]] | None = None, **extra: Any
    ) -> dict[str, Any]:
        """A ``prompt`` event: what was sent to the model."""
        payload: dict[str, Any] = {"text": text}
        if messages is not None:
            payload["messages"] = [dict(message) for message in messages]
        return self._build("prompt", "prompt", payload, extra)

    def response(
        self,
        text: str,
        *,
        refusal: bool = False,
        finish_reason: str | None = "stop",
        usage: Mapping[str, Any] | None = None,
        latency_ms: float | None = None,
        reasoning: str | None = None,
        filter_flags: Sequence[str] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """A ``response`` event: what the model answered."""
        payload: dict[str, Any] = {"text": text, "finish_reason": finish_reason, "refusal": refusal}
        if reasoning is not None:
            payload["reasoning"] = reasoning
        if filter_flags is not None:
            payload["filter_flags"] = list(filter_flags)
        top: dict[str, Any] = {}
        if usage is not None:
            top["usage"] = dict(usage)
        if latency_ms is not None:
            top["latency_ms"] = latency_ms
        return self._build("response", "response", payload, {**top, **extra})

    def tool_call(
        self,
        name: str,
        arguments: Any,
        *,
        result: Any = None,
        endpoint: str | None = None,
        status: str = "ok",
        authenticated: bool = True,
        error: str | None = None,
        latency_ms: float | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """A ``tool_call`` event: a tool or API the model (or agent) invoked."""
        payload: dict[str, Any] = {
            "name": name,
            "arguments": arguments,
            "status": status,
            "authenticated": authenticated,
        }
        if result is not None:
            payload["result"] = result
        if endpoint is not None:
            payload["endpoint"] = endpoint
        if error is not None:
            payload["error"] = error
        top: dict[str, Any] = {} if latency_ms is None else {"latency_ms": latency_ms}
        return self._build("tool_call", "tool", payload, {**top, **extra})

    def _build(
        self, kind: str, payload_key: str, payload: dict[str, Any], extra: Mapping[str, Any]
    ) -> dict[str, Any]:
        event_id = str(uuid.uuid4())
        with self._lock:
            event: dict[str, Any] = {
                "event_id": event_id,
                "kind": kind,
                "ts": rfc3339_now(),
                "trace_id": self.trace_id,
            }
            if self.last_event_id is not None:
                event["parent_id"] = self.last_event_id
            for name, value in self._shared.items():
                event[name] = dict(value) if isinstance(value, dict) else value
            event[payload_key] = payload
            event.update(extra)
            validate_event(event)
            self.last_event_id = event["event_id"]
        return event
