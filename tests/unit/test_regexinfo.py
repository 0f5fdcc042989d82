"""What the loader learns from a regex's parse tree: how far its assertions read past a match."""

from __future__ import annotations

from pathlib import Path

import pytest

from detectors import load_rules
from detectors.regexinfo import analyse


@pytest.mark.parametrize(
    ("source", "reach"),
    [
        (r"abc", 0),
        (r"(?<![0-9])[0-9]{4}", 0),  # look-behinds read before the match only
        (r"\bword\b", 1),
        (r"(?i)\b(?:a|b)\s+c", 1),
        (r"[0-9]{3}(?![0-9-])", 1),
        (r"key(?![A-Z0-9]{0,9}EXAMPLE)", 16),
        (r"x(?=ab\b)", 3),  # a look-ahead's width, then its own word boundary
        (r"(?:a(?!bc)|d)e", 2),  # inside groups and branches
        (r"line$", 2),  # "$" reads a final newline too
        (r"end\Z", 0),
        (r"a(?=.*b)", None),  # reads to the end of the text
        (r"\p{L}+x(?=y)", None),  # not understood by the parser: unknown
        (r"ab|(?i)cd\b", 1),  # a later (?i) is analysed as if at the start
    ],
)
def test_reach(source: str, reach: int | None) -> None:
    assert analyse(source).reach == reach


@pytest.mark.parametrize(
    ("source", "sets"),
    [
        # a later (?i) is moved to the front for the analysis: both branches' literals count
        (r"(?:~|/root)/\.aws/credentials\b|(?i)\bc:\\windows\\system32\b",
         (("/root/.aws/credentials", "c:\\windows\\system32", "~/.aws/credentials"),)),
        # a class's "(?i)" is no flag: its characters stay in the literals
        (r"[(?i)]xyzw|(?i)abcd", (("(xyzw", ")xyzw", "?xyzw", "abcd", "ixyzw"),)),
        (r"abcd|(?x) e f g h", ()),  # (?x) changes how the start parses: not moved
    ],
)  # fmt: skip
def test_later_inline_flags(source: str, sets: tuple[tuple[str, ...], ...]) -> None:
    assert analyse(source).gate.sets == sets


def test_a_reload_analyses_only_regexes_it_has_not_seen() -> None:
    rules = Path(__file__).parent / "fixtures" / "rules" / "golden"
    analyse.cache_clear()
    load_rules([rules])
    first = analyse.cache_info()
    assert first.misses > 0
    load_rules([rules])
    again = analyse.cache_info()
    assert again.misses == first.misses  # every regex came from the first load
    assert again.hits >= first.misses
