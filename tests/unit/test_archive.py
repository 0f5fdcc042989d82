"""The archive store: round trips, dedup, rolls, crash recovery, corruption, concurrency."""

from __future__ import annotations

import logging
import os
import random
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.archive import (
    ArchiveClosedError,
    ArchivedRecord,
    ArchiveLockTimeout,
    ArchiveStore,
    CorruptSegmentError,
    RawRecord,
    SegmentMeta,
    iter_archive,
    list_segments,
)
from pipeline.archive._fs import PartitionLock
from pipeline.archive.blocks import HEADER_SIZE, KIND_RECORDS, KIND_SEAL, Block, BlockScan
from pipeline.archive.layout import MS_PER_HOUR, lock_path

TOPIC = "llm.events"
HOUR0 = int(datetime(2026, 11, 22, 14, tzinfo=UTC).timestamp()) * 1000  # 2026-11-22T14:00Z
REPO = Path(__file__).resolve().parents[2]


def rec(offset: int, *, partition: int = 0, ts: int | None = None, value: bytes | None = None,
        key: bytes | None = b"k", event_id: str | None = "", topic: str = TOPIC) -> RawRecord:
    return RawRecord(
        topic=topic, partition=partition, offset=offset,
        timestamp_ms=HOUR0 + offset if ts is None else ts,
        key=key,
        value=f'{{"event_id": "e{partition}-{offset}"}}'.encode() if value is None else value,
        event_id=f"e{partition}-{offset}" if event_id == "" else event_id,
    )


def recs(offsets: range, *, partition: int = 0, topic: str = TOPIC) -> list[RawRecord]:
    return [rec(o, partition=partition, topic=topic) for o in offsets]


def archived(root: Path, topic: str | None = None) -> list[tuple[str, int, int]]:
    return [(r.topic, r.partition, r.offset) for r in iter_archive(root, topic=topic)]


def segments(root: Path) -> list[Path]:
    return [sid.path(root) for sid in list_segments(root)]


def blocks_of(path: Path) -> list[Block]:
    fd = os.open(path, os.O_RDONLY)
    try:
        scan = BlockScan(fd, path)
        blocks = list(scan)
        assert scan.torn is None
        return blocks
    finally:
        os.close(fd)


def seal_of(path: Path) -> SegmentMeta | None:
    last = blocks_of(path)[-1]
    if last.header.kind != KIND_SEAL:
        return None
    assert last.payload is not None
    return SegmentMeta.from_json(last.payload, path, last.pos)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ArchiveStore]:
    s = ArchiveStore(tmp_path / "archive")
    yield s
    s.close()


# -- round trip -------------------------------------------------------------------------------

ODD_VALUES = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\xff\xfe\x00\x80 not utf-8", id="invalid-utf8"),
    pytest.param(b"line1\nline2\r\n\n", id="newlines"),
    pytest.param(b"{not json", id="invalid-json"),
    pytest.param(b"\x00" * 1000, id="nul-bytes"),
    pytest.param(random.Random(1).randbytes(1 << 20), id="1MB-random"),
    pytest.param(b"A" * (1 << 20), id="1MB-compressible"),
    pytest.param('{"t": "héllo ✓ 😀"}'.encode(), id="utf8-json"),
]


@pytest.mark.parametrize("value", ODD_VALUES)
@pytest.mark.parametrize(("key", "event_id"), [
    (None, None), (b"", "e-1"), (b"\xff\x00key", "ünï-ïd"), (b"trace-1", "lone \ud800 surrogate"),
])
def test_round_trip_is_byte_identical(tmp_path: Path, value: bytes, key: bytes | None,
                                      event_id: str | None) -> None:
    record = RawRecord(TOPIC, 3, 41, HOUR0 + 5, key, value, event_id)
    with ArchiveStore(tmp_path) as s:
        assert s.append([rec(40, partition=3), record]).written == 2
    back = list(iter_archive(tmp_path))
    assert [r.raw() for r in back] == [rec(40, partition=3), record]
    assert isinstance(back[1], ArchivedRecord)
    assert back[1].segment == segments(tmp_path)[0]


