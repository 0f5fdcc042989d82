"""One frozen settings object for every llmtrail process.

Each field is declared once, with its type, environment variable, default and
a one-line doc (``llmtrail settings`` prints the table). Secrets are wrapped in
:class:`Secret` so they never appear in a repr, a log line or a traceback.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from detectors.matcher import hyperscan_available
from detectors.ml import DEFAULT_MODEL

SEVERITIES = ("info", "low", "medium", "high", "critical")
_REPO_RULES = Path(__file__).resolve().parent.parent / "rules"


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


class Secret:
    """A credential that prints as ``'****'``; call :meth:`reveal` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('****')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _setting(env: str, default: Any, doc: str) -> Any:
    return field(default=default, metadata={"env": env, "doc": doc})


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _parse_paths(text: str) -> tuple[Path, ...]:
    return tuple(Path(part) for part in text.split(os.pathsep) if part)


def _parse_keys(text: str) -> tuple[Secret, ...]:
    return tuple(Secret(part.strip()) for part in text.split(",") if part.strip())


_PARSERS: dict[str, Callable[[str], Any]] = {
    "int": int,
    "float": float,
    "bool": _parse_bool,
    "str": str,
    "Path": Path,
    "Secret": Secret,
    "tuple[Path, ...]": _parse_paths,
    "tuple[Secret, ...]": _parse_keys,
}


