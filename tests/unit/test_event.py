"""decode_event: raw Kafka bytes in, a valid Event v1 dict or an EventError with a reason out."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from detectors.event import REQUIRED, EventError, decode_event, validate_event

LIMIT = 4096
TS = "2026-11-22T14:03:07.120Z"


def event(**changes: Any) -> dict[str, Any]:
    """A minimal valid prompt event; ``field=DROP`` removes a field."""
    base: dict[str, Any] = {
        "event_id": "e-1",
        "kind": "prompt",
        "ts": TS,
        "trace_id": "t-1",
        "prompt": {"text": "hello"},
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not DROP}


DROP = object()


def raw(value: Any) -> bytes:
    return orjson.dumps(value)


# (raw bytes, substring of the reason, field or None)
INVALID: list[Any] = [
    pytest.param(b"\xff\xfe{}", "invalid UTF-8", None, id="invalid-utf8"),
    pytest.param(b'{"event_id": "\xc3\x28"}', "invalid UTF-8", None, id="invalid-utf8-in-string"),
    pytest.param(b"{not json", "invalid JSON", None, id="invalid-json"),
    pytest.param(b"", "invalid JSON", None, id="empty-bytes"),
    pytest.param(b'{"a": 1} trailing', "invalid JSON", None, id="trailing-garbage"),
    pytest.param(b"{'event_id': 'x'}", "invalid JSON", None, id="single-quotes"),
    pytest.param(b'{"latency_ms": NaN}', "invalid JSON", None, id="nan"),
    pytest.param(b"[]", "expected a JSON object, got list", None, id="array"),
    pytest.param(b'"event"', "expected a JSON object, got str", None, id="string"),
    pytest.param(b"42", "expected a JSON object, got int", None, id="number"),
    pytest.param(b"null", "expected a JSON object, got null", None, id="null"),
    pytest.param(b"{}", "missing required field 'event_id'", "event_id", id="empty-object"),
    *[
        pytest.param(raw(event(**{name: DROP})), f"missing required field {name!r}", name,
                     id=f"missing-{name}")
        for name in REQUIRED
    ],
    pytest.param(raw(event(event_id="")), "'event_id': must not be empty", "event_id",
                 id="empty-event-id"),
    pytest.param(raw(event(event_id="  \t")), "must not be empty", "event_id",
                 id="blank-event-id"),
    pytest.param(raw(event(event_id="x" * 257)), "longer than 256", "event_id",
                 id="long-event-id"),
    pytest.param(raw(event(event_id=7)), "'event_id': expected a string, got int", "event_id",
                 id="int-event-id"),
    pytest.param(raw(event(trace_id=None)), "'trace_id': expected a string, got null",
                 "trace_id", id="null-trace-id"),
    pytest.param(raw(event(trace_id="")), "'trace_id': must not be empty", "trace_id",
                 id="empty-trace-id"),
    pytest.param(raw(event(kind="alert")), "expected one of prompt, response, tool_call",
                 "kind", id="unknown-kind"),
    pytest.param(raw(event(kind="Prompt")), "got 'Prompt'", "kind", id="kind-case"),
    pytest.param(raw(event(kind=1)), "'kind': expected a string, got int", "kind",
                 id="int-kind"),
    pytest.param(raw(event(ts=1700000000)), "RFC 3339 timestamp string, got int", "ts",
                 id="epoch-ts"),
    pytest.param(raw(event(ts="yesterday")), "expected an RFC 3339 timestamp", "ts",
                 id="words-ts"),
    pytest.param(raw(event(ts="2026-11-22T14:03:07")), "needs a UTC offset", "ts",
                 id="naive-ts"),
    pytest.param(raw(event(ts="2026-11-22 14:03:07Z")), "expected an RFC 3339", "ts",
                 id="space-ts"),
    pytest.param(raw(event(ts="2026-W47-1T14:03:07Z")), "expected an RFC 3339", "ts",
                 id="week-date-ts"),
    pytest.param(raw(event(ts="20261122T140307Z")), "expected an RFC 3339", "ts",
                 id="basic-format-ts"),
    pytest.param(raw(event(ts="2026-02-30T00:00:00Z")), "expected an RFC 3339", "ts",
                 id="impossible-date-ts"),
    pytest.param(raw(event(prompt=DROP)), "kind 'prompt' needs the 'prompt' object", "prompt",
                 id="missing-payload"),
    pytest.param(raw(event(kind="response")), "kind 'response' needs the 'response' object",
                 "response", id="missing-response-payload"),
    pytest.param(raw(event(kind="tool_call")), "kind 'tool_call' needs the 'tool' object",
                 "tool", id="missing-tool-payload"),
    pytest.param(raw(event(prompt="hello")), "'prompt': expected an object, got str", "prompt",
                 id="payload-not-object"),
    pytest.param(raw(event(prompt={"text": 5})), "'prompt.text': expected a string, got int",
                 "prompt.text", id="prompt-text-int"),
    pytest.param(raw(event(prompt={"messages": "hi"})), "expected a list of messages",
                 "prompt.messages", id="messages-not-list"),
    pytest.param(raw(event(prompt={"messages": [{"role": "user", "content": 1}]})),
                 "[0].content: expected a string, got int", "prompt.messages",
                 id="message-content-int"),
    pytest.param(raw(event(user={"id": 123})), "'user.id': expected a string, got int",
                 "user.id", id="user-id-int"),
    pytest.param(raw(event(user="u-1")), "'user': expected an object, got str", "user",
                 id="user-not-object"),
    pytest.param(raw(event(kind="response", response={"refusal": "no"})),
                 "'response.refusal': expected true or false, got str", "response.refusal",
                 id="refusal-str"),
    pytest.param(raw(event(kind="response", response={"filter_flags": ["a", 1]})),
                 "expected a list of strings", "response.filter_flags", id="flags-mixed"),
    pytest.param(raw(event(kind="tool_call", tool={"authenticated": 1})),
                 "'tool.authenticated': expected true or false, got int",
                 "tool.authenticated", id="authenticated-int"),
    pytest.param(raw(event(usage={"prompt_tokens": -1})), "must not be negative",
                 "usage.prompt_tokens", id="negative-tokens"),
    pytest.param(raw(event(usage={"prompt_tokens": 1.5})), "expected a non-negative integer",
                 "usage.prompt_tokens", id="fractional-tokens"),
    pytest.param(raw(event(usage={"completion_tokens": True})),
                 "expected a non-negative integer, got bool", "usage.completion_tokens",
                 id="bool-tokens"),
    pytest.param(raw(event(latency_ms="812")), "expected a non-negative number, got str",
                 "latency_ms", id="latency-str"),
    pytest.param(raw(event(latency_ms=-1)), "must not be negative", "latency_ms",
                 id="latency-negative"),
    pytest.param(raw(event(tags={"feature": 1})), "'tags': expected string values", "tags",
                 id="tags-int-value"),
    pytest.param(raw(event(session_id=5)), "'session_id': expected a string, got int",
                 "session_id", id="session-int"),
]


@pytest.mark.parametrize(("data", "reason", "field"), INVALID)
def test_invalid_events_are_rejected_with_a_reason(
    data: bytes, reason: str, field: str | None
) -> None:
    with pytest.raises(EventError) as caught:
        decode_event(data, max_bytes=LIMIT)
    assert reason in caught.value.reason
    assert str(caught.value) == caught.value.reason
    assert caught.value.field == field


def test_oversize_is_rejected_before_parsing() -> None:
    data = raw(event(prompt={"text": "x" * LIMIT}))
    with pytest.raises(EventError) as caught:
        decode_event(data, max_bytes=LIMIT)
    assert caught.value.reason == (
        f"event of {len(data)} bytes exceeds the limit of {LIMIT} bytes"
    )
    # Exactly at the limit is fine; oversize is checked even on garbage.
    exact = raw(event(prompt={"text": "x"}))
    assert decode_event(exact, max_bytes=len(exact))["event_id"] == "e-1"
    with pytest.raises(EventError, match="exceeds the limit"):
        decode_event(b"\xff" * 10, max_bytes=5)


def test_reason_is_short_for_huge_bad_timestamps() -> None:
    with pytest.raises(EventError) as caught:
        decode_event(raw(event(ts="9" * 10_000)), max_bytes=1 << 20)
    assert len(caught.value.reason) < 120


VALID: list[Any] = [
    pytest.param(event(), id="minimal-prompt"),
    pytest.param(event(kind="response", prompt=DROP, response={}), id="minimal-response"),
    pytest.param(event(kind="tool_call", prompt=DROP, tool={}), id="minimal-tool-call"),
    pytest.param(event(ts="2026-11-22T14:03:07+05:30"), id="offset-ts"),
    pytest.param(event(ts="2026-11-22t14:03:07.5z"), id="lower-case-ts"),
    pytest.param(event(ts="2026-11-22T14:03:07.123456789Z"), id="nanosecond-ts"),
    pytest.param(event(response={"text": "also here"}, tool={"name": "x"}), id="extra-payloads"),
    pytest.param(event(kind="response", response={"finish_reason": None, "refusal": True}),
                 id="null-finish-reason"),
    pytest.param(event(kind="tool_call", tool={"arguments": [1, {"a": None}], "result": None,
                                               "error": None}), id="tool-any-values"),
    pytest.param(event(usage={"prompt_tokens": 0, "cost_usd": 0}, latency_ms=0.25),
                 id="zero-usage"),
    pytest.param(event(prompt={"text": "", "messages": [{}, {"role": "user", "extra": 1}]}),
                 id="loose-messages"),
    pytest.param(event(event_id="\u65e5\u672c", trace_id=" t "), id="unicode-ids"),
]


@pytest.mark.parametrize("value", VALID)
def test_valid_events_decode_unchanged(value: dict[str, Any]) -> None:
    assert decode_event(raw(value), max_bytes=LIMIT) == value


def test_unknown_fields_are_kept() -> None:
    value = event(
        x_custom={"nested": [1, 2, {"deep": True}]},
        schema_version="v1",
        user={"id": "u-1", "department": "finance", "clearance": 3},
        prompt={"text": "hi", "lang": "en"},
    )
    decoded = decode_event(raw(value), max_bytes=LIMIT)
    assert decoded["x_custom"] == {"nested": [1, 2, {"deep": True}]}
    assert decoded["user"]["clearance"] == 3
    assert decoded["prompt"]["lang"] == "en"
    assert decoded == value


def test_validate_event_returns_the_same_object() -> None:
    value = event()
    assert validate_event(value) is value


def test_whitespace_around_the_json_is_fine() -> None:
    assert decode_event(b"  \n" + raw(event()) + b"\n", max_bytes=LIMIT)["trace_id"] == "t-1"


# Several problems at once: the reason names the first in Event v1's table order
# (REQUIRED, then OPTIONAL), whatever order the event's own fields come in.
SEVERAL: list[Any] = [
    pytest.param({"latency_ms": "slow", "session_id": 5}, "session_id", id="optional-order"),
    pytest.param({"usage": {"prompt_tokens": -1}, "user": {"id": 1}}, "user.id",
                 id="nested-order"),
    pytest.param({"tags": {"a": 1}, "ts": "yesterday"}, "ts", id="required-first"),
    pytest.param({"kind": "alert", "session_id": 5}, "kind", id="kind-before-optional"),
]


@pytest.mark.parametrize(("changes", "field"), SEVERAL)
def test_the_first_problem_in_table_order_is_reported(changes: dict[str, Any],
                                                      field: str) -> None:
    value = {**changes, **{k: v for k, v in event().items() if k not in changes}}
    with pytest.raises(EventError) as caught:
        validate_event(value)
    assert caught.value.field == field
