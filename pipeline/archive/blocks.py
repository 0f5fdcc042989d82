"""The segment file format, version 1: blocks, records, the seal, and a verifying block scanner.

A segment is a sequence of blocks, each a 40-byte header followed by its payload::

    offset size  field (little-endian)
    0      4     magic b"LTAB"
    4      1     format version (1)
    5      1     kind: 1 = records, 2 = seal (the last block of a sealed segment)
    6      1     codec: 0 = none, 1 = zstd (the payload is one zstd frame),
                       2 = zstd then AES-256-GCM (see :mod:`.crypto`)
    7      1     reserved (0)
    8      4     payload length in bytes
    12     4     record count (0 in a seal block)
    16     8     first offset of the block (seal block: of the segment)
    24     8     last offset of the block (seal block: of the segment)
    32     4     CRC-32 of the payload
    36     4     CRC-32 of bytes 0..35 of this header

A records payload decompresses to the batch's records back to back, each::

    u32 length of the rest | i32 partition | i64 offset | i64 timestamp_ms |
    i32 key length (-1: no key) | u32 value length | i32 event_id length (-1: none) |
    key | value | event_id (UTF-8)

A seal payload is a JSON object (:class:`SegmentMeta`). Readers ignore keys they do not know, so
metadata grows without a format bump; a header with another version is refused, never guessed at.

Each block is written with one append and the file is only ever extended, so a crash can only
leave a *torn tail*: bytes from some position to the end of the file that are not a complete,
valid block, with no valid block after them. :class:`BlockScan` tells that apart from damage in
the middle of a file, which it reports as :class:`CorruptSegmentError`.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import orjson
import zstandard

from pipeline.archive.errors import CorruptSegmentError
from pipeline.archive.records import RawRecord

MAGIC = b"LTAB"
FORMAT_VERSION = 1
KIND_RECORDS = 1
KIND_SEAL = 2
CODEC_NONE = 0
CODEC_ZSTD = 1
CODEC_ZSTD_AESGCM = 2
RECORD_CODECS = (CODEC_ZSTD, CODEC_ZSTD_AESGCM)

_HEADER = struct.Struct("<4sBBBBIIqqI")
_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER.size + _CRC.size
_RECORD = struct.Struct("<IiqqiIi")
_RECORD_FIXED = _RECORD.size - 4  # what the length prefix counts besides the variable fields
MAX_U32 = 2**32 - 1
MAX_I32 = 2**31 - 1


@dataclass(frozen=True, slots=True)
class BlockHeader:
    kind: int
    codec: int
    payload_len: int
    count: int
    first_offset: int
    last_offset: int
    payload_crc: int


@dataclass(frozen=True, slots=True)
class Block:
    pos: int
    """Byte offset of the block's header in its file."""
    header: BlockHeader
    payload: bytes | None
    """The payload, verified against its CRC; None when the scan did not read it."""

    @property
    def end(self) -> int:
        return self.pos + HEADER_SIZE + self.header.payload_len


@dataclass(frozen=True, slots=True)
class TornTail:
    pos: int
    reason: str


