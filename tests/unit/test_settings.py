"""Settings: parsing, validation messages, secrets that never print, round trip through env."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.settings import Secret, Settings, SettingsError
from pipeline.stack import run_settings


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings.broker == "kafka://127.0.0.1:9092"
    assert settings.fetch_max_wait_ms == 25
    assert settings.session_timeout == 6.0
    assert settings.heartbeat_interval == 1.0
    assert settings.events_topic == "llm.events"


@pytest.mark.parametrize(
    ("env", "attribute", "expected"),
    [
        ({"LLMTRAIL_PARTITIONS": "8"}, "partitions", 8),
        ({"LLMTRAIL_ARCHIVE_FSYNC": "off"}, "archive_fsync", False),
        ({"LLMTRAIL_ARCHIVE_FSYNC": "YES"}, "archive_fsync", True),
        ({"LLMTRAIL_BATCH_WITHIN": "0.2"}, "batch_within", 0.2),
        ({"LLMTRAIL_DATA_DIR": "/srv/trail"}, "data_dir", Path("/srv/trail")),
        ({"LLMTRAIL_RULES": "a.yaml:b"}, "rules", (Path("a.yaml"), Path("b"))),
        ({"LLMTRAIL_API_KEYS": " k1 , ,k2"}, "api_keys", (Secret("k1"), Secret("k2"))),
        ({"LLMTRAIL_TOPIC_PREFIX": "prod."}, "alerts_topic", "prod.llm.alerts"),
    ],
)
def test_environment_is_parsed(env: dict[str, str], attribute: str, expected: object) -> None:
    assert getattr(Settings.from_env(env), attribute) == expected


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LLMTRAIL_PARTITIONS": "many"}, "LLMTRAIL_PARTITIONS='many': invalid literal"),
        ({"LLMTRAIL_PARTITIONS": "0"}, "LLMTRAIL_PARTITIONS must be at least 1"),
        ({"LLMTRAIL_ARCHIVE_FSYNC": "maybe"}, "expected true/false, got 'maybe'"),
        ({"LLMTRAIL_LOG_LEVEL": "loud"}, "expected debug|info|warning|error|critical"),
        ({"LLMTRAIL_SESSION_TIMEOUT": "2"}, "at least 3x LLMTRAIL_HEARTBEAT_INTERVAL"),
        ({"LLMTRAIL_MAX_EVENT_BYTES": "0"}, "LLMTRAIL_MAX_EVENT_BYTES must be positive"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace("|", r"\|")):
        Settings.from_env(env)


def test_overrides_win_over_environment() -> None:
    settings = Settings.from_env({"LLMTRAIL_PARTITIONS": "8"}, partitions=3)
    assert settings.partitions == 3


def test_secrets_never_print() -> None:
    settings = Settings.from_env({"LLMTRAIL_API_KEYS": "hunter2-key",
                                  "LLMTRAIL_FINGERPRINT_SALT": "pepper-salt"})
    shown = repr(settings) + str(settings.describe())
    assert "hunter2-key" not in shown
    assert "pepper-salt" not in shown
    assert settings.api_keys[0].reveal() == "hunter2-key"


def test_env_round_trip() -> None:
    settings = Settings.from_env({"LLMTRAIL_API_KEYS": "a,b", "LLMTRAIL_ARCHIVE_FSYNC": "false",
                                  "LLMTRAIL_RULES": "x:y", "LLMTRAIL_TOPIC_PREFIX": "t."})
    assert Settings.from_env(settings.to_env()) == settings


@pytest.mark.parametrize(
    ("broker", "servers"),
    [
        ("kafka://a:1", ["a:1"]),
        ("kafka://a:1,kafka://b:2", ["a:1", "b:2"]),
        ("a:1, b:2", ["a:1", "b:2"]),
    ],
)
def test_bootstrap_servers(broker: str, servers: list[str]) -> None:
    assert Settings.from_env({"LLMTRAIL_BROKER": broker}).bootstrap_servers == servers


def test_empty_broker_is_an_error() -> None:
    with pytest.raises(SettingsError, match="no broker address"):
        _ = Settings.from_env({"LLMTRAIL_BROKER": " , "}).bootstrap_servers


def test_every_setting_is_documented() -> None:
    for env, _value, doc in Settings.from_env({}).describe():
        assert env.startswith("LLMTRAIL_")
        assert doc.endswith(".")


@pytest.mark.parametrize("env, location", [
    ({}, "{run}/archive"),
    ({"LLMTRAIL_ARCHIVE_BACKEND": "s3", "LLMTRAIL_ARCHIVE_S3_BUCKET": "evidence"},
     "s3://evidence/llmtrail/archive/runs/20261122T200000.000000Z"),
    ({"LLMTRAIL_ARCHIVE_BACKEND": "s3", "LLMTRAIL_ARCHIVE_S3_BUCKET": "evidence",
      "LLMTRAIL_ARCHIVE_S3_PREFIX": "/"}, "s3://evidence/runs/20261122T200000.000000Z"),
])
def test_each_embedded_run_archives_apart(tmp_path: Path, env: dict[str, str],
                                          location: str) -> None:
    run_dir = tmp_path / "runs" / "20261122T200000.000000Z"
    settings = run_settings(Settings.from_env(env, data_dir=tmp_path), run_dir,
                            "kafka://127.0.0.1:9")
    assert (settings.broker, settings.data_dir) == ("kafka://127.0.0.1:9", run_dir)
    assert settings.archive_location == location.format(run=run_dir)
