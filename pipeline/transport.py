"""Faust's aiokafka transport: a configurable fetch wait, and no lost messages around rebalances.

Faust hard-codes ``fetch_max_wait_ms=1500`` for worker consumers. On brokers
that hold a waiting fetch until the wait expires (the embedded Tansu does),
that stalls every partition for 1.5 s whenever it runs dry, costing
throughput and adding seconds of latency. Faust lets an app replace its
transport class, so we subclass the classes involved and set the wait from
``LLMTRAIL_FETCH_MAX_WAIT_MS`` on the consumer before it starts.

The same classes close the ways we found of losing or stalling messages when
partitions are assigned (at every start, and at every rebalance); see
:class:`TunedConsumer` and :class:`KeepQueuesFlowControl`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.utils.queues import FlowControlEvent


class KeepQueuesFlowControl(FlowControlEvent):
    """Faust's flow control, but a resume empties the stream queues only after a suspension.

    Faust resumes the flow twice after an assignment: once when its table
    recovery finds nothing to restore, and again once it has sought every
    partition to its committed offset. Messages fetched for the new assignment
    in between sit in the stream queues, and the second resume cleared them:
    never processed, never fetched again, so lost (seen as a run of 10-30
    missing events per partition after each worker restart). Queues hold
    nothing stale at that point: the rebalance that suspended the flow cleared
    them, and a message of an older generation is skipped by the stream.
    """

    def resume(self) -> None:
        if self.is_active():
            return
        super().resume()


class TunedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    fetch_max_wait_ms: int = 25

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this attribute when start() builds its fetcher.
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer


class TunedConsumer(faust_aiokafka.Consumer):
    """Faust's consumer with the fetch wait set, and what a commit may claim made safe.

    * Faust's stream skips the messages it fetched under the previous
      assignment (flow control suspended, or an older generation) and may ack
      them as it skips them, so their offsets would count as processed. An ack
      in those conditions here only releases the message; its offset stays
      uncommitted and is fetched again after the rebalance.
    * Faust computes the next commit from the run of acked offsets and checks
      that the run starts right after the committed offset only once something
      was committed (and then by one offset too few). Here a commit never
      starts past the committed offset, or, for a partition without one, past
      the start of its log, unless every offset in between is a known gap of
      the log.
    * Faust drains fetched records from aiokafka before it hands them to the
      streams, and drops what it drained when the flow or the assignment
      changes under it (around table recovery at every start). aiokafka has
      moved past those records, so they were never fetched again: the
      partition stalled until the next restart. After Faust's seek to the
      committed offsets (a real one now), each partition is sought past the
      last message this assignment already handed to a stream, so nothing is
      delivered twice and nothing drained is lost.

    What the archive already holds is dropped again by offset, so re-fetching
    costs time, never a duplicate archived event.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        deliver = self.callback
        delivered = self._delivered

        async def on_message(message: Any) -> None:
            delivered[message.tp] = message.offset
            await deliver(message)

        self.callback = on_message

    @property
    def _delivered(self) -> dict[Any, int]:
        """Offset of the last message handed to a stream, per partition of this assignment."""
        delivered: dict[Any, int] = self.__dict__.setdefault("_llmtrail_delivered", {})
        return delivered

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        for tp in revoked:  # what streams got under the old assignment they skip: fetch it again
            self._delivered.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    fetch_max_wait_ms: int = 25

    @property
    def _log_start(self) -> dict[Any, int]:
        """First offset of the log of each assigned partition that has no committed offset."""
        start: dict[Any, int] = self.__dict__.setdefault("_llmtrail_log_start", {})
        return start

    def _new_consumer_thread(self) -> TunedConsumerThread:
        thread = TunedConsumerThread(self, loop=self.loop, beacon=self.beacon)
        thread.fetch_max_wait_ms = self.fetch_max_wait_ms
        return thread

    async def perform_seek(self) -> None:
        await super().perform_seek()
        self._log_start.clear()
        fresh = [tp for tp in self.assignment() if self._committed_offset[tp] is None]
        if fresh:
            self._log_start.update(await self.earliest_offsets(*fresh))
        points = _resume_points(
            self.assignment(), self._delivered, self._committed_offset, self._log_start
        )
        for tp, offset in points.items():
            await self.seek(tp, offset)

    def ack(self, message: Any) -> bool:
        app = self.app
        if not app.flow_control.is_active() or message.generation_id != app.consumer_generation_id:
            message.acked = True  # skipped by the stream: release it, commit nothing
            self._unacked_messages.discard(message)
            return False
        return bool(super().ack(message))

    def _new_offset(self, tp: Any) -> int | None:
        acked = self._acked[tp]
        if acked:
            start = self._committed_offset[tp]
            if start is None:
                start = self._log_start.get(tp)
            head = min(acked)
            if start is not None and head > start and not _all_gaps(self._gap[tp], start, head):
                return None  # an offset before the acked run is still unprocessed
        result: int | None = super()._new_offset(tp)
        return result


def _resume_points(
    assignment: Iterable[Any],
    delivered: Mapping[Any, int],
    committed: Mapping[Any, int | None],
    log_start: Mapping[Any, int],
) -> dict[Any, int]:
    """Where to fetch each partition from, where the committed offset is not the answer.

    After the last message a stream already got, if that is past the committed
    offset; and a partition with no committed offset (aiokafka does not seek
    it) from the start of its log, or after what a stream got.
    """
    out: dict[Any, int] = {}
    for tp in assignment:
        start = committed.get(tp)
        if start is None:
            start = log_start.get(tp)
            if start is None:
                continue
            out[tp] = start
        last = delivered.get(tp)
        if last is not None and last >= start:
            out[tp] = last + 1
    return out


def _all_gaps(gaps: Any, start: int, end: int) -> bool:
    """Every offset in [start, end) lies in one of the log's known gaps (an IntervalTree)."""
    covered = sorted((iv.begin, iv.end) for iv in gaps.overlap(start, end)) if gaps else []
    position = start
    for begin, stop in covered:
        if begin > position:
            return False
        position = max(position, stop)
    return position >= end


def tuned_transport(fetch_max_wait_ms: int) -> type[faust_aiokafka.Transport]:
    """A Transport class whose consumers use the given fetch wait."""
    consumer = type("Consumer", (TunedConsumer,), {"fetch_max_wait_ms": fetch_max_wait_ms})
    return type("TunedTransport", (faust_aiokafka.Transport,), {"Consumer": consumer})
