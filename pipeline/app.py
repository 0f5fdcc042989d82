"""The Faust application: one thin agent over the raw topic, built by a factory.

``build_app`` creates a fresh app per call (no app object is created at import
time). The agent takes a batch of raw records, decodes it once, and runs two
independent stages on it:

* archive: the valid events' raw bytes go to the archive store first, so no
  detector error or slow rule can lose or hold back evidence: a local store
  is written (and fsynced) before detection starts, an S3 upload runs in a
  thread beside it. An archive that keeps failing stops the worker before
  any commit.
* detect: :func:`pipeline.process.detect_batch` (enrich, scan, route alerts,
  dead-letter bad input), whose sends are awaited.

Faust acknowledges the batch only after both finished: the archive append
returned (flushed and fsynced) and the broker acknowledged every alert and
dead letter. One agent rather than two on the same topic, because every extra
agent pays Faust's whole per-event cost again (measured in bench/: with a
no-op engine, two agents kept 0.51 of pass-through throughput).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import faust
from mode.utils.objects import cached_property

from detectors import Engine, RuleSetError, load_rules
from detectors.stateful import StatefulDetector
from pipeline.archive import ArchiveStore, ArchiveWriter, RawRecord, open_store
from pipeline.detection import build_engine
from pipeline.kafka import ensure_topics
from pipeline.process import Decoded, Incoming, decode_batch, detect_batch
from pipeline.settings import Settings, SettingsError
from pipeline.stateful import StatefulStage, load_detector
from pipeline.transport import KeepQueuesFlowControl, tuned_transport
from pipeline.users import UserDirectory, follow_users

log = logging.getLogger("llmtrail.worker")

ASSIGNED_LINE = "llmtrail worker assigned"
READY_LINE = "llmtrail worker ready"
ARCHIVE_RETRIES = 5
# Exit status of a worker that stopped because the archive could not be written.
EXIT_ARCHIVE_FAILED = 75
# Collector thresholds of a running worker (see tune_gc).
GC_THRESHOLDS = (50_000, 20, 10)


class LlmtrailApp(faust.App):
    """faust.App with our tuned transport and flow control (see pipeline.transport)."""

    def __init__(self, settings: Settings, **options: Any) -> None:
        self.llmtrail = settings
        super().__init__(settings.app_id, **options)

    @cached_property
    def flow_control(self) -> KeepQueuesFlowControl:
        return KeepQueuesFlowControl(loop=self.loop)

    def _new_transport(self) -> Any:
        transport_class = tuned_transport(self.llmtrail.fetch_max_wait_ms)
        return transport_class(self.conf.broker_consumer, self)


class RawSchema(faust.Schema[bytes | None, bytes | None]):
    """Keys and values as the bytes Kafka delivered, as the "raw" serializer gives them, without
    its codec lookups for every message (about 2 % of a worker's time)."""

    def __init__(self) -> None:
        super().__init__(key_serializer="raw", value_serializer="raw")

    def loads_key(self, app: Any, message: Any, *, loads: Any = None,
                  serializer: Any = None) -> Any:
        return message.key

    def loads_value(self, app: Any, message: Any, *, loads: Any = None,
                    serializer: Any = None) -> Any:
        return message.value


def faust_options(settings: Settings) -> dict[str, Any]:
    return {
        "broker": settings.broker,
        "store": "memory://",
        "autodiscover": False,
        "topic_partitions": settings.partitions,
        "topic_replication_factor": 1,
        "topic_disable_leader": True,
        "broker_session_timeout": settings.session_timeout,
        "broker_rebalance_timeout": settings.rebalance_timeout,
        "broker_heartbeat_interval": settings.heartbeat_interval,
        "broker_commit_interval": settings.commit_interval,
        "producer_linger_ms": settings.producer_linger_ms,
        "producer_max_batch_size": settings.producer_batch_bytes,
        "producer_max_request_size": max(settings.max_event_bytes, settings.http_max_body_bytes)
        + 65536,
        "consumer_max_fetch_size": settings.max_event_bytes + 65536,
        "consumer_auto_offset_reset": "earliest",
        "stream_buffer_maxsize": settings.batch_size * 2,
        "web_enabled": False,
        "worker_redirect_stdouts": False,
    }


def _incoming(event: Any) -> Incoming:
    message = event.message
    return Incoming(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=int((message.timestamp or 0) * 1000),
        key=message.key,
        value=message.value if message.value is not None else b"",
    )


def archivable(decoded: Decoded) -> list[RawRecord]:
    """The valid events of a batch as archive records, their bytes untouched.

    Invalid records are not archived: the detect stage dead-letters them with
    their original bytes and the reason.
    """
    return [
        RawRecord(topic=msg.topic, partition=msg.partition, offset=msg.offset,
                  timestamp_ms=msg.timestamp_ms, key=msg.key, value=msg.value,
                  event_id=event["event_id"])
        for msg, event in decoded.valid
    ]


def rules_signature(paths: Sequence[Path]) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and mtimes of every rule file: changes when a rule file does."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += [p for p in path.rglob("*") if p.suffix in {".yaml", ".yml"}]
        elif path.exists():
            files.append(path)
    signature = []
    for file in sorted(files):
        stat = file.stat()
        signature.append((str(file), stat.st_size, stat.st_mtime_ns))
    return tuple(signature)


async def _archive_with_retries(store: ArchiveWriter, records: list[RawRecord], *,
                                in_thread: bool) -> None:
    delay = 0.5
    for attempt in range(1, ARCHIVE_RETRIES + 1):
        try:
            if in_thread:
                await asyncio.to_thread(store.append, records)
            else:
                store.append(records)
            return
        except Exception as exc:  # any failure: retry, then stop hard; never ack-and-skip
            first, last = records[0], records[-1]
            log.error("archive write failed (attempt %d/%d) for %s[%d]@%d..%d: %s: %s",
                      attempt, ARCHIVE_RETRIES, first.topic, first.partition, first.offset,
                      last.offset, type(exc).__name__, exc)
            if attempt == ARCHIVE_RETRIES:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 8.0)
    # Never acknowledge what was not archived: stop now, before Faust can commit this batch.
    log.critical("archive unavailable; stopping the worker without committing")
    logging.shutdown()
    os._exit(EXIT_ARCHIVE_FAILED)


