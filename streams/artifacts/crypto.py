"""Encryption at rest: AES-256-GCM envelope encryption of artifact content.

Per blob (its address is the hash of the PLAINTEXT, so dedup works across encryption):
* a random 256-bit data key seals the content in 1 MiB chunks. The content object is a
  header - b"PAE1" and a random 4-byte nonce prefix - then the chunks, each sealed with
  nonce = prefix || chunk index (8 bytes) and associated data = address || chunk index ||
  last-chunk flag: a chunk moved, dropped, cut off at the end or taken from another blob
  fails to authenticate.
* the data key, wrapped by the key-encryption key (KEK, AES-GCM, associated data = address),
  is a small separate object `<address>.key`, canonical JSON {"kek_id", "nonce",
  "wrapped_key"}: `rotate` re-wraps these under a new KEK and never touches content.
* a read authenticates each chunk before yielding it and checks the plaintext hash against
  the address at the end. A wrong key or any altered byte of either object raises
  `DecryptionError` naming the address and key id - never garbage.

The address is needed before the first chunk is sealed, so a store reads its source twice:
bytes are hashed at once, a seekable file is read again, and any other stream is spooled to
an anonymous temporary file sealed with a throwaway key (plaintext never reaches the disk).
Content already there (content object of the expected size and its key object) is not
written again: `newly_stored` is false.

Concurrent writers of the same content: the key object is created exclusively, and a writer
that finds one seals under the data key it holds, so whichever content object lands last
matches the key object. After writing, a writer checks the key object still holds its data
key and writes again if not: that also covers stores whose exclusive create is not atomic
(moto's server, some S3-compatible stores).

KEKs come from a keyring (`Keyring.from_settings`): the file PIT_KEYRING, JSON
{"active": id, "keys": {id: base64 of 32 bytes}}, or PIT_KEYRING_KEYS "id:base64,..." (the
first is active unless PIT_KEYRING_ACTIVE names another); never from events or logs, and a
keyring's repr leaves its keys out.
"""

from __future__ import annotations

import base64
import json
import os
import re
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeGuard

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from streams.artifacts.errors import DecryptionError
from streams.artifacts.settings import ArtifactSettings
from streams.blobs import HashedChunks, Stored, address_of, chunks_of, is_address, verified
from streams.errors import BlobNotFoundError, BlobStoreError, ConfigError

if TYPE_CHECKING:
    from streams.artifacts.storage import ObjectBackend, Source

KEY_SUFFIX = ".key"
CHUNK_BYTES = 1 << 20
TAG_BYTES = 16
HEADER = struct.Struct(">4s4s")  # format magic, nonce prefix
MAGIC = b"PAE1"
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_WRITE_ATTEMPTS = 5


