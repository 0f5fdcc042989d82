"""What the detect agent does to a batch of raw records, as plain functions.

The Faust agent only moves bytes: it hands a batch of :class:`Incoming`
records to :func:`detect_batch` and sends the :class:`Outgoing` records it
gets back. Everything here runs without a broker (tests, ``llmtrail scan``).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from detectors import Engine, Finding, build_alert
from detectors.event import EventError, decode_event
from pipeline.settings import Settings
from pipeline.users import UserDirectory, enrich

log = logging.getLogger(__name__)

DEADLETTER_SCHEMA = "llmtrail.deadletter/v1"
# Dead letters keep the original bytes; past this size they keep a prefix and say so.
DEADLETTER_MAX_RAW = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Incoming:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes


@dataclass(frozen=True, slots=True)
class Outgoing:
    topic: str
    key: bytes | None
    value: bytes


@dataclass(slots=True)
class Decoded:
    """A batch split into valid events (with their records) and rejected records with reasons."""

    valid: list[tuple[Incoming, dict[str, Any]]] = field(default_factory=list)
    invalid: list[tuple[Incoming, str]] = field(default_factory=list)


def decode_batch(batch: Sequence[Incoming], max_bytes: int) -> Decoded:
    decoded = Decoded()
    for msg in batch:
        try:
            decoded.valid.append((msg, decode_event(msg.value, max_bytes=max_bytes)))
        except EventError as exc:
            decoded.invalid.append((msg, exc.reason))
    return decoded


@dataclass(slots=True)
class BatchResult:
    out: list[Outgoing] = field(default_factory=list)
    events: int = 0
    alerts: int = 0
    dead: int = 0


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dead_letter(msg: Incoming, reason: str, *, stage: str, failed_at: str) -> bytes:
    """The dead-letter record: why, where from, and the original bytes (base64)."""
    raw = msg.value
    truncated = len(raw) > DEADLETTER_MAX_RAW
    kept = raw[:DEADLETTER_MAX_RAW] if truncated else raw
    return orjson.dumps({
        "schema": DEADLETTER_SCHEMA,
        "reason": reason,
        "stage": stage,
        "topic": msg.topic,
        "partition": msg.partition,
        "offset": msg.offset,
        "timestamp_ms": msg.timestamp_ms,
        "failed_at": failed_at,
        "size": len(raw),
        "raw_truncated": truncated,
        "raw_b64": base64.b64encode(kept).decode("ascii"),
    })


def _alert_key(event: dict[str, Any]) -> bytes:
    return str(event.get("trace_id", "")).encode()


def detect_batch(
    decoded: Decoded,
    *,
    engine: Engine,
    users: UserDirectory,
    settings: Settings,
) -> BatchResult:
    """Enrich and scan each valid event; route alerts, and dead-letter the invalid records.

    Never raises for a bad record: invalid input and unexpected engine errors
    become dead letters that carry the reason, topic, partition and offset.
    """
    result = BatchResult()
    now = utc_now()
    for msg, reason in decoded.invalid:
        result.out.append(Outgoing(settings.deadletter_topic, msg.key,
                                   dead_letter(msg, reason, stage="decode", failed_at=now)))
        result.dead += 1
    events = [enrich(raw_event, users) for _, raw_event in decoded.valid]
    for (msg, _), event, findings in zip(decoded.valid, events, _scan_all(engine, events),
                                         strict=True):
        if isinstance(findings, Exception):  # an engine bug must not lose the event
            exc = findings
            log.error("engine failed on %s[%d]@%d", msg.topic, msg.partition, msg.offset,
                      exc_info=exc)
            reason = f"internal error in detection: {type(exc).__name__}: {exc}"
            result.out.append(Outgoing(settings.deadletter_topic, msg.key,
                                       dead_letter(msg, reason, stage="detect", failed_at=now)))
            result.dead += 1
            continue
        result.events += 1
        key = _alert_key(event)
        for finding in findings:
            alert = orjson.dumps(build_alert(finding, event, detected_at=now))
            result.out.append(Outgoing(settings.alerts_topic, key, alert))
            result.out.append(Outgoing(settings.severity_topic(finding.severity), key, alert))
            result.alerts += 1
    return result


def _scan_all(engine: Engine, events: list[dict[str, Any]]) -> list[list[Finding] | Exception]:
    """Findings per event, from one batched scan (the classifier scores the batch at once).

    If the batch fails, each event is scanned alone, so only the events the
    engine fails on come back as their exception (dead-lettered by the caller).
    """
    try:
        return list(engine.scan_batch(events))
    except Exception:
        log.exception("engine failed on a batch of %d events; scanning them one by one",
                      len(events))
    out: list[list[Finding] | Exception] = []
    for event in events:
        try:
            out.append(engine.scan(event))
        except Exception as exc:
            out.append(exc)
    return out
