"""Building the archive's parts from :class:`Settings`: backend, keys, writer, reader, chain."""

from __future__ import annotations

from typing import Any

from pipeline.archive.backend import Backend, LocalBackend, S3Backend
from pipeline.archive.chain import Chain
from pipeline.archive.crypto import ArchiveKeyError, KeyRing, load_master_key
from pipeline.archive.objstore import ObjectArchiveStore
from pipeline.archive.reader import Reader
from pipeline.archive.store import ArchiveStore
from pipeline.settings import Settings, SettingsError


def s3_client(settings: Settings) -> Any:
    """A boto3 S3 client for the archive settings (credentials never leave this call)."""
    import boto3  # noqa: PLC0415 - only the S3 backend pays for importing it
    from botocore.config import Config  # noqa: PLC0415
    options: dict[str, Any] = {
        "region_name": settings.archive_s3_region or None,
        "endpoint_url": settings.archive_s3_endpoint or None,
        "config": Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5,
                         read_timeout=30),
    }
    if settings.archive_s3_access_key_id:
        options["aws_access_key_id"] = settings.archive_s3_access_key_id.reveal()
        options["aws_secret_access_key"] = settings.archive_s3_secret_access_key.reveal()
    return boto3.client("s3", **options)


def open_backend(settings: Settings) -> Backend:
    """The backend the settings name (validated by :class:`Settings`: local, or s3 with a
    bucket)."""
    if settings.archive_backend == "local":
        return LocalBackend(settings.archive_dir, fsync=settings.archive_fsync)
    return S3Backend(s3_client(settings), settings.archive_s3_bucket, settings.archive_s3_prefix)


def master_key(settings: Settings) -> bytes | None:
    try:
        return load_master_key(settings.archive_key.reveal(), settings.archive_key_file)
    except ArchiveKeyError as exc:
        raise SettingsError(str(exc)) from None


def signing_key(settings: Settings) -> bytes | None:
    return settings.archive_signing_key.reveal().encode() or None


def key_ring(settings: Settings, backend: Backend) -> KeyRing | None:
    key = master_key(settings)
    return KeyRing(backend, key) if key else None


def open_store(settings: Settings) -> ArchiveStore | ObjectArchiveStore:
    """The writer the workers append to: local segment files, or objects in S3."""
    backend = open_backend(settings)
    if isinstance(backend, LocalBackend):
        return ArchiveStore(backend.root, fsync=settings.archive_fsync,
                            master_key=master_key(settings), signing_key=signing_key(settings))
    return ObjectArchiveStore(backend, keys=key_ring(settings, backend),
                              signing_key=signing_key(settings))


def open_reader(settings: Settings) -> Reader:
    backend = open_backend(settings)
    return Reader(backend, key_ring(settings, backend))


def open_chain(settings: Settings, backend: Backend) -> Chain:
    return Chain(backend, signing_key(settings))
