"""Event v1: decode raw bytes and validate them against the contract of DESIGN.md.

Pure and broker-free: the worker, ``llmtrail scan`` and backtests all call
:func:`decode_event`. Unknown fields are kept. A violation raises
:class:`EventError` whose ``reason`` names the field and what was expected;
that reason is what the dead-letter record carries.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import orjson

EVENT_SCHEMA_VERSION = "v1"
KINDS = ("prompt", "response", "tool_call")
PAYLOAD_OF_KIND = {"prompt": "prompt", "response": "response", "tool_call": "tool"}
MAX_ID_LENGTH = 256
# RFC 3339 date-time (section 5.6); the offset is optional here so that a missing one gets
# its own message. fromisoformat alone also takes ISO 8601 forms that are not RFC 3339
# (week dates, basic format, missing seconds), so the shape is checked first.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?"
)


class EventError(ValueError):
    """Raw bytes that are not a valid Event v1."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


Check = Callable[[Any], str | None]


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else f"expected a string, got {_type_name(value)}"


def _identifier(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"expected a string, got {_type_name(value)}"
    if not value.strip():
        return "must not be empty"
    if len(value) > MAX_ID_LENGTH:
        return f"longer than {MAX_ID_LENGTH} characters"
    return None


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"expected true or false, got {_type_name(value)}"


def _count(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"expected a non-negative integer, got {_type_name(value)}"
    return None if value >= 0 else "must not be negative"


def _amount(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"expected a non-negative number, got {_type_name(value)}"
    return None if value >= 0 else "must not be negative"


def _object(value: Any) -> str | None:
    return None if isinstance(value, dict) else f"expected an object, got {_type_name(value)}"


def _string_list(value: Any) -> str | None:
    if not isinstance(value, list):
        return f"expected a list of strings, got {_type_name(value)}"
    if not all(isinstance(item, str) for item in value):
        return "expected a list of strings"
    return None


def _string_map(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"expected an object, got {_type_name(value)}"
    if not all(isinstance(item, str) for item in value.values()):
        return "expected string values"
    return None


def _optional_string(value: Any) -> str | None:
    return None if value is None or isinstance(value, str) else _string(value)


def _messages(value: Any) -> str | None:
    if not isinstance(value, list):
        return f"expected a list of messages, got {_type_name(value)}"
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            return f"[{index}]: expected an object, got {_type_name(message)}"
        for key in ("role", "content"):
            if key in message and not isinstance(message[key], str):
                return f"[{index}].{key}: expected a string, got {_type_name(message[key])}"
    return None


def _timestamp(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"expected an RFC 3339 timestamp string, got {_type_name(value)}"
    not_rfc3339 = f"expected an RFC 3339 timestamp, got {value[:40]!r}"
    if not _RFC3339.fullmatch(value):
        return not_rfc3339
    try:
        parsed = datetime.fromisoformat(value.upper())
    except ValueError:  # the right shape but out of range: month 13, 30 February, 24:00
        return not_rfc3339
    if parsed.tzinfo is None:
        return "timestamp needs a UTC offset or Z"
    return None


def _any(_value: Any) -> str | None:
    return None


# Field path -> check. Absent optional fields are fine; present ones must pass.
REQUIRED: dict[str, Check] = {
    "event_id": _identifier,
    "kind": _string,
    "ts": _timestamp,
    "trace_id": _identifier,
}
OPTIONAL: dict[str, Check] = {
    "session_id": _string,
    "request_id": _string,
    "parent_id": _string,
    "service": _string,
    "environment": _string,
    "user": _object,
    "user.id": _string,
    "user.ip": _string,
    "user.geo": _string,
    "user.device": _string,
    "model": _object,
    "model.provider": _string,
    "model.name": _string,
    "model.version": _string,
    "system_prompt": _object,
    "system_prompt.version": _string,
    "system_prompt.sha256": _string,
    "system_prompt.text": _string,
    "prompt": _object,
    "prompt.text": _string,
    "prompt.messages": _messages,
    "response": _object,
    "response.text": _string,
    "response.finish_reason": _optional_string,
    "response.refusal": _boolean,
    "response.reasoning": _string,
    "response.filter_flags": _string_list,
    "tool": _object,
    "tool.name": _string,
    "tool.endpoint": _string,
    "tool.arguments": _any,
    "tool.result": _any,
    "tool.status": _string,
    "tool.authenticated": _boolean,
    "tool.error": _optional_string,
    "usage": _object,
    "usage.prompt_tokens": _count,
    "usage.completion_tokens": _count,
    "usage.cost_usd": _amount,
    "latency_ms": _amount,
    "tags": _string_map,
}

_MISSING = object()
Node = tuple[Check, dict[str, Check]]


def _tree(*tables: dict[str, Check]) -> dict[str, Node]:
    """The tables as top-level field -> (its check, {sub-field: check})."""
    tree: dict[str, Node] = {path: (check, {}) for table in tables
                             for path, check in table.items() if "." not in path}
    for table in tables:
        for path, check in table.items():
            if "." in path:
                parent, child = path.split(".")
                tree[parent][1][child] = check
    return tree


_TREE = _tree(REQUIRED, OPTIONAL)
_REQUIRED_NAMES = frozenset(REQUIRED)


def _conforms(event: dict[str, Any]) -> bool:
    """Whether the event passes every check, visiting only the fields it has (the common case).

    :func:`validate_event` falls back to the ordered walk over the tables only to name the
    first problem, so a bad event gets the same reason either way.
    """
    if not event.keys() >= _REQUIRED_NAMES:
        return False
    for name, value in event.items():
        node = _TREE.get(name)
        if node is None:
            continue
        check, children = node
        if check(value) is not None:
            return False
        for child, inner in value.items() if children else ():
            child_check = children.get(child)
            if child_check is not None and child_check(inner) is not None:
                return False
    kind = event["kind"]
    return kind in KINDS and PAYLOAD_OF_KIND[kind] in event


def _lookup(event: Mapping[str, Any], path: str) -> Any:
    value: Any = event
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def validate_event(event: Any) -> dict[str, Any]:
    """Check a decoded JSON value against Event v1; return it unchanged when valid."""
    if not isinstance(event, dict):
        raise EventError(f"expected a JSON object, got {_type_name(event)}")
    if _conforms(event):
        return event
    for path, check in REQUIRED.items():
        value = _lookup(event, path)
        if value is _MISSING:
            raise EventError(f"missing required field {path!r}", path)
        problem = check(value)
        if problem:
            raise EventError(f"field {path!r}: {problem}", path)
    kind = event["kind"]
    if kind not in KINDS:
        raise EventError(f"field 'kind': expected one of {', '.join(KINDS)}, got {kind!r}", "kind")
    for path, check in OPTIONAL.items():
        value = _lookup(event, path)
        if value is _MISSING:
            continue
        problem = check(value)
        if problem:
            raise EventError(f"field {path!r}: {problem}", path)
    payload = PAYLOAD_OF_KIND[kind]
    if payload not in event:
        raise EventError(f"kind {kind!r} needs the {payload!r} object", payload)
    return event


def decode_event(raw: bytes, *, max_bytes: int) -> dict[str, Any]:
    """Raw Kafka value → a validated Event v1 dict, or :class:`EventError` with the reason."""
    if len(raw) > max_bytes:
        raise EventError(f"event of {len(raw)} bytes exceeds the limit of {max_bytes} bytes")
    try:
        decoded = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        message = str(exc)
        if "utf-8" in message.lower():
            raise EventError(f"invalid UTF-8: {message}") from None
        raise EventError(f"invalid JSON: {message}") from None
    return validate_event(decoded)
