"""Reading JSON-lines input for the CLI commands."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import BinaryIO


def read_lines(source: str) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes without line break) of a file or ``-`` (stdin); skips blank lines."""
    stream: BinaryIO = sys.stdin.buffer if source == "-" else open(source, "rb")  # noqa: SIM115
    try:
        for number, line in enumerate(stream, start=1):
            stripped = line.rstrip(b"\r\n")
            if stripped.strip():
                yield number, stripped
    finally:
        if source != "-":
            stream.close()
