"""Where archive objects live: a local directory or an S3-compatible bucket, behind one interface.

Keys are POSIX-style relative names (``llm.events/dt=2026-11-22/hour=14/p0-….seg``). Every write
is whole-object and durable when it returns: the local backend writes a temporary file, fsyncs it
and renames (or links) it into place, then fsyncs the directory; S3 acknowledges a PUT only once
the object is stored. :meth:`Backend.put_new` creates an object only if its key is free, which is
what keeps each partition's manifest chain linear when several processes append to it.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from pipeline.archive._fs import FILE_MODE, fsync_dir, makedirs, write_all
from pipeline.archive.errors import ArchiveError


class ObjectMissing(ArchiveError, KeyError):
    """The key names no object."""

    def __str__(self) -> str:
        return f"{self.args[0]}: no such archive object"


class Backend(Protocol):
    """Whole-object storage for segments, manifests and key envelopes."""

    def describe(self, key: str) -> str:
        """Where ``key`` is, for messages (a file path or an ``s3://`` URL)."""

    def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (a directory-like prefix ending in ``/``, or ``""``),
        sorted."""

    def get(self, key: str) -> bytes:
        """The object's bytes; :class:`ObjectMissing` if there is none."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` durably, replacing any object there."""

    def put_new(self, key: str, data: bytes) -> bool:
        """Store ``data`` only if ``key`` is free; False (nothing written) if it is taken."""

    def delete(self, key: str) -> None:
        """Remove the object (no error if it is already gone)."""


class LocalBackend:
    """Objects as files under ``root`` (owner-only permissions, fsynced unless told not to)."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self._fsync = fsync

    def path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(p in {"", ".", ".."} for p in parts):
            raise ValueError(f"invalid archive key {key!r}")
        return self.root.joinpath(*parts)

    def describe(self, key: str) -> str:
        return str(self.path(key))

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return []
        keys: list[str] = []
        for directory, subdirs, files in os.walk(base):
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
            rel = Path(directory).relative_to(self.root).as_posix()
            keys += [f"{rel}/{f}" if rel != "." else f for f in files if not f.startswith(".")]
        return sorted(keys)

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectMissing(self.describe(key)) from None

    def _temp(self, target: Path, data: bytes) -> tuple[Path, set[Path]]:
        dirs = makedirs(target.parent)
        temp = target.parent / f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            write_all(fd, data)
            if self._fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            temp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return temp, dirs

    def _sync_dirs(self, dirs: set[Path], target: Path) -> None:
        if self._fsync:
            for directory in sorted(dirs | {target.parent}):
                fsync_dir(directory)

    def put(self, key: str, data: bytes) -> None:
        target = self.path(key)
        temp, dirs = self._temp(target, data)
        try:
            os.replace(temp, target)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        self._sync_dirs(dirs, target)

    def put_new(self, key: str, data: bytes) -> bool:
        target = self.path(key)
        temp, dirs = self._temp(target, data)
        try:
            os.link(temp, target)  # atomic create-if-absent, with the content already durable
        except FileExistsError:
            return False
        finally:
            temp.unlink(missing_ok=True)
        self._sync_dirs(dirs, target)
        return True

    def delete(self, key: str) -> None:
        target = self.path(key)
        try:
            target.unlink()
        except FileNotFoundError:
            return
        if self._fsync:
            fsync_dir(target.parent)
        for parent in target.parents:  # drop directories the delete left empty (pruned hours)
            if parent == self.root or self.root not in parent.parents:
                break
            with contextlib.suppress(OSError):
                parent.rmdir()


class S3Backend:
    """Objects in an S3-compatible bucket under ``prefix`` (boto3 client supplied by the caller)."""

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self._client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self._client.get_paginator("list_objects_v2")
        start = len(self.prefix)
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix):
            keys += [item["Key"][start:] for item in page.get("Contents", ())]
        return sorted(keys)

    def get(self, key: str) -> bytes:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        except self._client.exceptions.NoSuchKey:
            raise ObjectMissing(self.describe(key)) from None
        body: bytes = response["Body"].read()
        return body

    def put(self, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    def put_new(self, key: str, data: bytes) -> bool:
        try:
            self._client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data,
                                    IfNoneMatch="*")
        except self._client.exceptions.ClientError as exc:
            if _status(exc) in {409, 412}:  # 412: taken; 409: a concurrent conditional write
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=self.prefix + key)


def _status(exc: Any) -> int:
    status: int = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return status



def fetch(backend: Backend, keys: Iterable[str], *, workers: int = 16
          ) -> Iterator[tuple[str, bytes | None]]:
    """(key, bytes) for each key in order, None for a missing object; up to ``workers`` GETs in
    flight (object storage answers one request at a time slowly, many at once quickly)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        window: deque[tuple[str, Future[bytes]]] = deque()
        for key in keys:
            window.append((key, pool.submit(backend.get, key)))
            if len(window) > workers:
                yield _result(*window.popleft())
        while window:
            yield _result(*window.popleft())


def _result(key: str, future: Future[bytes]) -> tuple[str, bytes | None]:
    try:
        return key, future.result()
    except ObjectMissing:
        return key, None
