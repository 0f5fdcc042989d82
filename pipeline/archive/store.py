"""ArchiveStore: durable, idempotent appends of raw Kafka records to local segment files.

Per (topic, partition) there is at most one *open* segment, the newest one, not yet sealed. An
append writes one block per segment it touches (one zstd frame with the batch's records), then
fsyncs the files and, when it created a file, its directories, then returns: only then may the
caller commit the offsets.

Crash recovery needs no log of its own. Offsets only grow within a partition and a segment starts
above everything archived before it, so the newest segment's last valid block holds the partition's
high watermark. A crash can only tear the tail of that newest segment; recovery truncates the torn
tail (or removes a segment it left empty) and reads the watermark from the block headers. The
event-id set of the open segment is rebuilt by reading that one segment in full when the partition
is first appended to.

When a segment is sealed (hour or size roll, or close) and durable, its manifest becomes the
partition's next chain entry (:mod:`.chain`). A crash between the two leaves a sealed segment
outside the chain; recovery (and the next append) chains it, so every sealed segment is chained.
With a master key, each records block is encrypted with its day's data key (:mod:`.crypto`).

Several stores (worker processes) may share a root. Each operation on a partition holds that
partition's ``flock`` for its duration, and a token in the lock file tells a store whether someone
else changed the partition since it last looked (then it reloads the partition from disk), so a
partition that moves between workers in a rebalance is neither torn nor duplicated.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import zstandard

from pipeline.archive._fs import FILE_MODE, PartitionLock, fsync_dir, makedirs, write_all
from pipeline.archive.backend import LocalBackend
from pipeline.archive.blocks import (
    CODEC_NONE,
    CODEC_ZSTD,
    CODEC_ZSTD_AESGCM,
    KIND_RECORDS,
    KIND_SEAL,
    MAX_I32,
    MAX_U32,
    BlockScan,
    SegmentMeta,
    decode_records,
    encode_block,
    encode_records,
)
from pipeline.archive.chain import Chain, ChainConflictError, Entry, segment_fields
from pipeline.archive.crypto import KeyRing, block_aad, day_key_id
from pipeline.archive.errors import ArchiveClosedError, CorruptSegmentError
from pipeline.archive.layout import (
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
    MS_PER_HOUR,
    SegmentId,
    check_topic,
    list_segments,
    lock_path,
)
from pipeline.archive.reader import segment_decrypter
from pipeline.archive.records import AppendResult, RawRecord
from pipeline.archive.traceindex import trace_ids

log = logging.getLogger("llmtrail.archive")

COMPRESSION_LEVEL = 3
MAX_OFFSET = 2**63 - 1


def retry_digest(event_id: str, value: bytes) -> bytes:
    """What identifies a producer's retry: the event_id and the exact bytes of the event."""
    eid = event_id.encode("utf-8", "surrogatepass")
    digest = hashlib.blake2b(len(eid).to_bytes(4, "little") + eid, digest_size=16)
    digest.update(value)
    return digest.digest()


