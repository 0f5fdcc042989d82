"""Stateful detection in the worker: stage one in the detect agent, stage two on Faust tables.

Stage one (:meth:`StatefulStage.route`, called by the detect agent once per
batch) turns each event and its single-event alerts into observations for
the stateful rules, drops suppressed alerts, and takes the alerts covered by
a hygiene policy out of the batch's output. It groups all of that by state
partition (:func:`detectors.stateful.partition_of` of rule and key) and
sends **one record per partition per batch** to the internal topic
``llm.stateful``: so state keyed by user, session or prompt fingerprint
lands on one partition whichever worker saw the event, and the second agent
pays Faust's per-record cost once per batch, not per event.

Stage two (the ``stateful`` agent) folds each record into a changelog-backed
Faust table keyed by state key; the table's changelog partition is the
record's partition, so a partition's state moves with it on a rebalance and
is restored on restart. Each state key is written at most once per record.
After the writes it flushes the producer, then writes a one-record "fence"
to the changelog and flushes again: the state is durable before the record
is acknowledged, and a broker that reports a partition's end offset as the
start of its last batch (the embedded Tansu does) still lets recovery read
every state write (only the fence falls outside).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from detectors import RuleSetError
from detectors.stateful import (
    FindingView,
    Observation,
    PatternAlert,
    StatefulDetector,
    Suppressions,
    findings_of_alert,
    load_stateful_rules,
    load_suppressions,
    partition_of,
)
from detectors.stateful.hygiene import watermark_key
from detectors.stateful.store import expired
from pipeline.process import Decoded, Outgoing, dead_letter, utc_now
from pipeline.settings import Settings
from pipeline.users import UserDirectory

log = logging.getLogger("llmtrail.stateful")

TABLE = "stateful"
FENCE = "\x00fence"
# Expired states are dropped once a partition's event time has moved this far since the last
# sweep, and only when they expired this long before its newest event. The margin is for late
# events: a partition's newest event time comes from whichever worker and event partition is
# furthest ahead, so events of the others can arrive hours behind it (a backlog replayed by
# two workers, a lagging producer); with one hour, a campaign's or a window's state was dropped
# between the records of two workers and the rule never fired.
SWEEP_EVERY = 3600.0
EXPIRY_GRACE = 24 * 3600.0
# How far ahead of this worker's clock an event time may move a partition's watermark.
CLOCK_MARGIN = 300.0
Signature = Callable[[Sequence[Path]], Any]


class TableStore:
    """One partition of a Faust table behind :class:`detectors.stateful.Store`.

    Writes go to the table's store and to the changelog partition named here
    (what Faust's own ``table[key] = value`` does with the partition of the
    event being processed), so a batch of records from several partitions can
    be folded in one pass.
    """

    def __init__(self, table: Any, partition: int) -> None:
        self._table = table
        self._partition = partition

    def get(self, key: str) -> Any:
        return self._table.get(key)

    def set(self, key: str, value: Any) -> None:
        self._table.data[key] = value
        self._table.send_changelog(self._partition, key, value)

    def delete(self, key: str) -> None:
        if key in self._table.data:
            del self._table.data[key]
            self._table.send_changelog(self._partition, key, None, value_serializer="raw")


def stateful_topic(settings: Settings) -> str:
    return settings.topic("llm.stateful")


def load_detector(settings: Settings) -> StatefulDetector:
    """The stateful rules and suppressions the settings name; RuleSetError if they do not load."""
    return StatefulDetector(load_stateful_rules(settings.stateful_rules),
                            suppression_list(settings))


def suppression_list(settings: Settings) -> Suppressions:
    """The suppressions ``LLMTRAIL_SUPPRESSIONS`` names (none without it); RuleSetError if the
    file does not load."""
    if not settings.suppressions_file:
        return Suppressions()
    return Suppressions(load_suppressions(settings.suppressions_file))


def _encode(observations: list[Observation], alerts: list[PatternAlert]) -> bytes:
    """One stage-two record: each event's id, time and meta once, observations by index."""
    index: dict[str, int] = {}
    events: list[list[Any]] = []
    compact: list[list[Any]] = []
    for obs in observations:
        at = index.get(obs.event_id)
        if at is None:
            at = index[obs.event_id] = len(events)
            events.append([obs.event_id, obs.ts, *obs.meta])
        compact.append([obs.rule, obs.key, at, obs.payload])
    return orjson.dumps({"e": events, "o": compact, "a": [list(a) for a in alerts]})


