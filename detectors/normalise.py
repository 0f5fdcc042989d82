"""Text normalisation with an offset map back to the original text.

``normalise(text)`` produces the texts the engine scans for one field:

* the **keyword view**: NFKC-style folding (per character), combining marks
  dropped, zero-width / bidi / tag characters removed, Latin look-alikes
  (Cyrillic and Greek homoglyphs) folded to ASCII inside words that are made of
  Latin letters and look-alikes only, case folded, whitespace runs collapsed to
  one space;
* the **regex views**: the original text, plus (only when folding changed more
  than case and whitespace) the folded text before case folding and whitespace
  collapsing;
* one extra **source** per embedded payload (base64, base32, hex, URL-encoded, Unicode
  tag characters) decoded and normalised the same way (one level deep, bounded
  in count and size).

Every view carries a span map: a hit ``[start, end)`` in the view maps back to
``[start, end)`` in the original text; hits in a payload map to the span of the
encoded run. Signals (``hidden_unicode``, ``homoglyph``, ``encoded_payload``)
come with the original spans that raised them.

Pure-ASCII text without '%' and without long base64/hex-looking runs takes a
fast path: lower-casing, whitespace translation and (only if needed) one
collapse substitution, with the offset map built lazily on first use.

Invariant used by the engine's literal prefilter: every run of non-space
ASCII characters of the original (or of a regex view) occurs, lower-cased, in
the keyword view of the same source.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import threading
import unicodedata
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import unquote_plus

SIGNALS: tuple[str, ...] = ("hidden_unicode", "homoglyph", "encoded_payload")
_MAX_SIGNAL_SPANS = 5

# ---------------------------------------------------------------- tables

_ZERO_WIDTH = "\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u180e"
_BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
_TAG_RANGE = (0xE0000, 0xE007F)
_INVISIBLE_RE = re.compile(f"[{_ZERO_WIDTH}{_BIDI}\U000e0000-\U000e007f]+")
_TAG_RUN_RE = re.compile("[\U000e0020-\U000e007e]{2,}")

# Latin look-alikes: Cyrillic and Greek letters (and a few Latin variants)
# folded to the ASCII letter they imitate.
_LOOKALIKES = (  # Cyrillic (and Latin script g), then Greek
    "\u0430\u0432\u0435\u0451\u043a\u043c\u043d\u043e"
    "\u0440\u0441\u0442\u0443\u0445\u0455\u0456\u0457"
    "\u0458\u0501\u051b\u051d\u04cf\u04bb\u0261\u04af"
    "\u0410\u0412\u0415\u0401\u041a\u041c\u041d\u041e"
    "\u0420\u0421\u0422\u0423\u0425\u0405\u0406\u0407"
    "\u0408\u0500\u051a\u051c\u04c0\u04ba\u04ae"
    "\u03b1\u03bf\u03bd\u03c1\u03c4\u03c5\u03b9\u03ba"
    "\u03c7\u03b5\u03f2\u03f3\u0391\u0392\u0395\u0396"
    "\u0397\u0399\u039a\u039c\u039d\u039f\u03a1\u03a4"
    "\u03a5\u03a7\u03f9"
)
_LOOKALIKE_TARGETS = (  # the ASCII letter each of the above imitates, in the same order
    "abeekmhopctyxsiijdqwlhgyABEEKMHOPCTYXSIIJDQWIHYaovptuikxecjABEZHIKMNOPTYXC"
)
HOMOGLYPHS: dict[str, str] = dict(zip(_LOOKALIKES, _LOOKALIKE_TARGETS, strict=True))
_HOMOGLYPH_TABLE = {ord(k): v for k, v in HOMOGLYPHS.items()}
_HOMOGLYPH_RE = re.compile("[" + "".join(sorted(HOMOGLYPHS)) + "]")
_WORD_CHAR_RE = re.compile(r"[^\W\d_]")
_MAX_WORD = 64

# Characters folded beyond what compatibility decomposition gives.
_EXTRA_FOLDS = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-",
    "\u2015": "-", "\u2212": "-", "\u2028": " ", "\u2029": " ", "\u0085": " ",
    "\u1680": " ",
}  # fmt: skip

# Code point ranges whose characters get a precomputed fold.
_FOLD_RANGES = (
    (0x0080, 0x04FF),  # Latin-1, Latin Extended, IPA, combining marks, Greek, Cyrillic
    (0x1680, 0x1680),  # ogham space mark
    (0x1AB0, 0x1AFF),  # combining marks extended
    (0x1DC0, 0x1EFF),  # combining marks supplement, Latin Extended Additional
    (0x2000, 0x218F),  # punctuation, super/subscripts, letterlike, number forms
    (0x2212, 0x2212),  # minus sign
    (0x2460, 0x24FF),  # enclosed alphanumerics
    (0x3000, 0x3000),  # ideographic space
    (0xFB00, 0xFB4F),  # ligatures
    (0xFE20, 0xFE2F),  # combining half marks
    (0xFE50, 0xFE6F),  # small forms
    (0xFF00, 0xFFEF),  # full-width and half-width forms
    (0x1D400, 0x1D7FF),  # mathematical alphanumerics
    (0x1F100, 0x1F1FF),  # enclosed alphanumeric supplement
)


def _fold_one(ch: str) -> str:
    if ch in _ZERO_WIDTH or ch in _BIDI or _TAG_RANGE[0] <= ord(ch) <= _TAG_RANGE[1]:
        return ""
    if ch in _EXTRA_FOLDS:
        return _EXTRA_FOLDS[ch]
    decomposed = unicodedata.normalize("NFKD", ch)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return unicodedata.normalize("NFC", stripped)


def _build_fold_table() -> dict[int, str]:
    table: dict[int, str] = {}
    for low, high in _FOLD_RANGES:
        for cp in range(low, high + 1):
            ch = chr(cp)
            folded = _fold_one(ch)
            if folded != ch:
                table[cp] = folded
    for cp in range(_TAG_RANGE[0], _TAG_RANGE[1] + 1):
        table[cp] = ""
    for ch in _ZERO_WIDTH + _BIDI:
        table[ord(ch)] = ""
    return table


def _char_class(codepoints: Iterable[int]) -> str:
    ranges: list[tuple[int, int]] = []
    for cp in sorted(codepoints):
        if ranges and cp == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], cp)
        else:
            ranges.append((cp, cp))
    parts = [
        re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}"
        for a, b in ranges
    ]
    return "[" + "".join(parts) + "]"


_FOLD_TABLE = _build_fold_table()
# Characters whose fold is not exactly one character (deleted or expanded).
_IRREGULAR_RE = re.compile(_char_class(cp for cp, v in _FOLD_TABLE.items() if len(v) != 1))
_ASCII_WS = "\n\t\r\x0b\x0c\x1c\x1d\x1e\x1f"  # what str.isspace() accepts in ASCII, but " "
_MULTI_SPACE_RE = re.compile("  +")  # a literal head: five times faster in re than " {2,}"
_REGION_GAP = 16  # runs of non-ASCII characters closer than this are folded as one region

# The ASCII encoder hands each run of characters it cannot encode to the error
# handler at once, in C: the fastest way to find the non-ASCII runs of a str
# (a regex class scan costs about 12 ns a character, this about 1).
_RUN_SINK = threading.local()


def _note_run(error: UnicodeError) -> tuple[str, int]:
    assert isinstance(error, UnicodeEncodeError)
    _RUN_SINK.runs.append((error.start, error.end))
    return "", error.end


# A name of this module's own: a second copy of the module (a reload) keeps its sink.
_RUN_HANDLER = f"llmtrail.non-ascii-runs.{id(_RUN_SINK):x}"
codecs.register_error(_RUN_HANDLER, _note_run)


def non_ascii_runs(text: str, gap: int = 0) -> list[tuple[int, int]]:
    """Spans of the runs of non-ASCII characters, those less than ``gap`` apart merged."""
    runs: list[tuple[int, int]] = []
    _RUN_SINK.runs = runs
    text.encode("ascii", _RUN_HANDLER)
    if gap <= 0 or len(runs) < 2:
        return runs
    merged = [runs[0]]
    for start, end in runs[1:]:
        if start - merged[-1][1] < gap:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


# ---------------------------------------------------------------- payload detection

_B64_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-")
_B64_MARK = bytes(ord("x") if i in _B64_CHARS else ord(" ") for i in range(256))
_MIN_RUN = 16
_RUN_NEEDLE = b"x" * _MIN_RUN
_HEX_RE = re.compile(r"[0-9a-fA-F]+")
_BASE32_RE = re.compile(r"[A-Z2-7]+")
_BASE32_TAILS = frozenset({0, 2, 4, 5, 7})  # lengths mod 8 a base32 body can have
_PCT_ESCAPE_RE = re.compile(r"%[0-9A-Fa-f]{2}")
_MIN_URL_ESCAPES = 3
_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]")
_URLSAFE = str.maketrans("-_", "+/")


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on payload decoding for one field text."""

    max_payloads: int = 8
    max_payload_chars: int = 65_536
    max_attempts: int = 32  # candidate runs tried per text (most are not payloads)


