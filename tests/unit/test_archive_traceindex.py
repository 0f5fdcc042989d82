"""Trace ids pulled from raw events, and the manifests' Bloom filters of them."""

from __future__ import annotations

import pytest

from pipeline.archive.traceindex import build_filter, may_contain, trace_ids


@pytest.mark.parametrize(("raw", "expected"), [
    (b'{"trace_id":"t-1","kind":"prompt"}', {"t-1"}),
    (b'{ "trace_id" : "t-2" }', {"t-2"}),
    (b'{"trace_id":"t-\\u0033"}', {"t-3"}),  # escaped: decoded like JSON does
    (b'{"trace_id":"a\\"b"}', {'a"b'}),
    (b'{"trace_id":"t-1","tool":{"arguments":{"trace_id":"t-9"}}}', {"t-1", "t-9"}),
    (b'{"prompt":{"text":"say \\"trace_id\\": \\"x\\""}}', set()),  # inside a string
    (b'{"trace_id":42}', set()),
    (b"\xff\xfe not json", set()),
])
def test_trace_ids(raw: bytes, expected: set[str]) -> None:
    assert trace_ids(raw) == expected


def test_filter_has_no_false_negatives_and_few_false_positives() -> None:
    present = [f"t-{i}" for i in range(2000)]
    encoded = build_filter(present)
    assert all(may_contain(encoded, t) for t in present)
    false = sum(may_contain(encoded, f"absent-{i}") for i in range(10_000))
    assert false < 300  # ~1 % expected at 10 bits per id
    assert not may_contain(build_filter([]), "t-1")
