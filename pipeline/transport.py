"""Faust's aiokafka transport with a configurable consumer fetch wait.

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

    def _new_consumer_thread(self) -> TunedConsumerThread:
        thread = TunedConsumerThread(self, loop=self.loop, beacon=self.beacon)
        thread.fetch_max_wait_ms = self.fetch_max_wait_ms
        return thread


def tuned_transport(fetch_max_wait_ms: int) -> type[faust_aiokafka.Transport]:
    """A Transport class whose consumers use the given fetch wait."""
    consumer = type("Consumer", (TunedConsumer,), {"fetch_max_wait_ms": fetch_max_wait_ms})
    return type("TunedTransport", (faust_aiokafka.Transport,), {"Consumer": consumer})