DEFAULT_LIMITS = Limits()


# ---------------------------------------------------------------- span maps


class SpanMap(Protocol):
    def span(self, start: int, end: int) -> tuple[int, int]: ...


class Identity:
    __slots__ = ()

    def span(self, start: int, end: int) -> tuple[int, int]:
        return start, end


IDENTITY = Identity()


class Fixed:
    """Every position maps to one span (a decoded payload maps to its encoded run)."""

    __slots__ = ("_span",)

    def __init__(self, span: tuple[int, int]) -> None:
        self._span = span

    def span(self, start: int, end: int) -> tuple[int, int]:
        return self._span


class EditMap:
    """Positions in a new text mapped to an old text through a list of edits.

    Each edit says: new[new_start:new_end] replaced old[old_start:old_end].
    Outside edits the texts align one to one.
    """

    __slots__ = ("_new_end", "_new_start", "_old_end", "_old_start")

    def __init__(self, edits: list[tuple[int, int, int, int]]) -> None:
        self._new_start = [e[0] for e in edits]
        self._new_end = [e[1] for e in edits]
        self._old_start = [e[2] for e in edits]
        self._old_end = [e[3] for e in edits]

    def _char(self, pos: int) -> tuple[int, int]:
        k = bisect_right(self._new_start, pos) - 1
        if k < 0:
            return pos, pos + 1
        if pos < self._new_end[k]:
            return self._old_start[k], self._old_end[k]
        old = pos - self._new_end[k] + self._old_end[k]
        return old, old + 1

    def span(self, start: int, end: int) -> tuple[int, int]:
        if end <= start:
            pos = self._char(start)[0]
            return pos, pos
        return self._char(start)[0], self._char(end - 1)[1]


