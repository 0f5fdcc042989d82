"""Runs of words two texts share: a system prompt recited in a response.

Texts are compared as sequences of words, which whitespace and ASCII
punctuation and symbols separate, with ASCII letters lower-cased: punctuation,
spacing, line breaks and ASCII case do not hide a copy. (The engine passes the
keyword views of its normaliser, which are case folded, so full-width letters,
look-alikes, other scripts' case and zero-width characters do not either.)

A text *shares a run* with a reference when some ``size`` consecutive words
of it also occur consecutively in the reference. A :class:`Reference` keeps
the hash of every run of ``size`` words of its text and of every run of half
as many (half the memory of the runs themselves: the engine keeps the
references of recurring system prompts); a text is first probed with its
consecutive, non-overlapping half-runs (any shared run of ``size`` words
contains one of them whole), so most texts cost one split and a few set
probes, and only a text that passes is checked word by word.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# UTF-8 bytes to word bytes: ASCII letters lower-cased, digits and non-ASCII
# bytes kept, every other ASCII byte a separator.
_TABLE = bytes(
    (ord(chr(b).lower()) if chr(b).isalnum() else ord(" ")) if b < 128 else b for b in range(256)
)
_TOKEN = re.compile(rb"\S+")

Words = list[bytes]


class Reference(NamedTuple):
    size: int
    probes: frozenset[int]  # hashes of every run of (size + 1) // 2 words
    runs: frozenset[int]  # hashes of every run of size words


class Run(NamedTuple):
    start: int  # character span in the scanned text
    end: int
    words: int


def words(text: str) -> Words:
    """The words of ``text`` (UTF-8, ASCII letters lower-cased)."""
    return text.encode("utf-8", "surrogatepass").translate(_TABLE).split()


def _grams(tokens: Words, size: int) -> list[int]:
    """The hash of every run of ``size`` words (equal runs, equal hashes, in one process)."""
    return list(map(hash, zip(*(tokens[i:] for i in range(size)), strict=False)))


def reference(text: str, size: int) -> Reference:
    """What :func:`shared_run` needs of a reference text, for runs of ``size`` words."""
    tokens = words(text)
    return Reference(
        size, frozenset(_grams(tokens, (size + 1) // 2)), frozenset(_grams(tokens, size))
    )


def shared_run(text: str, ref: Reference) -> Run | None:
    """The longest run of ``text`` whose every ``ref.size`` consecutive words occur in the
    reference; None when no ``ref.size`` consecutive words of ``text`` occur there."""
    size, half = ref.size, (ref.size + 1) // 2
    tokens = words(text)
    if len(tokens) < size:
        return None
    # A shared run [p, p + size) holds the half-run starting at the first multiple of
    # `half` from p, since half <= size - half + 1.
    if ref.probes.isdisjoint(map(hash, zip(*[iter(tokens)] * half, strict=False))):
        return None
    best_start, best_length, start = 0, 0, -1
    for index, gram in enumerate(_grams(tokens, size)):
        if gram in ref.runs:
            if start < 0:
                start = index
            if index - start + 1 > best_length:
                best_start, best_length = start, index - start + 1
        else:
            start = -1
    if not best_length:
        return None
    first, last = best_start, best_start + best_length + size - 2
    data = text.encode("utf-8", "surrogatepass")
    spans = [m.span() for m in _TOKEN.finditer(data.translate(_TABLE))]
    begin = len(data[: spans[first][0]].decode("utf-8", "surrogatepass"))
    end = begin + len(data[spans[first][0] : spans[last][1]].decode("utf-8", "surrogatepass"))
    return Run(begin, end, last - first + 1)
