"""Shared fixtures: one real embedded broker per test session, fresh names per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.broker import EmbeddedBroker
from pipeline.settings import Settings
from tests.s3_helpers import any_settings, backend_name, s3_bucket, s3_endpoint  # noqa: F401 - fixtures


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A real Kafka-compatible broker (Tansu) on a free loopback port.

    A broker that does not start fails the tests that need it; it never skips them.
    """
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_file=log) as running:
        yield running


@pytest.fixture
def settings(broker: EmbeddedBroker, tmp_path: Path) -> Settings:
    """Settings isolated for one test: own topic prefix, consumer group and data dir."""
    tag = uuid.uuid4().hex[:10]
    return Settings.from_env(
        {},
        broker=broker.url,
        app_id=f"llmtrail-test-{tag}",
        topic_prefix=f"t{tag}.",
        partitions=2,
        data_dir=tmp_path / "data",
        http_port=0,
    )
