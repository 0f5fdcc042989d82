"""Reading the archive back, verifying every block on the way.

:func:`iter_archive` and :func:`read_segment` read a local archive directory; :class:`Reader`
reads any backend (local or S3) and decrypts with the archive's key ring when it is encrypted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import zstandard

from pipeline.archive.backend import Backend, LocalBackend, ObjectMissing, fetch
from pipeline.archive.blocks import (
    KIND_SEAL,
    BlockHeader,
    BlockScan,
    Decrypt,
    SegmentMeta,
    decode_records,
)
from pipeline.archive.chain import chain_place, parse_entry
from pipeline.archive.crypto import KeyRing, block_aad, day_key_id
from pipeline.archive.errors import CorruptSegmentError
from pipeline.archive.layout import SegmentId, list_segments, segment_ids
from pipeline.archive.records import ArchivedRecord

log = logging.getLogger("llmtrail.archive")


def segment_decrypter(keys: KeyRing | None, sid: SegmentId, where: str) -> Decrypt | None:
    """What opens the encrypted blocks of segment ``sid`` (None without a key ring)."""
    if keys is None:
        return None
    key_id = day_key_id(sid.hour)

    def decrypt(header: BlockHeader, payload: bytes) -> bytes:
        aad = block_aad(sid.topic, sid.partition, header.first_offset, header.last_offset)
        return keys.decrypt(key_id, payload, aad, where)

    return decrypt


def iter_archive(root: Path, *, topic: str | None = None,
                 keys: KeyRing | None = None) -> Iterator[ArchivedRecord]:
    """Every archived record of a local archive (of one topic if given), in (segment hour,
    topic, partition, offset) order.

    Block checksums and record structure are verified as they are read; damage raises
    :class:`CorruptSegmentError` naming the file, the byte offset and what is wrong. An incomplete
    trailing block (a write in progress, or a crash the store has not recovered yet) holds no
    acknowledged record: it is skipped with a warning.
    """
    dctx = zstandard.ZstdDecompressor()
    for sid in list_segments(Path(root), topic):
        yield from read_segment(Path(root), sid, dctx, keys=keys)


def read_segment(root: Path, sid: SegmentId, dctx: zstandard.ZstdDecompressor | None = None, *,
                 keys: KeyRing | None = None) -> Iterator[ArchivedRecord]:
    """The records of one local segment, verified (including the seal's counts, when sealed)."""
    dctx = dctx or zstandard.ZstdDecompressor()
    path = sid.path(root)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        # Only a segment a crash left without records is ever removed (by recovery).
        log.warning("%s: listed but gone when opened; skipped", path)
        return
    try:
        yield from records_of(BlockScan(fd, path), sid, path, dctx,
                              segment_decrypter(keys, sid, str(path)))
    finally:
        os.close(fd)


def records_of(scan: BlockScan, sid: SegmentId, path: Path | str,
               dctx: zstandard.ZstdDecompressor,
               decrypt: Decrypt | None) -> Iterator[ArchivedRecord]:
    """The records a block scan of segment ``sid`` holds, checked against its seal."""
    records = blocks = 0
    last_offset = -1
    for block in scan:
        if block.header.kind == KIND_SEAL:
            assert block.payload is not None
            _check_seal(SegmentMeta.from_json(block.payload, path, block.pos), sid, path,
                        block.pos, records=records, blocks=blocks, last_offset=last_offset,
                        data_bytes=block.pos)
            continue
        decoded = decode_records(block, sid.partition, path, dctx, decrypt)
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


def _check_seal(meta: SegmentMeta, sid: SegmentId, path: Path | str, pos: int, *, records: int,
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


class Reader:
    """Reads segments from any backend, decrypting with ``keys`` when they are encrypted."""

    def __init__(self, backend: Backend, keys: KeyRing | None = None) -> None:
        self.backend = backend
        self.keys = keys
        self._dctx = zstandard.ZstdDecompressor()

    def where(self, sid: SegmentId) -> Path | str:
        """A segment's location for messages and :attr:`ArchivedRecord.segment`."""
        if isinstance(self.backend, LocalBackend):
            return sid.path(self.backend.root)
        return self.backend.describe(sid.relpath)

    def segments(self, topic: str | None = None) -> list[SegmentId]:
        """Every segment, in reading order (hour, topic, partition, first offset).

        In object storage the chain is the system of record: a segment above its partition's
        chained watermark is an upload whose manifest never followed, and is not read."""
        if isinstance(self.backend, LocalBackend):
            return list_segments(self.backend.root, topic)
        keys = self.backend.list(f"{topic}/" if topic else "")
        heads: dict[tuple[str, int], tuple[int, str]] = {}
        for key in keys:
            place = chain_place(key)
            if place is None:
                continue
            part = (place[0], place[1])
            if part not in heads or heads[part][0] < place[2]:
                heads[part] = (place[2], key)
        marks = {part: parse_entry(key, self.backend.get(key)).watermark
                 for part, (_, key) in heads.items()}
        return [sid for sid in segment_ids(keys, topic)
                if sid.first_offset <= marks.get((sid.topic, sid.partition), -1)]

    def records(self, sid: SegmentId) -> Iterator[ArchivedRecord]:
        """The records of one segment, verified; a segment gone since it was listed yields
        nothing (pruning or erasure removed it)."""
        try:
            data = self.backend.get(sid.relpath)
        except ObjectMissing:
            data = None
        yield from self.decoded(sid, data)

    def decoded(self, sid: SegmentId, data: bytes | None) -> Iterator[ArchivedRecord]:
        """The records of segment ``sid`` read as ``data`` (None: it was gone)."""
        where = self.where(sid)
        if data is None:
            log.warning("%s: listed but gone when opened; skipped", where)
            return
        yield from records_of(BlockScan.of_bytes(data, where), sid, where, self._dctx,
                              segment_decrypter(self.keys, sid, str(where)))

    def iter(self, topic: str | None = None, *, from_ms: int | None = None,
             to_ms: int | None = None) -> Iterator[ArchivedRecord]:
        """Every record (of one topic) whose segment hour overlaps [from_ms, to_ms), and whose
        Kafka timestamp is inside it. Segments are fetched a few at a time ahead of reading."""
        sids = {sid.relpath: sid for sid in self.segments(topic) if sid.overlaps(from_ms, to_ms)}
        for key, data in fetch(self.backend, sids, workers=4):
            for record in self.decoded(sids[key], data):
                if (from_ms is None or record.timestamp_ms >= from_ms) and (
                        to_ms is None or record.timestamp_ms < to_ms):
                    yield record