def build_app(settings: Settings, engine: Engine,
              stateful: StatefulDetector | None = None) -> LlmtrailApp:
    """A Faust app with the archive and detect agents and the rule and user followers."""
    app = LlmtrailApp(settings, **faust_options(settings))
    events = app.topic(settings.events_topic, schema=RawSchema(), partitions=settings.partitions)
    users = UserDirectory()
    users_ready = asyncio.Event()
    store = open_store(settings)
    # A local append is mostly CPU (~10 us an event, fsync well under a millisecond): in a
    # thread it waited for the GIL behind every detection step and took ~9x as long, holding
    # each batch's acknowledgement. Uploads to S3 wait on the network: those stay in a thread.
    local = isinstance(store, ArchiveStore)
    stage = StatefulStage(app, settings, users, stateful, rules_signature) if stateful else None

    @app.agent(events, name="pipeline")
    async def pipeline(stream: Any) -> AsyncIterator[None]:
        await _wait(users_ready, 10.0)
        async for batch in stream.take_events(settings.batch_size, within=settings.batch_within):
            decoded = decode_batch([_incoming(e) for e in batch], settings.max_event_bytes)
            records = archivable(decoded)
            archived = None
            if records and local:  # durable before detection starts
                await _archive_with_retries(store, records, in_thread=False)
            elif records:
                archived = asyncio.create_task(_archive_with_retries(store, records,
                                                                     in_thread=True))
            result = detect_batch(decoded, engine=engine, users=users, settings=settings)
            out, routed = (result.out, []) if stage is None else await stage.route(decoded,
                                                                                  result.out)
            pending = routed + [await app.producer.send(o.topic, o.key, o.value, None, None, None)
                                for o in out]
            if archived is not None:
                await archived
            if pending:
                await asyncio.gather(*pending)
            yield None

    async def follow() -> None:
        await follow_users(settings, users, users_ready)

    async def reload_rules() -> None:
        if settings.rules_reload_seconds <= 0:
            return
        signature = rules_signature(settings.rules)
        while True:
            await asyncio.sleep(settings.rules_reload_seconds)
            current = rules_signature(settings.rules)
            if current == signature:
                continue
            signature = current
            try:
                ruleset = await asyncio.to_thread(load_rules, settings.rules)
            except RuleSetError as exc:
                for error in exc.errors:
                    log.error("rule reload rejected, keeping the previous rules: %s", error)
                continue
            try:  # compiling must not stall the loop
                await asyncio.to_thread(engine.swap, ruleset)
            except ValueError as exc:
                log.error("rule reload rejected, keeping the previous rules: %s", exc)
                continue
            log.warning("rules reloaded: %d rules", len(ruleset.rules))

    first_assignment = asyncio.Event()

    async def announce_ready() -> None:
        # A task of its own: waiting for user context inside the rebalance callback held every
        # rebalance of a starting worker (and a SIGTERM during it) for up to 10 s.
        await first_assignment.wait()
        await _wait(users_ready, 10.0)
        print(f"{READY_LINE}: {len(users)} users, {len(engine.ruleset.rules)} rules", flush=True)

    app.task(follow)
    app.task(reload_rules)
    app.task(announce_ready)

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        assigned = args[0] if args else kwargs.get("assigned", ())
        mine = sorted(tp.partition for tp in assigned if tp.topic == settings.events_topic)
        # One line per rebalance: which event partitions this worker now owns.
        print(f"{ASSIGNED_LINE}: {settings.events_topic} {mine}", flush=True)
        first_assignment.set()

    @app.on_before_shutdown.connect
    def close_archive(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        store.close()

    return app


async def _wait(event: asyncio.Event, timeout: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        log.warning("user context not loaded after %.0fs; continuing", timeout)


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the objects a worker builds once, and run it less.

    A started worker holds a large, long-lived heap (rules, automata, the classifier, Faust's
    services) that every older-generation collection walked again, and each batch allocates
    enough containers to set collections off all the time: with the defaults 33-36 us of
    every event went to the collector (gc.callbacks over 20,000 events of the bench, 7-8 full
    collections). Frozen, the start-up heap is never walked; young cycles are still
    collected, once the live objects grew by ``GC_THRESHOLDS[0]``.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class Worker(faust.Worker):
    """faust.Worker without the terminal spinner, with the root logger at the requested level,
    and the garbage collector tuned (:func:`tune_gc`) once the app is built.

    Faust leaves the root logger at DEBUG whatever the level asked for, and its
    spinner handler listens at DEBUG: both cost CPU for records nobody sees.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spinner = None
        tune_gc()

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        logger.setLevel(level)


def run_worker(settings: Settings) -> None:
    """Run one worker in the foreground until SIGINT/SIGTERM."""
    try:
        ruleset = load_rules(settings.rules)
        stateful = load_detector(settings) if settings.stateful else None
    except RuleSetError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        raise SystemExit(2) from None
    try:
        engine = build_engine(ruleset, settings)
    except SettingsError as exc:
        print(f"llmtrail: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    # Create the topics with our partition count before Faust or a client auto-creates them.
    asyncio.run(ensure_topics(settings))
    app = build_app(settings, engine, stateful)
    worker = Worker(app, loglevel=settings.log_level.upper(), quiet=True,
                    redirect_stdouts=False)
    worker.execute_from_commandline()
