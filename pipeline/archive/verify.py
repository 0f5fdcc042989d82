"""``archive verify``: recompute every hash and walk every chain.

Checks, per partition: entries numbered 0..n with none missing; each entry's ``prev`` is the
SHA-256 of the entry before; topic, partition and seq agree with where the entry is stored;
signatures (with a signing key); segment offsets increase along the chain. Per segment: the
object exists unless an erasure or prune removed it on purpose, and its size and SHA-256 are what
the chain says last. Segment objects that no chain names are reported too, except a local
partition's open segment (the newest, unsealed, above the chain's watermark), which is counted
as open. Nothing here needs the encryption key: hashes cover the stored bytes.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

from pipeline.archive.backend import Backend, ObjectMissing, fetch
from pipeline.archive.blocks import KIND_RECORDS, BlockScan
from pipeline.archive.catalog import Catalog, ChainView, SegmentState, load_catalog
from pipeline.archive.chain import Chain, entry_key, signature
from pipeline.archive.crypto import ArchiveKeyError
from pipeline.archive.errors import CorruptSegmentError
from pipeline.archive.layout import SegmentId
from pipeline.archive.reader import Reader


@dataclass(frozen=True, slots=True)
class Problem:
    where: str
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass(slots=True)
class Report:
    partitions: int = 0
    entries: int = 0
    segments: int = 0
    events: int = 0
    open_segments: int = 0
    open_events: int = 0
    signed: bool = False
    problems: list[Problem] = field(default_factory=list)
    erasures: list[str] = field(default_factory=list)
    prunes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    heads: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per partition ("topic/partition"), the newest entry: its seq and SHA-256 (an anchor)."""

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(backend: Backend, *, signing_key: bytes | None, from_ms: int | None = None,
           to_ms: int | None = None, deep: Reader | None = None,
           anchor: dict[str, dict[str, Any]] | None = None) -> Report:
    """Check the chains and the segments' hashes; with ``deep`` (a reader, holding the key
    ring when the archive is encrypted), also decode every record of every hashed segment;
    with ``anchor`` (the :attr:`Report.heads` of an earlier run, kept elsewhere), also check
    that every entry it names is still there, unchanged: what finds newest entries cut off."""
    catalog = load_catalog(backend, Chain(backend))
    report = Report(partitions=len(catalog.chains), signed=signing_key is not None)
    for view in sorted(catalog.chains.values(), key=lambda v: (v.topic, v.partition)):
        _check_chain(backend, view, signing_key, report)
        if view.entries:
            newest = view.entries[max(view.entries)]
            report.heads[f"{view.topic}/{view.partition}"] = {"seq": newest.seq,
                                                              "sha256": newest.digest}
    for name, head in sorted((anchor or {}).items()):
        _check_anchor(backend, catalog, name, head, report)
    _check_segments(backend, catalog, from_ms, to_ms, report, deep=deep)
    _check_unchained(backend, catalog, from_ms, to_ms, report)
    return report


def _check_anchor(backend: Backend, catalog: Catalog, name: str, head: dict[str, Any],
                  report: Report) -> None:
    topic, _, partition_text = name.rpartition("/")
    seq = head.get("seq")
    if not partition_text.isdigit() or not isinstance(seq, int):
        report.problems.append(Problem(name, f"anchor entry {head!r} is malformed"))
        return
    partition = int(partition_text)
    where = backend.describe(entry_key(topic, partition, seq))
    view = catalog.chains.get((topic, partition))
    entry = None if view is None else view.entries.get(seq)
    if entry is None:
        newest = -1 if view is None else max(view.entries, default=-1)
        report.problems.append(Problem(where, f"the anchor holds entry {seq} of "
                                       f"{topic}[{partition}], the chain ends at entry "
                                       f"{newest} (newest entries cut off)"))
    elif entry.digest != head.get("sha256"):
        report.problems.append(Problem(where, f"entry {seq} of {topic}[{partition}] is not the "
                                       "one the anchor recorded (chain rewritten)"))


def _check_chain(backend: Backend, view: ChainView, key: bytes | None, report: Report) -> None:
    name = f"{view.topic}[{view.partition}]"
    last = max([*view.entries, *view.unreadable], default=-1)
    previous_digest: str | None = None
    previous_last_offset = -1
    unsigned = 0
    for seq in range(last + 1):
        where = backend.describe(entry_key(view.topic, view.partition, seq))
        entry = view.entries.get(seq)
        if entry is None:
            what = view.unreadable.get(seq)
            report.problems.append(Problem(where, f"chain entry {seq} of {name} is "
                                           + (f"unreadable: {what}" if what else
                                              "missing (deleted?)")))
            previous_digest = None
            continue
        report.entries += 1
        body = entry.body
        if (body["topic"], body["partition"], body["seq"]) != (view.topic, view.partition, seq):
            report.problems.append(Problem(where, f"entry says {body['topic']}[{body['partition']}]"
                                           f" seq {body['seq']}: moved from another place"))
        expected_prev = "" if seq == 0 else previous_digest
        if expected_prev is not None and body["prev"] != expected_prev:
            report.problems.append(Problem(where, f"broken link: prev hash {body['prev'][:16]}… "
                                           f"is not the hash of entry {seq - 1} "
                                           "(an entry was altered, removed or reordered)"))
        previous_digest = entry.digest
        sig = body.get("sig")
        if key is None:
            unsigned += sig is None
        elif sig is None:
            report.problems.append(Problem(where, "unsigned entry (a signing key is set)"))
        elif not hmac.compare_digest(str(sig), signature(body, key)):
            report.problems.append(Problem(where, "signature does not match (entry altered, or "
                                           "signed with another key)"))
        if entry.kind == "segment":
            first = body.get("first_offset", -1)
            if first <= previous_last_offset:
                report.problems.append(Problem(where, f"segment {body.get('segment')} starts at "
                                               f"offset {first}, not after {previous_last_offset}"
                                               " (segments out of order)"))
            previous_last_offset = body.get("last_offset", previous_last_offset)
        elif entry.kind == "erasure":
            report.erasures.append(
                f"{body['at']} {name}: {body.get('removed', 0)} events of subject "
                f"{str(body.get('subject', ''))[:16]} erased from "
                f"{len(body.get('segments', ()))} segments ({body.get('reason', '')})")
        elif entry.kind == "prune":
            report.prunes.append(f"{body['at']} {name}: {len(body.get('segments', ()))} "
                                 f"segments pruned ({body.get('reason', '')})")
    if key is None and len(view.entries) > unsigned:
        report.notes.append(f"{name}: entries are signed; set LLMTRAIL_ARCHIVE_SIGNING_KEY to "
                            "check the signatures")