@dataclass(slots=True, eq=False)
class _OpenSegment:
    """The newest segment of a partition, unsealed: the one appends go to while its hour lasts."""

    sid: SegmentId
    path: Path
    digests: set[bytes]
    size: int = 0
    last_offset: int = -1
    record_count: int = 0
    block_count: int = 0
    min_timestamp_ms: int = MAX_TIMESTAMP_MS
    max_timestamp_ms: int = MIN_TIMESTAMP_MS
    fd: int | None = None
    sealed: bool = False
    traces: set[str] = field(default_factory=set)

    def note(self, last_offset: int, timestamps: Sequence[int], blocks: int,
             values: Sequence[bytes]) -> None:
        for value in values:
            self.traces |= trace_ids(value)
        self.last_offset = last_offset
        self.record_count += len(timestamps)
        self.block_count += blocks
        self.min_timestamp_ms = min(self.min_timestamp_ms, *timestamps)
        self.max_timestamp_ms = max(self.max_timestamp_ms, *timestamps)

    def meta(self) -> SegmentMeta:
        return SegmentMeta(
            topic=self.sid.topic, partition=self.sid.partition,
            first_offset=self.sid.first_offset, last_offset=self.last_offset,
            record_count=self.record_count, block_count=self.block_count,
            min_timestamp_ms=self.min_timestamp_ms, max_timestamp_ms=self.max_timestamp_ms,
            data_bytes=self.size, sealed_at_ms=time.time_ns() // 1_000_000,
        )

    def close_fd(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


@dataclass(slots=True, eq=False)
class _Partition:
    """What the store knows about one partition; valid while the lock file's token is seen_token."""

    topic: str
    partition: int
    lock: PartitionLock
    watermark: int = -1
    newest: SegmentId | None = None
    seen_token: bytes = b""
    loaded: bool = False
    """``open`` (and its event-id digests) reflect the disk: the partition can take appends."""
    open: _OpenSegment | None = None
    chain_head: Entry | None = None
    unchained: list[_OpenSegment] = field(default_factory=list)
    """Sealed, durable segments whose manifest is not in the chain yet (oldest first)."""

    def drop(self) -> None:
        """Forget the loaded state (it is reloaded from disk by the next append)."""
        if self.open is not None:
            self.open.close_fd()
        self.open = None
        self.loaded = False


@dataclass(slots=True, eq=False)
class _Change:
    """The files one append changed in one partition: to fsync, or to roll back."""

    touched: dict[int, tuple[_OpenSegment, int, bool]] = field(default_factory=dict)
    dirs: set[Path] = field(default_factory=set)
    sealed: list[_OpenSegment] = field(default_factory=list)

    def touch(self, seg: _OpenSegment, *, created: bool = False) -> None:
        self.touched.setdefault(id(seg), (seg, seg.size, created))


@dataclass(slots=True)
class _Tail:
    sid: SegmentId
    last_offset: int
    sealed: bool


class ArchiveStore:
    """Durable, idempotent archive of raw records under ``root`` (see the module doc).

    Not for concurrent use from several threads without the caller's ordering: calls are
    serialized by an internal lock. ``lock_timeout`` bounds the wait for a partition that
    another store (process) is writing.
    """

    def __init__(self, root: Path, *, segment_max_bytes: int = 64 * 2**20, fsync: bool = True,
                 lock_timeout: float = 30.0, master_key: bytes | None = None,
                 signing_key: bytes | None = None) -> None:
        if segment_max_bytes < 1:
            raise ValueError(f"segment_max_bytes must be positive, got {segment_max_bytes}")
        self._root = Path(root)
        self._max = segment_max_bytes
        self._fsync = fsync
        self._lock_timeout = lock_timeout
        self._store_id = os.urandom(16)
        self._seq = 0
        self._cctx = zstandard.ZstdCompressor(level=COMPRESSION_LEVEL)
        self._dctx = zstandard.ZstdDecompressor()
        self._parts: dict[tuple[str, int], _Partition] = {}
        self._topics_ok: set[str] = set()
        self._mutex = threading.Lock()
        self._closed = False
        backend = LocalBackend(self._root, fsync=fsync)
        self._chain = Chain(backend, signing_key)
        self._keys = KeyRing(backend, master_key) if master_key else None
        self._recover_all()

    # -- public API ---------------------------------------------------------------------------

    def append(self, records: Sequence[RawRecord]) -> AppendResult:
        """Durably write the records not yet archived.

        Skipped: a record whose offset is at or below the partition's high watermark
        (redelivery), and a producer's retry: a record whose event_id *and exact bytes* are
        already in the same open segment. Returns when the data is fsynced (and the directory,
        when a file was created). Partitions are written one after the other; if one fails the
        error propagates (nothing of that partition is kept) and a retry of the same batch skips
        what the earlier partitions already wrote.
        """
        with self._mutex:
            if self._closed:
                raise ArchiveClosedError(f"archive store at {self._root} is closed")
            groups = validated_groups(records, self._topics_ok)
            written = redelivered = retried = 0
            for (topic, partition), group in groups.items():
                w, r, e = self._append_partition(self._partition(topic, partition), group)
                written, redelivered, retried = written + w, redelivered + r, retried + e
            return AppendResult(written, redelivered + retried, retried)

    def high_watermarks(self) -> dict[tuple[str, int], int]:
        """Last archived offset per (topic, partition), as this store last saw the disk."""
        with self._mutex:
            return {(p.topic, p.partition): p.watermark
                    for p in self._parts.values() if p.watermark >= 0}

    def close(self) -> None:
        """Seal the open segments this store wrote last, release every file. Idempotent."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            errors: list[Exception] = []
            for part in self._parts.values():
                try:
                    if part.open is not None:
                        self._seal_on_close(part)
                except Exception as exc:  # keep closing the others, then raise
                    errors.append(exc)
                finally:
                    part.drop()
                    part.lock.close()
            if errors:
                for other in errors[1:]:
                    errors[0].add_note(f"also failed while closing: {other!r}")
                raise errors[0]

    def __enter__(self) -> ArchiveStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- validation ---------------------------------------------------------------------------

    # -- one partition ------------------------------------------------------------------------

    def _partition(self, topic: str, partition: int) -> _Partition:
        part = self._parts.get((topic, partition))
        if part is None:
            lock = PartitionLock(lock_path(self._root, topic, partition), fsync=self._fsync)
            part = _Partition(topic, partition, lock)
            self._parts[(topic, partition)] = part
        return part

    def _append_partition(self, part: _Partition,
                          records: list[RawRecord]) -> tuple[int, int, int]:
        part.lock.acquire(self._lock_timeout)
        change = _Change()
        try:
            try:
                self._load(part)
                self._chain_pending(part)
                counts = self._write(part, records, change)
                if change.touched:
                    self._make_durable(change)
                    self._stamp(part)
            except BaseException as exc:
                self._roll_back(part, change, exc)
                raise
            # Durable: a failure to chain from here on is retried by the next append (or at
            # start-up), never by rolling back data that is already safe.
            part.unchained += change.sealed
            self._chain_pending(part)
            return counts
        finally:
            part.lock.release()

    def _write(self, part: _Partition, records: list[RawRecord],
               change: _Change) -> tuple[int, int, int]:
        """Write runs of same-hour records as blocks; returns (written, redelivered, retried)."""
        watermark = part.watermark
        seg = part.open
        written = redelivered = retried = 0
        run: list[RawRecord] = []
        run_hour: int | None = None
        digests: set[bytes] = set()
        for r in records:
            if r.offset <= watermark:
                redelivered += 1
                continue
            hour = r.timestamp_ms // MS_PER_HOUR
            if hour != run_hour:
                if run:
                    seg = self._write_block(part, seg, run, digests, change)
                    written += len(run)
                    run = []
                run_hour = hour
                if seg is not None and (seg.sid.hour != hour or seg.size >= self._max):
                    self._seal(part, seg, change)
                    seg = None
                digests = seg.digests if seg is not None else set()
            if r.event_id is not None:
                digest = retry_digest(r.event_id, r.value)
                if digest in digests:
                    retried += 1
                    continue
                digests.add(digest)
            run.append(r)
            watermark = r.offset
        if run:
            self._write_block(part, seg, run, digests, change)
            written += len(run)
        part.watermark = watermark
        return written, redelivered, retried

    def _write_block(self, part: _Partition, seg: _OpenSegment | None, run: list[RawRecord],
                     digests: set[bytes], change: _Change) -> _OpenSegment | None:
        payload = self._cctx.compress(encode_records(run))
        first, last = run[0].offset, run[-1].offset
        codec = CODEC_ZSTD
        if self._keys is not None:
            codec = CODEC_ZSTD_AESGCM
            payload = self._keys.encrypt(day_key_id(run[0].timestamp_ms // MS_PER_HOUR), payload,
                                         block_aad(part.topic, part.partition, first, last))
        block = encode_block(KIND_RECORDS, codec, payload, count=len(run),
                             first_offset=first, last_offset=last)
        if seg is None:
            seg = self._create(SegmentId(run[0].timestamp_ms // MS_PER_HOUR, part.topic,
                                         part.partition, run[0].offset), digests, change)
            part.open, part.newest = seg, seg.sid
        else:
            change.touch(seg)
        write_all(self._fd(seg), block)
        seg.size += len(block)
        seg.note(run[-1].offset, [r.timestamp_ms for r in run], 1, [r.value for r in run])
        if seg.size >= self._max:
            self._seal(part, seg, change)
            return None
        return seg

    def _create(self, sid: SegmentId, digests: set[bytes], change: _Change) -> _OpenSegment:
        path = sid.path(self._root)
        change.dirs |= makedirs(path.parent)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                     FILE_MODE)
        change.dirs.add(path.parent)
        seg = _OpenSegment(sid, path, digests, fd=fd)
        change.touch(seg, created=True)
        return seg

    def _seal(self, part: _Partition, seg: _OpenSegment, change: _Change) -> None:
        change.touch(seg)
        meta = seg.meta()
        block = encode_block(KIND_SEAL, CODEC_NONE, meta.to_json(), count=0,
                             first_offset=seg.sid.first_offset, last_offset=seg.last_offset)
        write_all(self._fd(seg), block)
        seg.size += len(block)
        seg.sealed = True
        change.sealed.append(seg)
        if part.open is seg:
            part.open = None

    def _seal_on_close(self, part: _Partition) -> None:
        part.lock.acquire(self._lock_timeout)
        try:
            if part.lock.read_token() != part.seen_token:
                return  # another store appended since: the open segment is its business now
            self._seal_open(part)
        finally:
            part.lock.release()

    def _seal_open(self, part: _Partition) -> None:
        """Seal the open segment (if any) and chain every sealed segment; under the lock."""
        change = _Change()
        if part.open is not None:
            try:
                self._seal(part, part.open, change)
                self._make_durable(change)
                self._stamp(part)
            except BaseException as exc:
                self._roll_back(part, change, exc)
                raise
        part.unchained += change.sealed
        self._chain_pending(part)

    def seal_all(self) -> int:
        """Seal every partition's open segment, whoever wrote it, and chain them (what erasure
        needs before it rewrites segments). A worker appending to one of them notices and starts
        a new segment. Returns the number of segments sealed."""
        with self._mutex:
            if self._closed:
                raise ArchiveClosedError(f"archive store at {self._root} is closed")
            sealed = 0
            for part in list(self._parts.values()):
                part.lock.acquire(self._lock_timeout)
                try:
                    self._load(part)
                    sealed += part.open is not None
                    self._seal_open(part)
                finally:
                    part.lock.release()
            return sealed

    def _chain_pending(self, part: _Partition) -> None:
        """Add the manifests of sealed segments not yet in the partition's chain, in order."""
        while part.unchained:
            seg = part.unchained[0]
            data = seg.path.read_bytes()
            fields = segment_fields(
                key=seg.sid.relpath, data=data, count=seg.record_count,
                first_offset=seg.sid.first_offset, last_offset=seg.last_offset,
                min_ts_ms=seg.min_timestamp_ms, max_ts_ms=seg.max_timestamp_ms,
                traces=seg.traces,
                key_id=day_key_id(seg.sid.hour) if self._encrypted(data) else None)
            for _ in range(20):
                head = part.chain_head
                mark = max(seg.last_offset, -1 if head is None else head.watermark)
                entry = self._chain.try_append(part.topic, part.partition, "segment", fields,
                                               head=head, watermark=mark)
                if entry is not None:
                    part.chain_head = entry
                    break
                part.chain_head = self._chain.head(part.topic, part.partition)  # moved: re-read
            else:
                raise ChainConflictError(f"{part.topic}[{part.partition}]: the manifest chain "
                                         "kept moving while appending")
            part.unchained.pop(0)

    @staticmethod
    def _encrypted(data: bytes) -> bool:
        return len(data) > 6 and data[6] == CODEC_ZSTD_AESGCM  # the first block's codec

    def _fd(self, seg: _OpenSegment) -> int:
        if seg.fd is None:
            seg.fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        return seg.fd

    def _make_durable(self, change: _Change) -> None:
        for seg, _, _ in change.touched.values():
            if self._fsync:
                os.fsync(self._fd(seg))
            if seg.sealed:
                seg.close_fd()
        if self._fsync:
            for directory in sorted(change.dirs):
                fsync_dir(directory)

    def _roll_back(self, part: _Partition, change: _Change, exc: BaseException) -> None:
        """Undo a failed append's writes, so a retry neither loses nor duplicates anything."""
        for seg, size_before, created in change.touched.values():
            try:
                if created:
                    seg.close_fd()
                    seg.path.unlink(missing_ok=True)
                    if self._fsync:
                        fsync_dir(seg.path.parent)
                else:
                    fd = self._fd(seg)
                    os.ftruncate(fd, size_before)
                    if self._fsync:
                        os.fsync(fd)
            except OSError as undo_error:
                log.error("%s: could not roll back to %d bytes after a failed append: %s",
                          seg.path, size_before, undo_error)
                exc.add_note(f"rolling {seg.path} back to {size_before} bytes failed too: "
                             f"{undo_error!r}")
            finally:
                seg.close_fd()
        part.drop()
        part.seen_token = b""  # forces a fresh listing and load before the next append

    def _stamp(self, part: _Partition) -> None:
        """Record in the lock file that this store changed the partition last."""
        self._seq += 1
        token = self._store_id + self._seq.to_bytes(8, "little")
        part.lock.write_token(token)
        part.seen_token = token

    # -- recovery -----------------------------------------------------------------------------

    def _recover_all(self) -> None:
        """Recover every partition found under the root: torn tails, watermarks."""
        by_partition: dict[tuple[str, int], list[SegmentId]] = {}
        for sid in list_segments(self._root):
            by_partition.setdefault((sid.topic, sid.partition), []).append(sid)
        for (topic, partition), sids in sorted(by_partition.items()):
            part = self._partition(topic, partition)
            part.lock.acquire(self._lock_timeout)
            try:
                token = part.lock.read_token()
                tail, changed = self._recover_tail(part, sids)
                self._note_tail(part, tail, sids)
                part.seen_token = token
                if changed:
                    self._stamp(part)
                self._chain_pending(part)  # segments a crash left sealed but not chained
            except CorruptSegmentError as exc:
                # One damaged partition must not stop the worker (and its detection) from
                # starting: appends to this partition re-run recovery and raise this again.
                log.error("%s; %s[%d] refuses appends until the file is repaired or moved away",
                          exc, topic, partition)
            finally:
                part.lock.release()

    def _load(self, part: _Partition) -> None:
        """Make ``part`` reflect the disk, with its open segment's event ids: a no-op when this
        store was the last to change the partition."""
        token = part.lock.read_token()
        if part.loaded and token == part.seen_token:
            return
        part.drop()
        tail: _Tail | None = None
        changed = False
        sids: list[SegmentId] | None = None
        if token == part.seen_token and part.newest is not None:
            tail, changed = self._recover_tail(part, [part.newest])
        if tail is None and not (token == part.seen_token and part.newest is None):
            sids = [s for s in list_segments(self._root, part.topic)
                    if s.partition == part.partition]
            tail, changed_too = self._recover_tail(part, sids)
            changed = changed or changed_too
        self._note_tail(part, tail, sids)
        if tail is not None and not tail.sealed:
            part.open = self._read_open_segment(tail.sid)
        part.loaded = True
        part.seen_token = token
        if changed:
            self._stamp(part)

    def _note_tail(self, part: _Partition, tail: _Tail | None,
                   sids: list[SegmentId] | None) -> None:
        """Watermark, newest segment and chain head after recovery; with the partition's
        segments listed (``sids``), also the sealed ones missing from the chain."""
        part.chain_head = self._chain.head(part.topic, part.partition)
        chained = -1 if part.chain_head is None else part.chain_head.watermark
        # An erasure may have removed the newest records: the chain still remembers them.
        part.watermark = max(chained, -1 if tail is None else tail.last_offset)
        part.newest = None if tail is None else tail.sid
        if sids is None:
            return
        waiting = {seg.sid for seg in part.unchained}
        for sid in sorted(sids, key=lambda s: s.first_offset):
            if sid.first_offset > chained and sid not in waiting and sid.path(
                    self._root).exists():  # recovery may have removed an empty one
                seg = self._read_open_segment(sid)
                if seg.sealed:
                    part.unchained.append(seg)

    def _keep_torn_tail(self, fd: int, path: Path, pos: int) -> Path:
        """Copy the bytes from ``pos`` to the end of the segment beside it, durably, before they
        are cut off: a damaged last block looks like a torn write, and evidence is never
        deleted on a guess. The copy (``<segment>.torn-<pos>``) is no segment: readers skip it,
        verify lists it."""
        kept = path.with_name(f"{path.name}.torn-{pos}")
        size = os.fstat(fd).st_size
        with open(kept, "wb") as out:
            out.write(os.pread(fd, size - pos, pos))
            out.flush()
            if self._fsync:
                os.fsync(out.fileno())
        if self._fsync:
            fsync_dir(path.parent)
        return kept

    def _recover_tail(self, part: _Partition, sids: list[SegmentId]) -> tuple[_Tail | None, bool]:
        """The newest of ``sids`` holding records, after truncating a torn tail and removing
        segments a crash left without records. Returns it (None: no records) and whether any
        file was changed."""
        changed = False
        for sid in sorted(sids, key=lambda s: s.first_offset, reverse=True):
            path = sid.path(self._root)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # removed since it was listed
            try:
                scan = BlockScan(fd, path)
                last_offset = -1
                for block in scan.walk_headers():
                    if block.header.kind == KIND_RECORDS:
                        last_offset = block.header.last_offset
                if scan.torn is not None:
                    kept = self._keep_torn_tail(fd, path, scan.torn.pos)
                    log.warning("%s: cut off a torn trailing block at byte %d (%s), its bytes "
                                "kept in %s: a write that crashed before it returned was never "
                                "acknowledged; if the worker had acknowledged it, the block was "
                                "damaged or altered", path, scan.torn.pos, scan.torn.reason,
                                kept.name)
                    os.ftruncate(fd, scan.torn.pos)
                    if self._fsync:
                        os.fsync(fd)
                    changed = True
                if last_offset >= 0:
                    return _Tail(sid, last_offset, scan.sealed is not None), changed
                if scan.sealed is not None:
                    raise CorruptSegmentError(path, scan.sealed.pos, "sealed segment without "
                                              "records")
            finally:
                os.close(fd)
            log.warning("%s: removing a segment without records (a crash right after creating "
                        "it)", path)
            path.unlink()
            if self._fsync:
                fsync_dir(path.parent)
            changed = True
        return None, changed

    def _read_open_segment(self, sid: SegmentId) -> _OpenSegment:
        """Read a segment in full: its event-id digests and statistics (and whether it is
        sealed: recovery reads sealed segments a crash left out of the chain)."""
        path = sid.path(self._root)
        seg = _OpenSegment(sid, path, set())
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        decrypt = segment_decrypter(self._keys, sid, str(path))
        try:
            scan = BlockScan(fd, path)
            for block in scan:
                if block.header.kind == KIND_SEAL:
                    seg.sealed = True
                    continue
                records = decode_records(block, sid.partition, path, self._dctx, decrypt)
                seg.digests.update(retry_digest(eid, value)
                                   for _, _, _, value, eid in records if eid is not None)
                seg.note(records[-1][0], [ts for _, ts, _, _, _ in records], 1,
                         [value for _, _, _, value, _ in records])
            if scan.torn is not None:  # recovery truncated it under the same lock: cannot be
                raise CorruptSegmentError(path, scan.torn.pos, scan.torn.reason)
            seg.size = scan.size
        finally:
            os.close(fd)
        return seg

    def _abandon(self) -> None:
        """Drop every file handle and lock without sealing: what a crash leaves (for tests)."""
        with self._mutex:
            self._closed = True
            for part in self._parts.values():
                part.drop()
                part.lock.close()