class Utf8Positions:
    """Character positions in a text of byte positions in its UTF-8 encoding."""

    __slots__ = ("_byte_starts", "_runs")

    def __init__(self, text: str) -> None:
        # (byte start, byte end, character start, the run) of each run of non-ASCII characters
        self._runs: list[tuple[int, int, int, str]] = []
        shift = 0
        for start, end in non_ascii_runs(text):
            run = text[start:end]
            size = len(run.encode("utf-8", "surrogatepass"))
            first = start + shift
            self._runs.append((first, first + size, start, run))
            shift += size - len(run)
        self._byte_starts = [run[0] for run in self._runs]

    def chars(self, offset: int) -> int:
        k = bisect_right(self._byte_starts, offset) - 1
        if k < 0:
            return offset
        first, last, char_start, run = self._runs[k]
        if offset >= last:
            return char_start + len(run) + offset - last
        head = run.encode("utf-8", "surrogatepass")[: offset - first]
        return char_start + len(head.decode("utf-8", "ignore"))


class Composed:
    __slots__ = ("_inner", "_outer")

    def __init__(self, outer: SpanMap, inner: SpanMap) -> None:
        self._outer = outer
        self._inner = inner

    def span(self, start: int, end: int) -> tuple[int, int]:
        return self._inner.span(*self._outer.span(start, end))


class LazyCollapse:
    """The map of a whitespace collapse, computed from the uncollapsed text on first use."""

    __slots__ = ("_map", "_text")

    def __init__(self, uncollapsed: str) -> None:
        self._text = uncollapsed
        self._map: EditMap | None = None

    def span(self, start: int, end: int) -> tuple[int, int]:
        if self._map is None:
            self._map = EditMap(_collapse_edits(self._text))
        return self._map.span(start, end)


def _collapse_edits(text: str) -> list[tuple[int, int, int, int]]:
    edits: list[tuple[int, int, int, int]] = []
    shift = 0
    for match in _MULTI_SPACE_RE.finditer(text):
        old_start, old_end = match.span()
        new_start = old_start - shift
        edits.append((new_start, new_start + 1, old_start, old_end))
        shift += old_end - old_start - 1
    return edits


def _compose(outer: SpanMap, inner: SpanMap) -> SpanMap:
    if isinstance(outer, Identity):
        return inner
    if isinstance(inner, Identity):
        return outer
    return Composed(outer, inner)


