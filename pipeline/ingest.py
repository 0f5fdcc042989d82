"""HTTP ingest: services that cannot speak Kafka POST Event v1 here.

Endpoints:

- ``POST /v1/events`` -- one event object, or a JSON array of events.
  Authenticate with ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``
  (one of ``LLMTRAIL_API_KEYS``). Answers:

  - ``202 {"accepted": n}`` once the broker has acknowledged all ``n`` events;
  - ``400 {"error", "index", "field"}`` for invalid JSON or an invalid event. An
    array with one invalid event is rejected whole (nothing is published), and
    ``index`` is its position (``null`` when the body is not an array);
  - ``401`` without a valid key, ``413`` for a body over
    ``LLMTRAIL_HTTP_MAX_BODY_BYTES``;
  - ``503`` when the broker did not acknowledge in time. Some events of the
    request may still have been written: retrying is safe for consumers that
    deduplicate by ``event_id`` (the archive does).

- ``GET /healthz`` -- liveness, ``200 {"status": "ok"}``.

A single object is forwarded as the exact bytes received; the elements of an
array are re-serialised one by one with orjson. The Kafka key is ``trace_id``.

With no API key configured the server refuses to start, unless it is told
``allow_anonymous=True`` (for a laptop or a trusted network only).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from detectors.event import EventError, validate_event
from pipeline.client import encode_event
from pipeline.kafka import make_producer
from pipeline.settings import Settings, SettingsError

__all__ = ["DEFAULT_ACK_TIMEOUT", "create_ingest_app", "run_ingest"]

_LOG = logging.getLogger(__name__)
DEFAULT_ACK_TIMEOUT = 30.0
_CHUNK = 64 * 1024


class _Rejected(Exception):
    """A request body that cannot be published; becomes a 400."""

    def __init__(self, reason: str, index: int | None = None, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.index = index
        self.field = field


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def _key_digests(settings: Settings, allow_anonymous: bool) -> tuple[bytes, ...]:
    digests = tuple(_digest(key.reveal().encode("utf-8")) for key in settings.api_keys if key)
    if not digests and not allow_anonymous:
        raise SettingsError(
            "LLMTRAIL_API_KEYS is empty: HTTP ingest will not accept events from anyone. "
            "Set at least one key, or pass allow_anonymous=True on a trusted network."
        )
    return digests


class _Ingest:
    def __init__(
        self,
        settings: Settings,
        producer: AIOKafkaProducer,
        key_digests: tuple[bytes, ...],
        ack_timeout: float,
    ) -> None:
        self.settings = settings
        self.producer = producer
        self.key_digests = key_digests
        self.ack_timeout = ack_timeout

    async def post_events(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return _json(
                401,
                {"error": "missing or invalid API key (Authorization: Bearer or X-API-Key)"},
                headers={"WWW-Authenticate": 'Bearer realm="llmtrail"'},
            )
        body = await self._read_body(request)
        if body is None:
            limit = self.settings.http_max_body_bytes
            return _json(413, {"error": f"request body exceeds {limit} bytes"})
        try:
            records = self._records(body)
        except _Rejected as exc:
            return _json(400, {"error": exc.reason, "index": exc.index, "field": exc.field})
        try:
            await self._publish(records)
        except (KafkaError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            _LOG.warning(
                "ingest: %d event(s) for %s not acknowledged: %s",
                len(records), self.settings.events_topic, reason,
            )
            return _json(503, {"error": f"broker unavailable: {reason}"})
        return _json(202, {"accepted": len(records)})

    def _authorised(self, request: web.Request) -> bool:
        if not self.key_digests:
            return True  # anonymous ingest was explicitly allowed
        candidates = []
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            candidates.append(token.strip())
        api_key = request.headers.get("X-API-Key", "").strip()
        if api_key:
            candidates.append(api_key)
        # Compare digests (equal length) with every key, without stopping at a match.
        matched = False
        for candidate in candidates:
            digest = _digest(candidate.encode("utf-8", "surrogateescape"))
            for known in self.key_digests:
                matched |= hmac.compare_digest(digest, known)
        return matched

    async def _read_body(self, request: web.Request) -> bytes | None:
        """The whole body, or ``None`` when it is larger than allowed."""
        limit = self.settings.http_max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return None
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def _records(self, body: bytes) -> list[tuple[bytes, bytes]]:
        """Validate the body; returns (key, value) pairs to publish."""
        max_bytes = self.settings.max_event_bytes
        try:
            decoded = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            message = str(exc)
            kind = "invalid UTF-8" if "utf-8" in message.lower() else "invalid JSON"
            raise _Rejected(f"{kind}: {message}") from None
        if isinstance(decoded, dict):
            if len(body) > max_bytes:
                size = len(body)
                raise _Rejected(f"event of {size} bytes exceeds the limit of {max_bytes} bytes")
            try:
                validate_event(decoded)
            except EventError as exc:
                raise _Rejected(exc.reason, None, exc.field) from None
            return [(decoded["trace_id"].encode("utf-8"), body)]
        if isinstance(decoded, list):
            records = []
            for index, item in enumerate(decoded):
                try:
                    records.append(encode_event(item, max_bytes=max_bytes))
                except EventError as exc:
                    raise _Rejected(exc.reason, index, exc.field) from None
            return records
        got = "null" if decoded is None else type(decoded).__name__
        raise _Rejected(f"expected a JSON object or an array of objects, got {got}")

    async def _publish(self, records: list[tuple[bytes, bytes]]) -> None:
        """Send every record and wait for the broker's acknowledgement of each."""
        deliveries: list[asyncio.Future[Any]] = []
        try:
            async with asyncio.timeout(self.ack_timeout):
                for key, value in records:
                    deliveries.append(
                        await self.producer.send(self.settings.events_topic, value, key=key)
                    )
                if deliveries:
                    await asyncio.wait(deliveries)
        finally:
            for delivery in deliveries:
                if delivery.done():
                    _retrieve(delivery)
                else:
                    # It settles after we have answered 503: log it if it fails then.
                    delivery.add_done_callback(_log_late_failure)
        for delivery in deliveries:
            delivery.result()  # raises the first delivery error