@dataclass(frozen=True, slots=True)
class SegmentMeta:
    """What the seal block says about its segment. Add fields with a default to extend it."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    record_count: int
    block_count: int
    min_timestamp_ms: int
    max_timestamp_ms: int
    data_bytes: int
    """Length of the segment's data blocks: the seal block starts at this byte."""
    sealed_at_ms: int

    def to_json(self) -> bytes:
        body: dict[str, Any] = {"format": FORMAT_VERSION}
        body.update((f.name, getattr(self, f.name)) for f in fields(self))
        return orjson.dumps(body)

    @classmethod
    def from_json(cls, raw: bytes, path: Path | str, pos: int) -> SegmentMeta:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise CorruptSegmentError(path, pos, f"seal block is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise CorruptSegmentError(path, pos, "seal block is not a JSON object")
        values: dict[str, Any] = {}
        for f in fields(cls):
            want = str if f.type in ("str", str) else int
            value = body.get(f.name)
            if not isinstance(value, want) or isinstance(value, bool):
                raise CorruptSegmentError(path, pos, f"seal block field {f.name!r} is {value!r}, "
                                          f"expected {want.__name__}")
            values[f.name] = value
        return cls(**values)


def encode_block(kind: int, codec: int, payload: bytes, *, count: int, first_offset: int,
                 last_offset: int) -> bytes:
    if len(payload) > MAX_U32:
        raise ValueError(f"block payload of {len(payload)} bytes exceeds the 4 GiB block limit")
    head = _HEADER.pack(MAGIC, FORMAT_VERSION, kind, codec, 0, len(payload), count,
                        first_offset, last_offset, zlib.crc32(payload))
    return b"".join((head, _CRC.pack(zlib.crc32(head)), payload))


def encode_records(records: Sequence[RawRecord]) -> bytes:
    """The uncompressed records payload (callers have validated field ranges)."""
    parts: list[bytes] = []
    append = parts.append
    pack = _RECORD.pack
    for r in records:
        key = r.key
        eid = None if r.event_id is None else r.event_id.encode("utf-8", "surrogatepass")
        key_len = -1 if key is None else len(key)
        eid_len = -1 if eid is None else len(eid)
        value_len = len(r.value)
        rest = _RECORD_FIXED + max(key_len, 0) + value_len + max(eid_len, 0)
        append(pack(rest, r.partition, r.offset, r.timestamp_ms, key_len, value_len, eid_len))
        if key:
            append(key)
        append(r.value)
        if eid:
            append(eid)
    return b"".join(parts)


DecodedRecord = tuple[int, int, bytes | None, bytes, str | None]
"""(offset, timestamp_ms, key, value, event_id); the partition is the segment's."""


Decrypt = Callable[[BlockHeader, bytes], bytes]
"""Opens an encrypted records payload (header, payload) -> the zstd frame."""


def decode_records(block: Block, partition: int, path: Path | str,
                   dctx: zstandard.ZstdDecompressor,
                   decrypt: Decrypt | None = None) -> list[DecodedRecord]:
    """The records of a verified records block; any inconsistency is a CorruptSegmentError.
    An encrypted block needs ``decrypt`` (else :class:`CorruptSegmentError` says so)."""
    header, pos = block.header, block.pos
    if block.payload is None:
        raise ValueError("decode_records needs a scan that read the payload")
    frame = block.payload
    if header.codec == CODEC_ZSTD_AESGCM:
        if decrypt is None:
            raise CorruptSegmentError(path, pos, "the block is encrypted: set LLMTRAIL_ARCHIVE_KEY "
                                      "or LLMTRAIL_ARCHIVE_KEY_FILE to read it")
        frame = decrypt(header, frame)
    try:
        data = dctx.decompress(frame)
    except zstandard.ZstdError as exc:
        raise CorruptSegmentError(path, pos, f"zstd frame does not decompress: {exc}") from exc

    def bad(why: str) -> CorruptSegmentError:
        return CorruptSegmentError(path, pos, f"record {len(out)} of the block: {why}")

    out: list[DecodedRecord] = []
    unpack = _RECORD.unpack_from
    size = len(data)
    at = 0
    previous = -1
    while at < size:
        if at + _RECORD.size > size:
            raise bad(f"{size - at} bytes left, too few for a record header")
        rest, part, offset, ts, key_len, value_len, eid_len = unpack(data, at)
        start = at + _RECORD.size
        key_end = start + max(key_len, 0)
        value_end = key_end + value_len
        end = value_end + max(eid_len, 0)
        if key_len < -1 or eid_len < -1 or at + 4 + rest != end or end > size:
            raise bad("field lengths disagree with the record length")
        if part != partition:
            raise bad(f"partition {part} in a segment of partition {partition}")
        if offset <= previous:
            raise bad(f"offset {offset} does not follow {previous}")
        try:
            event_id = (None if eid_len < 0
                        else data[value_end:end].decode("utf-8", "surrogatepass"))
        except UnicodeDecodeError as exc:
            raise bad(f"event_id is not UTF-8: {exc}") from exc
        key = None if key_len < 0 else data[start:key_end]
        out.append((offset, ts, key, data[key_end:value_end], event_id))
        previous = offset
        at = end
    if len(out) != header.count:
        raise CorruptSegmentError(path, pos,
                                  f"header says {header.count} records, payload has {len(out)}")
    if out[0][0] != header.first_offset or out[-1][0] != header.last_offset:
        raise CorruptSegmentError(
            path, pos, f"header says offsets {header.first_offset}..{header.last_offset}, "
            f"payload has {out[0][0]}..{out[-1][0]}")
    return out


def pread_exact(fd: int, size: int, pos: int) -> bytes:
    """Up to ``size`` bytes at ``pos``; fewer only at the end of the file."""
    chunks: list[bytes] = []
    while size > 0:
        chunk = os.pread(fd, min(size, 1 << 30), pos)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        pos += len(chunk)
    return b"".join(chunks)


def _unpack_header(raw: bytes) -> tuple[Any, ...] | str:
    """The header's fields when magic and header CRC hold, else why not."""
    if raw[:4] != MAGIC:
        return "no block magic"
    if zlib.crc32(raw[: _HEADER.size]) != _CRC.unpack_from(raw, _HEADER.size)[0]:
        return "block header checksum mismatch"
    return _HEADER.unpack_from(raw)


def _checked_header(fields_: tuple[Any, ...], path: Path | str, pos: int) -> BlockHeader:
    _, version, kind, codec, _, payload_len, count, first, last, payload_crc = fields_
    if version != FORMAT_VERSION:
        raise CorruptSegmentError(
            path, pos, f"block format version {version} is not supported (this llmtrail reads "
            f"version {FORMAT_VERSION}); read it with the llmtrail release that wrote it")
    if kind == KIND_RECORDS:
        if codec not in RECORD_CODECS or count < 1 or not 0 <= first <= last:
            raise CorruptSegmentError(path, pos, f"records block header is inconsistent: codec "
                                      f"{codec}, {count} records, offsets {first}..{last}")
    elif kind == KIND_SEAL:
        if codec != CODEC_NONE:
            raise CorruptSegmentError(path, pos, f"seal block with codec {codec}")
    else:
        raise CorruptSegmentError(path, pos, f"unknown block kind {kind}")
    return BlockHeader(kind, codec, payload_len, count, first, last, payload_crc)


class BlockScan:
    """Walks the blocks of one segment file and verifies them.

    A torn tail ends the walk and is left in :attr:`torn`; the caller decides to truncate it
    (the writer's recovery) or skip it (a reader). Damage followed by a valid block, an unsupported
    version and a block after the seal raise :class:`CorruptSegmentError`.

    Iterating reads and checks every payload, yielding blocks as it goes. :meth:`walk_headers` is
    the cheap form for recovery: it reads the headers and only the payloads at the end of the file
    (until one verifies), enough to find a torn tail and the last offset.
    """

    def __init__(self, fd: int, path: Path | str) -> None:
        self._read: Callable[[int, int], bytes] = lambda size, pos: pread_exact(fd, size, pos)
        self.path = path
        self.size = os.fstat(fd).st_size
        self.torn: TornTail | None = None
        self.sealed: Block | None = None

    @classmethod
    def of_bytes(cls, data: bytes, path: Path | str) -> BlockScan:
        """A scan of a segment held in memory (an object read from a backend)."""
        scan = cls.__new__(cls)
        view = memoryview(data)
        scan._read = lambda size, pos: bytes(view[pos: pos + size])
        scan.path = path
        scan.size = len(data)
        scan.torn = None
        scan.sealed = None
        return scan

    def __iter__(self) -> Iterator[Block]:
        for block in self._headers():
            payload = self._payload(block)
            if payload is None:
                return
            yield self._note_seal(Block(block.pos, block.header, payload))

    def walk_headers(self) -> list[Block]:
        """The valid blocks, payloads unread but for the last one (and a seal)."""
        blocks = list(self._headers())
        while blocks:  # what precedes a torn tail may itself be torn: verify backwards
            payload = self._payload(blocks[-1])
            if payload is not None:
                blocks[-1] = Block(blocks[-1].pos, blocks[-1].header, payload)
                break
            blocks.pop()
        for block in blocks:
            self._note_seal(block)
        return blocks

    def _headers(self) -> Iterator[Block]:
        pos, size, path = 0, self.size, self.path
        while pos < size:
            raw = self._read(HEADER_SIZE, pos)
            if len(raw) < HEADER_SIZE:
                self.torn = TornTail(pos, f"incomplete block header ({len(raw)} of "
                                          f"{HEADER_SIZE} bytes)")
                return
            unpacked = _unpack_header(raw)
            if isinstance(unpacked, str):
                self._bad(pos, unpacked)
                return
            header = _checked_header(unpacked, path, pos)
            end = pos + HEADER_SIZE + header.payload_len
            if end > size:
                self.torn = TornTail(pos, f"incomplete block: the header announces "
                                          f"{header.payload_len} payload bytes, "
                                          f"{size - pos - HEADER_SIZE} are present")
                return
            yield Block(pos, header, None)
            pos = end

    def _payload(self, block: Block) -> bytes | None:
        """The block's verified payload; None when the block turned out to be a torn tail."""
        payload = self._read(block.header.payload_len, block.pos + HEADER_SIZE)
        if len(payload) < block.header.payload_len:  # the file shrank while we read it
            self.torn = TornTail(block.pos, "incomplete block (the file shrank while reading)")
            return None
        if zlib.crc32(payload) != block.header.payload_crc:
            self._bad(block.pos, "block payload checksum mismatch")
            return None
        return payload

    def _note_seal(self, block: Block) -> Block:
        if self.sealed is not None:
            raise CorruptSegmentError(self.path, block.pos, f"block after the seal block at byte "
                                      f"{self.sealed.pos}")
        if block.header.kind == KIND_SEAL:
            self.sealed = block
        return block

    def _bad(self, pos: int, reason: str) -> None:
        """Invalid bytes at ``pos``: a torn tail, unless a valid block follows them."""
        later = self._valid_block_after(pos)
        if later is not None:
            raise CorruptSegmentError(self.path, pos, f"{reason}; a valid block follows at byte "
                                      f"{later}, so this is damage, not a torn write")
        self.torn = TornTail(pos, reason)

    def _valid_block_after(self, pos: int) -> int | None:
        rest = self._read(self.size - pos - 1, pos + 1)
        at = rest.find(MAGIC)
        while at >= 0:
            raw = rest[at: at + HEADER_SIZE]
            unpacked = _unpack_header(raw) if len(raw) == HEADER_SIZE else "short"
            if not isinstance(unpacked, str):
                start = at + HEADER_SIZE
                payload = rest[start: start + unpacked[5]]
                if len(payload) == unpacked[5] and zlib.crc32(payload) == unpacked[9]:
                    return pos + 1 + at
            at = rest.find(MAGIC, at + 1)
        return None
