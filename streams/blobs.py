"""The blob store: content by SHA-256 address, the claim check of events that would be too
large (DESIGN.md: events carry facts, not blobs). Node runners put large node outputs here
and report the address; definitions too large for one event live here too
(streams/dag/definition_store.py); the Artifact Store (issue 5) builds on it.

An address is "sha256:<64 hex>" of the content. `FileBlobStore` keeps a blob at
`<root>/<first 2 hex>/<other 62 hex><suffix>` (the fan-out keeps directories small):
* writes are atomic - a temporary file in the same directory tree, fsync, rename, fsync of
  the directory - so a reader never sees part of a blob, and writers of the same content at
  the same time (threads or processes) leave one whole file;
* reads verify the hash: content that does not match its address raises
  `BlobIntegrityError` naming the address, never comes back as if it were fine;
* `put_stream`/`stream` move content in chunks, so a blob need not fit in memory (a
  streamed read verifies at its end: use what it yielded only once it finished);
* `store` says whether the content is new (`Stored.newly_stored`): a new file is linked into
  place, which only one of several writers of the same content can do;
* raw objects (`write_raw`/`read_raw`/`delete_raw`) sit beside the blobs under an address
  and a suffix, unverified: the Artifact Store's encrypted content and its key objects
  (streams/artifacts/crypto.py), whose integrity the encryption checks, and the compressed
  copies of the storage tiers (streams/stale/tiers.py).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeGuard

from streams.config import Settings
from streams.errors import BlobIntegrityError, BlobNotFoundError, BlobStoreError

ADDRESS = re.compile(r"sha256:([0-9a-f]{64})")
CHUNK_BYTES = 1 << 20
_TMP_PREFIX = ".tmp-"


@dataclass(frozen=True)
class Stored:
    """What storing content did: its address and size, and whether it was not there before."""

    address: str
    size: int
    newly_stored: bool


def address_of(data: bytes) -> str:
    """The address of `data`: "sha256:<hex>"."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_address(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and ADDRESS.fullmatch(value) is not None


def digest_of(address: object, kind: str = "blob") -> str:
    """The hex digest of a well-formed address; `BlobStoreError` for anything else."""
    match = ADDRESS.fullmatch(address) if isinstance(address, str) else None
    if match is None:
        raise BlobStoreError(f"not a {kind} hash: {address!r} (expected sha256:<64 hex digits>)")
    return match.group(1)


