"""What the tuned Faust transport lets a commit claim, and when stream queues are emptied.

No broker: the consumer is created but never started, and its bookkeeping is
set up as Faust leaves it after an assignment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import faust
import pytest
from faust.types import TP, Message
from mode.utils.queues import FlowControlQueue

from pipeline.transport import (
    KeepQueuesFlowControl,
    TunedConsumer,
    _all_gaps,
    _resume_points,
    tuned_transport,
)

EVENTS = TP("llm.events", 0)


async def _ignore(*args: Any, **kwargs: Any) -> None:
    return None


@pytest.fixture
def consumer() -> Iterator[TunedConsumer]:
    loop = asyncio.new_event_loop()  # the app's, closed after the test
    asyncio.set_event_loop(loop)
    try:
        app = faust.App("llmtrail-unit-transport", broker="kafka://127.0.0.1:1", loop=loop)
        transport = tuned_transport(25)(app.conf.broker_consumer, app)
        made = transport.create_consumer(callback=_ignore, on_partitions_revoked=_ignore,
                                         on_partitions_assigned=_ignore)
        assert isinstance(made, TunedConsumer)
        yield made
        made._thread.thread_loop.close()  # the consumer thread's loop; the thread never ran
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@pytest.mark.parametrize("start, acked, gaps, expected", [
    # (committed offset, start of the log when nothing is committed)
    # the acked run starts at the committed offset: commit past its end
    ((10, None), [10, 11, 12], [], 13),
    # offsets 10 and 11 were never processed: no commit
    ((10, None), [12, 13], [], None),
    # ... unless the log has no records there (a known gap)
    ((10, None), [12, 13], [(10, 12)], 14),
    # a gap that covers only part of the hole is not enough
    ((10, None), [12, 13], [(11, 12)], None),
    # nothing committed yet: the run must start at the start of the log
    ((None, 5), [7, 8], [], None),
    ((None, 5), [5, 6], [], 7),
    ((None, 0), [0, 1, 2], [], 3),
])
def test_a_commit_never_skips_an_unprocessed_offset(
        consumer: TunedConsumer, start: tuple[int | None, int | None], acked: list[int],
        gaps: list[tuple[int, int]], expected: int | None) -> None:
    committed, log_start = start
    consumer._committed_offset[EVENTS] = committed
    if log_start is not None:
        consumer._log_start[EVENTS] = log_start
    consumer._acked[EVENTS].extend(acked)
    for begin, end in gaps:
        consumer._gap[EVENTS].addi(begin, end)
    assert consumer._new_offset(EVENTS) == expected


def message(offset: int, generation_id: int) -> Message:
    return Message(EVENTS.topic, EVENTS.partition, offset, 0.0, 0, None, b"k", b"v", None,
                   tp=EVENTS, generation_id=generation_id)


@pytest.mark.parametrize("generation, active, counted", [
    (3, True, True),  # current generation, flow running: processed
    (2, True, False),  # fetched under the previous assignment: released, not counted
    (3, False, False),  # during a rebalance: released, not counted
])
def test_only_messages_of_the_current_assignment_count_as_processed(
        consumer: TunedConsumer, generation: int, active: bool, counted: bool) -> None:
    app = consumer.app
    app.consumer_generation_id = 3
    app.topics.acks_enabled_for = lambda topic: True  # type: ignore[method-assign]
    if active:
        app.flow_control.resume()
    else:
        app.flow_control.suspend()
    msg = message(40, generation)
    assert consumer.ack(msg) is counted
    assert msg.acked
    assert (40 in consumer._acked[EVENTS]) is counted


def queued(flow: KeepQueuesFlowControl, *items: int) -> FlowControlQueue[int]:
    queue: FlowControlQueue[int] = FlowControlQueue(flow_control=flow, clear_on_resume=True)
    for item in items:
        queue.put_nowait(item)
    return queue


def test_a_resume_after_a_suspension_empties_the_stream_queues() -> None:
    async def run() -> None:
        flow = KeepQueuesFlowControl()  # starts suspended, as Faust's does
        queue = queued(flow, 1, 2)
        flow.resume()
        assert queue.qsize() == 0
        queue.put_nowait(3)
        flow.suspend()
        flow.resume()
        assert queue.qsize() == 0

    asyncio.run(run())


def test_a_resume_while_running_keeps_what_was_fetched() -> None:
    async def run() -> None:
        flow = KeepQueuesFlowControl()
        queue = queued(flow)
        flow.resume()
        queue.put_nowait(7)  # fetched for the new assignment
        flow.resume()  # Faust's second resume after the assignment
        assert flow.is_active()
        assert queue.get_nowait() == 7

    asyncio.run(run())


@pytest.mark.parametrize("gaps, start, end, covered", [
    ([], 3, 5, False),
    ([(3, 5)], 3, 5, True),
    ([(0, 10)], 3, 5, True),
    ([(3, 4), (4, 5)], 3, 5, True),
    ([(3, 4)], 3, 5, False),
    ([(4, 5)], 3, 5, False),
])
def test_all_gaps(consumer: TunedConsumer, gaps: list[tuple[int, int]], start: int, end: int,
                  covered: bool) -> None:
    tree = consumer._gap[EVENTS]  # Faust's IntervalTree of a partition's gaps, empty
    for begin, stop in gaps:
        tree.addi(begin, stop)
    assert _all_gaps(tree, start, end) is covered


@pytest.mark.parametrize("committed, log_start, delivered, point", [
    # (after Faust's seek to the committed offset)
    (10, None, None, None),  # nothing with a stream yet: the committed offset it is
    (10, None, 9, None),  # (a message of before the commit: already sought past)
    (10, None, 10, 11),  # streams got 10..: fetch after them, nothing twice
    (10, None, 25, 26),
    # no committed offset: aiokafka does not seek; the start of the log, or after the streams
    (None, 0, None, 0),
    (None, 4, None, 4),
    (None, 0, 7, 8),
    (None, None, None, None),  # the start of the log unknown: left where it is
])
def test_a_seek_refetches_what_no_stream_got_and_nothing_twice(
        committed: int | None, log_start: int | None, delivered: int | None,
        point: int | None) -> None:
    points = _resume_points(
        [EVENTS],
        {} if delivered is None else {EVENTS: delivered},
        {EVENTS: committed},
        {} if log_start is None else {EVENTS: log_start},
    )
    assert points.get(EVENTS) == point


def test_deliveries_are_remembered_until_the_partition_is_revoked(
        consumer: TunedConsumer) -> None:
    loop = asyncio.get_event_loop()
    loop.run_until_complete(consumer.callback(message(41, 1)))
    loop.run_until_complete(consumer.callback(message(42, 1)))
    assert consumer._delivered == {EVENTS: 42}
    consumer._delivered[TP("other", 0)] = 5
    loop.run_until_complete(consumer.on_partitions_revoked({EVENTS}))
    assert consumer._delivered == {TP("other", 0): 5}
