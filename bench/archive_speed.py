"""Archive throughput and trace-lookup time over a large archive.

    .venv/bin/python bench/archive_speed.py [--events 1000000] [--batch 1000] [--encrypt]
        [--backend local|s3] [--no-fsync] [--lookups 5] [--no-query]

Writes ``--events`` realistic Event v1 records (``pipeline.synth``: traces of prompt, tool calls
and response, ~1.2 KB each, keyed by trace id over 4 partitions) through the writer the workers
use, batch by batch as the archive agent does (fsync on by default), and reports:

* append throughput: events/s, MB/s of events, MB/s written, and the ratio against a baseline
  measured in the same run on the same batches: appending the raw bytes to one file with an fsync
  per batch (no compression, no format, no manifest);
* compression: event bytes / stored segment bytes;
* ``archive verify`` time (every segment hashed, the chains walked);
* trace lookup: ``archive cat --trace`` (manifest trace filters, then only the segments that may
  hold the trace) for a few traces; and ``archive query`` on DuckDB: the time to load every event
  and the time of ``SELECT … WHERE trace_id = …``.

Generating the events is not timed. Progress goes to stderr. The S3 backend runs against a moto
server in this process (loopback), so its figures are an upper bound on the client side only.
"""

from __future__ import annotations

import argparse
import base64
import calendar
import itertools
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import orjson

from pipeline.archive import RawRecord, open_reader, open_store
from pipeline.archive.config import open_backend, open_chain
from pipeline.archive.layout import parse_segment_key
from pipeline.archive.verify import verify
from pipeline.cli_archive import _trace_records
from pipeline.settings import Secret, Settings
from pipeline.synth import generate_events

PARTITIONS = 4
MB = 1e6


def batches(total: int, size: int, traces: list[str], rng: random.Random
            ) -> Iterator[list[RawRecord]]:
    """Kafka-like records of synthetic events; fills ``traces`` with a sample of trace ids."""
    offsets = [0] * PARTITIONS
    batch: list[RawRecord] = []
    for index, event in enumerate(itertools.islice(generate_events(11), total)):
        trace = str(event["trace_id"])
        partition = zlib.crc32(trace.encode()) % PARTITIONS
        value = orjson.dumps(event)
        ts = calendar.timegm(time.strptime(str(event["ts"])[:19], "%Y-%m-%dT%H:%M:%S")) * 1000
        batch.append(RawRecord("llm.events", partition, offsets[partition], ts, trace.encode(),
                               value, str(event["event_id"])))
        offsets[partition] += 1
        if rng.random() < 50 / total:
            traces.append(trace)
        if len(batch) == size or index == total - 1:
            yield batch
            batch = []


def stored_bytes(settings: Settings) -> int:
    backend = open_backend(settings)
    return sum(len(backend.get(k)) for k in backend.list("llm.events/")
               if parse_segment_key(k) is not None)


