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
    fetch_max_wait_ms: int = 100

    def ack(self, message: Any) -> bool:
        """Record the ack of a message the agent handled, never of one Faust skipped.

        Around a rebalance Faust's stream skips the messages it fetched under the
        previous assignment (flow control suspended, or an older generation) and
        acks them as it goes. Their offsets then count as done, the next commit
        moves past them, and a worker that restarts or takes the partition over
        never sees them: events published but neither archived nor scanned. So an
        ack that arrives in those conditions only releases the message; its offset
        stays uncommitted and is fetched again after the rebalance (the archive
        drops what it already holds, by offset).
        """
        app = self.app
        if not app.flow_control.is_active() or message.generation_id != app.consumer_generation_id:
            message.acked = True
            self._unacked_messages.discard(message)
            return False
        return bool(super().ack(message))

    def _new_consumer_thread(self) -> TunedConsumerThread:
        thread = TunedConsumerThread(self, loop=self.loop, beacon=self.beacon)
        thread.fetch_max_wait_ms = self.fetch_max_wait_ms
        return thread


def tuned_transport(fetch_max_wait_ms: int) -> type[faust_aiokafka.Transport]:
    """A Transport class whose consumers use the given fetch wait."""
    consumer = type("Consumer", (TunedConsumer,), {"fetch_max_wait_ms": fetch_max_wait_ms})
    return type("TunedTransport", (faust_aiokafka.Transport,), {"Consumer": consumer})
