"""Retention (``archive prune``) and right-to-erasure (``archive erase``), both recorded in the
chain so that ``archive verify`` keeps passing and says what was removed, when and why.

Prune deletes whole sealed segments whose newest event is older than the topic's retention,
unless a segment holds an event of a trace or user on legal hold. Erase rewrites every segment
holding a user's events without them (same key, re-encrypted with the same day key; a segment
left empty is deleted) and appends one ``erasure`` entry per partition with the new hashes and
an HMAC of the user id: the chain proves what changed without keeping the id.

Order of writes: the chain entry first, then the objects. A crash in between shows in verify
("still present" / "bytes from before an erasure"), and re-running the same command completes it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import zstandard

from pipeline.archive.backend import Backend
from pipeline.archive.catalog import Catalog, SegmentState, load_catalog
from pipeline.archive.chain import Chain
from pipeline.archive.crypto import KeyRing
from pipeline.archive.objstore import sealed_segment
from pipeline.archive.reader import Reader
from pipeline.archive.records import ArchivedRecord
from pipeline.archive.store import COMPRESSION_LEVEL

MS_PER_DAY = 86_400_000


class RetentionError(ValueError):
    """A retention or legal-hold setting that cannot be used; the message says which."""


def parse_retention(text: str) -> dict[str, int]:
    """``90`` or ``llm.events=90,*=365`` -> {topic or "*": days}; empty: keep forever."""
    out: dict[str, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        topic, sep, days = part.rpartition("=")
        name = topic.strip() if sep else "*"
        try:
            value = int(days)
        except ValueError:
            raise RetentionError(f"LLMTRAIL_ARCHIVE_RETENTION: {part!r} is not DAYS or "
                                 "TOPIC=DAYS") from None
        if value < 1:
            raise RetentionError(f"LLMTRAIL_ARCHIVE_RETENTION: {part!r}: days must be >= 1")
        out[name] = value
    return out


@dataclass(frozen=True, slots=True)
class LegalHold:
    traces: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.traces or self.users)

    def holds(self, event: dict[str, Any]) -> bool:
        user = event.get("user")
        user_id = user.get("id") if isinstance(user, dict) else None
        return event.get("trace_id") in self.traces or user_id in self.users


def load_legal_hold(path: str) -> LegalHold:
    """``trace:<id>`` and ``user:<id>`` lines (``#`` comments, blank lines ignored)."""
    if not path:
        return LegalHold()
    traces: set[str] = set()
    users: set[str] = set()
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise RetentionError(f"legal hold file {path}: {exc.strerror}") from None  # flag or setting
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        kind, sep, value = text.partition(":")
        if not sep or not value.strip() or kind.strip() not in {"trace", "user"}:
            raise RetentionError(f"{path}:{number}: expected trace:<id> or user:<id>, got "
                                 f"{text!r}")
        (traces if kind.strip() == "trace" else users).add(value.strip())
    return LegalHold(frozenset(traces), frozenset(users))


def _event(value: bytes) -> dict[str, Any]:
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError:
        return {}
    return event if isinstance(event, dict) else {}


@dataclass(slots=True)
class PruneResult:
    deleted: list[SegmentState] = field(default_factory=list)
    held: list[SegmentState] = field(default_factory=list)
    events: int = 0


def prune(backend: Backend, chain: Chain, reader: Reader, *, retention: dict[str, int],
          hold: LegalHold, now_ms: int | None = None, dry_run: bool = False) -> PruneResult:
    """Delete chained segments past retention, except those holding held events."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    result = PruneResult()
    catalog = load_catalog(backend, chain)
    by_partition: dict[tuple[str, int], list[SegmentState]] = {}
    for state in catalog.live():
        days = retention.get(state.sid.topic, retention.get("*"))
        if days is None or state.last_ts_ms >= now_ms - days * MS_PER_DAY:
            continue
        if hold and any(hold.holds(_event(r.value)) for r in reader.records(state.sid)):
            result.held.append(state)
            continue
        by_partition.setdefault((state.sid.topic, state.sid.partition), []).append(state)
    for (topic, partition), states in sorted(by_partition.items()):
        result.deleted += states
        result.events += sum(s.count for s in states)
        if dry_run:
            continue
        days = retention.get(topic, retention.get("*"))
        chain.append(topic, partition, "prune", {
            "reason": f"retention {days} days",
            "segments": [{"segment": s.sid.relpath, "sha256": s.sha256, "count": s.count}
                         for s in states],
        })
        for state in states:
            backend.delete(state.sid.relpath)
    if not dry_run:
        _finish_removals(backend, catalog)
    return result


def _finish_removals(backend: Backend, catalog: Catalog) -> None:
    """Delete objects an earlier, interrupted prune recorded as removed."""
    for key, state in catalog.segments.items():
        if state.sha256 is None and key in catalog.segment_keys:
            backend.delete(key)


def subject_hash(user_id: str, salt: bytes) -> str:
    """What the chain records about an erased user: an HMAC of the id, never the id."""
    return hmac.new(salt, b"user:" + user_id.encode("utf-8", "surrogatepass"),
                    hashlib.sha256).hexdigest()


@dataclass(slots=True)
class EraseResult:
    removed: int = 0
    segments: int = 0
    deleted: int = 0
    subject: str = ""
    held: int = 0
    """The user's events kept because their trace is on legal hold."""


def _of_user(record: ArchivedRecord, user_id: str, needle: bytes) -> dict[str, Any] | None:
    """The record's event when it is an event of ``user_id``, else None."""
    if needle not in record.value and b"\\u" not in record.value:
        return None  # cheap pre-filter; an escaped id falls through to the parse
    event = _event(record.value)
    user = event.get("user")
    return event if isinstance(user, dict) and user.get("id") == user_id else None


def erase_user(backend: Backend, chain: Chain, reader: Reader, keys: KeyRing | None,
               user_id: str, *, salt: bytes, reason: str,
               hold: LegalHold = LegalHold()) -> EraseResult:
    """Rewrite every chained segment without ``user_id``'s events and record it per partition.

    Events in traces on legal hold are kept (a hold on the user itself is the caller's to
    refuse). Open (unsealed) local segments are not touched: the caller seals them first."""
    result = EraseResult(subject=subject_hash(user_id, salt))
    needle = orjson.dumps(user_id)[1:-1]
    rewrites: dict[tuple[str, int], list[tuple[SegmentState, bytes | None, dict[str, Any]]]] = {}
    for state in load_catalog(backend, chain).live():
        records = list(reader.records(state.sid))
        kept = []
        for record in records:
            event = _of_user(record, user_id, needle)
            held = event is not None and event.get("trace_id") in hold.traces
            result.held += held
            if event is None or held:
                kept.append(record)
        if len(kept) == len(records):
            continue
        change: dict[str, Any] = {"segment": state.sid.relpath, "sha256": None, "count": 0,
                                  "removed": len(records) - len(kept)}
        data = None
        if kept:
            data = _segment_bytes(state, kept, keys)
            change.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                          count=len(kept), last_offset=kept[-1].offset)
        rewrites.setdefault((state.sid.topic, state.sid.partition), []).append(
            (state, data, change))
    for (topic, partition), changes in sorted(rewrites.items()):
        removed = sum(change["removed"] for _, _, change in changes)
        chain.append(topic, partition, "erasure", {
            "subject": result.subject, "reason": reason, "removed": removed,
            "segments": [change for _, _, change in changes],
        })
        for state, data, _ in changes:
            if data is None:
                backend.delete(state.sid.relpath)
                result.deleted += 1
            else:
                backend.put(state.sid.relpath, data)
        result.removed += removed
        result.segments += len(changes)
    return result


def _segment_bytes(state: SegmentState, kept: Iterable[ArchivedRecord],
                   keys: KeyRing | None) -> bytes:
    """The segment rewritten with the ``kept`` records, encrypted if it was."""
    if state.manifest.get("key_id") and keys is None:
        raise RetentionError(f"{state.sid.relpath} is encrypted: erasure needs the archive key "
                             "(LLMTRAIL_ARCHIVE_KEY or LLMTRAIL_ARCHIVE_KEY_FILE)")
    cctx = zstandard.ZstdCompressor(level=COMPRESSION_LEVEL)
    return sealed_segment(state.sid, [r.raw() for r in kept], cctx,
                          keys if state.manifest.get("key_id") else None)