# ---------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class View:
    """A text to scan; ``map`` takes its spans to the original field text.

    For regex views, ``from_kw`` takes positions of the source's keyword view
    to positions of this view (where the automaton saw a literal, here).
    """

    text: str
    map: SpanMap
    from_kw: SpanMap | None = None


@dataclass(frozen=True, slots=True)
class Source:
    """One text to scan: the field itself or a payload decoded from it."""

    kw: View
    regex_views: tuple[View, ...]
    origin: tuple[int, int] | None = None  # encoded run in the original, for payloads
    encoding: str | None = None


@dataclass(slots=True)
class Normalised:
    original: str
    sources: list[Source]
    signals: dict[str, list[tuple[int, int]]] = field(default_factory=dict)

    def add_signal(self, name: str, span: tuple[int, int]) -> None:
        spans = self.signals.setdefault(name, [])
        if len(spans) < _MAX_SIGNAL_SPANS:
            spans.append(span)


# ---------------------------------------------------------------- folding


def _spaced(text: str) -> str:
    """ASCII whitespace turned into spaces, one for one (str.replace is fastest here)."""
    for ch in _ASCII_WS:
        if ch in text:
            text = text.replace(ch, " ")
    return text


def _collapse(text: str) -> View:
    spaced = _spaced(text)
    if "  " not in spaced:
        return View(spaced, IDENTITY)
    return View(_MULTI_SPACE_RE.sub(" ", spaced), LazyCollapse(spaced))


def _fold_char(ch: str) -> str:
    folded = _FOLD_TABLE.get(ord(ch))
    if folded is not None:
        return folded
    return unicodedata.normalize("NFKC", ch)


def _fold_non_ascii(text: str, out: Normalised) -> tuple[str, SpanMap]:
    """Per-character folding of the non-ASCII regions; ASCII is left untouched."""
    pieces: list[str] = []
    edits: list[tuple[int, int, int, int]] = []
    pos = 0
    new_len = 0
    for start, end in non_ascii_runs(text, _REGION_GAP):
        pieces.append(text[pos:start])
        new_len += start - pos
        region = text[start:end]
        for invisible in _INVISIBLE_RE.finditer(region):
            out.add_signal("hidden_unicode", (start + invisible.start(), start + invisible.end()))
        translated = region.translate(_FOLD_TABLE)
        if _IRREGULAR_RE.search(region) is None and unicodedata.is_normalized("NFKC", translated):
            pieces.append(translated)
            new_len += len(translated)
        else:
            for offset, ch in enumerate(region):
                folded = _fold_char(ch)
                if len(folded) != 1:
                    edits.append(
                        (new_len, new_len + len(folded), start + offset, start + offset + 1)
                    )
                pieces.append(folded)
                new_len += len(folded)
        pos = end
    pieces.append(text[pos:])
    return "".join(pieces), (EditMap(edits) if edits else IDENTITY)


def _word_bounds(text: str, pos: int) -> tuple[int, int]:
    start = pos
    while start > 0 and pos - start < _MAX_WORD and _WORD_CHAR_RE.match(text, start - 1):
        start -= 1
    end = pos + 1
    while end < len(text) and end - pos < _MAX_WORD and _WORD_CHAR_RE.match(text, end):
        end += 1
    return start, end


def _fold_homoglyphs(
    text: str, regions: list[tuple[int, int]], fold_map: SpanMap, out: Normalised
) -> str:
    """Fold look-alikes in words made only of Latin letters and look-alikes.

    ``regions``: the text's non-ASCII regions (look-alikes are not ASCII).
    """
    if not any(_HOMOGLYPH_RE.search(text, start, end) for start, end in regions):
        return text
    replacements: list[tuple[int, int, str]] = []
    done = 0
    found = (m for start, end in regions for m in _HOMOGLYPH_RE.finditer(text, start, end))
    for match in found:
        if match.start() < done:
            continue
        start, end = _word_bounds(text, match.start())
        done = end
        word = text[start:end]
        folded = word.translate(_HOMOGLYPH_TABLE)
        if not folded.isascii():
            continue
        replacements.append((start, end, folded))
        if any(ch.isascii() for ch in word):
            out.add_signal("homoglyph", fold_map.span(start, end))
    if not replacements:
        return text
    pieces: list[str] = []
    pos = 0
    for start, end, folded in replacements:
        pieces.append(text[pos:start])
        pieces.append(folded)
        pos = end
    pieces.append(text[pos:])
    return "".join(pieces)


