"""Encryption at rest: AES-256-GCM with envelope keys, one data key per UTC day.

The *master key* (32 bytes: ``LLMTRAIL_ARCHIVE_KEY`` as base64, or the file named by
``LLMTRAIL_ARCHIVE_KEY_FILE``) never touches the archive. Each day's *data key* is random, stored
wrapped (AES-256-GCM under the master key) at ``_keys/dt=YYYY-MM-DD.json``, and encrypts the
records blocks of that day's segments. A block's payload is ``nonce (12 bytes) | ciphertext+tag``
of its zstd frame; the associated data binds it to its topic, partition and offsets, so a block
moved elsewhere does not decrypt. Keys are never logged; messages name key ids only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pipeline.archive.backend import Backend, ObjectMissing
from pipeline.archive.errors import ArchiveError

KEY_BYTES = 32
NONCE_BYTES = 12
KEYS_DIR = "_keys"


class ArchiveKeyError(ArchiveError):
    """A key is missing, malformed, or does not open what it should."""


def parse_master_key(text: str, origin: str) -> bytes:
    """32 key bytes from base64 (or hex) text; ``origin`` names where it came from."""
    cleaned = text.strip()
    for decode in (base64.b64decode, bytes.fromhex):
        try:
            key = decode(cleaned)
        except (binascii.Error, ValueError):
            continue
        if len(key) == KEY_BYTES:
            return key
    raise ArchiveKeyError(f"{origin}: expected a 32-byte key as base64 or hex (make one with "
                          "`python -c \"import os,base64;print(base64.b64encode(os.urandom(32))"
                          ".decode())\"`)")


def load_master_key(text: str, path: str) -> bytes | None:
    """The master key from the setting's text or its file; None when neither is set."""
    if text and path:
        raise ArchiveKeyError("set LLMTRAIL_ARCHIVE_KEY or LLMTRAIL_ARCHIVE_KEY_FILE, not both")
    if text:
        return parse_master_key(text, "LLMTRAIL_ARCHIVE_KEY")
    if path:
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise ArchiveKeyError(f"LLMTRAIL_ARCHIVE_KEY_FILE={path}: {exc.strerror}") from None
        if len(raw) == KEY_BYTES:
            return raw
        return parse_master_key(raw.decode("ascii", "replace"),
                                f"LLMTRAIL_ARCHIVE_KEY_FILE={path}")
    return None


def day_key_id(hour: int) -> str:
    start = datetime.fromtimestamp(hour * 3600, tz=UTC)
    return f"dt={start:%Y-%m-%d}"


def block_aad(topic: str, partition: int, first_offset: int, last_offset: int) -> bytes:
    return f"llmtrail-archive/v1/{topic}/{partition}/{first_offset}-{last_offset}".encode()


class KeyRing:
    """The day keys of an archive, unwrapped with the master key and cached."""

    def __init__(self, backend: Backend, master_key: bytes) -> None:
        self._backend = backend
        self._master = AESGCM(master_key)
        self.master_id = hashlib.sha256(b"llmtrail-kek-id" + master_key).hexdigest()[:16]
        self._days: dict[str, AESGCM] = {}
        self._lock = threading.Lock()

    def _key(self, key_id: str) -> str:
        return f"{KEYS_DIR}/{key_id}.json"

    def _unwrap(self, key_id: str, raw: bytes) -> AESGCM:
        where = self._backend.describe(self._key(key_id))
        try:
            body = orjson.loads(raw)
            nonce = base64.b64decode(body["nonce"])
            wrapped = base64.b64decode(body["wrapped"])
        except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error) as exc:
            raise ArchiveKeyError(f"{where}: malformed key envelope ({exc})") from None
        try:
            return AESGCM(self._master.decrypt(nonce, wrapped, key_id.encode()))
        except InvalidTag:
            raise ArchiveKeyError(
                f"{where}: the master key (id {self.master_id}) does not open this data key "
                f"(wrapped by master key id {body.get('master_id')!r}): wrong "
                "LLMTRAIL_ARCHIVE_KEY?") from None

    def day(self, key_id: str, *, create: bool) -> AESGCM:
        """The data key ``key_id``; with ``create``, made (and stored) if it does not exist."""
        with self._lock:
            cached = self._days.get(key_id)
            if cached is not None:
                return cached
            try:
                aead = self._unwrap(key_id, self._backend.get(self._key(key_id)))
            except ObjectMissing:
                if not create:
                    raise ArchiveKeyError(f"{self._backend.describe(self._key(key_id))}: data "
                                          "key missing: the segments of that day cannot be "
                                          "decrypted") from None
                aead = self._create(key_id)
            self._days[key_id] = aead
            return aead

    def _create(self, key_id: str) -> AESGCM:
        data_key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(NONCE_BYTES)
        envelope = orjson.dumps({
            "format": 1, "key_id": key_id, "alg": "AES-256-GCM", "master_id": self.master_id,
            "nonce": base64.b64encode(nonce).decode(),
            "wrapped": base64.b64encode(self._master.encrypt(nonce, data_key,
                                                             key_id.encode())).decode(),
        })
        if self._backend.put_new(self._key(key_id), envelope):
            return AESGCM(data_key)
        return self._unwrap(key_id, self._backend.get(self._key(key_id)))  # another writer won

    def encrypt(self, key_id: str, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self.day(key_id, create=True).encrypt(nonce, plaintext, aad)

    def decrypt(self, key_id: str, payload: bytes, aad: bytes, where: str) -> bytes:
        try:
            return self.day(key_id, create=False).decrypt(payload[:NONCE_BYTES],
                                                          payload[NONCE_BYTES:], aad)
        except InvalidTag:
            raise ArchiveKeyError(f"{where}: block does not decrypt with data key {key_id} "
                                  "(altered, or moved from another place)") from None