def _retrieve(delivery: asyncio.Future[Any]) -> BaseException | None:
    """The delivery's error, if any (marks it retrieved, so asyncio does not complain)."""
    if delivery.cancelled():
        return asyncio.CancelledError()
    return delivery.exception()


def _log_late_failure(delivery: asyncio.Future[Any]) -> None:
    if (error := _retrieve(delivery)) is not None:
        _LOG.warning("ingest: an event was not delivered after the request timed out: %r", error)


async def _healthz(_request: web.Request) -> web.Response:
    return _json(200, {"status": "ok"})


def create_ingest_app(
    settings: Settings,
    producer: AIOKafkaProducer,
    *,
    allow_anonymous: bool = False,
    ack_timeout: float = DEFAULT_ACK_TIMEOUT,
) -> web.Application:
    """The ingest web application, publishing through ``producer`` (started by the caller).

    Raises :class:`~pipeline.settings.SettingsError` when ``settings.api_keys`` is
    empty and ``allow_anonymous`` is false. When keys are configured they are always
    required, whatever ``allow_anonymous`` says. ``ack_timeout`` bounds, in seconds,
    the wait for the broker's acknowledgement of a request's events (503 after).

    Example::

        producer = make_producer(settings)
        await producer.start()
        app = create_ingest_app(settings, producer)
        # serve with aiohttp's AppRunner, or: web.run_app(app, port=settings.http_port)
    """
    ingest = _Ingest(settings, producer, _key_digests(settings, allow_anonymous), ack_timeout)
    # The streamed size check in the handler answers 413 itself; aiohttp's own limit only
    # applies to request.read()/post(), which the handler does not use.
    app = web.Application(client_max_size=settings.http_max_body_bytes)
    app.router.add_post("/v1/events", ingest.post_events)
    app.router.add_get("/healthz", _healthz)
    return app


async def run_ingest(
    settings: Settings,
    *,
    allow_anonymous: bool = False,
    ack_timeout: float = DEFAULT_ACK_TIMEOUT,
) -> None:
    """Serve HTTP ingest on ``settings.http_host:http_port`` until cancelled.

    Starts its own producer and stops it on the way out. Returns at once, doing
    nothing, when ``http_port`` is 0 (ingest disabled). Raises
    :class:`~pipeline.settings.SettingsError` before binding anything when no API
    key is configured and ``allow_anonymous`` is false.
    """
    if settings.http_port == 0:
        _LOG.info("HTTP ingest disabled (LLMTRAIL_HTTP_PORT=0)")
        return
    _key_digests(settings, allow_anonymous)  # fail before connecting to anything
    producer = make_producer(settings)
    try:
        await producer.start()
        app = create_ingest_app(
            settings, producer, allow_anonymous=allow_anonymous, ack_timeout=ack_timeout
        )
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            site = web.TCPSite(runner, settings.http_host, settings.http_port)
            await site.start()
            _LOG.info(
                "HTTP ingest on http://%s:%d/v1/events -> %s",
                settings.http_host, settings.http_port, settings.events_topic,
            )
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
    finally:
        await producer.stop()