def test_layout_path_from_kafka_timestamp_utc(store: ArchiveStore, tmp_path: Path) -> None:
    ts = int(datetime(2026, 11, 22, 14, 3, 7, 120000, tzinfo=UTC).timestamp() * 1000)
    store.append([rec(42, partition=3, ts=ts)])
    assert [p.relative_to(tmp_path / "archive").as_posix() for p in segments(tmp_path / "archive")
            ] == ["llm.events/dt=2026-11-22/hour=14/p3-00000000000000000042.seg"]


def test_empty_append_writes_nothing(store: ArchiveStore, tmp_path: Path) -> None:
    assert store.append([]).written == 0
    assert segments(tmp_path / "archive") == []


# -- dedup ------------------------------------------------------------------------------------

@pytest.mark.parametrize("first_store_ends", ["close", "crash"])
def test_redelivered_range_is_skipped_across_restart(tmp_path: Path,
                                                     first_store_ends: str) -> None:
    first = ArchiveStore(tmp_path)
    for start in range(0, 100, 25):
        first.append(recs(range(start, start + 25)))
    first.close() if first_store_ends == "close" else first._abandon()

    with ArchiveStore(tmp_path) as second:
        assert second.high_watermarks() == {(TOPIC, 0): 99}
        result = second.append(recs(range(50, 150)))
    assert (result.written, result.skipped_duplicates) == (50, 50)
    assert archived(tmp_path) == [(TOPIC, 0, o) for o in range(150)]


def test_redelivery_within_one_batch_and_in_place_retry(store: ArchiveStore,
                                                        tmp_path: Path) -> None:
    batch = recs(range(10))
    assert store.append(batch + batch[5:]).written == 10  # a rebalance replayed part of it
    assert store.append(batch).skipped_duplicates == 10  # the caller retried a whole batch
    assert archived(tmp_path / "archive") == [(TOPIC, 0, o) for o in range(10)]


RETRY = rec(1, event_id="dup", value=b'{"event_id": "dup"}')


@pytest.mark.parametrize(("second", "skipped"), [
    pytest.param(rec(5, event_id="dup", value=RETRY.value), True, id="same-id-same-bytes"),
    pytest.param(rec(5, event_id="dup", value=b'{"event_id": "dup", "x": 1}'), False,
                 id="same-id-other-bytes-is-not-a-retry"),
    pytest.param(rec(5, event_id=None, value=RETRY.value), False, id="no-event-id"),
    pytest.param(rec(5, event_id="other", value=RETRY.value), False, id="other-id"),
    pytest.param(rec(5, event_id="dup", value=RETRY.value, ts=HOUR0 + MS_PER_HOUR), False,
                 id="same-id-next-hour-segment"),
    pytest.param(rec(5, event_id="dup", value=RETRY.value, partition=1), False,
                 id="same-id-other-partition"),
])
@pytest.mark.parametrize("when", ["same-batch", "next-batch", "after-crash", "after-close"])
def test_producer_retry_dedup_within_open_segment(tmp_path: Path, second: RawRecord,
                                                  skipped: bool, when: str) -> None:
    s = ArchiveStore(tmp_path)
    if when == "same-batch":
        result = s.append([rec(0), RETRY, second])
    else:
        s.append([rec(0), RETRY])
        if when == "after-crash":
            s._abandon()
            s = ArchiveStore(tmp_path)
        elif when == "after-close":  # the sealed segment is not reopened: a new one starts
            s.close()
            s = ArchiveStore(tmp_path)
            skipped = False
        result = s.append([second])
    s.close()
    assert result.event_id_duplicates == (1 if skipped else 0)
    values = [(r.partition, r.offset) for r in iter_archive(tmp_path)]
    assert ((second.partition, 5) in values) is not skipped


def test_watermark_after_trailing_retry_is_last_written(tmp_path: Path) -> None:
    with ArchiveStore(tmp_path) as s:
        s.append([RETRY, rec(2, event_id="dup", value=RETRY.value)])
        assert s.high_watermarks() == {(TOPIC, 0): 1}
        assert s.append([rec(2, event_id="dup", value=RETRY.value)]).event_id_duplicates == 1