def _casefold(text: str, regions: list[tuple[int, int]]) -> tuple[str, SpanMap]:
    """Case folding; characters that fold to several (ß -> ss) get an edit each.

    ``str.casefold`` costs several ns a character once a text holds anything
    beyond ASCII, so ASCII stretches are lowered (the same for ASCII) and only
    the non-ASCII ``regions`` are case folded.
    """
    pieces: list[str] = []
    edits: list[tuple[int, int, int, int]] = []
    pos = 0
    new_len = 0
    for start, end in regions:
        pieces.append(text[pos:start].lower())
        new_len += start - pos
        region = text[start:end]
        folded = region.casefold()
        if len(folded) == len(region):
            pieces.append(folded)
            new_len += len(folded)
        else:
            for index in range(start, end):
                lowered = text[index].casefold()
                if len(lowered) != 1:
                    edits.append((new_len, new_len + len(lowered), index, index + 1))
                pieces.append(lowered)
                new_len += len(lowered)
        pos = end
    pieces.append(text[pos:].lower())
    return "".join(pieces), (EditMap(edits) if edits else IDENTITY)


def _fold_stable(ch: str) -> bool:
    """Folding leaves the (case-folded) character as it is, wherever it occurs."""
    return ch.isascii() or (_fold_char(ch) == ch and len(ch.casefold()) == 1)


def stable_pieces(literal: str) -> list[str]:
    """Pieces of ``literal`` (case-folded) that survive in the keyword view.

    Whenever ``literal`` occurs in a text (case-insensitively), each returned
    piece occurs in that text's keyword view. Whitespace and characters that
    folding may change split the literal. Look-alike letters are kept only in
    pieces that also hold a non-ASCII letter which is not a look-alike: a word
    containing such a letter is never homoglyph-folded. A single space stands
    for any run of whitespace.
    """
    pieces: list[str] = []
    current: list[str] = []
    for ch in literal.casefold():
        if (ch.isspace() and ch != " ") or not _fold_stable(ch):
            pieces.append("".join(current))
            current = []
        else:
            current.append(ch)
    pieces.append("".join(current))
    out: list[str] = []
    for piece in pieces:
        anchored = any(not c.isascii() and c.isalpha() and c not in HOMOGLYPHS for c in piece)
        if anchored or _HOMOGLYPH_RE.search(piece) is None:
            out.append(piece)
        else:
            out.extend(_HOMOGLYPH_RE.split(piece))
    return [piece for piece in out if piece]


def fold_keyword(phrase: str) -> str:
    """Normalise a rule keyword exactly as field text is normalised, trimmed."""
    return normalise(phrase, limits=Limits(max_payloads=0)).sources[0].kw.text.strip()


# ---------------------------------------------------------------- payloads


