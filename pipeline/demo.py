"""``llmtrail demo``: the whole pipeline on a laptop, with a realistic stream.

Starts the embedded broker and a worker, loads demo users, publishes a
synthetic stream of LLM events (about 8 % carrying a threat, plus a few
malformed records) at a limited rate, prints alerts as they arrive, and ends
with a summary: alerts by rule, dead letters, archived events, and the
publish-to-alert latency it observed.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from collections import Counter
from typing import Any

import orjson

from pipeline.archive import open_reader
from pipeline.kafka import make_producer, make_reader
from pipeline.settings import Settings
from pipeline.stack import Stack
from pipeline.synth import demo_users, generate_events, malformed_lines

MALFORMED_EVERY = 500
QUIET_SECONDS = 3.0
_COLOURS = {"critical": "\033[1;31m", "high": "\033[31m", "medium": "\033[33m",
            "low": "\033[36m", "info": "\033[2m"}


def format_alert(alert: dict[str, Any], colour: bool) -> str:
    user = alert.get("user") or {}
    who = user.get("id") or "-"
    if user.get("role"):
        who += f" ({user.get('role')}/{user.get('department')})"
    elif user.get("known") is False:
        who += " (unknown user)"
    evidence = alert.get("evidence") or []
    excerpt = evidence[0].get("excerpt", "") if evidence else ""
    severity = str(alert.get("severity", "?"))
    label = f"{severity.upper():<8}"
    if colour:
        label = f"{_COLOURS.get(severity, '')}{label}\033[0m"
    return (f"{label} {alert.get('rule_id')}  [{alert.get('category')}]  user={who}  "
            f"service={alert.get('service')}  {alert.get('field')}: {excerpt!r}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _publish(settings: Settings, events: int, rate: float, seed: int,
                   sent_at: dict[str, float]) -> tuple[int, int]:
    producer = make_producer(settings)
    await producer.start()
    bad = malformed_lines(seed)
    published = malformed = 0
    started = time.monotonic()
    try:
        for index, event in enumerate(itertools.islice(generate_events(seed), events)):
            due = started + index / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at[event["event_id"]] = time.monotonic()
            await producer.send(settings.events_topic, orjson.dumps(event),
                                key=event["trace_id"].encode())
            published += 1
            if index % MALFORMED_EVERY == MALFORMED_EVERY - 1:
                await producer.send(settings.events_topic, next(bad))
                malformed += 1
        await producer.flush()
    finally:
        await producer.stop()
    return published, malformed


async def _stream(settings: Settings, events: int, rate: float, seed: int) -> dict[str, Any]:
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    by_rule: Counter[str] = Counter()
    colour = sys.stdout.isatty()
    reader = make_reader(settings, settings.alerts_topic, settings.deadletter_topic)
    await reader.start()
    publisher = asyncio.create_task(_publish(settings, events, rate, seed, sent_at))
    dead = 0
    last = time.monotonic()
    try:
        while not publisher.done() or time.monotonic() - last < QUIET_SECONDS:
            batches = await reader.getmany(timeout_ms=200)
            now = time.monotonic()
            for tp, records in batches.items():
                for record in records:
                    last = now
                    if tp.topic == settings.deadletter_topic:
                        dead += 1
                        reason = orjson.loads(record.value)["reason"]
                        print(f"DEADLETTER offset {record.offset}: {reason[:100]}", flush=True)
                        continue
                    alert = orjson.loads(record.value)
                    by_rule[alert["rule_id"]] += 1
                    if alert.get("event_id") in sent_at:
                        latencies.append(now - sent_at[alert["event_id"]])
                    print(format_alert(alert, colour), flush=True)
        published, malformed = await publisher
    finally:
        await reader.stop()
    return {"published": published, "malformed": malformed, "dead": dead,
            "by_rule": by_rule, "latencies": latencies}


def run_demo(settings: Settings, *, rate: float, events: int, seed: int,
             broker_port: int | None) -> int:
    users = demo_users()
    with Stack(settings, broker_port=broker_port, with_ingest=False, users=users) as stack:
        print(f"ready: streaming {events} events at {rate:.0f}/s (seed {seed}); alerts follow. "
              "Ctrl-C stops.", flush=True)
        result = asyncio.run(_stream(stack.settings, events, rate, seed))
        run_settings = stack.settings
    archived = sum(1 for _ in open_reader(run_settings).iter())
    lat = result["latencies"]
    print("\nsummary")
    print(f"  events published: {result['published']} (+{result['malformed']} malformed)")
    print(f"  alerts: {sum(result['by_rule'].values())}")
    for rule_id, count in result["by_rule"].most_common(15):
        print(f"    {count:5d}  {rule_id}")
    print(f"  dead letters: {result['dead']}")
    print(f"  archived raw events: {archived} in {run_settings.archive_location}")
    if lat:
        print(f"  publish-to-alert latency: p50 {percentile(lat, 0.5) * 1000:.0f} ms, "
              f"p99 {percentile(lat, 0.99) * 1000:.0f} ms")
    return 0