def _decode(raw: bytes) -> tuple[list[Observation], list[PatternAlert]]:
    body = orjson.loads(raw)
    events = [(item[0], item[1], tuple(item[2:])) for item in body["e"]]
    observations = []
    for rule, key, at, payload in body["o"]:
        event_id, ts, meta = events[at]
        observations.append(Observation(rule, key, ts, event_id, payload, meta))
    return observations, [PatternAlert(*item) for item in body["a"]]


class StatefulStage:
    """Both stages and the rule/suppression reloader, registered on one Faust app."""

    def __init__(self, app: Any, settings: Settings, users: UserDirectory,
                 detector: StatefulDetector, signature: Signature) -> None:
        self.app = app
        self.settings = settings
        self.users = users
        self.detector = detector
        self._signature = signature
        self.topic = app.topic(stateful_topic(settings), key_serializer="raw",
                               value_serializer="raw", partitions=settings.partitions,
                               internal=True)
        self.table = app.Table(TABLE, partitions=settings.partitions, default=None)
        self._swept: dict[int, float] = {}
        app.agent(self.topic, name="stateful")(self._stage_two)
        app.task(self._reload)

    # -- stage one ---------------------------------------------------------------------

    async def route(self, decoded: Decoded, out: list[Outgoing]
                    ) -> tuple[list[Outgoing], list[Awaitable[Any]]]:
        """The batch's outgoing records minus suppressed and hygiene-managed alerts, and the
        pending sends of its stage-two records (await them before acknowledging)."""
        settings = self.settings
        detector = self.detector
        findings: dict[str, list[FindingView]] = {}
        held: set[bytes] = set()
        items: list[PatternAlert] = []
        for record in out:
            if record.topic != settings.alerts_topic:
                continue
            alert = orjson.loads(record.value)
            findings.setdefault(alert["event_id"], []).append(findings_of_alert(alert))
            held_back, item = detector.hold(alert)
            if held_back:
                held.add(record.value)
            if item is not None:
                items.append(item)
        kept = [record for record in out if record.value not in held] if held else out
        observations: list[Observation] = []
        for msg, event in decoded.valid:
            try:
                observations += detector.observe(event, findings.get(event["event_id"], ()),
                                                 self.users.get)
            except Exception as exc:  # a stateful bug must not lose the event: dead-letter it
                log.exception("stateful stage one failed on %s[%d]@%d", msg.topic, msg.partition,
                              msg.offset)
                reason = f"internal error in stateful detection: {type(exc).__name__}: {exc}"
                kept.append(Outgoing(settings.deadletter_topic, msg.key,
                                     dead_letter(msg, reason, stage="stateful",
                                                 failed_at=utc_now())))
        return kept, await self._send(detector.compact(observations), items)

    async def _send(self, observations: list[Observation], items: list[PatternAlert]
                    ) -> list[Awaitable[Any]]:
        partitions = self.settings.partitions
        grouped: dict[int, tuple[list[Observation], list[PatternAlert]]] = {}
        for obs in observations:
            grouped.setdefault(partition_of(obs.rule, obs.key, partitions), ([], []))[0].append(obs)
        for item in items:
            grouped.setdefault(partition_of(item.rule, item.key, partitions), ([], []))[1].append(
                item)
        name = self.topic.get_topic_name()
        return [
            await self.app.producer.send(name, None, _encode(*parts), partition, None, None)
            for partition, parts in sorted(grouped.items())
        ]

    # -- stage two ---------------------------------------------------------------------

    async def _stage_two(self, stream: Any) -> AsyncIterator[None]:
        """Fold whatever records are waiting, one pass per partition, then flush and fence once."""
        settings = self.settings
        producer = self.app.producer
        async for events in stream.take_events(settings.batch_size, within=settings.batch_within):
            by_partition: dict[int, list[Any]] = {}
            for event in events:
                by_partition.setdefault(event.message.partition, []).append(event)
            pending = []
            for partition, records in sorted(by_partition.items()):
                try:
                    alerts = self._fold(partition, records)
                except Exception as exc:  # a bug must not stall the partition: dead-letter
                    pending += await self._dead_letter(records, exc)
                    continue
                for alert in alerts:
                    value = orjson.dumps(alert)
                    key = str(alert.get("trace_id") or "").encode()
                    topics = (settings.alerts_topic, settings.severity_topic(alert["severity"]))
                    for topic in topics:
                        pending.append(await producer.send(topic, key, value, None, None, None))
            for partition in by_partition:
                self._sweep(partition)
            await producer.flush()
            for partition, records in by_partition.items():
                TableStore(self.table, partition).set(f"{FENCE}{partition}",
                                                      records[-1].message.offset)
            await producer.flush()
            if pending:
                await asyncio.gather(*pending)
            yield None

    def _fold(self, partition: int, records: list[Any]) -> list[dict[str, Any]]:
        """One partition's records into its state; the alerts to send. State is written
        only at the end (``BatchState.flush``), so a failure leaves it untouched."""
        observations: list[Observation] = []
        items: list[PatternAlert] = []
        for record in records:
            more_observations, more_items = _decode(record.value)
            observations += more_observations
            items += more_items
        return self.detector.apply(observations, items, TableStore(self.table, partition),
                                   scope=str(partition), context=self.users.get,
                                   detected_at=utc_now(), not_after=time.time() + CLOCK_MARGIN)

    def _sweep(self, partition: int) -> int:
        """Drop the partition's expired states (tombstones in the changelog) when its event
        time has moved ``SWEEP_EVERY`` since the last sweep; returns how many."""
        watermark = self.table.get(watermark_key(str(partition)))
        if watermark is None or watermark - self._swept.get(partition, 0.0) < SWEEP_EVERY:
            return 0
        self._swept[partition] = watermark
        store = TableStore(self.table, partition)
        keys = expired(list(self.table.data.items()), str(partition), watermark - EXPIRY_GRACE)
        for key in keys:
            store.delete(key)
        if keys:
            log.info("stateful: dropped %d expired states of partition %d", len(keys), partition)
        return len(keys)

    async def _dead_letter(self, records: list[Any], exc: Exception) -> list[Awaitable[Any]]:
        from pipeline.app import _incoming  # noqa: PLC0415 - pipeline.app imports this module

        first, last = records[0].message, records[-1].message
        log.exception("stateful stage two failed on %s[%d]@%d..%d", first.topic, first.partition,
                      first.offset, last.offset)
        reason = f"internal error in stateful stage two: {type(exc).__name__}: {exc}"
        failed_at = utc_now()
        return [
            await self.app.producer.send(
                self.settings.deadletter_topic, None,
                dead_letter(_incoming(record), reason, stage="stateful", failed_at=failed_at),
                None, None, None)
            for record in records
        ]

    # -- run-time changes ----------------------------------------------------------------

    def _watched(self) -> list[Path]:
        paths = list(self.settings.stateful_rules)
        if self.settings.suppressions_file:
            paths.append(Path(self.settings.suppressions_file))
        return paths

    async def _reload(self) -> None:
        """Re-read stateful rules and suppressions when their files change (bad sets rejected)."""
        interval = self.settings.rules_reload_seconds
        if interval <= 0:
            return
        signature = self._signature(self._watched())
        while True:
            await asyncio.sleep(interval)
            current = self._signature(self._watched())
            if current == signature:
                continue
            signature = current
            try:
                fresh = await asyncio.to_thread(load_detector, self.settings)
            except RuleSetError as exc:
                for error in exc.errors:
                    log.error("stateful reload rejected, keeping the previous set: %s", error)
                continue
            self.detector.swap(fresh.ruleset)
            self.detector.set_suppressions(fresh.suppressions)
            log.warning("stateful rules reloaded: %d rules, %d suppressions",
                        len(fresh.ruleset.rules), len(fresh.suppressions))
