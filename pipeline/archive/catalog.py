"""The archive as its chains describe it: every segment, its latest manifest state, and history.

:func:`load_catalog` lists the backend once and reads every chain entry. It replays each
partition's chain: segment manifests add segments, erasures change their hash and count (or
remove them), prunes remove them. Readers use it to find segments by time or trace; ``verify``
uses it, plus the raw listing, to check the chain and the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.archive.backend import Backend, fetch
from pipeline.archive.chain import Chain, Entry, chain_place, parse_entry
from pipeline.archive.layout import SegmentId, parse_segment_key


@dataclass(slots=True)
class SegmentState:
    """What the chain says a segment holds now."""

    sid: SegmentId
    manifest: dict[str, Any]
    """The segment entry that chained it."""
    sha256: str | None
    """Expected hash of the stored bytes; None once erasure or pruning removed the object."""
    size: int
    count: int
    last_offset: int
    history: list[str] = field(default_factory=list)
    """Earlier expected hashes (before erasures), oldest first."""
    removed_by: str | None = None
    """``erasure``/``prune`` and the entry seq, when the object is gone on purpose."""

    @property
    def first_ts_ms(self) -> int:
        value: int = self.manifest["first_ts_ms"]
        return value

    @property
    def last_ts_ms(self) -> int:
        value: int = self.manifest["last_ts_ms"]
        return value

    def in_range(self, from_ms: int | None, to_ms: int | None) -> bool:
        return (from_ms is None or self.last_ts_ms >= from_ms) and (
            to_ms is None or self.first_ts_ms < to_ms)


@dataclass(slots=True)
class ChainView:
    """One partition's chain: stored entries (by seq), and what failed to parse."""

    topic: str
    partition: int
    entries: dict[int, Entry] = field(default_factory=dict)
    unreadable: dict[int, str] = field(default_factory=dict)


@dataclass(slots=True)
class Catalog:
    segment_keys: set[str]
    """Every segment object present."""
    chains: dict[tuple[str, int], ChainView]
    segments: dict[str, SegmentState]
    """By segment key: every segment the chains ever named."""

    def live(self, topic: str | None = None) -> list[SegmentState]:
        """Chained segments that should exist, in reading order."""
        return sorted((s for s in self.segments.values()
                       if s.sha256 is not None and (topic is None or s.sid.topic == topic)),
                      key=lambda s: s.sid)

    def unchained(self) -> list[SegmentId]:
        """Segment objects present that no chain names (open segments, or inserted ones)."""
        found = [parse_segment_key(key) for key in self.segment_keys if key not in self.segments]
        return sorted(sid for sid in found if sid is not None)


def load_catalog(backend: Backend, chain: Chain, *, topic: str | None = None) -> Catalog:
    keys = backend.list(f"{topic}/" if topic else "")
    chains: dict[tuple[str, int], ChainView] = {}
    segment_keys: set[str] = set()
    entry_keys = []
    for key in keys:
        if chain_place(key):
            entry_keys.append(key)
        elif parse_segment_key(key) is not None:
            segment_keys.add(key)
    for key, raw in fetch(backend, entry_keys):
        place = chain_place(key)
        assert place is not None
        view = chains.setdefault(place[:2], ChainView(place[0], place[1]))
        try:
            if raw is None:
                raise ValueError("deleted while reading")
            view.entries[place[2]] = parse_entry(key, raw)
        except ValueError as exc:
            view.unreadable[place[2]] = str(exc)
    segments: dict[str, SegmentState] = {}
    for view in chains.values():
        for seq in sorted(view.entries):
            _replay(view.entries[seq], segments)
    return Catalog(segment_keys, chains, segments)


def _replay(entry: Entry, segments: dict[str, SegmentState]) -> None:
    body = entry.body
    if entry.kind == "segment":
        sid = parse_segment_key(str(body.get("segment")))
        if sid is not None:
            segments[body["segment"]] = SegmentState(sid, body, body.get("sha256"),
                                                     body.get("size", -1), body.get("count", 0),
                                                     body.get("last_offset", -1))
        return
    for change in body.get("segments", ()):
        state = segments.get(change.get("segment"))
        if state is None:
            continue
        if state.sha256 is not None:
            state.history.append(state.sha256)
        if entry.kind == "prune" or change.get("sha256") is None:
            state.sha256 = None
            state.removed_by = f"{entry.kind} (chain entry {entry.seq}, {body.get('at')})"
        else:
            state.sha256 = change["sha256"]
            state.size = change.get("size", -1)
            state.count = change.get("count", 0)
            state.last_offset = change.get("last_offset", state.last_offset)
