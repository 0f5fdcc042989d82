"""Faust's aiokafka transport: a configurable fetch wait, and no acks of skipped messages.

Faust hard-codes ``fetch_max_wait_ms=1500`` for worker consumers. On brokers
that hold a waiting fetch until the wait expires (the embedded Tansu does),
that stalls every partition for 1.5 s whenever it runs dry, costing
throughput and adding seconds of latency. Faust lets an app replace its
transport class, so we subclass the three classes involved and set the wait
from ``LLMTRAIL_FETCH_MAX_WAIT_MS`` on the consumer before it starts.
"""

from __future__ import annotations

from typing import Any

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka


class TunedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    fetch_max_wait_ms: int = 100

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this attribute when start() builds its fetcher.
        consumer._fetch_max_wait_ms = self.fetch_max_wait_ms
        return consumer


class TunedConsumer(faust_aiokafka.Consumer):
    """Faust's consumer with the fetch wait set, and two ways of losing messages closed.

    Both come from what a commit may claim after a rebalance:

    * Faust's stream skips the messages it fetched under the previous
      assignment (flow control suspended, or an older generation) and acks them
      as it skips them, so their offsets would count as processed. An ack in
      those conditions here only releases the message; its offset stays
      uncommitted and is fetched again after the rebalance.
    * Faust computes the next commit from the run of acked offsets and checks
      that the run starts right after the committed offset only once something
      was committed in the current assignment (and then by one offset too few).
      Here a commit never starts past the committed offset, or, before the first
      commit of an assignment, past the first offset fetched in it, unless every
      offset in between is a known gap of the log.

    What the archive already holds is dropped again by offset, so re-fetching
    costs time, never a duplicate archived event.
    """

    fetch_max_wait_ms: int = 100

    @property
    def _first_fetched(self) -> dict[Any, int]:
        first: dict[Any, int] | None = self.__dict__.get("_llmtrail_first_fetched")
        if first is None:
            first = self.__dict__["_llmtrail_first_fetched"] = {}
        return first

    def _new_consumer_thread(self) -> TunedConsumerThread:
        thread = TunedConsumerThread(self, loop=self.loop, beacon=self.beacon)
        thread.fetch_max_wait_ms = self.fetch_max_wait_ms
        return thread

    def track_message(self, message: Any) -> None:
        super().track_message(message)
        if message.generation_id == self.app.consumer_generation_id:
            first = self._first_fetched.get(message.tp)
            if first is None or message.offset < first:
                self._first_fetched[message.tp] = message.offset

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        for tp in revoked:
            self._first_fetched.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[Any], generation_id: int = 0) -> None:
        for tp in assigned:
            self._first_fetched.pop(tp, None)
        await super().on_partitions_assigned(assigned, generation_id)

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
                start = self._first_fetched.get(tp)
            head = min(acked)
            if start is not None and head > start and not _all_gaps(self._gap[tp], start, head):
                return None  # an offset before the acked run is still unprocessed
        result: int | None = super()._new_offset(tp)
        return result


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
