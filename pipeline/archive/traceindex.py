"""Which traces a segment holds: trace ids pulled from raw events, and a Bloom filter of them.

Each segment manifest carries a Bloom filter of the trace ids in the segment, so
``archive cat --trace`` reads only the segments that may hold the trace. A filter may answer
"maybe" for a trace that is absent (about 1 % of segments at 10 bits per id), never "no" for one
that is present.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
from collections.abc import Iterable

import orjson

BITS_PER_ID = 10
HASHES = 7
MIN_BITS = 64

# After a "trace_id" key: its string value. Every occurrence counts (the top-level one and any
# nested one): a superset is what a filter needs.
_KEY = b'"trace_id"'
_VALUE_RE = re.compile(rb'\s*:\s*"([^"\\]*(?:\\.[^"\\]*)*)"')


def trace_ids(value: bytes) -> set[str]:
    """Every string value of a ``"trace_id"`` key in a raw event (empty if there is none)."""
    found: set[str] = set()
    at = value.find(_KEY)
    while at >= 0:
        at += len(_KEY)
        match = _VALUE_RE.match(value, at)
        if match:
            raw = match.group(1)
            # Not a valid JSON string after all: then it is no trace id.
            with contextlib.suppress(orjson.JSONDecodeError, UnicodeDecodeError):
                found.add(orjson.loads(b'"' + raw + b'"') if b"\\" in raw else raw.decode())
        at = value.find(_KEY, at)
    return found


def _positions(trace_id: str, bits: int) -> list[int]:
    digest = hashlib.blake2b(trace_id.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    first = int.from_bytes(digest[:8], "little")
    second = int.from_bytes(digest[8:], "little") | 1
    return [(first + i * second) % bits for i in range(HASHES)]


def build_filter(ids: Iterable[str]) -> str:
    """A base64 Bloom filter of ``ids``."""
    unique = set(ids)
    bits = max(MIN_BITS, len(unique) * BITS_PER_ID)
    bits += -bits % 8
    table = bytearray(bits // 8)
    for trace_id in unique:
        for pos in _positions(trace_id, bits):
            table[pos >> 3] |= 1 << (pos & 7)
    return base64.b64encode(bytes(table)).decode()


def may_contain(encoded: str, trace_id: str) -> bool:
    table = base64.b64decode(encoded)
    bits = len(table) * 8
    if not bits:
        return True
    return all(table[pos >> 3] & (1 << (pos & 7)) for pos in _positions(trace_id, bits))