@dataclass(frozen=True)
class Keyring:
    """Key-encryption keys by id; `active` wraps new data keys."""

    active: str
    keys: dict[str, bytes] = field(repr=False)

    def __post_init__(self) -> None:
        for kek_id, key in self.keys.items():
            if not _KEY_ID.fullmatch(kek_id):
                raise ConfigError(f"keyring: key id {kek_id!r} is not 1-64 letters, digits, "
                                  "'.', '_' or '-'")
            if len(key) != 32:
                raise ConfigError(f"keyring: key {kek_id!r} is {len(key)} bytes, not 32 "
                                  "(AES-256)")
        if self.active not in self.keys:
            raise ConfigError(f"keyring: the active key id {self.active!r} is not among its "
                              f"keys {sorted(self.keys)}")

    @classmethod
    def from_settings(cls, settings: ArtifactSettings) -> Keyring | None:
        """The configured keyring: PIT_KEYRING's file, else PIT_KEYRING_KEYS, else none."""
        if settings.keyring_file is not None:
            return cls.from_file(settings.keyring_file)
        if settings.keyring_keys:
            return cls.from_text(settings.keyring_keys, settings.keyring_active)
        return None

    @classmethod
    def from_file(cls, path: Path) -> Keyring:
        try:
            document = json.loads(path.read_text())
            keys = {kek_id: _key_bytes(text) for kek_id, text in document["keys"].items()}
            active = document["active"]
        except OSError as exc:
            raise ConfigError(f"PIT_KEYRING: cannot read {path}: {exc.strerror}") from None
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(f"PIT_KEYRING: {path} is not a keyring (expected JSON "
                              '{"active": id, "keys": {id: base64 of 32 bytes}})') from None
        return cls(active, keys)

    @classmethod
    def from_text(cls, text: str, active: str | None = None) -> Keyring:
        """From "id:base64,id:base64"; the first is active unless `active` names another."""
        keys: dict[str, bytes] = {}
        for item in text.split(","):
            kek_id, colon, encoded = item.strip().partition(":")
            if kek_id in keys:
                raise ConfigError(f"PIT_KEYRING_KEYS: key id {kek_id!r} is there twice")
            try:
                if not colon:
                    raise ValueError
                keys[kek_id] = _key_bytes(encoded)
            except ValueError:
                raise ConfigError(f"PIT_KEYRING_KEYS: {kek_id!r} is not id:base64 (entries "
                                  "are separated by commas)") from None
        return cls(active or next(iter(keys)), keys)

    def key(self, kek_id: str) -> bytes | None:
        return self.keys.get(kek_id)