def _printable(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(text.strip()) < 4:
        return None
    if len(_CONTROL_RE.findall(text)) > len(text) // 10:
        return None
    return text


def _decode_base64(run: str) -> str | None:
    body = run.rstrip("=")
    if ("-" in body or "_" in body) and ("+" in body or "/" in body):
        return None
    body = body.translate(_URLSAFE)
    if len(body) % 4 == 1:
        return None
    try:
        raw = binascii.a2b_base64(body + "=" * (-len(body) % 4), strict_mode=True)
    except binascii.Error:
        return None
    return _printable(raw)


def _decode_base32(run: str) -> str | None:
    body = run.rstrip("=")
    if len(body) % 8 not in _BASE32_TAILS or not _BASE32_RE.fullmatch(body):
        return None
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except binascii.Error:
        return None
    return _printable(raw)


def _decode_run(run: str) -> tuple[str, str] | None:
    if _HEX_RE.fullmatch(run):  # hex digits only: hex or nothing
        text = _printable(bytes.fromhex(run)) if len(run) % 2 == 0 else None
        return ("hex", text) if text is not None else None
    text = _decode_base64(run)
    if text is not None:
        return ("base64", text)
    text = _decode_base32(run)  # its alphabet is inside base64's: binary as base64
    return ("base32", text) if text is not None else None


def _encoded_runs(text: str, limits: Limits) -> list[tuple[int, int, str, str]]:
    """Runs of 16 or more base64/hex characters (and their ``=`` padding) that decode
    (as hex, base64 or, for upper-case letters and 2-7 only, base32).

    The runs are found with a byte translation and ``bytes.find`` at memory
    speed; the text is encoded with one ``?`` per non-ASCII character, so byte
    offsets are character offsets.
    """
    marked = text.encode("ascii", "replace").translate(_B64_MARK)
    found: list[tuple[int, int, str, str]] = []
    max_encoded = limits.max_payload_chars * 2
    start = marked.find(_RUN_NEEDLE)
    attempts = 0
    while start >= 0 and len(found) < limits.max_payloads and attempts < limits.max_attempts:
        attempts += 1
        end = marked.find(b" ", start)
        end = len(marked) if end < 0 else end
        next_start = marked.find(_RUN_NEEDLE, end)
        padding = 0
        while padding < 2 and text.startswith("=", end + padding):
            padding += 1
        end += padding
        run = text[start:end]
        if len(run) > max_encoded:
            run = run[: max_encoded - max_encoded % 4]
        decoded = _decode_run(run)
        if decoded is not None:
            found.append((start, end, decoded[0], decoded[1]))
        start = next_start
    return found


def _url_runs(text: str, limits: Limits) -> list[tuple[int, int, str, str]]:
    found: list[tuple[int, int, str, str]] = []
    spaced = _spaced(text)
    end = -1
    for match in _PCT_ESCAPE_RE.finditer(spaced):
        if match.start() < end:
            continue
        if len(found) >= limits.max_payloads:
            break
        start = spaced.rfind(" ", 0, match.start()) + 1
        end = spaced.find(" ", match.end())
        end = len(spaced) if end < 0 else end
        token = text[start:end][: limits.max_payload_chars * 3]
        if len(_PCT_ESCAPE_RE.findall(token)) < _MIN_URL_ESCAPES:
            continue
        decoded = unquote_plus(token, errors="replace")
        if _CONTROL_RE.search(decoded) is None:
            found.append((start, end, "url", decoded))
    return found


def _tag_runs(text: str, limits: Limits) -> list[tuple[int, int, str, str]]:
    found: list[tuple[int, int, str, str]] = []
    for match in _TAG_RUN_RE.finditer(text):
        if len(found) >= limits.max_payloads:
            break
        hidden = "".join(chr(ord(ch) - 0xE0000) for ch in match.group())
        found.append((match.start(), match.end(), "unicode_tags", hidden))
    return found


def _payload_source(span: tuple[int, int], encoding: str, decoded: str) -> Source:
    inner = normalise(decoded, limits=Limits(max_payloads=0))
    fixed = Fixed(span)
    views = tuple(View(v.text, fixed, v.from_kw) for v in inner.sources[0].regex_views)
    return Source(View(inner.sources[0].kw.text, fixed), views, span, encoding)


def _add_payloads(out: Normalised, limits: Limits, hidden: bool) -> None:
    """Decode embedded payloads; ``hidden``: invisible characters (maybe tags) were seen."""
    text = out.original
    runs: list[tuple[int, int, str, str]] = []
    runs.extend(_encoded_runs(text, limits))
    if "%" in text:
        runs.extend(_url_runs(text, limits))
    if hidden:
        runs.extend(_tag_runs(text, limits))
    for start, end, encoding, decoded in runs[: limits.max_payloads]:
        out.sources.append(_payload_source((start, end), encoding, decoded))
        out.add_signal(
            "hidden_unicode" if encoding == "unicode_tags" else "encoded_payload", (start, end)
        )


# ---------------------------------------------------------------- entry point


def normalise(text: str, *, limits: Limits = DEFAULT_LIMITS) -> Normalised:
    """Fold ``text`` for scanning; see the module docstring for what comes out."""
    if text.isascii():
        kw = _collapse(text.lower())
        out = Normalised(text, [Source(kw, (View(text, IDENTITY, kw.map),))])
        if limits.max_payloads:
            _add_payloads(out, limits, hidden=False)
        return out
    out = Normalised(text, [])
    clean, fold_map = _fold_non_ascii(text, out)
    regions = non_ascii_runs(clean, _REGION_GAP)
    folded = _fold_homoglyphs(clean, regions, fold_map, out)
    if folded is not clean:  # look-alikes became ASCII: the regions moved
        clean, regions = folded, non_ascii_runs(folded, _REGION_GAP)
    lowered, case_map = _casefold(clean, regions)
    kw = _collapse(lowered)
    kw_to_clean = _compose(kw.map, case_map)
    kw_map = _compose(kw_to_clean, fold_map)
    views: tuple[View, ...] = (View(text, IDENTITY, kw_map),)
    if clean != text:
        views = (*views, View(clean, fold_map, kw_to_clean))
    out.sources.append(Source(View(kw.text, kw_map), views))
    if limits.max_payloads:
        _add_payloads(out, limits, hidden="hidden_unicode" in out.signals)
    return out
