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
  streamed read verifies at its end: use what it yielded only once it finished).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from streams.config import Settings
from streams.errors import BlobIntegrityError, BlobNotFoundError, BlobStoreError

ADDRESS = re.compile(r"sha256:([0-9a-f]{64})")
CHUNK_BYTES = 1 << 20
_TMP_PREFIX = ".tmp-"


def address_of(data: bytes) -> str:
    """The address of `data`: "sha256:<hex>"."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_address(value: object) -> bool:
    return isinstance(value, str) and ADDRESS.fullmatch(value) is not None


def blob_store(settings: Settings) -> FileBlobStore:
    """The Pit's blob store: `blobs/` in the data directory, shared by `pit up`, runners and
    clients on this machine."""
    return FileBlobStore(settings.data_dir / "blobs")


def _chunks(source: Iterable[bytes] | BinaryIO, size: int) -> Iterator[bytes]:
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
        match = ADDRESS.fullmatch(address) if isinstance(address, str) else None
        if match is None:
            raise BlobStoreError(f"not a {self.kind} hash: {address!r} "
                                 "(expected sha256:<64 hex digits>)")
        digest = match.group(1)
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
        address = address_of(data)
        path = self.path_of(address)
        if not self._holds(path, len(data)):
            path.parent.mkdir(parents=True, exist_ok=True)
            self._write(path.parent, [data], path)
        return address

    def put_stream(self, source: Iterable[bytes] | BinaryIO, chunk_size: int = CHUNK_BYTES
                   ) -> str:
        """Store the content of a binary file or an iterable of chunks, hashing as it is
        written; returns its address."""
        self.root.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0

        def hashed() -> Iterator[bytes]:
            nonlocal size
            for chunk in _chunks(source, chunk_size):
                digest.update(chunk)
                size += len(chunk)
                yield chunk

        tmp = self._write(self.root, hashed())
        address = "sha256:" + digest.hexdigest()
        path = self.path_of(address)
        if self._holds(path, size):
            tmp.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._rename(tmp, path)
        return address

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
            raise self._corrupt(address, actual)
        return data

    def stream(self, address: str, chunk_size: int = CHUNK_BYTES) -> Iterator[bytes]:
        """The content at `address` in chunks; raises `BlobIntegrityError` after the last
        chunk if the content does not match its address."""
        path = self.path_of(address)
        try:
            f = path.open("rb")
        except FileNotFoundError:
            raise BlobNotFoundError(f"unknown {self.kind} {address}") from None
        return self._verified(f, address, chunk_size)

    def _verified(self, f: BinaryIO, address: str, chunk_size: int) -> Iterator[bytes]:
        digest = hashlib.sha256()
        with f:
            while chunk := f.read(chunk_size):
                digest.update(chunk)
                yield chunk
        actual = "sha256:" + digest.hexdigest()
        if actual != address:
            raise self._corrupt(address, actual)

    def _corrupt(self, address: str, actual: str) -> BlobIntegrityError:
        return BlobIntegrityError(f"{self.kind} {address} is corrupt: its file hashes to "
                                  f"{actual}")
