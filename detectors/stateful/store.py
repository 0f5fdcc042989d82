"""Where stateful detectors keep their state: plain JSON-able values under string keys.

The pure core only needs :class:`Store` (``get``/``set``/``delete``). Tests
and ``llmtrail rules test`` use :class:`MemoryStore`; the worker backs it with
a changelog-backed Faust table. :class:`BatchState` sits in front of a store
for one batch: each key is read at most once and written at most once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import orjson

_DELETED = object()


class Store(Protocol):
    def get(self, key: str) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...

    def delete(self, key: str) -> None: ...


class MemoryStore:
    """A dict of JSON documents behind the :class:`Store` interface.

    Values are stored encoded, as a changelog would hold them: a value that is
    not JSON-able fails here, and a change that was never ``set`` is lost.
    """

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, key: str) -> Any:
        raw = self.data.get(key)
        return None if raw is None else orjson.loads(raw)

    def set(self, key: str, value: Any) -> None:
        self.data[key] = orjson.dumps(value)

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


EXPIRES = "_x"  # event time after which a state can no longer make its rule fire
SCOPE = "_s"  # the scope (state partition) that wrote it


class BatchState:
    """Read-through, write-back cache over a store for one batch of one scope."""

    def __init__(self, store: Store, scope: str = "0") -> None:
        self._store = store
        self._scope = scope
        self._cache: dict[str, Any] = {}
        self._dirty: set[str] = set()

    def get(self, key: str) -> Any:
        if key in self._cache:
            value = self._cache[key]
            return None if value is _DELETED else value
        value = self._store.get(key)
        self._cache[key] = value
        return value

    def put(self, key: str, value: Any, *, expires: float | None = None) -> None:
        """Set a key; with ``expires`` (event time) the state is marked for :func:`expired`."""
        if expires is not None:
            value[EXPIRES] = expires
            value[SCOPE] = self._scope
        self._cache[key] = value
        self._dirty.add(key)

    def drop(self, key: str) -> None:
        self._cache[key] = _DELETED
        self._dirty.add(key)

    def flush(self) -> int:
        """Write every changed key once; returns how many were written."""
        for key in self._dirty:
            value = self._cache[key]
            if value is _DELETED:
                self._store.delete(key)
            else:
                self._store.set(key, value)
        written = len(self._dirty)
        self._dirty.clear()
        return written


def expired(items: Iterable[tuple[str, Any]], scope: str, watermark: float) -> list[str]:
    """Keys of a scope's states that expired before ``watermark`` (event time).

    Idle keys are otherwise kept forever (a key is only looked at when one of
    its events comes); the worker runs this now and then over its table.
    """
    return [
        key for key, value in items
        if isinstance(value, dict) and value.get(SCOPE) == scope
        and value.get(EXPIRES, watermark) < watermark
    ]
