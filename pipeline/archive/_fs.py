"""Durable local file operations and the per-partition lock file."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from pipeline.archive.errors import ArchiveLockTimeout

DIR_MODE = 0o700  # the archive holds raw prompts, secrets and PII: owner only
FILE_MODE = 0o600


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs(path: Path) -> set[Path]:
    """Create ``path`` and its missing parents; return the directories to fsync to make the new
    entries durable (the parent of each directory that was missing)."""
    missing: list[Path] = []
    probe = path
    while not probe.is_dir():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        # FileExistsError: created concurrently by another store; fsync its parent all the same.
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, DIR_MODE)
    return {d.parent for d in missing}


class PartitionLock:
    """An exclusive ``flock`` on ``<topic>/_locks/p<N>.lock``, held only during an operation.

    The file also carries a *writer token*: whoever changes the partition's segments writes a token
    unique to it. A store whose remembered token still matches knows nobody else touched the
    partition since, so its in-memory state (watermark, open segment, event ids) is current.
    The kernel drops the lock when its holder dies, even by SIGKILL.
    """

    TOKEN_SIZE = 24

    def __init__(self, path: Path, *, fsync: bool) -> None:
        self.path = path
        self._fsync = fsync
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            # The topic's directory is made here first: make its entry durable like the data's.
            for directory in makedirs(self.path.parent):
                if self._fsync:
                    fsync_dir(directory)
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        return self._fd

    def acquire(self, timeout: float) -> None:
        fd = self._open()
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ArchiveLockTimeout(
                        f"{self.path}: another ArchiveStore held this partition for more than "
                        f"{timeout:g} s") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def read_token(self) -> bytes:
        return os.pread(self._open(), self.TOKEN_SIZE, 0).ljust(self.TOKEN_SIZE, b"\0")

    def write_token(self, token: bytes) -> None:
        os.pwrite(self._open(), token, 0)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
