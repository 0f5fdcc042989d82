"""Durations in rule files and event times: everything stateful runs on event time (seconds)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float | None:
    """``"90s"``, ``"10m"``, ``"1.5h"``, ``"7d"``, ``"250ms"`` → seconds; None if not a duration."""
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None:
        return None
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def event_time(ts: str) -> float:
    """An RFC 3339 timestamp (as the event decoder accepts it) → epoch seconds.

    Raises ValueError for text that is not one.
    """
    parsed = datetime.fromisoformat(ts.upper())
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp without a UTC offset: {ts!r}")
    return parsed.timestamp()


def format_time(seconds: float) -> str:
    """Epoch seconds → ``2026-01-05T09:00:00.000Z``."""
    text = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")
