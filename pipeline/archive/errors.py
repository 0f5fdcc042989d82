"""Errors of the archive store. Every one says which file and where."""

from __future__ import annotations

from pathlib import Path


class ArchiveError(Exception):
    """Root of the archive's own errors (an ``OSError`` from the disk propagates as is)."""


class CorruptSegmentError(ArchiveError):
    """A segment holds bytes that are not a valid block and are not a torn trailing write."""

    def __init__(self, path: Path | str, offset: int, reason: str) -> None:
        super().__init__(path, offset, reason)
        self.path = path
        self.offset = offset
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: corrupt archive data at byte {self.offset}: {self.reason}"


class ArchiveLockTimeout(ArchiveError, TimeoutError):
    """Another ArchiveStore kept a partition locked for longer than the lock timeout.

    A ``TimeoutError`` (hence an ``OSError``), so callers that retry disk errors retry this too.
    """


class ArchiveClosedError(ArchiveError):
    """The store was closed."""
