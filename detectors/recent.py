"""A bounded table of work done on texts that recur, kept from their second sighting.

Field texts of LLM telemetry repeat: a chat client re-sends the whole history
with every turn, and system prompts, tool names, endpoints and enum-like
arguments recur across events. :class:`Recent` keeps the result of the work
done on such a text so the next event that carries it can reuse it.

A text is kept only the second time it is offered among the last ``watch``
texts (only their hashes are remembered: ints, which hold no references for
the garbage collector to follow): keeping every text would make the
collector walk thousands of objects that a stream of unique texts never uses
again. The table is bounded
in texts and in characters, the least recently used dropped first. It is
safe to share between threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

# How many recent texts are watched for a second sighting, and the longest kept.
RECENT_SEEN = 16384
RECENT_MAX_CHARS = 4096

V = TypeVar("V")


class Recent(Generic[V]):
    """Results of work on recurring texts: ``get`` what was kept, ``offer`` what was done.

    At most ``capacity`` texts are kept, of at most ``budget`` characters in
    all (what they cost in memory grows with their length), each at most
    ``max_chars`` long.
    """

    def __init__(
        self,
        capacity: int,
        budget: int,
        *,
        watch: int = RECENT_SEEN,
        max_chars: int = RECENT_MAX_CHARS,
    ) -> None:
        self.capacity = capacity
        self.budget = budget
        self.watch = watch
        self.max_chars = max_chars
        # OrderedDict: popping a plain dict's oldest key scans the holes its earlier
        # deletions left at the front (about 10 us a call at these sizes).
        self._kept: OrderedDict[str, V] = OrderedDict()
        self._chars = 0  # the length of the kept texts, summed
        self._seen: OrderedDict[int, None] = OrderedDict()  # hashes offered once lately
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._kept)

    def __contains__(self, text: str) -> bool:
        return text in self._kept

    def get(self, text: str) -> V | None:
        """What was kept for ``text``, now the most recently used; None if nothing."""
        with self._lock:
            value = self._kept.get(text)
            if value is not None:
                self._kept.move_to_end(text)
        return value

    def offer(self, text: str, value: V) -> None:
        """Keep ``value`` if ``text`` was offered before lately (and is not too long)."""
        if len(text) > self.max_chars:
            return
        key = hash(text)
        with self._lock:
            if key not in self._seen:
                if len(self._seen) >= self.watch:
                    self._seen.popitem(last=False)
                self._seen[key] = None
                return
            if text in self._kept:
                return
            kept = self._kept
            while kept and (len(kept) >= self.capacity or self._chars + len(text) > self.budget):
                oldest, _ = kept.popitem(last=False)
                self._chars -= len(oldest)
            kept[text] = value
            self._chars += len(text)
