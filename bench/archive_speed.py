"""Archive store throughput: durable appends, then a verified read back.

    .venv/bin/python bench/archive_speed.py [--events 200000] [--batch 500] [--no-fsync]

Appends synthetic ~1 KB events (event v1 JSON with varied prompt text, so compression is
realistic) in batches, as the archive agent does, with fsync on by default; then restarts the
store as after a crash (recovery, and a redelivered batch) and reads everything back with
``iter_archive`` (every block verified).
Event generation is not timed. Figures are for one core on this machine; compare runs side by side.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from pipeline.archive import ArchiveStore, RawRecord, iter_archive, list_segments

WORDS = (
    "the", "invoice", "customer", "account", "please", "summarize", "ignore", "previous",
    "instructions", "export", "table", "refund", "policy", "order", "shipping", "address",
    "model", "tool", "lookup", "result", "error", "retry", "password", "reset", "ticket",
    "escalate", "support", "billing", "contract", "renewal", "quarter", "report", "draft",
    "email", "meeting", "schedule", "translate", "german", "french", "code", "review", "deploy",
)
PARTITIONS = 4


def make_events(n: int, seed: int = 1) -> list[RawRecord]:
    rng = random.Random(seed)
    start_ms = int(time.time() * 1000)
    events = []
    for i in range(n):
        event_id = str(uuid.UUID(int=rng.getrandbits(128)))
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(90, 150)))
        body = {
            "event_id": event_id, "kind": "prompt",
            "ts": f"2026-11-22T14:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}Z",
            "trace_id": f"t-{rng.getrandbits(64):016x}", "service": "support-bot",
            "environment": "prod",
            "user": {"id": f"u-{rng.randint(1, 5000)}", "ip": f"203.0.113.{rng.randint(1, 254)}"},
            "model": {"provider": "openai", "name": "gpt-4o", "version": "2024-08-06"},
            "prompt": {"text": text},
        }
        partition = i % PARTITIONS
        events.append(RawRecord("llm.events", partition, i // PARTITIONS, start_ms + i, None,
                                orjson.dumps(body), event_id))
    return events


def disk_bytes(root: Path) -> int:
    return sum(sid.path(root).stat().st_size for sid in list_segments(root))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp "
                        "dir next to the repo, removed afterwards)")
    args = parser.parse_args()

    events = make_events(args.events)
    raw_bytes = sum(len(e.value) for e in events)
    base = Path(tempfile.mkdtemp(prefix="archive-bench-", dir=args.dir or Path.cwd()))
    root = base / "archive"
    try:
        store = ArchiveStore(root, fsync=not args.no_fsync)
        t0 = time.perf_counter()
        for i in range(0, len(events), args.batch):
            store.append(events[i: i + args.batch])
        t_write = time.perf_counter() - t0
        store._abandon()  # as if SIGKILLed: the open segments stay open

        t0 = time.perf_counter()
        reopened = ArchiveStore(root)
        t_recover = time.perf_counter() - t0
        t0 = time.perf_counter()
        redelivered = reopened.append(events[-args.batch:])  # a redelivered batch: all skipped
        t_redeliver = time.perf_counter() - t0
        reopened.close()
        on_disk = disk_bytes(root)

        t0 = time.perf_counter()
        count = 0
        read_bytes = 0
        for record in iter_archive(root):
            count += 1
            read_bytes += len(record.value)
        t_read = time.perf_counter() - t0
        if count != len(events) or read_bytes != raw_bytes or redelivered.written:
            raise SystemExit(f"mismatch: read {count} events / {read_bytes} bytes, "
                             f"redelivery wrote {redelivered.written}")

        mb = 1e6
        print(f"events            {len(events):,} x ~{raw_bytes / len(events):,.0f} B in "
              f"batches of {args.batch}, {PARTITIONS} partitions, fsync "
              f"{'off' if args.no_fsync else 'on'}")
        print(f"append            {len(events) / t_write:,.0f} events/s   "
              f"{raw_bytes / mb / t_write:,.1f} MB/s of events   "
              f"{on_disk / mb / t_write:,.1f} MB/s to disk   "
              f"({t_write / (len(events) / args.batch) * 1000:.2f} ms per batch)")
        print(f"compression       {raw_bytes / on_disk:.2f}x   "
              f"({raw_bytes / mb:,.1f} MB of events -> {on_disk / mb:,.1f} MB in "
              f"{len(list_segments(root))} segments)")
        print(f"restart (crash)   {t_recover * 1000:.1f} ms recovery, then "
              f"{t_redeliver * 1000:.1f} ms for the first (redelivered) batch, which reads the "
              f"open segments in full")
        print(f"iter_archive      {count / t_read:,.0f} events/s   "
              f"{read_bytes / mb / t_read:,.1f} MB/s of events (verified)")
    finally:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
