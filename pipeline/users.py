"""User context: records on the compacted users topic, and the in-memory directory workers join.

Every worker follows the whole users topic (it is small and compacted), so
any worker can enrich any event whatever partition it came from. The
directory is eventually consistent: a user published a moment before their
first event may still be unknown to that event, and the alert says so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from pipeline.kafka import make_reader
from pipeline.settings import Settings

log = logging.getLogger(__name__)

USER_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "role": str,
    "department": str,
    "privileged": bool,
    "allowed_tools": list,
    "usual_geo": list,
    "work_hours": str,
    "timezone": str,
}
ENRICHED_FIELDS = ("role", "department", "privileged", "allowed_tools")


class UserRecordError(ValueError):
    """A user-context record that does not fit the contract."""


def validate_user(record: Any) -> dict[str, Any]:
    """Check one user-context record; unknown keys are kept."""
    if not isinstance(record, dict):
        raise UserRecordError("expected a JSON object")
    if not isinstance(record.get("id"), str) or not record["id"]:
        raise UserRecordError("missing required field 'id' (a non-empty string)")
    for key, expected in USER_FIELDS.items():
        if key in record and not isinstance(record[key], expected):
            name = expected.__name__ if isinstance(expected, type) else "value"
            raise UserRecordError(f"field {key!r}: expected {name}")
    return record


class UserDirectory:
    """user id → context record, fed from the users topic."""

    def __init__(self, records: Iterable[Mapping[str, Any]] = ()) -> None:
        self._users: dict[str, Mapping[str, Any]] = {r["id"]: r for r in records}

    def __len__(self) -> int:
        return len(self._users)

    def get(self, user_id: str | None) -> Mapping[str, Any] | None:
        return self._users.get(user_id) if user_id else None

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Apply one topic record: a value upserts, a tombstone (None) deletes."""
        if value is None:
            if key is not None:
                self._users.pop(key.decode("utf-8", "replace"), None)
            return
        try:
            record = validate_user(orjson.loads(value))
        except (orjson.JSONDecodeError, UserRecordError) as exc:
            log.warning("ignoring invalid user-context record key=%r: %s", key, exc)
            return
        self._users[record["id"]] = record


def enrich(event: Mapping[str, Any], directory: UserDirectory) -> dict[str, Any]:
    """A shallow copy of the event whose ``user`` carries the joined context and ``known``."""
    raw_user = event.get("user")
    user: dict[str, Any] = dict(raw_user) if isinstance(raw_user, dict) else {}
    context = directory.get(user.get("id"))
    if context is not None:
        for key in ENRICHED_FIELDS:
            if key in context:
                user[key] = context[key]
    user["known"] = context is not None
    enriched = dict(event)
    enriched["user"] = user
    return enriched


async def follow_users(settings: Settings, directory: UserDirectory,
                       caught_up: asyncio.Event) -> None:
    """Read the users topic from the beginning forever; set ``caught_up`` after the first pass."""
    reader = make_reader(settings, settings.users_topic, group_id=None, from_beginning=True)
    await reader.start()
    try:
        while True:
            batches = await reader.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    directory.apply(record.key, record.value)
            if not batches and not caught_up.is_set():
                caught_up.set()
    finally:
        await reader.stop()
