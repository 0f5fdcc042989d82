"""Where segments live: ``<root>/<topic>/dt=YYYY-MM-DD/hour=HH/p<partition>-<first offset>.seg``.

This module is the whole storage layout: naming a segment (:class:`SegmentId`), finding segments
(:func:`list_segments`) and the per-partition lock file. The store and the reader only go through
it, so another layout or another storage (S3) replaces this module, not the store's logic.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

MS_PER_HOUR = 3_600_000
SEGMENT_SUFFIX = ".seg"
LOCK_DIR = "_locks"  # inside a topic's directory; never a ``dt=`` name, so never listed as data

# Kafka's own rule for topic names; it also keeps a topic from escaping the root.
_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]{1,249}")
_DT_RE = re.compile(r"dt=(\d{4})-(\d{2})-(\d{2})")
_HOUR_RE = re.compile(r"hour=(\d{2})")
_SEGMENT_RE = re.compile(r"p(0|[1-9]\d{0,9})-(\d{20})\.seg")
# Timestamps whose UTC hour has a four-digit year (what the dt= directory names can express).
MIN_TIMESTAMP_MS = int(datetime(1, 1, 1, tzinfo=UTC).timestamp() * 1000)
MAX_TIMESTAMP_MS = int(datetime(9999, 12, 31, 23, tzinfo=UTC).timestamp() * 1000) + MS_PER_HOUR - 1


def is_valid_topic(topic: str) -> bool:
    return bool(_TOPIC_RE.fullmatch(topic)) and topic not in {".", ".."}


def check_topic(topic: str) -> None:
    if not is_valid_topic(topic):
        raise ValueError(f"invalid topic name {topic!r}: Kafka topic names are 1-249 characters "
                         "of A-Z a-z 0-9 . _ - and not '.' or '..'")


def hour_of(timestamp_ms: int) -> int:
    """Hours since the epoch (UTC) of a Kafka timestamp: the segment's time partition."""
    return timestamp_ms // MS_PER_HOUR


@dataclass(frozen=True, slots=True, order=True)
class SegmentId:
    """Names one segment. Ordered by (hour, topic, partition, first offset): the reading order."""

    hour: int
    topic: str
    partition: int
    first_offset: int

    @property
    def hour_dir(self) -> str:
        start = datetime.fromtimestamp(self.hour * 3600, tz=UTC)
        return f"dt={start.year:04d}-{start.month:02d}-{start.day:02d}/hour={start.hour:02d}"

    @property
    def name(self) -> str:
        return f"p{self.partition}-{self.first_offset:020d}{SEGMENT_SUFFIX}"

    @property
    def relpath(self) -> str:
        return f"{self.topic}/{self.hour_dir}/{self.name}"

    def path(self, root: Path) -> Path:
        return root / self.topic / self.hour_dir / self.name

    def overlaps(self, from_ms: int | None, to_ms: int | None) -> bool:
        """Whether the segment's hour overlaps [from_ms, to_ms) (None: unbounded)."""
        start = self.hour * MS_PER_HOUR
        return (from_ms is None or start + MS_PER_HOUR > from_ms) and (
            to_ms is None or start < to_ms)


def parse_segment_key(key: str) -> SegmentId | None:
    """The segment a key names (``<topic>/dt=…/hour=…/p<N>-<offset>.seg``), else None."""
    parts = key.split("/")
    if len(parts) != 4 or not is_valid_topic(parts[0]):
        return None
    hour = _parse_hour(parts[1], parts[2])
    match = _SEGMENT_RE.fullmatch(parts[3])
    if hour is None or match is None:
        return None
    return SegmentId(hour, parts[0], int(match[1]), int(match[2]))


def segment_ids(keys: list[str], topic: str | None = None) -> list[SegmentId]:
    """The segments among ``keys`` (of one topic if given), in reading order."""
    if topic is not None:
        check_topic(topic)
    found = [sid for sid in map(parse_segment_key, keys)
             if sid is not None and (topic is None or sid.topic == topic)]
    return sorted(found)


def lock_path(root: Path, topic: str, partition: int) -> Path:
    return root / topic / LOCK_DIR / f"p{partition}.lock"


def list_segments(root: Path, topic: str | None = None) -> list[SegmentId]:
    """Every segment under ``root`` (of one topic if given), in reading order.

    Reads directory entries only. Entries that do not follow the layout are ignored.
    """
    if topic is not None:
        check_topic(topic)
        topics = [topic]
    else:
        topics = _subdirs(root, is_valid_topic)
    found: list[SegmentId] = []
    for name in topics:
        topic_dir = root / name
        for dt_name in _subdirs(topic_dir, _DT_RE.fullmatch):
            for hour_name in _subdirs(topic_dir / dt_name, _HOUR_RE.fullmatch):
                hour = _parse_hour(dt_name, hour_name)
                if hour is None:
                    continue
                found += _segments_in(topic_dir / dt_name / hour_name, name, hour)
    found.sort()
    return found


def _subdirs(path: Path, accept: Callable[[str], object]) -> list[str]:
    try:
        with os.scandir(path) as entries:
            return [e.name for e in entries
                    if accept(e.name) and e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _parse_hour(dt_name: str, hour_name: str) -> int | None:
    dt, hh = _DT_RE.fullmatch(dt_name), _HOUR_RE.fullmatch(hour_name)
    if dt is None or hh is None:
        return None
    try:
        start = datetime(int(dt[1]), int(dt[2]), int(dt[3]), int(hh[1]), tzinfo=UTC)
    except ValueError:
        return None
    return hour_of(int(start.timestamp()) * 1000)


def _segments_in(directory: Path, topic: str, hour: int) -> list[SegmentId]:
    out: list[SegmentId] = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                match = _SEGMENT_RE.fullmatch(entry.name)
                if match and entry.is_file(follow_symlinks=False):
                    out.append(SegmentId(hour, topic, int(match[1]), int(match[2])))
    except FileNotFoundError:
        pass  # the hour directory vanished between listing its parent and here: nothing in it
    return out