def _format(value: Any) -> str:
    if isinstance(value, Secret):
        return value.reveal()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        sep = "," if value and isinstance(value[0], Secret) else os.pathsep
        return sep.join(_format(item) for item in value)
    return str(value)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of llmtrail. Build with :meth:`from_env`; override with :meth:`replace`."""

    broker: str = _setting(
        "LLMTRAIL_BROKER", "kafka://127.0.0.1:9092",
        "Kafka bootstrap URL(s), comma-separated (kafka://host:port).",
    )
    app_id: str = _setting(
        "LLMTRAIL_APP_ID", "llmtrail", "Consumer group id of the workers; one id per deployment."
    )
    topic_prefix: str = _setting(
        "LLMTRAIL_TOPIC_PREFIX", "", "Prefix for every topic name (isolates deployments and tests)."
    )
    partitions: int = _setting(
        "LLMTRAIL_PARTITIONS", 4,
        "Partitions of topics llmtrail creates; the ceiling on parallelism.",
    )
    data_dir: Path = _setting(
        "LLMTRAIL_DATA_DIR", Path("llmtrail-data"), "Root of the archive and worker state."
    )
    rules: tuple[Path, ...] = _setting(
        "LLMTRAIL_RULES", (_REPO_RULES,), "Rule files or directories (os.pathsep-separated)."
    )
    rules_reload_seconds: float = _setting(
        "LLMTRAIL_RULES_RELOAD_SECONDS", 5.0,
        "How often workers check rule files for changes (0 disables hot reload).",
    )
    engine_hyperscan: bool = _setting(
        "LLMTRAIL_ENGINE_HYPERSCAN", hyperscan_available(),
        "Scan with Hyperscan (literal pass, per-regex prefilters; same findings, faster); "
        "on when installed.",
    )
    ml: bool = _setting(
        "LLMTRAIL_ML", True,
        "Run the ML injection/jailbreak classifier: a second opinion that escalates rule "
        "findings, and alone (severity low) on tool results and, from 0.97, on prompts.",
    )
    ml_model: Path = _setting(
        "LLMTRAIL_ML_MODEL", DEFAULT_MODEL,
        "Model file of the classifier (made by bench/train_classifier.py).",
    )
    max_event_bytes: int = _setting(
        "LLMTRAIL_MAX_EVENT_BYTES", 1_048_576, "Events larger than this are dead-lettered."
    )
    fingerprint_salt: Secret = _setting(
        "LLMTRAIL_FINGERPRINT_SALT", Secret("llmtrail-default-salt"),
        "Salt of the fingerprints of secrets and PII in alerts; set one per deployment.",
    )
    fetch_max_wait_ms: int = _setting(
        "LLMTRAIL_FETCH_MAX_WAIT_MS", 25,
        "Consumer fetch wait; Faust hard-codes 1500 ms, which stalls small brokers.",
    )
    session_timeout: float = _setting(
        "LLMTRAIL_SESSION_TIMEOUT", 6.0, "Consumer group session timeout, seconds."
    )
    rebalance_timeout: float = _setting(
        "LLMTRAIL_REBALANCE_TIMEOUT", 6.0, "Consumer group rebalance timeout, seconds."
    )
    heartbeat_interval: float = _setting(
        "LLMTRAIL_HEARTBEAT_INTERVAL", 1.0, "Consumer group heartbeat interval, seconds."
    )
    commit_interval: float = _setting(
        "LLMTRAIL_COMMIT_INTERVAL", 1.0, "How often acknowledged offsets are committed, seconds."
    )
    producer_linger_ms: int = _setting(
        "LLMTRAIL_PRODUCER_LINGER_MS", 5, "Producer linger: wait this long to fill a batch."
    )
    producer_batch_bytes: int = _setting(
        "LLMTRAIL_PRODUCER_BATCH_BYTES", 262_144, "Producer batch size in bytes."
    )
    batch_size: int = _setting(
        "LLMTRAIL_BATCH_SIZE", 1000,
        "Most events a worker takes at once (one durable archive append per batch).",
    )
    batch_within: float = _setting(
        "LLMTRAIL_BATCH_WITHIN", 0.02, "Longest wait, seconds, to fill a batch before processing."
    )
    archive_fsync: bool = _setting(
        "LLMTRAIL_ARCHIVE_FSYNC", True, "fsync archive segments before acknowledging (keep on)."
    )
    archive_backend: str = _setting(
        "LLMTRAIL_ARCHIVE_BACKEND", "local",
        "Where the archive lives: local (<data dir>/archive) or s3 (the bucket below).",
    )
    archive_s3_bucket: str = _setting(
        "LLMTRAIL_ARCHIVE_S3_BUCKET", "", "S3 bucket of the archive (backend s3)."
    )
    archive_s3_prefix: str = _setting(
        "LLMTRAIL_ARCHIVE_S3_PREFIX", "llmtrail/archive", "Key prefix of the archive in the bucket."
    )
    archive_s3_endpoint: str = _setting(
        "LLMTRAIL_ARCHIVE_S3_ENDPOINT", "",
        "S3-compatible endpoint URL (empty: AWS); e.g. http://127.0.0.1:9000.",
    )
    archive_s3_region: str = _setting(
        "LLMTRAIL_ARCHIVE_S3_REGION", "us-east-1", "Region of the archive bucket."
    )
    archive_s3_access_key_id: Secret = _setting(
        "LLMTRAIL_ARCHIVE_S3_ACCESS_KEY_ID", Secret(""),
        "S3 access key id (empty: the default AWS credential chain).",
    )
    archive_s3_secret_access_key: Secret = _setting(
        "LLMTRAIL_ARCHIVE_S3_SECRET_ACCESS_KEY", Secret(""), "S3 secret access key."
    )
    archive_key: Secret = _setting(
        "LLMTRAIL_ARCHIVE_KEY", Secret(""),
        "Master key (32 bytes, base64) that turns on AES-256-GCM encryption at rest.",
    )
    archive_key_file: str = _setting(
        "LLMTRAIL_ARCHIVE_KEY_FILE", "", "File holding the master key (instead of ARCHIVE_KEY)."
    )
    archive_signing_key: Secret = _setting(
        "LLMTRAIL_ARCHIVE_SIGNING_KEY", Secret(""),
        "HMAC-SHA256 key that signs manifests (verify checks signatures when set).",
    )
    archive_retention: str = _setting(
        "LLMTRAIL_ARCHIVE_RETENTION", "",
        "Days to keep, for archive prune: 90, or per topic: llm.events=90,*=365 (empty: forever).",
    )
    archive_legal_hold_file: str = _setting(
        "LLMTRAIL_ARCHIVE_LEGAL_HOLD_FILE", "",
        "File of trace:<id> / user:<id> lines whose events prune never deletes.",
    )
    http_host: str = _setting("LLMTRAIL_HTTP_HOST", "127.0.0.1", "HTTP ingest bind address.")
    http_port: int = _setting("LLMTRAIL_HTTP_PORT", 8787, "HTTP ingest port (0 disables).")
    api_keys: tuple[Secret, ...] = _setting(
        "LLMTRAIL_API_KEYS", (), "Comma-separated API keys accepted by HTTP ingest."
    )
    http_max_body_bytes: int = _setting(
        "LLMTRAIL_HTTP_MAX_BODY_BYTES", 4_194_304, "Largest HTTP ingest request body (413 above)."
    )
    log_level: str = _setting("LLMTRAIL_LOG_LEVEL", "warning", "Worker log level.")
    # -- stateful detection (docs/stateful.md) ---------------------------------------------
    stateful: bool = _setting(
        "LLMTRAIL_STATEFUL", True,
        "Run the stateful rules (windows, sequences, baselines, campaigns, alert hygiene).",
    )
    stateful_rules: tuple[Path, ...] = _setting(
        "LLMTRAIL_STATEFUL_RULES", (_REPO_RULES / "stateful",),
        "Stateful rule files or directories (llmtrail.stateful/v1, os.pathsep-separated).",
    )
    suppressions_file: str = _setting(
        "LLMTRAIL_SUPPRESSIONS", "",
        "Alert suppression list (llmtrail.suppressions/v1), re-read on change; empty: none.",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every ``LLMTRAIL_*`` variable; keyword overrides win over the environment."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            name = spec.metadata["env"]
            if name in env:
                parser = _PARSERS[str(spec.type)]
                try:
                    values[spec.name] = parser(env[name])
                except ValueError as exc:
                    raise SettingsError(f"{name}={env[name]!r}: {exc}") from None
        values.update(overrides)
        return cls(**values)

    def __post_init__(self) -> None:
        if self.partitions < 1:
            raise SettingsError("LLMTRAIL_PARTITIONS must be at least 1")
        if self.log_level.lower() not in {"debug", "info", "warning", "error", "critical"}:
            raise SettingsError(
                f"LLMTRAIL_LOG_LEVEL={self.log_level!r}: expected debug|info|warning|error|critical"
            )
        if self.session_timeout < 3 * self.heartbeat_interval:
            raise SettingsError(
                "LLMTRAIL_SESSION_TIMEOUT must be at least 3x LLMTRAIL_HEARTBEAT_INTERVAL"
            )
        if self.max_event_bytes < 1:
            raise SettingsError("LLMTRAIL_MAX_EVENT_BYTES must be positive")
        if self.archive_backend not in {"local", "s3"}:
            raise SettingsError(
                f"LLMTRAIL_ARCHIVE_BACKEND={self.archive_backend!r}: expected local or s3"
            )
        if self.archive_backend == "s3" and not self.archive_s3_bucket:
            raise SettingsError("LLMTRAIL_ARCHIVE_BACKEND=s3 needs LLMTRAIL_ARCHIVE_S3_BUCKET")

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    # -- derived names -------------------------------------------------------------------

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @property
    def events_topic(self) -> str:
        return self.topic("llm.events")

    @property
    def users_topic(self) -> str:
        return self.topic("llm.users")

    @property
    def alerts_topic(self) -> str:
        return self.topic("llm.alerts")

    def severity_topic(self, severity: str) -> str:
        return self.topic(f"llm.alerts.{severity}")

    @property
    def deadletter_topic(self) -> str:
        return self.topic("llm.deadletter")

    @property
    def archive_dir(self) -> Path:
        return self.data_dir / "archive"

    @property
    def archive_location(self) -> str:
        """Where the archive is, for messages (never with credentials)."""
        if self.archive_backend == "local":
            return str(self.archive_dir)
        return f"s3://{self.archive_s3_bucket}/{self.archive_s3_prefix.strip('/')}"

    @property
    def bootstrap_servers(self) -> list[str]:
        """``kafka://a:1,b:2`` → ``["a:1", "b:2"]`` for plain Kafka clients."""
        servers = []
        for part in self.broker.split(","):
            host = part.strip().removeprefix("kafka://").rstrip("/")
            if host:
                servers.append(host)
        if not servers:
            raise SettingsError(f"LLMTRAIL_BROKER={self.broker!r}: no broker address")
        return servers

    def to_env(self) -> dict[str, str]:
        """Every setting as ``LLMTRAIL_*`` variables (secrets revealed: child processes only)."""
        env = {}
        for spec in fields(self):
            env[spec.metadata["env"]] = _format(getattr(self, spec.name))
        return env

    def describe(self) -> list[tuple[str, str, str]]:
        """(env var, current value, doc) for every setting, secrets masked."""
        rows = []
        for spec in fields(self):
            value = getattr(self, spec.name)
            if isinstance(value, tuple):
                shown = os.pathsep.join(str(v) for v in value) if value else ""
            else:
                shown = str(value)
            rows.append((spec.metadata["env"], shown, spec.metadata["doc"]))
        return rows
