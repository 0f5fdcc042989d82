"""Findings, evidence, and the hygiene rules for what evidence may show.

An excerpt is a short window of the original field text around a hit. For
rules that mask (category ``pii``/``secret`` or ``mask: true``) every hit of
the finding inside the window is masked: the hit itself keeps at most four
characters at each end and never more than a quarter of its length at either
end (so at most half in total), the others are fully starred. Such evidence
carries an HMAC-SHA256 fingerprint of the matched value keyed with the
engine's salt, so equal values correlate without being stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

EXCERPT_RADIUS = 20
MAX_SHOWN_HIT = 60
MAX_STARS = 32
MAX_KEEP = 4
ELLIPSIS = "…"
# Control, format (zero-width, bidi) and tag characters are shown escaped.
_UNSAFE_RE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e"
    "\u2060-\u2069\ufeff\U000e0000-\U000e007f]"
)
_NEWLINES_RE = re.compile("[\t\n\r]")


@dataclass(frozen=True, slots=True)
class Evidence:
    start: int
    end: int
    excerpt: str
    fingerprint: str | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    rule_id: str
    title: str
    severity: str
    category: str
    owasp: tuple[str, ...]
    detector: str
    field: str
    evidence: tuple[Evidence, ...]
    score: float
    tags: tuple[str, ...]


def mask_value(value: str) -> str:
    """Keep at most 4 characters at each end (at most a quarter each); star the rest."""
    keep = min(MAX_KEEP, len(value) // 4)
    hidden = len(value) - 2 * keep
    head = value[:keep]
    tail = value[len(value) - keep :] if keep else ""
    return head + "*" * min(hidden, MAX_STARS) + tail


def fingerprint(value: str, salt: bytes) -> str:
    return hmac.new(salt, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def _display(text: str) -> str:
    text = _NEWLINES_RE.sub(" ", text)
    return _UNSAFE_RE.sub(lambda m: f"<U+{ord(m.group()):04X}>", text)


def _shorten(hit: str) -> str:
    if len(hit) <= MAX_SHOWN_HIT:
        return hit
    half = MAX_SHOWN_HIT // 2
    return hit[:half] + ELLIPSIS + hit[-half:]


def _starred(text: str, offset: int, spans: Sequence[tuple[int, int]]) -> str:
    """Replace characters of ``text`` (starting at ``offset``) covered by spans with '*'."""
    chars = list(text)
    for start, end in spans:
        for pos in range(max(start, offset), min(end, offset + len(chars))):
            chars[pos - offset] = "*"
    return "".join(chars)


def excerpt(
    text: str,
    start: int,
    end: int,
    *,
    masked: bool,
    other_spans: Sequence[tuple[int, int]] = (),
) -> str:
    """A display-safe window of ``text`` around ``[start, end)``."""
    left = max(0, start - EXCERPT_RADIUS)
    right = min(len(text), end + EXCERPT_RADIUS)
    before = text[left:start]
    after = text[end:right]
    hit = text[start:end]
    if masked:
        others = [s for s in other_spans if s != (start, end)]
        before = _starred(before, left, others)
        after = _starred(after, end, others)
        shown = mask_value(hit)
    else:
        shown = _shorten(hit)
    return (
        (ELLIPSIS if left > 0 else "")
        + _display(before)
        + _display(shown)
        + _display(after)
        + (ELLIPSIS if right < len(text) else "")
    )
