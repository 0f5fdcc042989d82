"""What the loader learns from a regex's parse tree: how far its assertions read past a match."""

from __future__ import annotations

import pytest

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
        (r"(?i)a|(?i)b", None),  # not understood by the parser: unknown
    ],
)
def test_reach(source: str, reach: int | None) -> None:
    assert analyse(source).reach == reach