def s3_settings(settings: Settings) -> tuple[Settings, object]:
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="b",
                 aws_secret_access_key="b").create_bucket(Bucket="llmtrail-bench")
    return settings.replace(
        archive_backend="s3", archive_s3_bucket="llmtrail-bench", archive_s3_endpoint=endpoint,
        archive_s3_access_key_id=Secret("b"), archive_s3_secret_access_key=Secret("b")), server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--backend", choices=("local", "s3"), default="local")
    parser.add_argument("--encrypt", action="store_true", help="AES-256-GCM at rest")
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--lookups", type=int, default=5, help="traces to look up")
    parser.add_argument("--no-query", action="store_true", help="skip the DuckDB load")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp "
                        "dir next to the repo, removed afterwards)")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="archive-bench-", dir=args.dir or Path.cwd()))
    settings = Settings.from_env({}, data_dir=base, archive_fsync=not args.no_fsync)
    server = None
    if args.encrypt:
        settings = settings.replace(archive_key=Secret(base64.b64encode(os.urandom(32)).decode()))
    if args.backend == "s3":
        settings, server = s3_settings(settings)
    baseline_path = base / "baseline.raw"
    traces: list[str] = []
    try:
        store = open_store(settings)
        t_store = t_base = 0.0
        written = raw_bytes = 0
        last_report = time.perf_counter()
        with baseline_path.open("ab") as baseline:
            for batch in batches(args.events, args.batch, traces, random.Random(5)):
                t0 = time.perf_counter()
                store.append(batch)
                t1 = time.perf_counter()
                baseline.write(b"".join(r.value + b"\n" for r in batch))
                baseline.flush()
                if not args.no_fsync:
                    os.fsync(baseline.fileno())
                t_base += time.perf_counter() - t1
                t_store += t1 - t0
                written += len(batch)
                raw_bytes += sum(len(r.value) for r in batch)
                if time.perf_counter() - last_report > 5:
                    last_report = time.perf_counter()
                    print(f"  {written:,} events archived, {written / t_store:,.0f} events/s",
                          file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        store.close()
        t_store += time.perf_counter() - t0
        on_disk = stored_bytes(settings)
        backend = open_backend(settings)

        t0 = time.perf_counter()
        report = verify(backend, signing_key=None)
        t_verify = time.perf_counter() - t0
        if not report.ok or report.events != written:
            raise SystemExit(f"verify failed: {report.problems[:3]}, {report.events} events")

        reader = open_reader(settings)
        chain = open_chain(settings, backend)
        lookups: list[float] = []
        found = []
        for trace in traces[: args.lookups]:
            t0 = time.perf_counter()
            found.append(len(_trace_records(reader, chain, trace, topic=None, from_ms=None,
                                            to_ms=None)))
            lookups.append(time.perf_counter() - t0)

        print(f"events            {written:,} x ~{raw_bytes / written:,.0f} B in batches of "
              f"{args.batch}, {PARTITIONS} partitions, backend {args.backend}, fsync "
              f"{'off' if args.no_fsync else 'on'}, encryption {'on' if args.encrypt else 'off'}")
        print(f"append            {written / t_store:,.0f} events/s   "
              f"{raw_bytes / MB / t_store:,.1f} MB/s of events   "
              f"{on_disk / MB / t_store:,.1f} MB/s written   "
              f"({t_store / (written / args.batch) * 1000:.2f} ms per batch)")
        print(f"baseline          {written / t_base:,.0f} events/s (raw bytes appended to one "
              f"file, fsync per batch); archive/baseline = {t_base / t_store:.2f}")
        print(f"compression       {raw_bytes / on_disk:.2f}x   ({raw_bytes / MB:,.1f} MB of "
              f"events -> {on_disk / MB:,.1f} MB of segments)")
        print(f"verify            {t_verify:.2f} s for {report.segments} segments, "
              f"{report.entries} chain entries ({on_disk / MB / t_verify:,.0f} MB/s hashed)")
        print(f"cat --trace       median {statistics.median(lookups) * 1000:,.1f} ms, max "
              f"{max(lookups) * 1000:,.1f} ms over {len(lookups)} traces "
              f"({', '.join(map(str, found))} events each)")
        if not args.no_query:
            run_query(reader, traces[0])
    finally:
        shutil.rmtree(base)
        if server is not None:
            server.stop()  # type: ignore[attr-defined]


def run_query(reader: object, trace: str) -> None:
    import duckdb

    from pipeline.archive.query import load_events

    con = duckdb.connect()
    t0 = time.perf_counter()
    rows, _ = load_events(con, reader.iter())  # type: ignore[attr-defined]
    t_load = time.perf_counter() - t0
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        hits = con.execute("SELECT kind, ts FROM events WHERE trace_id = ? ORDER BY ts",
                           [trace]).fetchall()
        times.append(time.perf_counter() - t0)
    print(f"archive query     load {rows:,} events into DuckDB {t_load:.1f} s "
          f"({rows / t_load:,.0f} events/s), then WHERE trace_id = …: "
          f"{min(times) * 1000:.1f} ms ({len(hits)} rows)")


if __name__ == "__main__":
    main()