# -- rolls ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("hours", "expected"), [
    ([0, 0, 0], [(0, 0)]),
    ([0, 0, 1, 1], [(0, 0), (1, 2)]),
    ([0, 1, 0, 1], [(0, 0), (0, 2), (1, 1), (1, 3)]),  # late records: one segment per change
    ([2, 1], [(1, 1), (2, 0)]),
])
def test_hour_roll(tmp_path: Path, hours: list[int], expected: list[tuple[int, int]]) -> None:
    with ArchiveStore(tmp_path) as s:
        s.append([rec(i, ts=HOUR0 + h * MS_PER_HOUR + i) for i, h in enumerate(hours)])
        s.append([rec(len(hours), ts=HOUR0 + hours[-1] * MS_PER_HOUR)])  # continues the last one
    sids = list_segments(tmp_path)
    assert [(sid.hour - HOUR0 // MS_PER_HOUR, sid.first_offset) for sid in sids] == expected
    hour_of_offset = [*hours, hours[-1]]
    assert [o for _, _, o in archived(tmp_path)] == sorted(  # read in (hour, offset) order
        range(len(hour_of_offset)), key=lambda o: (hour_of_offset[o], o))
    assert all(seal_of(sid.path(tmp_path)) is not None for sid in sids)


def test_hour_roll_seals_previous_segment_before_close(tmp_path: Path) -> None:
    with ArchiveStore(tmp_path) as s:
        s.append([rec(0)])
        s.append([rec(1, ts=HOUR0 + MS_PER_HOUR)])
        first, second = segments(tmp_path)
        meta = seal_of(first)
        assert meta is not None and (meta.first_offset, meta.last_offset) == (0, 0)
        assert seal_of(second) is None  # still open


def test_size_roll(tmp_path: Path) -> None:
    noise = random.Random(7)
    with ArchiveStore(tmp_path, segment_max_bytes=4500) as s:
        for o in range(12):
            s.append([rec(o, value=noise.randbytes(1500))])  # incompressible: ~1.6 kB blocks
    paths = segments(tmp_path)
    assert len(paths) == 4
    for path in paths:
        blocks = blocks_of(path)
        data = [b for b in blocks if b.header.kind == KIND_RECORDS]
        assert len(data) == 3 and blocks[-1].header.kind == KIND_SEAL
        assert data[-1].end >= 4500 > data[-2].end  # rolled once it exceeded the limit
        meta = seal_of(path)
        assert meta is not None and meta.record_count == 3 and meta.data_bytes == data[-1].end
    assert [o for _, _, o in archived(tmp_path)] == list(range(12))


def test_seal_metadata(tmp_path: Path) -> None:
    with ArchiveStore(tmp_path) as s:
        s.append([rec(o, ts=HOUR0 + 10 + o) for o in range(3)])
        s.append([rec(3, ts=HOUR0)])
    meta = seal_of(segments(tmp_path)[0])
    assert meta is not None
    assert (meta.topic, meta.partition, meta.first_offset, meta.last_offset) == (TOPIC, 0, 0, 3)
    assert (meta.record_count, meta.block_count) == (4, 2)
    assert (meta.min_timestamp_ms, meta.max_timestamp_ms) == (HOUR0, HOUR0 + 12)


# -- watermarks and order ---------------------------------------------------------------------

def test_watermarks_after_restart_from_last_block_only(tmp_path: Path) -> None:
    with ArchiveStore(tmp_path, segment_max_bytes=300) as s:
        s.append(recs(range(20)) + recs(range(7), partition=2) + recs(range(4), topic="other"))
        s.append(recs(range(20, 30)))
        before = s.high_watermarks()
    assert before == {(TOPIC, 0): 29, (TOPIC, 2): 6, ("other", 0): 3}
    for crash in (False, True):
        s = ArchiveStore(tmp_path)
        assert s.high_watermarks() == before
        s._abandon() if crash else s.close()


def test_start_up_reads_only_the_newest_segment(tmp_path: Path) -> None:
    with ArchiveStore(tmp_path) as s:
        s.append(recs(range(10)))
        s.append(recs(range(10, 20)))
        s.append([rec(20, ts=HOUR0 + MS_PER_HOUR)])
    old = segments(tmp_path)[0]
    _flip(old, blocks_of(old)[0].pos + HEADER_SIZE + 2)  # damage an older, sealed segment
    with ArchiveStore(tmp_path) as s:
        assert s.high_watermarks() == {(TOPIC, 0): 20}
        assert s.append([rec(21, ts=HOUR0 + MS_PER_HOUR)]).written == 1
    with pytest.raises(CorruptSegmentError, match="payload checksum mismatch"):
        list(iter_archive(tmp_path))  # readers still notice


def test_concurrent_appends_from_threads(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def consume(store: ArchiveStore, partition: int) -> int:  # one consumer thread per partition
        return sum(store.append(recs(range(start, start + 50), partition=partition)).written
                   for start in range(0, 500, 25))  # each batch half redelivered

    with ArchiveStore(tmp_path) as s, ThreadPoolExecutor(4) as pool:
        written = sum(pool.map(lambda p: consume(s, p), range(4)))
    assert written == 4 * 525
    assert sorted(archived(tmp_path)) == [(TOPIC, p, o) for p in range(4) for o in range(525)]


def test_iter_archive_order_and_topic_filter(tmp_path: Path) -> None:
    with ArchiveStore(tmp_path) as s:
        s.append([rec(0, partition=1, ts=HOUR0 + MS_PER_HOUR), rec(0, partition=0),
                  rec(1, partition=0, ts=HOUR0 + MS_PER_HOUR), rec(0, topic="a")])
    assert archived(tmp_path) == [("a", 0, 0), (TOPIC, 0, 0), (TOPIC, 0, 1), (TOPIC, 1, 0)]
    assert archived(tmp_path, "a") == [("a", 0, 0)]
    assert archived(tmp_path, "absent") == []
    with pytest.raises(ValueError, match="invalid topic name"):
        list(iter_archive(tmp_path, topic="../etc"))


# -- torn writes ------------------------------------------------------------------------------

def _three_blocks(root: Path) -> tuple[Path, Block]:
    s = ArchiveStore(root)
    for start in (0, 10, 20):
        s.append(recs(range(start, start + 10)))
    s._abandon()  # a crash: the segment stays open
    (path,) = segments(root)
    return path, blocks_of(path)[-1]


TEAR_AT = [  # where, inside the last block, the crash cut the file
    pytest.param(lambda b: b.pos + 1, id="1-byte-of-header"),
    pytest.param(lambda b: b.pos + HEADER_SIZE - 1, id="header-minus-1"),
    pytest.param(lambda b: b.pos + HEADER_SIZE, id="header-only"),
    pytest.param(lambda b: b.pos + HEADER_SIZE + b.header.payload_len // 2, id="half-payload"),
    pytest.param(lambda b: b.end - 1, id="last-byte-missing"),
]


@pytest.mark.parametrize("tear_at", TEAR_AT)
def test_torn_trailing_block_is_truncated_and_appends_continue(
        tmp_path: Path, tear_at: Callable[[Block], int], caplog: pytest.LogCaptureFixture) -> None:
    path, last = _three_blocks(tmp_path)
    os.truncate(path, tear_at(last))
    tail = path.read_bytes()[last.pos:]
    assert archived(tmp_path) == [(TOPIC, 0, o) for o in range(20)]  # readers skip the tail

    with caplog.at_level(logging.WARNING, "llmtrail.archive"):
        s = ArchiveStore(tmp_path)
    kept = path.with_name(f"{path.name}.torn-{last.pos}")
    assert f"{path}: cut off a torn trailing block at byte {last.pos}" in caplog.text
    assert f"its bytes kept in {kept.name}" in caplog.text
    assert kept.read_bytes() == tail  # never deleted on a guess
    assert path.stat().st_size == last.pos
    assert s.high_watermarks() == {(TOPIC, 0): 19}
    assert s.append(recs(range(30))).written == 10  # Kafka redelivers the uncommitted range
    s.close()
    assert archived(tmp_path) == [(TOPIC, 0, o) for o in range(30)]
    assert [r.raw() for r in iter_archive(tmp_path)] == recs(range(30))


@pytest.mark.parametrize("garbage", [b"\0" * 4096, b"LTAB" + b"\0" * 100, b"\x5a" * 7])
def test_garbage_tail_after_power_loss_is_truncated(tmp_path: Path, garbage: bytes) -> None:
    path, last = _three_blocks(tmp_path)
    with path.open("r+b") as f:  # the size grew but the data never made it: zeros or junk
        f.seek(last.pos + HEADER_SIZE)
        f.write(garbage)
    with ArchiveStore(tmp_path) as s:
        assert s.high_watermarks() == {(TOPIC, 0): 19}
        s.append(recs(range(30)))
    assert [r.raw() for r in iter_archive(tmp_path)] == recs(range(30))


def test_a_damaged_last_block_is_cut_off_but_its_bytes_are_kept(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, last = _three_blocks(tmp_path)
    _flip(path, last.end - 1)  # one bit of an acknowledged block: looks like a torn write
    block = path.read_bytes()[last.pos:]
    with caplog.at_level(logging.WARNING, "llmtrail.archive"), ArchiveStore(tmp_path) as s:
        assert s.high_watermarks() == {(TOPIC, 0): 19}
    kept = path.with_name(f"{path.name}.torn-{last.pos}")
    assert kept.read_bytes() == block
    assert "if the worker had acknowledged it, the block was damaged or altered" in caplog.text
    assert archived(tmp_path) == [(TOPIC, 0, o) for o in range(20)]  # the copy is no segment


def test_segment_left_empty_by_a_crash_is_removed(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    with ArchiveStore(tmp_path) as s:
        s.append(recs(range(5)))
    (first,) = segments(tmp_path)
    torn = first.with_name("p0-00000000000000000005.seg")
    torn.write_bytes(b"LTA")  # created, then killed mid-header
    with caplog.at_level(logging.WARNING, "llmtrail.archive"):
        s = ArchiveStore(tmp_path)
    assert "removing a segment without records" in caplog.text and not torn.exists()
    assert s.high_watermarks() == {(TOPIC, 0): 4}
    s.append(recs(range(8)))
    s.close()
    assert archived(tmp_path) == [(TOPIC, 0, o) for o in range(8)]


def test_torn_seal_reopens_the_segment(tmp_path: Path) -> None:
    with ArchiveStore(tmp_path) as s:
        s.append(recs(range(5)))
    (path,) = segments(tmp_path)
    seal = blocks_of(path)[-1]
    os.truncate(path, seal.end - 3)
    with ArchiveStore(tmp_path) as s:
        s.append([rec(5)])
    assert len(segments(tmp_path)) == 1
    assert archived(tmp_path) == [(TOPIC, 0, o) for o in range(6)]


# -- corruption -------------------------------------------------------------------------------

def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x40
    path.write_bytes(bytes(data))


CORRUPT = [
    pytest.param(lambda b: b.pos, "no block magic", id="magic"),
    pytest.param(lambda b: b.pos + 9, "block header checksum mismatch", id="length-field"),
    pytest.param(lambda b: b.pos + HEADER_SIZE + 3, "block payload checksum mismatch",
                 id="payload"),
]


@pytest.mark.parametrize(("where", "reason"), CORRUPT)
def test_corrupt_middle_block_is_a_clear_error(tmp_path: Path, where: Callable[[Block], int],
                                               reason: str) -> None:
    path, _ = _three_blocks(tmp_path)
    middle = blocks_of(path)[1]
    _flip(path, where(middle))
    with pytest.raises(CorruptSegmentError) as err:
        list(iter_archive(tmp_path))
    assert (err.value.path, err.value.offset) == (path, middle.pos)
    message = str(err.value)
    assert f"{path}: corrupt archive data at byte {middle.pos}: {reason}" in message
    assert f"a valid block follows at byte {middle.end}" in message
    # the writer refuses to append to it too, never truncating acknowledged data away
    size = path.stat().st_size
    s = ArchiveStore(tmp_path)
    with pytest.raises(CorruptSegmentError, match=reason):
        s.append([rec(30)])
    s.close()
    assert path.stat().st_size == size


def _fix_header_crc(data: bytearray, pos: int) -> None:
    data[pos + 36: pos + 40] = struct.pack("<I", zlib.crc32(data[pos: pos + 36]))


def test_unsupported_version_is_refused_with_advice(tmp_path: Path) -> None:
    path, last = _three_blocks(tmp_path)
    data = bytearray(path.read_bytes())
    data[last.pos + 4] = 2
    _fix_header_crc(data, last.pos)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptSegmentError, match="block format version 2 is not supported"):
        list(iter_archive(tmp_path))
    s = ArchiveStore(tmp_path)  # starts (other partitions keep working), but refuses this one
    with pytest.raises(CorruptSegmentError, match="version 2"):
        s.append([rec(30)])
    assert s.append([rec(0, partition=1)]).written == 1
    s.close()


def test_seal_that_disagrees_with_the_data_is_an_error(tmp_path: Path) -> None:
    with ArchiveStore(tmp_path) as s:
        s.append(recs(range(5)))
    (path,) = segments(tmp_path)
    seal = blocks_of(path)[-1]
    assert seal.payload is not None
    forged = seal.payload.replace(b'"record_count":5', b'"record_count":4')
    data = bytearray(path.read_bytes()[: seal.pos + HEADER_SIZE] + forged)
    data[seal.pos + 32: seal.pos + 36] = struct.pack("<I", zlib.crc32(forged))
    _fix_header_crc(data, seal.pos)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptSegmentError, match="seal says record_count=4, the segment has 5"):
        list(iter_archive(tmp_path))


# -- failures and concurrency -----------------------------------------------------------------

def test_failed_fsync_rolls_back_and_a_retry_writes_once(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    s = ArchiveStore(tmp_path)
    s.append(recs(range(5)))
    size = segments(tmp_path)[0].stat().st_size
    real_fsync = os.fsync
    calls = {"n": 0}

    def failing_fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        s.append(recs(range(5, 10)))
    assert segments(tmp_path)[0].stat().st_size == size  # the unsynced block is gone
    assert s.append(recs(range(10))).written == 5
    s.close()
    assert archived(tmp_path) == [(TOPIC, 0, o) for o in range(10)]


def test_failed_write_of_new_segment_rolls_back(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.archive.store as store_module
    from pipeline.archive._fs import write_all as real

    def half_then_enospc(fd: int, data: bytes) -> None:
        real(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    s = ArchiveStore(tmp_path)
    s.append(recs(range(3)))
    monkeypatch.setattr(store_module, "write_all", half_then_enospc)
    with pytest.raises(OSError, match="No space left"):
        s.append([*recs(range(3, 6)), rec(6, ts=HOUR0 + MS_PER_HOUR)])
    monkeypatch.setattr(store_module, "write_all", real)
    assert len(segments(tmp_path)) == 1
    assert s.append([*recs(range(6)), rec(6, ts=HOUR0 + MS_PER_HOUR)]).written == 4
    s.close()
    assert [r.raw() for r in iter_archive(tmp_path)] == [
        *recs(range(6)), rec(6, ts=HOUR0 + MS_PER_HOUR)]


def test_two_stores_on_one_root_hand_a_partition_over(tmp_path: Path) -> None:
    a = ArchiveStore(tmp_path)
    a.append(recs(range(10)))
    b = ArchiveStore(tmp_path)  # another worker; the partition moves to it in a rebalance
    assert b.append(recs(range(5, 15))).written == 5
    assert a.append(recs(range(10, 20))).written == 5  # a notices b's writes and reloads
    a.close()
    b.close()
    assert archived(tmp_path) == [(TOPIC, 0, o) for o in range(20)]


def test_partition_locked_by_another_store_times_out(tmp_path: Path) -> None:
    other = PartitionLock(lock_path(tmp_path, TOPIC, 0), fsync=False)
    other.acquire(1.0)
    try:
        s = ArchiveStore(tmp_path, lock_timeout=0.1)
        with pytest.raises(ArchiveLockTimeout, match="held this partition") as err:
            s.append([rec(0)])
        assert isinstance(err.value, OSError)  # callers that retry disk errors retry this
        assert s.append([rec(0, partition=1)]).written == 1
    finally:
        other.close()
    assert s.append([rec(0)]).written == 1
    s.close()


@pytest.mark.parametrize(("record", "message"), [
    (rec(0, topic="../etc"), "invalid topic name"),
    (rec(0, topic=""), "invalid topic name"),
    (rec(-1), "offset out of range"),
    (rec(0, partition=-1), "partition out of range"),
    (rec(0, ts=2**62), "timestamp_ms 4611686018427387904 out of range"),
    (RawRecord(TOPIC, 0, 0, HOUR0, None, "text", None), "value must be bytes"),  # type: ignore[arg-type]
])
def test_invalid_records_are_refused_before_anything_is_written(
        tmp_path: Path, record: RawRecord, message: str) -> None:
    with ArchiveStore(tmp_path) as s:
        with pytest.raises(ValueError, match=message):
            s.append([rec(5, partition=7), record])
        assert s.high_watermarks() == {}
    assert segments(tmp_path) == []


def test_closed_store_refuses_appends(tmp_path: Path) -> None:
    s = ArchiveStore(tmp_path)
    s.close()
    s.close()
    with pytest.raises(ArchiveClosedError):
        s.append([rec(0)])


def test_files_are_private(tmp_path: Path) -> None:
    root = tmp_path / "new" / "archive"
    with ArchiveStore(root) as s:
        s.append([rec(0)])
    (path,) = segments(root)
    assert path.stat().st_mode & 0o077 == 0
    assert path.parent.stat().st_mode & 0o077 == 0


# -- a real crash -----------------------------------------------------------------------------

CHILD = r"""
import random, sys
from pathlib import Path
from pipeline.archive import ArchiveStore
from tests.unit.test_archive import crash_record

root, n, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
store = ArchiveStore(root, segment_max_bytes=300_000)
marks = store.high_watermarks()
# Kafka redelivers from the last committed offset: somewhere at or below what is archived.
start = {p: rng.randint(0, marks.get(("crash", p), -1) + 1) for p in (0, 1)}
while min(start.values()) < n:
    batch = []
    for p in (0, 1):
        size = rng.randint(20, 200)
        batch += [crash_record(p, o) for o in range(start[p], min(n, start[p] + size))]
        start[p] += size
    store.append(batch)
    print(len(batch), flush=True)
print("done", flush=True)
"""


def crash_record(partition: int, offset: int) -> RawRecord:
    rng = random.Random(partition * 1_000_003 + offset)
    value = rng.randbytes(rng.randint(0, 12_000))  # incompressible: big blocks, slow writes
    ts = HOUR0 + offset * 9_000  # the hour changes every 400 offsets
    return RawRecord("crash", partition, offset, ts, b"k%d" % offset, value,
                     f"e{partition}-{offset}")


def test_sigkill_at_random_moments_then_full_redelivery(tmp_path: Path) -> None:
    n = 1500
    rng = random.Random()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for run in range(8):
        with subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path), str(n), str(run)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, text=True) as child:
            assert child.stdout is not None
            for _ in range(rng.randint(1, 6)):
                if child.stdout.readline() in ("", "done\n"):
                    break
            time.sleep(rng.random() * 0.03)
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)

    with ArchiveStore(tmp_path, segment_max_bytes=300_000) as s:
        for start in range(0, n, 250):  # Kafka redelivers everything, from offset 0
            s.append([crash_record(p, o) for p in (0, 1) for o in range(start, start + 250)])
    got = [r.raw() for r in iter_archive(tmp_path)]
    assert sorted((r.partition, r.offset) for r in got) == [(p, o) for p in (0, 1)
                                                             for o in range(n)]
    assert all(r == crash_record(r.partition, r.offset) for r in got)
    assert len(segments(tmp_path)) > 4  # hour and size rolls happened

