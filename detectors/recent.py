"""A bounded table of work done on texts that recur, kept from their second sighting.

Field texts of LLM telemetry repeat: a chat client re-sends the whole history
with every turn, and system prompts, tool names, endpoints and enum-like
arguments recur across events. :class:`Recent` keeps the result of the work
done on such a text so the next event that carries it can reuse it.

A text is kept only the second time it is offered among the last ``watch``
texts (their hashes sit in a table of ints, which the garbage collector does
not scan): keeping every text would make the collector walk thousands of
objects that a stream of unique texts never uses again. The table holds at
most ``capacity`` results, the least recently used dropped first. It is safe
to share between threads.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

# How many recent texts are watched for a second sighting, and the longest kept.
RECENT_SEEN = 16384
RECENT_MAX_CHARS = 4096

V = TypeVar("V")
K = TypeVar("K")
W = TypeVar("W")


class Recent(Generic[V]):
    """Results of work on recurring texts: ``get`` what was kept, ``offer`` what was done."""

    def __init__(self, capacity: int, watch: int, max_chars: int) -> None:
        self.capacity = capacity
        self.watch = watch
        self.max_chars = max_chars
        self._kept: dict[str, V] = {}
        self._seen: dict[int, None] = {}  # hashes of texts offered once lately
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._kept)

    def __contains__(self, text: str) -> bool:
        return text in self._kept

    def get(self, text: str) -> V | None:
        """What was kept for ``text``, now the most recently used; None if nothing."""
        with self._lock:
            value = self._kept.pop(text, None)
            if value is not None:
                self._kept[text] = value
        return value

    def offer(self, text: str, value: V) -> None:
        """Keep ``value`` if ``text`` was offered before lately (and is not too long)."""
        if len(text) > self.max_chars:
            return
        key = hash(text)
        with self._lock:
            if key in self._seen:
                _add(self._kept, text, value, self.capacity)
            else:
                _add(self._seen, key, None, self.watch)


def _add(table: dict[K, W], key: K, value: W, capacity: int) -> None:
    """Insert into an insertion-ordered table, dropping its oldest entry when full."""
    if len(table) >= capacity:
        del table[next(iter(table))]
    table[key] = value