class HashedChunks:
    """Chunks passing through, hashed and counted: `address` and `size` once all are through."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks, self._digest, self.size = chunks, hashlib.sha256(), 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self._digest.update(chunk)
            self.size += len(chunk)
            yield chunk

    @property
    def address(self) -> str:
        return "sha256:" + self._digest.hexdigest()


def verified(chunks: Iterable[bytes], address: str, kind: str, holder: str) -> Iterator[bytes]:
    """`chunks` as they come, then `BlobIntegrityError` if they do not hash to `address`
    (`holder` says what held them: "file", "object")."""
    hashed = HashedChunks(chunks)
    yield from hashed
    if hashed.address != address:
        raise _corrupt(kind, address, holder, hashed.address)


def _corrupt(kind: str, address: str, holder: str, actual: str) -> BlobIntegrityError:
    return BlobIntegrityError(f"{kind} {address} is corrupt: its {holder} hashes to {actual}")


def blob_store(settings: Settings) -> FileBlobStore:
    """The Pit's blob store: `blobs/` in the data directory, shared by `pit up`, runners and
    clients on this machine."""
    return FileBlobStore(settings.data_dir / "blobs")


def chunks_of(source: Iterable[bytes] | BinaryIO, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    if hasattr(source, "read"):
        while chunk := source.read(size):
            yield chunk
    else:
        yield from source


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:  # the rename itself must survive a crash too
        os.fsync(fd)
    finally:
        os.close(fd)


class FileBlobStore:
    """Blobs in a directory. `kind` names what is stored in error messages ("definition")."""

    def __init__(self, root: str | Path, *, suffix: str = "", kind: str = "blob") -> None:
        self.root = Path(root)
        self.suffix, self.kind = suffix, kind

    def path_of(self, address: str) -> Path:
        digest = digest_of(address, self.kind)
        return self.root / digest[:2] / f"{digest[2:]}{self.suffix}"

    def __contains__(self, address: object) -> bool:
        return is_address(address) and self.path_of(address).exists()

    def size(self, address: str) -> int:
        try:
            return self.path_of(address).stat().st_size
        except FileNotFoundError:
            raise BlobNotFoundError(f"unknown {self.kind} {address}") from None

    # --- writing ---------------------------------------------------------------------------

    def put(self, data: bytes) -> str:
        """Store `data` (idempotent); returns its address."""
        return self.store(data).address

    def put_stream(self, source: Iterable[bytes] | BinaryIO, chunk_size: int = CHUNK_BYTES
                   ) -> str:
        """Store the content of a binary file or an iterable of chunks, hashing as it is
        written; returns its address."""
        return self.store(source, chunk_size).address

    def store(self, source: bytes | Iterable[bytes] | BinaryIO, chunk_size: int = CHUNK_BYTES
              ) -> Stored:
        """Store bytes, a binary file or an iterable of chunks (streamed, hashed as written)."""
        if isinstance(source, bytes | bytearray | memoryview):
            data = bytes(source)
            address = address_of(data)
            path = self.path_of(address)
            if self._holds(path, len(data)):
                return Stored(address, len(data), False)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._write(path.parent, [data])
            return Stored(address, len(data), self._place(tmp, path, len(data)))
        self.root.mkdir(parents=True, exist_ok=True)
        hashed = HashedChunks(chunks_of(source, chunk_size))
        tmp = self._write(self.root, hashed)
        address, size = hashed.address, hashed.size
        path = self.path_of(address)
        if self._holds(path, size):
            tmp.unlink()
            return Stored(address, size, False)
        path.parent.mkdir(parents=True, exist_ok=True)
        return Stored(address, size, self._place(tmp, path, size))

    def _place(self, tmp: Path, path: Path, size: int) -> bool:
        """Move the finished `tmp` to `path`; True if this call put the content there."""
        if self._link(tmp, path):
            return True
        if self._holds(path, size):  # another writer was first, with the same bytes
            tmp.unlink()
            return False
        self._rename(tmp, path)  # a damaged file: replace it
        return True

    @staticmethod
    def _link(tmp: Path, path: Path) -> bool:
        """Link `tmp` in at `path` unless a file is there (then `tmp` stays for the caller);
        unlike a rename, only one of several writers can succeed."""
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.unlink()
        _fsync_directory(path.parent)
        return True

    @staticmethod
    def _holds(path: Path, size: int) -> bool:
        """A whole file is there already. A size that differs is a damaged file: rewrite it
        (a damaged one of the right size is caught when read)."""
        try:
            return path.stat().st_size == size
        except FileNotFoundError:
            return False

    def _write(self, directory: Path, chunks: Iterable[bytes], path: Path | None = None
               ) -> Path:
        """Write `chunks` to a fresh temporary file in `directory`, fsynced; renamed to
        `path` when given, else left for the caller (who knows the address only now)."""
        fd, name = tempfile.mkstemp(dir=directory, prefix=_TMP_PREFIX)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            if path is not None:
                self._rename(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    @staticmethod
    def _rename(tmp: Path, path: Path) -> None:
        try:
            os.replace(tmp, path)  # atomic: same content from any writer, whoever is last
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)

    # --- reading ---------------------------------------------------------------------------

    def get(self, address: str) -> bytes:
        """The content at `address`, verified against it."""
        path = self.path_of(address)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobNotFoundError(f"unknown {self.kind} {address}") from None
        actual = address_of(data)
        if actual != address:
            raise _corrupt(self.kind, address, "file", actual)
        return data

    def stream(self, address: str, chunk_size: int = CHUNK_BYTES) -> Iterator[bytes]:
        """The content at `address` in chunks; raises `BlobIntegrityError` after the last
        chunk if the content does not match its address."""
        path = self.path_of(address)
        try:
            f = path.open("rb")
        except FileNotFoundError:
            raise BlobNotFoundError(f"unknown {self.kind} {address}") from None
        return verified(_read(f, chunk_size), address, self.kind, "file")

    # --- raw objects beside the blobs (not checked against the address) ------------------

    def raw_path(self, address: str, suffix: str = "") -> Path:
        path = self.path_of(address)
        return path.with_name(path.name + suffix)

    def write_raw(self, address: str, chunks: Iterable[bytes], *, suffix: str = "",
                  exclusive: bool = False) -> bool:
        """Write `chunks` atomically as the object `suffix` of `address`, replacing one that is
        there, or with `exclusive` only if there is none; True if written."""
        path = self.raw_path(address, suffix)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not exclusive:
            self._write(path.parent, chunks, path)
            return True
        tmp = self._write(path.parent, chunks)
        if self._link(tmp, path):
            return True
        tmp.unlink()
        return False

    def read_raw(self, address: str, *, suffix: str = "", chunk_size: int = CHUNK_BYTES
                 ) -> Iterator[bytes]:
        try:
            f = self.raw_path(address, suffix).open("rb")
        except FileNotFoundError:
            raise BlobNotFoundError(f"unknown {self.kind} {address}{suffix}") from None
        return _read(f, chunk_size)

    def raw_size(self, address: str, *, suffix: str = "") -> int | None:
        """The size of the object, None if there is none."""
        try:
            return self.raw_path(address, suffix).stat().st_size
        except FileNotFoundError:
            return None

    def delete_raw(self, address: str, *, suffix: str = "") -> bool:
        """Delete the object `suffix` of `address` (with "", the blob itself); True if there
        was one. The directory is fsynced: a deletion a caller relies on (a tier move's
        source, a purge) must not come back after a crash."""
        path = self.raw_path(address, suffix)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        _fsync_directory(path.parent)
        return True

    def raw_addresses(self, suffix: str) -> Iterator[str]:
        """The addresses that have an object `suffix`."""
        ending = self.suffix + suffix
        for path in self.root.glob(f"??/*{ending}"):
            address = f"sha256:{path.parent.name}{path.name.removesuffix(ending)}"
            if is_address(address) and path.name.endswith(ending):
                yield address


def _read(f: BinaryIO, chunk_size: int) -> Iterator[bytes]:
    with f:
        while chunk := f.read(chunk_size):
            yield chunk
