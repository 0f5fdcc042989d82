"""The table of work on recurring texts: kept from the second sighting, bounded, LRU."""

from __future__ import annotations

import pytest

from detectors.recent import Recent


@pytest.mark.parametrize(
    ("offers", "capacity", "watch", "kept"),
    [
        (["a"], 4, 4, []),  # seen once: not kept
        (["a", "a"], 4, 4, ["a"]),  # the second sighting keeps it
        (["a", "b", "c", "a"], 4, 2, []),  # "a" fell out of the watch before coming back
        (["a", "a", "b", "b", "c", "c"], 2, 8, ["b", "c"]),  # the oldest kept is dropped
        (["a long text", "a long text"], 4, 4, []),  # longer than max_chars: never kept
    ],
)
def test_what_is_kept(offers: list[str], capacity: int, watch: int, kept: list[str]) -> None:
    table: Recent[int] = Recent(capacity, 100, watch=watch, max_chars=8)
    for n, text in enumerate(offers):
        table.offer(text, n)
    assert [text for text in ("a", "b", "c", "a long text") if text in table] == kept
    assert len(table) == len(kept)


def test_get_returns_the_value_and_refreshes_it() -> None:
    table: Recent[str] = Recent(2, 100, watch=8, max_chars=8)
    for text in ("a", "a", "b", "b"):
        table.offer(text, text.upper())
    assert table.get("a") == "A"  # "a" is now the most recently used
    table.offer("c", "C")
    table.offer("c", "C")
    assert (table.get("a"), table.get("b"), table.get("c")) == ("A", None, "C")
    assert table.get("never offered") is None


def test_the_character_budget_drops_the_oldest_texts() -> None:
    table: Recent[int] = Recent(10, budget=10, max_chars=8)
    for text in ("aaaa", "aaaa", "bbbb", "bbbb", "cccccc", "cccccc"):
        table.offer(text, len(text))
    assert ("aaaa" in table, "bbbb" in table, "cccccc" in table) == (False, True, True)
    assert len(table) == 2
