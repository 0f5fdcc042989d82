"""Throughput of a worker with every stateful detector on, against the pass-through agent.

Side by side in one run, on one embedded broker (functions reused from
bench/pipeline_speed.py):

1. pass-through: a Faust agent that forwards every raw event (the baseline);
2. full pipeline with stateful detection off (LLMTRAIL_STATEFUL=false);
3. full pipeline with every shipped stateful rule (rules/stateful/) on.

Each is fed the same N synthetic events as fast as the producer goes. The
figure is N divided by the time from the first send until the last event is
done: forwarded (1); archived and each partition's closing injection alerted
(2, 3); and for (3) also every state partition's closing threshold alert
raised by stage two (five injections per sentinel user, one user per pair of
event partition and state partition), so stage two's work is inside the
measured time.

Wall-clock throughput on a shared machine is noisy, so for (2) and (3) the
script also prints the worker process's own CPU time per event (user +
system, from /proc, counted from its ready line to the end of the run):
the difference is what stateful detection costs the worker, whatever else
the machine is doing.

    python bench/stateful_speed.py [--events 20000] [--seed 11] [--repeat 1]

With ``--repeat N`` each of the three runs N times, interleaved, and the
best figure of each counts (the machines are shared: the best run is the one
least disturbed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pipeline_speed as base_bench

from detectors.stateful import partition_of
from detectors.stateful.times import format_time
from pipeline.broker import EmbeddedBroker
from pipeline.kafka import ensure_topics
from pipeline.settings import Settings
from pipeline.stack import start_worker

BURST_RULE = "st-injection-burst"
BURST = 5


def burst_sentinels(settings: Settings) -> tuple[list[tuple[int, bytes]], set[str]]:
    """Five injections per (event partition, state partition) pair; ids of the fifth events."""
    n = settings.partitions
    now = time.time()
    events: list[tuple[int, bytes]] = []
    closing: set[str] = set()
    for source in range(n):
        for target in range(n):
            user = next(f"bench-{source}-{target}-{i}" for i in range(10_000)
                        if partition_of(BURST_RULE, f"bench-{source}-{target}-{i}", n) == target)
            for step in range(BURST):
                event_id = f"burst-{user}-{step}-{uuid.uuid4().hex[:8]}"
                events.append((source, orjson.dumps({
                    "event_id": event_id, "kind": "prompt", "ts": format_time(now + step),
                    "trace_id": f"burst-{user}", "user": {"id": user},
                    "prompt": {"text": base_bench.INJECTION}})))
            closing.add(event_id)
    return events, closing


def run_full(base: Settings, items: list[tuple[bytes, bytes]], *,
             stateful: bool) -> tuple[float, float]:
    """Events/s and the worker's CPU microseconds per event."""
    settings = base_bench.fresh(base.replace(stateful=stateful))
    asyncio.run(ensure_topics(settings))
    worker = start_worker(settings)
    try:
        cpu_at_start = base_bench.cpu_seconds(worker.pid)
        sentinels = [base_bench.sentinel(settings, p) for p in range(settings.partitions)]
        wanted = {orjson.loads(v)["event_id"] for _, v in sentinels}
        if stateful:
            bursts, closing = burst_sentinels(settings)
            sentinels += bursts
            wanted |= closing
        expected = len(items) + len(sentinels)

        async def measure() -> float:
            deadline = time.monotonic() + 600
            waiter = base_bench._count_until(settings, settings.alerts_topic,
                                             lambda s: wanted <= s["ids"], deadline)
            task = asyncio.create_task(waiter)
            await asyncio.sleep(1.0)  # the reader joins before the clock starts
            started = await base_bench._feed(settings, items, sentinels)
            finished = max(await task, base_bench.wait_archive(settings, expected, deadline))
            return expected / (finished - started)

        rate = asyncio.run(measure())
        return rate, (base_bench.cpu_seconds(worker.pid) - cpu_at_start) / (len(items) + 1) * 1e6
    finally:
        worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--repeat", type=int, default=1, help="best of N interleaved runs")
    args = parser.parse_args()
    items = base_bench.payloads(args.events, args.seed)
    size = sum(len(v) for _, v in items) / len(items)
    with EmbeddedBroker() as broker:
        base = Settings.from_env(broker=broker.url, partitions=2,
                                 data_dir=Path(os.environ.get("TMPDIR", "/tmp"))
                                 / "llmtrail-bench" / uuid.uuid4().hex[:8])
        print(f"{len(items)} events, mean {size:.0f} B, 1 worker, 2 partitions, embedded broker"
              f", best of {args.repeat}")
        runs: dict[str, list[float]] = {"passthrough": [], "off": [], "on": []}
        cpu: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(args.repeat):
            runs["passthrough"].append(base_bench.run_throughput(base, "passthrough", items)[0])
            for mode in ("off", "on"):
                rate, per_event = run_full(base, items, stateful=mode == "on")
                runs[mode].append(rate)
                cpu[mode].append(per_event)
            print("  run:", ", ".join(f"{mode} {values[-1]:.0f}/s" for mode, values in runs.items()),
                  "| worker CPU per event:",
                  ", ".join(f"{mode} {values[-1]:.0f} us" for mode, values in cpu.items()),
                  flush=True)
        passthrough, plain, full = (max(runs[mode]) for mode in ("passthrough", "off", "on"))
        cpu_off, cpu_on = min(cpu["off"]), min(cpu["on"])
        print(f"pass-through agent         : {passthrough:8.0f} events/s")
        print(f"full pipeline, stateful off: {plain:8.0f} events/s  "
              f"ratio {plain / passthrough:.2f}")
        print(f"full pipeline, stateful on : {full:8.0f} events/s  "
              f"ratio {full / passthrough:.2f} (target >= 0.70); "
              f"stateful on/off {full / plain:.2f}")
        print(f"worker CPU per event (least of runs): stateful off {cpu_off:.0f} us, on "
              f"{cpu_on:.0f} us: stateful detection costs {cpu_on - cpu_off:.0f} us per event")


if __name__ == "__main__":
    main()
