"""The raw-event archive: durable, idempotent, tamper-evident segments on local disk or S3.

``open_store(settings)`` gives the writer the workers append each batch of raw Kafka records to
(:class:`ArchiveStore` for a local directory, :class:`ObjectArchiveStore` for S3);
``open_reader(settings)`` and ``iter_archive`` read everything back. The segment format is
documented in :mod:`.blocks`, the layout in :mod:`.layout`, the manifest chain in :mod:`.chain`,
encryption in :mod:`.crypto`; docs/archive.md is the user's guide.
"""

from collections.abc import Sequence
from typing import Protocol

from pipeline.archive.blocks import SegmentMeta
from pipeline.archive.config import open_reader, open_store
from pipeline.archive.errors import (
    ArchiveClosedError,
    ArchiveError,
    ArchiveLockTimeout,
    CorruptSegmentError,
)
from pipeline.archive.layout import SegmentId, list_segments
from pipeline.archive.objstore import ObjectArchiveStore
from pipeline.archive.reader import Reader, iter_archive, read_segment
from pipeline.archive.records import AppendResult, ArchivedRecord, RawRecord
from pipeline.archive.store import ArchiveStore


class ArchiveWriter(Protocol):
    """What the archive agent needs of a store: durable appends, and closing."""

    def append(self, records: Sequence[RawRecord]) -> AppendResult: ...

    def close(self) -> None: ...


__all__ = [
    "AppendResult",
    "ArchiveClosedError",
    "ArchiveError",
    "ArchiveLockTimeout",
    "ArchiveStore",
    "ArchiveWriter",
    "ArchivedRecord",
    "CorruptSegmentError",
    "ObjectArchiveStore",
    "RawRecord",
    "Reader",
    "SegmentId",
    "SegmentMeta",
    "iter_archive",
    "list_segments",
    "open_reader",
    "open_store",
    "read_segment",
]
