"""Plain aiokafka clients configured from :class:`Settings` (producers, admin, readers)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline.settings import SEVERITIES, Settings

# Kafka's default max.request.size is 1 MiB; raw events may be up to the limit plus framing.
_REQUEST_HEADROOM = 64 * 1024
_TOPIC_ALREADY_EXISTS = 36


def make_producer(settings: Settings, *, acks: int | str = "all") -> AIOKafkaProducer:
    """A producer batched for throughput (linger + large batches), acks from all replicas."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        linger_ms=settings.producer_linger_ms,
        max_batch_size=settings.producer_batch_bytes,
        max_request_size=max(settings.max_event_bytes, settings.http_max_body_bytes)
        + _REQUEST_HEADROOM,
        acks=acks,
        enable_idempotence=False,
    )


def make_reader(settings: Settings, *topics: str, group_id: str | None = None,
                from_beginning: bool = True) -> AIOKafkaConsumer:
    """A consumer for tools and tests (not the workers, which Faust runs)."""
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.bootstrap_servers,
        group_id=group_id,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=group_id is not None,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        session_timeout_ms=int(settings.session_timeout * 1000),
        heartbeat_interval_ms=int(settings.heartbeat_interval * 1000),
        rebalance_timeout_ms=int(settings.rebalance_timeout * 1000),
        max_partition_fetch_bytes=settings.max_event_bytes + _REQUEST_HEADROOM,
    )


def all_topics(settings: Settings) -> list[NewTopic]:
    """Every topic llmtrail uses, with its partitions and cleanup policy."""
    n = settings.partitions
    topics = [
        NewTopic(settings.events_topic, n, 1),
        NewTopic(settings.alerts_topic, n, 1),
        NewTopic(settings.deadletter_topic, n, 1),
        NewTopic(settings.users_topic, n, 1, topic_configs={"cleanup.policy": "compact"}),
    ]
    topics += [NewTopic(settings.severity_topic(s), n, 1) for s in SEVERITIES]
    return topics


async def ensure_topics(settings: Settings) -> list[str]:
    """Create missing topics; returns the names created. Existing topics are left alone."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in all_topics(settings) if t.name not in existing]
        if missing:
            response = await admin.create_topics(missing)
            for name, code, message in response.topic_errors:
                # 36 = TOPIC_ALREADY_EXISTS: another process won the race, which is fine.
                if code not in (0, _TOPIC_ALREADY_EXISTS):
                    raise RuntimeError(f"cannot create topic {name}: error {code} {message or ''}")
        return [t.name for t in missing]
    finally:
        await admin.close()


async def send_all(settings: Settings, topic: str,
                   items: Iterable[tuple[bytes | None, bytes]]) -> int:
    """Send (key, value) pairs to a topic; returns the count once the broker acknowledged all."""
    producer = make_producer(settings)
    await producer.start()
    try:
        pending = [await producer.send(topic, value, key=key) for key, value in items]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return len(pending)
