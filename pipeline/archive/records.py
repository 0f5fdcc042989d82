"""The records the archive takes and gives back."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One Kafka record exactly as consumed from the raw topic."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    """Kafka record timestamp (publish time); chooses the segment's hour (UTC)."""
    key: bytes | None
    value: bytes
    """The event exactly as published: may be invalid JSON, invalid UTF-8, anything."""
    event_id: str | None
    """Extracted by the caller when the value parsed, else None."""


@dataclass(frozen=True, slots=True)
class ArchivedRecord(RawRecord):
    """A record read back from the archive, with where it is stored."""

    segment: Path | str
    """The segment's file, or its URL in object storage."""
    block_pos: int
    """Byte offset of the block holding the record inside ``segment``."""

    def raw(self) -> RawRecord:
        return RawRecord(self.topic, self.partition, self.offset, self.timestamp_ms, self.key,
                         self.value, self.event_id)


@dataclass(frozen=True, slots=True)
class AppendResult:
    written: int
    skipped_duplicates: int
    """Records not written: redelivered offsets plus producer retries (see below)."""
    event_id_duplicates: int = 0
    """Of ``skipped_duplicates``, those skipped as a producer retry (same event_id and bytes)."""