def _check_segments(backend: Backend, catalog: Catalog, from_ms: int | None, to_ms: int | None,
                    report: Report, *, deep: Reader | None) -> None:
    owner_of = {state.sha256: key for key, state in catalog.segments.items() if state.sha256}
    to_hash = []
    for key, state in sorted(catalog.segments.items(), key=lambda item: item[1].sid):
        if not state.in_range(from_ms, to_ms):
            continue
        where = backend.describe(key)
        present = key in catalog.segment_keys
        if state.sha256 is None:
            if present:
                report.problems.append(Problem(where, f"removed by {state.removed_by} but still "
                                               "present: re-run the command that removed it"))
        elif not present:
            report.problems.append(Problem(where, f"missing: the chain holds its manifest "
                                           f"({state.count} events, offsets "
                                           f"{state.sid.first_offset}..{state.last_offset})"))
        else:
            to_hash.append(key)
    for key, data in fetch(backend, to_hash, workers=4):
        state = catalog.segments[key]
        where = backend.describe(key)
        if data is None:
            report.problems.append(Problem(where, "missing (deleted while verifying)"))
            continue
        digest = hashlib.sha256(data).hexdigest()
        report.segments += 1
        if digest == state.sha256:
            report.events += state.count
            if deep is not None:
                _decode_all(deep, state, data, where, report)
            continue
        other = owner_of.get(digest)
        cause = (f"it holds the bytes of segment {other} (segments swapped or copied)"
                 if other is not None else
                 "it still holds its bytes from before an erasure: re-run archive erase"
                 if digest in state.history else None)
        size = f"size {len(data)} bytes, its manifest says {state.size}"
        if cause is not None:  # known bytes: no guess at truncation or insertion
            what = (f"{size}; " if len(data) != state.size
                    else "SHA-256 does not match its manifest; ") + cause
        elif len(data) != state.size:
            what = f"{size} " + ("(truncated)" if len(data) < state.size else "(bytes added)")
        else:
            what = "SHA-256 does not match its manifest (bytes altered)"
        report.problems.append(Problem(where, what))


def _decode_all(reader: Reader, state: SegmentState, data: bytes, where: str,
                report: Report) -> None:
    """Decode (and decrypt) every record: what a hash cannot tell, such as a writer's bug."""
    try:
        count = sum(1 for _ in reader.decoded(state.sid, data))
    except (CorruptSegmentError, ArchiveKeyError) as exc:
        report.problems.append(Problem(where, f"hash matches but the content does not decode: "
                                       f"{exc}"))
        return
    if count != state.count:
        report.problems.append(Problem(where, f"holds {count} events, its manifest says "
                                       f"{state.count}"))


def _check_unchained(backend: Backend, catalog: Catalog, from_ms: int | None,
                     to_ms: int | None, report: Report) -> None:
    newest: dict[tuple[str, int], SegmentId] = {}
    for sid in catalog.unchained():
        key = (sid.topic, sid.partition)
        if key not in newest or sid.first_offset > newest[key].first_offset:
            newest[key] = sid
    for sid in catalog.unchained():
        if not sid.overlaps(from_ms, to_ms):
            continue
        where = backend.describe(sid.relpath)
        head_mark = max((s.last_offset for s in catalog.segments.values()
                         if (s.sid.topic, s.sid.partition) == (sid.topic, sid.partition)),
                        default=-1)
        try:
            scan = BlockScan.of_bytes(backend.get(sid.relpath), where)
            count = sum(b.header.count for b in scan if b.header.kind == KIND_RECORDS)
        except (ObjectMissing, CorruptSegmentError) as exc:
            report.problems.append(Problem(where, f"not in any manifest chain, and unreadable: "
                                           f"{exc}"))
            continue
        if scan.sealed is None and newest[(sid.topic, sid.partition)] == sid and \
                sid.first_offset > head_mark:
            report.open_segments += 1
            report.open_events += count
            continue
        report.problems.append(Problem(where, f"not in any manifest chain ({count} events; "
                                       + ("sealed: inserted, or left by a crash before its "
                                          "manifest was written: a worker's restart or retry "
                                          "chains or replaces it)"
                                          if scan.sealed is not None else
                                          "unsealed but not the partition's open segment)")))
