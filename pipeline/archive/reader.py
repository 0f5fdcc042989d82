"""Reading the archive back, verifying every block on the way."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import zstandard

from pipeline.archive.blocks import KIND_SEAL, BlockScan, SegmentMeta, decode_records
from pipeline.archive.errors import CorruptSegmentError
from pipeline.archive.layout import SegmentId, list_segments
from pipeline.archive.records import ArchivedRecord

log = logging.getLogger("llmtrail.archive")


def iter_archive(root: Path, *, topic: str | None = None) -> Iterator[ArchivedRecord]:
    """Every archived record (of one topic if given), in (segment hour, topic, partition,
    offset) order.

    Block checksums and record structure are verified as they are read; damage raises
    :class:`CorruptSegmentError` naming the file, the byte offset and what is wrong. An incomplete
    trailing block (a write in progress, or a crash the store has not recovered yet) holds no
    acknowledged record: it is skipped with a warning.
    """
    dctx = zstandard.ZstdDecompressor()
    for sid in list_segments(Path(root), topic):
        yield from read_segment(Path(root), sid, dctx)


def read_segment(root: Path, sid: SegmentId,
                 dctx: zstandard.ZstdDecompressor | None = None) -> Iterator[ArchivedRecord]:
    """The records of one segment, verified (including the seal's counts, when sealed)."""
    dctx = dctx or zstandard.ZstdDecompressor()
    path = sid.path(root)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        # Only a segment a crash left without records is ever removed (by recovery).
        log.warning("%s: listed but gone when opened; skipped", path)
        return
    try:
        scan = BlockScan(fd, path)
        records = blocks = 0
        last_offset = -1
        for block in scan:
            if block.header.kind == KIND_SEAL:
                assert block.payload is not None
                _check_seal(SegmentMeta.from_json(block.payload, path, block.pos), sid, path,
                            block.pos, records=records, blocks=blocks, last_offset=last_offset,
                            data_bytes=block.pos)
                continue
            decoded = decode_records(block, sid.partition, path, dctx)
            if decoded[0][0] <= last_offset:
                raise CorruptSegmentError(path, block.pos, f"offset {decoded[0][0]} does not "
                                          f"follow {last_offset} of the previous block")
            for offset, ts, key, value, event_id in decoded:
                yield ArchivedRecord(sid.topic, sid.partition, offset, ts, key, value, event_id,
                                     path, block.pos)
            records += len(decoded)
            blocks += 1
            last_offset = decoded[-1][0]
        if scan.torn is not None:
            log.warning("%s: skipped an incomplete trailing block at byte %d (%s): a write in "
                        "progress, or a crash not yet recovered", path, scan.torn.pos,
                        scan.torn.reason)
    finally:
        os.close(fd)


def _check_seal(meta: SegmentMeta, sid: SegmentId, path: Path, pos: int, *, records: int,
                blocks: int, last_offset: int, data_bytes: int) -> None:
    expected = {
        "topic": sid.topic, "partition": sid.partition, "first_offset": sid.first_offset,
        "last_offset": last_offset, "record_count": records, "block_count": blocks,
        "data_bytes": data_bytes,
    }
    for name, value in expected.items():
        if getattr(meta, name) != value:
            raise CorruptSegmentError(path, pos, f"seal says {name}={getattr(meta, name)!r}, "
                                      f"the segment has {value!r}")
