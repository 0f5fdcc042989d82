"""``archive query``: SQL over the archive with DuckDB.

The events of the selected time range are read (verified, decrypted), handed to an in-memory
DuckDB as Arrow chunks, and parsed there into the table ``events``: one row per archived event,
the Event v1 fields as columns (``user``, ``model``, ``prompt``, ``response``, ``tool``, ``usage``
as structs: ``"user".id``, ``tool.name``), ``ts`` as a TIMESTAMPTZ, plus where each event is
stored (``topic``, ``partition``, ``"offset"``, ``kafka_ts``) and ``raw``, the event JSON. Nothing
decrypted is written to disk (DuckDB's spilling is off, see :func:`connect`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from pipeline.archive.records import ArchivedRecord

CHUNK = 50_000
EVENT_V1 = (
    '{"event_id": "VARCHAR", "kind": "VARCHAR", "ts": "TIMESTAMPTZ", "trace_id": "VARCHAR", '
    '"session_id": "VARCHAR", "request_id": "VARCHAR", "parent_id": "VARCHAR", '
    '"service": "VARCHAR", "environment": "VARCHAR", '
    '"user": {"id": "VARCHAR", "ip": "VARCHAR", "geo": "VARCHAR", "device": "VARCHAR"}, '
    '"model": {"provider": "VARCHAR", "name": "VARCHAR", "version": "VARCHAR"}, '
    '"system_prompt": {"version": "VARCHAR", "sha256": "VARCHAR", "text": "VARCHAR"}, '
    '"prompt": {"text": "VARCHAR", "messages": "JSON"}, '
    '"response": {"text": "VARCHAR", "finish_reason": "VARCHAR", "refusal": "BOOLEAN", '
    '"reasoning": "VARCHAR", "filter_flags": ["VARCHAR"]}, '
    '"tool": {"name": "VARCHAR", "endpoint": "VARCHAR", "arguments": "JSON", "result": "JSON", '
    '"status": "VARCHAR", "authenticated": "BOOLEAN", "error": "VARCHAR"}, '
    '"usage": {"prompt_tokens": "BIGINT", "completion_tokens": "BIGINT", "cost_usd": "DOUBLE"}, '
    '"latency_ms": "DOUBLE", "tags": "JSON"}'
)
EVENT_COLUMNS = ("event_id", "kind", "ts", "trace_id", "session_id", "request_id", "parent_id",
                 "service", "environment", "user", "model", "system_prompt", "prompt",
                 "response", "tool", "usage", "latency_ms", "tags")


def _chunks(records: Iterable[ArchivedRecord], transform: Callable[[bytes], bytes] | None,
            seen: list[int]) -> Iterator[pa.Table]:
    columns: tuple[list[str], list[int], list[int], list[int], list[bytes]] = (
        [], [], [], [], [])
    topics, partitions, offsets, stamps, values = columns
    for record in records:
        seen[0] += 1
        value = record.value if transform is None else transform(record.value)
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            continue
        topics.append(record.topic)
        partitions.append(record.partition)
        offsets.append(record.offset)
        stamps.append(record.timestamp_ms)
        values.append(value)
        if len(values) >= CHUNK:
            yield _table(*columns)
            for column in columns:
                column.clear()
    if values:
        yield _table(*columns)


def _table(topics: list[str], partitions: list[int], offsets: list[int], stamps: list[int],
           values: list[bytes]) -> pa.Table:
    ends = np.cumsum(np.fromiter(map(len, values), dtype=np.int64, count=len(values)))
    starts = np.concatenate((np.zeros(1, dtype=np.int64), ends))
    raw = pa.LargeStringArray.from_buffers(len(values), pa.py_buffer(starts.tobytes()),
                                           pa.py_buffer(b"".join(values)))
    return pa.table({
        "topic": pa.array(topics, pa.string()),
        "partition": pa.array(partitions, pa.int32()),
        "offset": pa.array(offsets, pa.int64()),
        "kafka_ts_ms": pa.array(stamps, pa.int64()),
        "raw": raw,
    })


def connect() -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that never spills to disk: DuckDB's default for an in-memory database
    is a ``.tmp`` directory in the working directory, where a query larger than memory would
    write decrypted events. Without one, such a query fails with an out-of-memory error."""
    return duckdb.connect(config={"temp_directory": ""})


def load_events(con: duckdb.DuckDBPyConnection, records: Iterable[ArchivedRecord], *,
                transform: Callable[[bytes], bytes] | None = None) -> tuple[int, int]:
    """Create the table ``events`` from ``records``; returns (rows, records skipped because
    their value is not a JSON object)."""
    projection = ", ".join(f'e."{name}" AS "{name}"' for name in EVENT_COLUMNS)
    con.execute(
        f"CREATE TABLE events AS SELECT {projection}, '' AS topic, 0 AS \"partition\", "  # noqa: S608 - fixed column list
        "0::BIGINT AS \"offset\", now() AS kafka_ts, ''::VARCHAR AS raw "
        f"FROM (SELECT from_json('{{}}', '{EVENT_V1}') AS e) WHERE false")
    seen = [0]
    for chunk in _chunks(records, transform, seen):
        con.register("chunk", chunk)
        con.execute(
            f"INSERT INTO events SELECT {projection}, topic, \"partition\", \"offset\", "  # noqa: S608
            "make_timestamptz(kafka_ts_ms * 1000), raw FROM (SELECT *, "
            f"from_json(raw, '{EVENT_V1}') AS e FROM chunk WHERE json_valid(raw) "
            "AND json_type(raw) = 'OBJECT')")
        con.unregister("chunk")
    row = con.execute("SELECT count(*) FROM events").fetchone()
    rows = int(row[0]) if row else 0
    return rows, seen[0] - rows


def run_query(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of ``sql``."""
    result = con.execute(sql)
    names = [d[0] for d in result.description or ()]
    return names, result.fetchall()
