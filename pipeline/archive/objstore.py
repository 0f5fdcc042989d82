"""ObjectArchiveStore: the archive writer for object storage (S3), where objects cannot grow.

Each append writes, per partition and per hour the batch touches, one sealed segment object (the
batch's records as one zstd block, then the seal), then its manifest as the partition's next
chain entry. It returns only when both PUTs were acknowledged: S3 is the system of record, and
nothing is acknowledged to Kafka that is not in the bucket. A failed PUT raises; the caller
retries the whole batch, and stops without committing if the bucket stays unavailable.

Idempotence comes from the chain: its head's ``watermark`` is the partition's last archived
offset, so a redelivered record is skipped, and a producer's retry (same event_id and bytes) is
skipped within the batch. A segment uploaded without its manifest (a crash between the two PUTs)
is not part of the archive: the retry of that batch rewrites the same key, then chains it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import zstandard

from pipeline.archive.backend import Backend
from pipeline.archive.blocks import (
    CODEC_NONE,
    CODEC_ZSTD,
    CODEC_ZSTD_AESGCM,
    KIND_RECORDS,
    KIND_SEAL,
    SegmentMeta,
    encode_block,
    encode_records,
)
from pipeline.archive.chain import Chain, ChainConflictError, Entry, segment_fields
from pipeline.archive.crypto import KeyRing, block_aad, day_key_id
from pipeline.archive.errors import ArchiveClosedError
from pipeline.archive.layout import MS_PER_HOUR, SegmentId
from pipeline.archive.records import AppendResult, RawRecord
from pipeline.archive.store import COMPRESSION_LEVEL, retry_digest, validated_groups
from pipeline.archive.traceindex import trace_ids

_MOVED_ATTEMPTS = 20


@dataclass(slots=True)
class _Head:
    entry: Entry | None
    loaded: bool = False

    @property
    def watermark(self) -> int:
        return -1 if self.entry is None else self.entry.watermark


class ObjectArchiveStore:
    """Durable, idempotent archive of raw records as immutable objects on ``backend``."""

    def __init__(self, backend: Backend, *, keys: KeyRing | None = None,
                 signing_key: bytes | None = None) -> None:
        self.backend = backend
        self._chain = Chain(backend, signing_key)
        self._keys = keys
        self._cctx = zstandard.ZstdCompressor(level=COMPRESSION_LEVEL)
        self._heads: dict[tuple[str, int], _Head] = {}
        self._mutex = threading.Lock()
        self._closed = False

    def append(self, records: Sequence[RawRecord]) -> AppendResult:
        """Upload the records not yet archived; returns once segments and manifests are stored.

        Partitions are written one after the other; if one fails the error propagates and a
        retry of the same batch skips what earlier partitions already stored.
        """
        with self._mutex:
            if self._closed:
                raise ArchiveClosedError("archive store is closed")
            written = redelivered = retried = 0
            for (topic, partition), group in validated_groups(records).items():
                w, r, e = self._append_partition(topic, partition, group)
                written, redelivered, retried = written + w, redelivered + r, retried + e
            return AppendResult(written, redelivered + retried, retried)

    def high_watermarks(self) -> dict[tuple[str, int], int]:
        with self._mutex:
            return {key: head.watermark for key, head in self._heads.items()
                    if head.watermark >= 0}

    def close(self) -> None:
        """Nothing is buffered: every append already stored its segments. Idempotent."""
        with self._mutex:
            self._closed = True

    def _head(self, topic: str, partition: int) -> _Head:
        head = self._heads.setdefault((topic, partition), _Head(None))
        if not head.loaded:
            head.entry = self._chain.head(topic, partition)
            head.loaded = True
        return head

    def _append_partition(self, topic: str, partition: int,
                          records: list[RawRecord]) -> tuple[int, int, int]:
        head = self._head(topic, partition)
        for _ in range(_MOVED_ATTEMPTS):
            runs, redelivered, retried = _new_runs(records, head.watermark)
            written = 0
            for run in runs:
                if not self._store_run(topic, partition, run, head):
                    break  # another writer moved the chain: re-read it and dedup again
                written += len(run)
            else:
                return written, redelivered, retried
            head.entry = self._chain.head(topic, partition)
        raise ChainConflictError(f"{topic}[{partition}]: the manifest chain kept moving while "
                                 "appending (is another worker writing this partition?)")

    def _store_run(self, topic: str, partition: int, run: list[RawRecord], head: _Head) -> bool:
        sid = SegmentId(run[0].timestamp_ms // MS_PER_HOUR, topic, partition, run[0].offset)
        first, last = run[0].offset, run[-1].offset
        data = sealed_segment(sid, run, self._cctx, self._keys)
        key_id = None if self._keys is None else day_key_id(sid.hour)
        if not self.backend.put_new(sid.relpath, data):
            head.entry = self._chain.head(topic, partition)
            if head.watermark >= first:
                return False  # another writer archived these offsets: dedup against it
            self.backend.put(sid.relpath, data)  # an upload whose manifest never followed
        traces: set[str] = set()
        for record in run:
            traces |= trace_ids(record.value)
        stamps = [r.timestamp_ms for r in run]
        fields = segment_fields(key=sid.relpath, data=data, count=len(run), first_offset=first,
                                last_offset=last, min_ts_ms=min(stamps), max_ts_ms=max(stamps),
                                traces=traces, key_id=key_id)
        entry = self._chain.try_append(topic, partition, "segment", fields, head=head.entry,
                                       watermark=max(last, head.watermark))
        if entry is None:
            return False
        head.entry = entry
        return True


def sealed_segment(sid: SegmentId, records: Sequence[RawRecord],
                   cctx: zstandard.ZstdCompressor, keys: KeyRing | None) -> bytes:
    """A sealed segment of ``records`` (one records block, then the seal), encrypted with the
    day key of the segment's hour when ``keys`` is given."""
    first, last = records[0].offset, records[-1].offset
    payload = cctx.compress(encode_records(records))
    codec = CODEC_ZSTD
    if keys is not None:
        codec = CODEC_ZSTD_AESGCM
        payload = keys.encrypt(day_key_id(sid.hour), payload,
                               block_aad(sid.topic, sid.partition, first, last))
    block = encode_block(KIND_RECORDS, codec, payload, count=len(records), first_offset=first,
                         last_offset=last)
    stamps = [r.timestamp_ms for r in records]
    meta = SegmentMeta(topic=sid.topic, partition=sid.partition, first_offset=sid.first_offset,
                       last_offset=last, record_count=len(records), block_count=1,
                       min_timestamp_ms=min(stamps), max_timestamp_ms=max(stamps),
                       data_bytes=len(block), sealed_at_ms=time.time_ns() // 1_000_000)
    return block + encode_block(KIND_SEAL, CODEC_NONE, meta.to_json(), count=0,
                                first_offset=sid.first_offset, last_offset=last)


def _new_runs(records: list[RawRecord],
              watermark: int) -> tuple[list[list[RawRecord]], int, int]:
    """The records above ``watermark`` minus producer retries, split where the hour changes;
    with the counts of redelivered and retried records."""
    runs: list[list[RawRecord]] = []
    digests: set[bytes] = set()
    redelivered = retried = 0
    run_hour: int | None = None
    for r in records:
        if r.offset <= watermark:
            redelivered += 1
            continue
        if r.event_id is not None:
            digest = retry_digest(r.event_id, r.value)
            if digest in digests:
                retried += 1
                continue
            digests.add(digest)
        hour = r.timestamp_ms // MS_PER_HOUR
        if hour != run_hour:
            runs.append([])
            run_hour = hour
        runs[-1].append(r)
        watermark = r.offset
    return runs, redelivered, retried