def _key_bytes(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


# --- the content format (pure) -------------------------------------------------------------

def sealed_size(size: int) -> int:
    """The size of the content object holding `size` bytes of plaintext."""
    chunks = max(1, -(-size // CHUNK_BYTES))
    return HEADER.size + size + chunks * TAG_BYTES


def plaintext_size(sealed: int) -> int:
    body = sealed - HEADER.size
    return body - max(1, -(-body // (CHUNK_BYTES + TAG_BYTES))) * TAG_BYTES


class _Invalid(DecryptionError):
    """Why a content object does not open (the store adds the address and key id)."""


def seal(label: bytes, key: bytes, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The content object of `chunks` under the data key `key`; `label` is the address."""
    prefix = os.urandom(4)
    aead = AESGCM(key)
    yield HEADER.pack(MAGIC, prefix)
    for index, block, last in _numbered(_Bytes(chunks), CHUNK_BYTES):
        yield aead.encrypt(prefix + index.to_bytes(8, "big"), block, _aad(label, index, last))


def unseal(label: bytes, key: bytes, sealed: Iterable[bytes]) -> Iterator[bytes]:
    """The plaintext chunks of a content object, each authenticated before it is yielded;
    `_Invalid` at the first that is not (truncation shows at the end)."""
    reader = _Bytes(sealed)
    magic, prefix = HEADER.unpack(reader.read(HEADER.size).ljust(HEADER.size, b"\0"))
    if magic != MAGIC:
        raise _Invalid("it is not sealed content of a known format")
    aead = AESGCM(key)
    for index, record, last in _numbered(reader, CHUNK_BYTES + TAG_BYTES):
        try:
            yield aead.decrypt(prefix + index.to_bytes(8, "big"), record,
                               _aad(label, index, last))
        except InvalidTag:
            raise _Invalid(f"chunk {index} does not authenticate (altered, reordered, "
                           "truncated or another blob's)") from None


def _aad(label: bytes, index: int, last: bool) -> bytes:
    return label + index.to_bytes(8, "big") + (b"\1" if last else b"\0")


def _numbered(reader: _Bytes, size: int) -> Iterator[tuple[int, bytes, bool]]:
    """(index, block, is last) for blocks of `size` bytes, at least one (empty content is
    one empty block); a block is last when nothing follows it."""
    block, index = reader.read(size), 0
    while True:
        following = reader.read(size)
        yield index, block, not following
        if not following:
            return
        block, index = following, index + 1


class _Bytes:
    """Exact-size reads over chunks of any size (a whole 1 GB `bytes` too: only what a read
    returns is copied)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks, self._pending = iter(chunks), memoryview(b"")

    def read(self, size: int) -> bytes:
        parts = []
        while size:
            if not self._pending:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._pending = memoryview(chunk)
            parts.append(self._pending[:size])
            self._pending = self._pending[size:]
            size -= len(parts[-1])
        return b"".join(parts)


# --- key objects ---------------------------------------------------------------------------

def _key_object(kek_id: str, nonce: bytes, wrapped: bytes) -> bytes:
    return json.dumps({"kek_id": kek_id, "nonce": base64.b64encode(nonce).decode(),
                       "wrapped_key": base64.b64encode(wrapped).decode()},
                      sort_keys=True, separators=(",", ":")).encode()


def wrap(keyring: Keyring, address: str, data_key: bytes) -> bytes:
    """The key object of `address`: `data_key` wrapped by the keyring's active key."""
    nonce = os.urandom(12)
    kek = keyring.keys[keyring.active]
    return _key_object(keyring.active, nonce,
                       AESGCM(kek).encrypt(nonce, data_key, address.encode()))


def _parse_key_object(data: bytes) -> tuple[str, bytes, bytes] | None:
    """(kek id, nonce, wrapped key), or None unless `data` is exactly the canonical form
    (so no altered byte - spacing, base64 padding - passes as the same object)."""
    try:
        document = json.loads(data)
        kek_id = document["kek_id"]
        nonce = base64.b64decode(document["nonce"], validate=True)
        wrapped = base64.b64decode(document["wrapped_key"], validate=True)
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(kek_id, str) or data != _key_object(kek_id, nonce, wrapped):
        return None
    return kek_id, nonce, wrapped


# --- the store -----------------------------------------------------------------------------

class EncryptedStore:
    """A `BlobBackend` that encrypts what it stores on an `ObjectBackend`."""

    def __init__(self, backend: ObjectBackend, keyring: Keyring) -> None:
        self.backend, self.keyring = backend, keyring
        self.kind = backend.kind

    def __contains__(self, address: object) -> bool:
        return (is_address(address) and self.backend.raw_size(str(address)) is not None
                and self.backend.raw_size(str(address), suffix=KEY_SUFFIX) is not None)

    def size(self, address: str) -> int:
        sealed = self.backend.raw_size(address)
        if sealed is None:
            raise BlobNotFoundError(f"unknown {self.kind} {address}")
        return plaintext_size(sealed)

    def store(self, source: Source) -> Stored:
        with _replayable(source) as (address, size, again):
            if (self.backend.raw_size(address) == sealed_size(size)
                    and self.backend.raw_size(address, suffix=KEY_SUFFIX) is not None):
                return Stored(address, size, False)
            for _ in range(_WRITE_ATTEMPTS):
                data_key = self._data_key(address)
                self.backend.write_raw(address, seal(address.encode(), data_key, again()))
                if self.unwrap(address)[1] == data_key:  # still the key object's data key
                    return Stored(address, size, True)
        raise BlobStoreError(f"{self.kind} {address}: its key object kept changing while the "
                             f"content was written ({_WRITE_ATTEMPTS} attempts)")

    def stream(self, address: str) -> Iterator[bytes]:
        kek_id, data_key = self.unwrap(address)
        sealed = self.backend.read_raw(address)
        return verified(self._opened(address, kek_id, data_key, sealed), address, self.kind,
                        "decrypted content")

    def get(self, address: str) -> bytes:
        return b"".join(self.stream(address))

    def unwrap(self, address: str) -> tuple[str, bytes]:
        """(key id, data key) of `address`, from its key object."""
        return self._unwrapped(address, *self._key_object(address))

    def _key_object(self, address: str) -> tuple[str, bytes, bytes]:
        """(key id, nonce, wrapped data key) of `address`."""
        try:
            data = b"".join(self.backend.read_raw(address, suffix=KEY_SUFFIX))
        except BlobNotFoundError:
            if self.backend.raw_size(address) is None:
                raise BlobNotFoundError(f"unknown {self.kind} {address}") from None
            raise self._error(address, None, "its key object is missing") from None
        parsed = _parse_key_object(data)
        if parsed is None:
            raise self._error(address, None, "its key object is malformed")
        return parsed

    def _unwrapped(self, address: str, kek_id: str, nonce: bytes, wrapped: bytes
                   ) -> tuple[str, bytes]:
        kek = self.keyring.key(kek_id)
        if kek is None:
            raise self._error(address, kek_id, "that key id is not in the keyring")
        try:
            return kek_id, AESGCM(kek).decrypt(nonce, wrapped, address.encode())
        except (InvalidTag, ValueError):  # ValueError: a nonce of an impossible length
            raise self._error(address, kek_id, "its data key does not unwrap (a wrong key, "
                                               "or an altered or moved key object)") from None

    def _data_key(self, address: str) -> bytes:
        """A new data key whose key object this call created, or the one already there."""
        data_key = AESGCM.generate_key(256)
        if self.backend.write_raw(address, [wrap(self.keyring, address, data_key)],
                                  suffix=KEY_SUFFIX, exclusive=True):
            return data_key
        return self.unwrap(address)[1]

    def _opened(self, address: str, kek_id: str, data_key: bytes, sealed: Iterable[bytes]
                ) -> Iterator[bytes]:
        try:
            yield from unseal(address.encode(), data_key, sealed)
        except _Invalid as exc:
            raise self._error(address, kek_id, str(exc)) from None

    def _error(self, address: str, kek_id: str | None, reason: str) -> DecryptionError:
        key = f" with key {kek_id!r}" if kek_id is not None else ""
        return DecryptionError(f"cannot decrypt {self.kind} {address}{key}: {reason}")


def rotate(store: EncryptedStore, new_keyring: Keyring) -> int:
    """Re-wrap every data key of `store` under `new_keyring`'s active key (the store's keyring
    must hold the keys they are wrapped with now); content is not touched. Returns how many
    were re-wrapped: those already under the new key are left, so a rerun after a failure, or
    after writers that still used the old key, finishes the job."""
    count = 0
    for address in store.backend.raw_addresses(KEY_SUFFIX):
        key_object = store._key_object(address)
        if key_object[0] != new_keyring.active:
            data_key = store._unwrapped(address, *key_object)[1]
            store.backend.write_raw(address, [wrap(new_keyring, address, data_key)],
                                    suffix=KEY_SUFFIX)
            count += 1
    return count


def _seekable(source: Source) -> TypeGuard[BinaryIO]:
    """A file-like source that can go back to where it was (no spool needed)."""
    seekable = getattr(source, "seekable", None)
    return callable(seekable) and bool(seekable())


@contextmanager
def _replayable(source: Source) -> Iterator[tuple[str, int, Callable[[], Iterator[bytes]]]]:
    """The address and size of `source`, and a way to read it again from its start."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        yield address_of(data), len(data), lambda: iter((data,))
    elif _seekable(source):
        start = source.tell()
        hashed = HashedChunks(chunks_of(source))
        for _ in hashed:
            pass

        def again() -> Iterator[bytes]:
            source.seek(start)
            return chunks_of(source)

        yield hashed.address, hashed.size, again
    else:
        spool_key = AESGCM.generate_key(256)  # lives only in this call: the spool's throwaway
        with tempfile.TemporaryFile() as spool:
            hashed = HashedChunks(chunks_of(source))
            for sealed in seal(b"spool", spool_key, hashed):
                spool.write(sealed)

            def again() -> Iterator[bytes]:
                spool.seek(0)
                return unseal(b"spool", spool_key, chunks_of(spool))

            yield hashed.address, hashed.size, again
