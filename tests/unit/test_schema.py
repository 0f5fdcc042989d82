"""The published JSON Schema (pipeline/schemas/event-v1.json) agrees with the decoder.

Every row is checked three ways: the expected verdict, ``validate_event`` and a
JSON Schema 2020-12 validator with format assertion. The field rows are generated
from the decoder's own ``REQUIRED`` / ``OPTIONAL`` tables, so a field added to the
decoder without a matching schema change (or a new kind of check without samples
here) fails this test.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest

from detectors.event import KINDS, OPTIONAL, PAYLOAD_OF_KIND, REQUIRED, EventError, validate_event
from pipeline.client import Trace, event_schema

TS = "2026-11-22T14:03:07.120Z"

# A valid event with every documented field, so any path can be replaced in place.
FULL: dict[str, Any] = {
    "event_id": "0b9c6c1e-8f7a-4f0e-9d64-1b2d3c4e5f60",
    "kind": "prompt",
    "ts": TS,
    "trace_id": "t-81f",
    "session_id": "s-1",
    "request_id": "r-1",
    "parent_id": "p-1",
    "service": "support-bot",
    "environment": "prod",
    "user": {"id": "u-123", "ip": "203.0.113.9", "geo": "DE", "device": "web"},
    "model": {"provider": "openai", "name": "gpt-4o", "version": "2024-08-06"},
    "system_prompt": {"version": "v12", "sha256": "ab" * 32, "text": "You are helpful."},
    "prompt": {"text": "hello", "messages": [{"role": "user", "content": "hello"}]},
    "response": {
        "text": "hi",
        "finish_reason": "stop",
        "refusal": False,
        "reasoning": "…",
        "filter_flags": ["violence"],
    },
    "tool": {
        "name": "crm.lookup",
        "endpoint": "https://crm.internal/api/v2/customers",
        "arguments": {"customer_id": "42"},
        "result": "ok",
        "status": "ok",
        "authenticated": True,
        "error": None,
    },
    "usage": {"prompt_tokens": 120, "completion_tokens": 512, "cost_usd": 0.0031},
    "latency_ms": 812,
    "tags": {"feature": "email-draft"},
}

VALID_TS = [
    TS,
    "2026-11-22T14:03:07Z",
    "2026-11-22T14:03:07.123456789Z",
    "2026-11-22T14:03:07+01:00",
    "2026-11-22T14:03:07.5-23:59",
    "2026-11-22t14:03:07z",  # RFC 3339 allows lower-case t and z
    "2024-02-29T00:00:00Z",
    "0001-01-01T00:00:00Z",
]
INVALID_TS = [
    "",
    "2026-11-22T14:03:07",  # no offset
    "2026-11-22",
    "2026-11-22 14:03:07Z",  # space separator: not the RFC 3339 ABNF
    "2026-11-22T14:03Z",  # no seconds
    "20261122T140307Z",  # ISO 8601 basic format
    "2026-W47-1T14:03:07Z",  # ISO week date
    "2026-11-22T14:03:07+01",  # short offset
    "2026-11-22T14:03:07+0100",
    "2026-11-22T14:03:07+24:00",
    "2026-11-22T14:03:07+00:60",
    "2026-11-22T14:03:07,5Z",
    "2026-11-22T14:03:07.Z",
    "2026-13-01T00:00:00Z",
    "2026-02-30T00:00:00Z",  # right shape, impossible day: needs format assertion
    "2023-02-29T00:00:00Z",
    "2026-11-22T24:00:00Z",
    "2026-11-22T23:59:60Z",  # leap second: neither side accepts it
    "0000-01-01T00:00:00Z",
    "2026-11-22T14:03:07Z\n",
    " 2026-11-22T14:03:07Z",
    "\uff12\uff10\uff12\uff16-11-22T14:03:07Z",  # full-width digits
    "yesterday",
]

# Samples per check of the decoder: (value, valid?). Keyed by the check's name.
SAMPLES: dict[str, list[tuple[Any, bool]]] = {
    "_identifier": [
        ("a", True),
        (" a ", True),
        ("x" * 256, True),
        ("é" * 256, True),
        ("", False),
        ("   ", False),
        ("\t\n", False),
        ("\u2003", False),  # em space is whitespace too
        ("x" * 257, False),
        (1, False),
        (None, False),
        (True, False),
        (["a"], False),
        ({"a": "b"}, False),
    ],
    "_string": [
        ("", True),
        ("x", True),
        (1, False),
        (1.5, False),
        (None, False),
        (True, False),
        ([], False),
        ({}, False),
    ],
    "_timestamp": [(ts, True) for ts in VALID_TS]
    + [(ts, False) for ts in INVALID_TS]
    + [(1700000000, False), (None, False), ({}, False)],
    "_boolean": [
        (True, True),
        (False, True),
        (0, False),
        (1, False),
        ("true", False),
        (None, False),
    ],
    "_count": [
        (0, True),
        (5, True),
        (2**40, True),
        (-1, False),
        (1.5, False),
        ("1", False),
        (True, False),
        (None, False),
    ],
    "_amount": [
        (0, True),
        (0.5, True),
        (10, True),
        (1e-9, True),
        (-0.1, False),
        (-1, False),
        ("1", False),
        (True, False),
        (None, False),
    ],
    "_object": [
        ({}, True),
        ({"anything": [1, 2]}, True),
        ([], False),
        ("x", False),
        (None, False),
        (1, False),
    ],
    "_string_list": [
        ([], True),
        (["a", "b"], True),
        ("a", False),
        ([1], False),
        (["a", None], False),
        (None, False),
        ({"a": "b"}, False),
    ],
    "_string_map": [
        ({}, True),
        ({"a": "b"}, True),
        ({"a": 1}, False),
        ({"a": None}, False),
        ([], False),
        ("x", False),
        (None, False),
    ],
    "_optional_string": [(None, True), ("x", True), ("", True), (1, False), (False, False)],
    "_messages": [
        ([], True),
        ([{"role": "user", "content": "x"}], True),
        ([{}], True),
        ([{"role": "user", "name": "bob", "extra": 1}], True),
        ("x", False),
        ([1], False),
        (["hi"], False),
        ([{"role": 1}], False),
        ([{"role": "user", "content": None}], False),
        ([{"role": "user", "content": [{"type": "text"}]}], False),
        (None, False),
        ({}, False),
    ],
    "_any": [(1, True), (None, True), ("x", True), ({}, True), ([1, "a"], True), (False, True)],
}


def _set(event: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    result = copy.deepcopy(event)
    *parents, leaf = path.split(".")
    target = result
    for part in parents:
        target = target[part]
    target[leaf] = value
    return result


def _without(event: dict[str, Any], *paths: str) -> dict[str, Any]:
    result = copy.deepcopy(event)
    for path in paths:
        *parents, leaf = path.split(".")
        target = result
        for part in parents:
            target = target[part]
        del target[leaf]
    return result


def minimal(kind: str) -> dict[str, Any]:
    payload = PAYLOAD_OF_KIND[kind]
    return {"event_id": "e-1", "kind": kind, "ts": TS, "trace_id": "t-1", payload: {}}


def rows() -> Iterator[Any]:
    # Field by field, from the decoder's own tables.
    for path, check in {**REQUIRED, **OPTIONAL}.items():
        if path == "kind":
            continue  # its values are the kind rows below
        for index, (value, valid) in enumerate(SAMPLES[check.__name__]):
            yield pytest.param(_set(FULL, path, value), valid, id=f"{path}-{index}-{valid}")
    # Required fields, for every kind.
    for kind in KINDS:
        yield pytest.param(minimal(kind), True, id=f"minimal-{kind}")
        for path in REQUIRED:
            yield pytest.param(_without(minimal(kind), path), False, id=f"{kind}-no-{path}")
        yield pytest.param(
            _without(minimal(kind), PAYLOAD_OF_KIND[kind]), False, id=f"{kind}-no-payload"
        )
        others = [p for p in PAYLOAD_OF_KIND.values() if p != PAYLOAD_OF_KIND[kind]]
        wrong = _without(minimal(kind), PAYLOAD_OF_KIND[kind])
        wrong.update({p: {} for p in others})
        yield pytest.param(wrong, False, id=f"{kind}-other-payloads-only")
        yield pytest.param(_set(FULL, "kind", kind), True, id=f"full-{kind}")
    for bad_kind in ["Prompt", "", "tool", "alert", 1, None, ["prompt"], True]:
        yield pytest.param(_set(FULL, "kind", bad_kind), False, id=f"kind-{bad_kind!r}")
    # Shapes.
    yield pytest.param(FULL, True, id="full")
    yield pytest.param({**FULL, "x_custom": {"deep": [1]}, "schema": 2}, True, id="unknown-top")
    yield pytest.param(_set(FULL, "user.department", 7), True, id="unknown-nested")
    yield pytest.param(_set(FULL, "tool.status", "whatever"), True, id="free-status")
    for index, value in enumerate([[], [FULL], "event", 1, None, True]):
        yield pytest.param(value, False, id=f"not-an-object-{index}")
    yield pytest.param({}, False, id="empty-object")


def _decoder_accepts(value: Any) -> bool:
    try:
        validate_event(value)
    except EventError:
        return False
    return True


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = event_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    assert "date-time" in checker.checkers, "install rfc3339-validator (dev extra)"
    return jsonschema.Draft202012Validator(schema, format_checker=checker)


@pytest.mark.parametrize(("event", "valid"), list(rows()))
def test_schema_and_decoder_agree(
    validator: jsonschema.Draft202012Validator, event: Any, valid: bool
) -> None:
    # What the pipeline sees is what orjson decodes, so both sides get that.
    value = orjson.loads(orjson.dumps(event))
    schema_errors = [e.message for e in validator.iter_errors(value)]
    assert _decoder_accepts(value) is valid
    assert (not schema_errors) is valid, schema_errors


def test_every_check_has_samples() -> None:
    for path, check in {**REQUIRED, **OPTIONAL}.items():
        assert check.__name__ in SAMPLES, f"{path}: add samples for {check.__name__}"


def test_every_decoder_field_is_in_the_schema() -> None:
    schema = event_schema()
    for path in {**REQUIRED, **OPTIONAL}:
        node = schema
        for part in path.split("."):
            node = node["properties"]
            assert part in node, f"{path} is missing from event-v1.json"
            node = node[part]
    assert set(schema["required"]) == set(REQUIRED)
    assert schema["properties"]["kind"]["enum"] == list(KINDS)


def test_known_difference_integral_floats() -> None:
    """JSON Schema counts 120.0 as an integer; the decoder does not (docs/events.md says so).

    If the decoder starts accepting integral floats, drop this test and the caveat in
    the schema's $comment and in docs/events.md.
    """
    event = orjson.loads(orjson.dumps(_set(FULL, "usage.prompt_tokens", 120.0)))
    schema = event_schema()
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    jsonschema.validate(event, schema, format_checker=checker)
    assert not _decoder_accepts(event)
    assert "integer" in schema["$comment"]


def test_schema_file_ships_with_the_package() -> None:
    text = resources.files("pipeline").joinpath("schemas/event-v1.json").read_text("utf-8")
    assert json.loads(text) == event_schema()


DOC = Path(__file__).parents[2] / "docs" / "events.md"


def test_the_schema_example_in_the_docs_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text("utf-8"), flags=re.DOTALL)
    [example] = [b for b in blocks if "event_schema()" in b]
    event = Trace(service="doc").prompt("hello")
    exec(example, {"event": event})
    with pytest.raises(jsonschema.ValidationError, match="is not a 'date-time'"):
        exec(example, {"event": {**event, "ts": "2026-02-30T00:00:00Z"}})


def test_the_curl_example_in_the_docs_sends_a_valid_event(
    validator: jsonschema.Draft202012Validator,
) -> None:
    [body] = re.findall(r"-d '(.*?)'", DOC.read_text("utf-8"), flags=re.DOTALL)
    event = orjson.loads(body)
    assert validate_event(event) is event
    validator.validate(event)
