"""Prompt fingerprints for campaigns: an exact one over normalised text, and MinHash LSH bands.

Both are stable across processes and machines (CRC32 and BLAKE2, never
Python's salted ``hash``), because workers that share partitions must agree.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
import zlib

_WORD_RE = re.compile(r"[^\W\d_]+")
SHINGLE = 3
BANDS = 4
ROWS = 2
_MASK = 0xFFFFFFFF
# Fixed odd multipliers and offsets: one universal hash per MinHash row.
_HASHES = tuple(
    (0x9E3779B1 ^ (i * 0x85EBCA6B) | 1, (i * 0xC2B2AE35) & _MASK) for i in range(BANDS * ROWS)
)


def words(text: str) -> list[str]:
    """Letters-only words of the NFKC-casefolded text (digits and punctuation dropped)."""
    return _WORD_RE.findall(unicodedata.normalize("NFKC", text).casefold())


def exact_fingerprint(text: str) -> str | None:
    """One key for texts equal up to case, digits, punctuation and spacing; None if no words."""
    found = words(text)
    if not found:
        return None
    return hashlib.blake2b(" ".join(found).encode(), digest_size=10).hexdigest()


def near_fingerprints(text: str) -> list[str]:
    """LSH band keys of a MinHash over word 3-shingles: near-duplicates share a band key.

    Texts shorter than one shingle get no keys.
    """
    found = words(text)
    if len(found) < SHINGLE:
        return []
    shingles = {
        zlib.crc32(" ".join(found[i : i + SHINGLE]).encode())
        for i in range(len(found) - SHINGLE + 1)
    }
    mins = [min(((a * s + b) & _MASK) for s in shingles) for a, b in _HASHES]
    return [
        f"{band}:" + ".".join(f"{m:08x}" for m in mins[band * ROWS : (band + 1) * ROWS])
        for band in range(BANDS)
    ]
