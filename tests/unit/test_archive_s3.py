"""The object-storage writer on a real S3 API server: durability, idempotence, failures."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from pipeline.archive import ObjectArchiveStore, open_reader, open_store
from pipeline.archive.chain import Chain
from pipeline.archive.config import open_backend
from pipeline.cli_archive import verify_command
from pipeline.settings import Settings
from tests.s3_helpers import (
    S3_KEY_ID,
    S3_SECRET,
    T0,
    TOPIC,
    archive_settings,
    event,
    records_of,
    s3_client,
)

HOUR_MS = 3_600_000


@pytest.fixture
def s3_settings(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> Settings:
    return archive_settings(tmp_path, "s3", s3_endpoint, s3_bucket)


def archived_ids(settings: Settings) -> list[str | None]:
    return sorted(r.event_id for r in open_reader(settings).iter())  # type: ignore[type-var]


def verify_ok(settings: Settings) -> bool:
    out = io.StringIO()
    return verify_command(settings, from_ms=None, to_ms=None, out=out, err=io.StringIO()) == 0


def test_redelivery_and_producer_retries_are_skipped_across_restarts(
        s3_settings: Settings) -> None:
    records = records_of([event(i, minutes=i) for i in range(20)], partitions=1)
    store = open_store(s3_settings)
    assert isinstance(store, ObjectArchiveStore)
    assert store.append(records[:12]).written == 12
    again = open_store(s3_settings)  # a restarted worker: watermark from the chain
    result = again.append(records[8:])
    assert (result.written, result.skipped_duplicates) == (8, 4)
    retry = records_of([event(30, minutes=30)], partitions=1, first_offset=20)[0]
    replay = records_of([event(30, minutes=30)], partitions=1, first_offset=21)[0]
    assert again.append([retry, replay]).event_id_duplicates == 1  # same id and bytes
    assert again.high_watermarks() == {(TOPIC, 0): 20}
    assert archived_ids(s3_settings) == sorted([f"e-{i}" for i in range(20)] + ["e-30"])
    assert verify_ok(s3_settings)


def test_one_segment_per_partition_and_hour_of_a_batch(s3_settings: Settings) -> None:
    events = [event(i, minutes=i * 25) for i in range(6)]  # hours 14, 14, 14, 15, 15, 16
    open_store(s3_settings).append(records_of(events, partitions=2))
    keys = [k for k in open_backend(s3_settings).list(f"{TOPIC}/") if k.endswith(".seg")]
    assert sorted(keys) == [
        f"{TOPIC}/dt=2026-11-22/hour=14/p0-00000000000000000000.seg",
        f"{TOPIC}/dt=2026-11-22/hour=14/p1-00000000000000000000.seg",
        f"{TOPIC}/dt=2026-11-22/hour=15/p0-00000000000000000002.seg",
        f"{TOPIC}/dt=2026-11-22/hour=15/p1-00000000000000000001.seg",
        f"{TOPIC}/dt=2026-11-22/hour=16/p1-00000000000000000002.seg",
    ]
    assert int(T0.timestamp() * 1000) % HOUR_MS == 0


def test_failed_upload_raises_and_nothing_is_acknowledged(s3_settings: Settings) -> None:
    missing = s3_settings.replace(archive_s3_bucket="llmtrail-no-such-bucket")
    records = records_of([event(i) for i in range(5)], partitions=1)
    store = open_store(missing)
    with pytest.raises(ClientError, match="NoSuchBucket"):
        store.append(records)  # the worker retries, then exits 75 without committing
    s3_client(s3_settings.archive_s3_endpoint).create_bucket(Bucket="llmtrail-no-such-bucket")
    assert store.append(records).written == 5  # the retry writes everything, once
    assert archived_ids(missing) == [f"e-{i}" for i in range(5)]


def test_crash_between_segment_and_manifest_upload(s3_settings: Settings,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    records = records_of([event(i) for i in range(5)], partitions=1)
    real = Chain.try_append

    def lost(*args: object, **kwargs: object) -> None:
        raise ConnectionError("connection reset while uploading the manifest")

    monkeypatch.setattr(Chain, "try_append", lost)
    with pytest.raises(ConnectionError):
        open_store(s3_settings).append(records)
    assert archived_ids(s3_settings) == []  # an unchained upload is not part of the archive
    assert not verify_ok(s3_settings)  # ... and verify points at it
    monkeypatch.setattr(Chain, "try_append", real)
    assert open_store(s3_settings).append(records).written == 5
    assert archived_ids(s3_settings) == [f"e-{i}" for i in range(5)]
    assert verify_ok(s3_settings)


def test_two_writers_on_one_partition_never_fork_the_chain(s3_settings: Settings) -> None:
    records = records_of([event(i, minutes=i) for i in range(10)], partitions=1)
    first, second = open_store(s3_settings), open_store(s3_settings)
    first.append(records[:6])
    assert second.append(records[:8]).written == 2  # sees the chain moved, dedups against it
    assert first.append(records).written == 2
    assert archived_ids(s3_settings) == sorted(f"e-{i}" for i in range(10))
    assert verify_ok(s3_settings)


@pytest.mark.parametrize(("change", "message"), [
    ({"archive_s3_bucket": "llmtrail-absent"},
     "llmtrail: cannot use the archive at s3://llmtrail-absent/archive: An error occurred "
     "(NoSuchBucket) when calling the ListObjectsV2 operation"),
    ({"archive_s3_endpoint": "http://127.0.0.1:9"},
     "llmtrail: cannot use the archive at s3://{bucket}/archive: Could not connect to the "
     "endpoint URL: \"http://127.0.0.1:9/"),
])
@pytest.mark.parametrize("argv", [("archive", "verify"), ("archive", "cat", "--trace", "t-1"),
                                  ("archive", "query", "SELECT 1")])
def test_storage_errors_are_a_message_without_credentials(
        s3_settings: Settings, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...],
        change: dict[str, str], message: str) -> None:
    from pipeline.cli import build_parser

    args = build_parser().parse_args(argv)
    assert args.handler(args, s3_settings.replace(**change)) == 2
    err = capsys.readouterr().err
    assert err.startswith(message.format(bucket=s3_settings.archive_s3_bucket)), err
    assert S3_SECRET not in err and S3_KEY_ID not in err


def test_verify_of_an_empty_prefix_says_nothing_is_there(s3_settings: Settings) -> None:
    err = io.StringIO()
    settings = s3_settings.replace(archive_s3_prefix="typo")
    assert verify_command(settings, from_ms=None, to_ms=None, out=io.StringIO(), err=err) == 0
    assert err.getvalue() == (f"note: nothing is archived at s3://{settings.archive_s3_bucket}"
                              "/typo: check the data directory or the bucket and prefix\n")
