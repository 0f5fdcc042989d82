"""Manifests and the per-partition hash chain.

Every change to a partition's archive is one *chain entry*, a JSON object stored at
``<topic>/_chain/p<partition>/<seq>.json``:

* ``segment``: the manifest of a sealed segment: its key, size, SHA-256, event count,
  first/last offsets and Kafka timestamps, codec and key id, and a Bloom filter of its trace ids;
* ``erasure``: a right-to-erasure rewrite: which segments changed, their new hashes and counts,
  and an HMAC of the user id (never the id itself);
* ``prune``: segments deleted by retention, with the hashes they had.

Each entry holds ``seq`` (0, 1, 2, …), ``prev`` (the SHA-256 of the previous entry's stored
bytes) and ``watermark`` (the partition's last archived offset after the entry). With a signing
key, ``sig`` is an HMAC-SHA256 of the entry without ``sig``. Removing, reordering or altering a
segment or an entry breaks a hash or a link, which ``archive verify`` reports. Entries are created
with :meth:`Backend.put_new`, so two writers can never both take the same ``seq``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from pipeline.archive.backend import Backend
from pipeline.archive.errors import ArchiveError
from pipeline.archive.traceindex import build_filter

CHAIN_DIR = "_chain"
FORMAT = 1
_ENTRY_RE = re.compile(r"(\d{12})\.json")
_KEY_RE = re.compile(rf"([^/]+)/{CHAIN_DIR}/p(0|[1-9]\d*)/(\d{{12}})\.json")
_APPEND_ATTEMPTS = 20


class ChainConflictError(ArchiveError):
    """Another writer kept taking the next chain position."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored chain entry: its parsed body, its key and the SHA-256 of its bytes."""

    body: dict[str, Any]
    key: str
    digest: str

    @property
    def seq(self) -> int:
        seq: int = self.body["seq"]
        return seq

    @property
    def kind(self) -> str:
        kind: str = self.body["kind"]
        return kind

    @property
    def watermark(self) -> int:
        watermark: int = self.body["watermark"]
        return watermark


def chain_prefix(topic: str, partition: int) -> str:
    return f"{topic}/{CHAIN_DIR}/p{partition}/"


def entry_key(topic: str, partition: int, seq: int) -> str:
    return f"{chain_prefix(topic, partition)}{seq:012d}.json"


def entry_seq(key: str) -> int | None:
    match = _ENTRY_RE.fullmatch(key.rsplit("/", 1)[-1])
    return int(match[1]) if match else None


def chain_place(key: str) -> tuple[str, int, int] | None:
    """(topic, partition, seq) of a chain entry's key, else None."""
    match = _KEY_RE.fullmatch(key)
    return (match[1], int(match[2]), int(match[3])) if match else None


def canonical(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def signature(body: dict[str, Any], key: bytes) -> str:
    unsigned = {k: v for k, v in body.items() if k != "sig"}
    return hmac.new(key, canonical(unsigned), hashlib.sha256).hexdigest()


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_entry(key: str, raw: bytes) -> Entry:
    """An entry from its stored bytes; ValueError says what is malformed."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValueError("not a JSON object")
    for name, kind in (("seq", int), ("prev", str), ("kind", str), ("watermark", int),
                       ("topic", str), ("partition", int)):
        if not isinstance(body.get(name), kind):
            raise ValueError(f"field {name!r} is {body.get(name)!r}")
    return Entry(body, key, hashlib.sha256(raw).hexdigest())


class Chain:
    """Appends to and reads the chains of a backend. ``signing_key`` signs new entries."""

    def __init__(self, backend: Backend, signing_key: bytes | None = None) -> None:
        self.backend = backend
        self.signing_key = signing_key

    def keys(self, topic: str, partition: int) -> list[tuple[int, str]]:
        """(seq, key) of every stored entry of a partition, by seq."""
        found = []
        for key in self.backend.list(chain_prefix(topic, partition)):
            seq = entry_seq(key)
            if seq is not None:
                found.append((seq, key))
        return sorted(found)

    def read(self, key: str) -> Entry:
        return parse_entry(key, self.backend.get(key))

    def head(self, topic: str, partition: int) -> Entry | None:
        keys = self.keys(topic, partition)
        return self.read(keys[-1][1]) if keys else None

    def try_append(self, topic: str, partition: int, kind: str, fields: dict[str, Any], *,
                   head: Entry | None, watermark: int) -> Entry | None:
        """Add an entry right after ``head`` (the caller's view of the chain's end); None if
        another writer took that place first (nothing is written then)."""
        body: dict[str, Any] = {
            "format": FORMAT, "kind": kind, "topic": topic, "partition": partition,
            "seq": 0 if head is None else head.seq + 1,
            "prev": "" if head is None else head.digest, "watermark": watermark,
            "at": utc_now(), **fields,
        }
        if self.signing_key:
            body["sig"] = signature(body, self.signing_key)
        raw = canonical(body)
        key = entry_key(topic, partition, body["seq"])
        if not self.backend.put_new(key, raw):
            return None
        return Entry(body, key, hashlib.sha256(raw).hexdigest())

    def append(self, topic: str, partition: int, kind: str, fields: dict[str, Any]) -> Entry:
        """Add an entry at the end of the chain, keeping its watermark (erasures, prunes)."""
        for _ in range(_APPEND_ATTEMPTS):
            head = self.head(topic, partition)
            mark = -1 if head is None else head.watermark
            entry = self.try_append(topic, partition, kind, fields, head=head, watermark=mark)
            if entry is not None:
                return entry
        raise ChainConflictError(f"{topic}[{partition}]: could not append to the manifest chain "
                                 f"after {_APPEND_ATTEMPTS} attempts (other writers kept winning)")


def segment_fields(*, key: str, data: bytes, count: int, first_offset: int, last_offset: int,
                   min_ts_ms: int, max_ts_ms: int, traces: set[str],
                   key_id: str | None) -> dict[str, Any]:
    """The manifest fields of a sealed segment whose stored bytes are ``data``."""
    return {
        "segment": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
        "count": count, "first_offset": first_offset, "last_offset": last_offset,
        "first_ts_ms": min_ts_ms, "last_ts_ms": max_ts_ms,
        "codec": "zstd+aes-256-gcm" if key_id else "zstd", "key_id": key_id,
        "traces": build_filter(traces),
    }
