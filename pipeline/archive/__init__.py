"""The raw-event archive: durable, idempotent, verifiable segment files on a local filesystem.

``ArchiveStore.append`` is what the archive agent calls with each batch of raw Kafka records;
``iter_archive`` reads everything back. The format is documented in :mod:`.blocks`, the layout in
:mod:`.layout`.
"""

from pipeline.archive.blocks import SegmentMeta
from pipeline.archive.errors import (
    ArchiveClosedError,
    ArchiveError,
    ArchiveLockTimeout,
    CorruptSegmentError,
)
from pipeline.archive.layout import SegmentId, list_segments
from pipeline.archive.reader import iter_archive, read_segment
from pipeline.archive.records import AppendResult, ArchivedRecord, RawRecord
from pipeline.archive.store import ArchiveStore

__all__ = [
    "AppendResult",
    "ArchiveClosedError",
    "ArchiveError",
    "ArchiveLockTimeout",
    "ArchiveStore",
    "ArchivedRecord",
    "CorruptSegmentError",
    "RawRecord",
    "SegmentId",
    "SegmentMeta",
    "iter_archive",
    "list_segments",
    "read_segment",
]