def validated_groups(records: Sequence[RawRecord], topics_ok: set[str] | None = None
                     ) -> dict[tuple[str, int], list[RawRecord]]:
    """Records grouped by partition, in order; a record that cannot be stored raises before
    anything is written. ``topics_ok`` caches the topic names already checked."""
    checked = set() if topics_ok is None else topics_ok
    groups: dict[tuple[str, int], list[RawRecord]] = {}
    for r in records:
        if not isinstance(r, RawRecord):
            raise TypeError(f"expected RawRecord, got {type(r).__name__}")
        if r.topic not in checked:
            check_topic(r.topic)
            checked.add(r.topic)
        problem = _record_problem(r)
        if problem:
            raise ValueError(f"cannot archive {r.topic}[{r.partition}]@{r.offset}: {problem}")
        groups.setdefault((r.topic, r.partition), []).append(r)
    return groups


def _record_problem(r: RawRecord) -> str | None:
    if not 0 <= r.partition <= MAX_I32:
        return "partition out of range"
    if not 0 <= r.offset <= MAX_OFFSET:
        return "offset out of range"
    if not MIN_TIMESTAMP_MS <= r.timestamp_ms <= MAX_TIMESTAMP_MS:
        return f"timestamp_ms {r.timestamp_ms} out of range"
    if not isinstance(r.value, bytes):
        return f"value must be bytes, got {type(r.value).__name__}"
    if len(r.value) > MAX_U32:
        return "value larger than 4 GiB"
    if r.key is not None and (not isinstance(r.key, bytes) or len(r.key) > MAX_I32):
        return "key must be bytes under 2 GiB or None"
    if r.event_id is not None and not isinstance(r.event_id, str):
        return f"event_id must be str or None, got {type(r.event_id).__name__}"
    return None

