"""Storage tiers (issue 13, "Storage tiers"): where artifact content lives as it cools, and
moves between those places that never lose it.

* hot: the Artifact Store's own backend (streams/artifacts/storage.py), unchanged;
* warm: a second directory (PIT_STALE_WARM_DIR, `<data_dir>/warm`), objects zstd-compressed;
* cold: an S3 bucket (PIT_STALE_COLD_BUCKET; none, no cold tier), objects zstd-compressed.

What a tier holds is every raw object stored for an address, byte for byte: the content
object (the blob itself, or an encrypted store's ciphertext) and an encrypted store's key
object. So encrypted content stays encrypted in every tier, and what comes back from any
tier is checked against its address as a read from hot is. A compressed copy is the object
`<suffix>.zst` beside the address: one zstd frame, compressed and decompressed in chunks,
whose header records the object's size (`raw_size` reads a few bytes, not the object) and
which ends with a checksum of the content.

`TieredStore` is an `ObjectBackend` over the tiers, and what `artifact_store` wraps (beneath
`EncryptedStore`) once tiers are in use: reads fall through hot -> warm -> cold, object by
object. A read of content that is in cold restores the address (all its objects) to hot
first, and the hot copy serves later reads; the cold copy stays, so a read never deletes
anything (a read racing a move, or another read, cannot lose the item) and the Stale
Manager's record of where the item is stays true. Writes go to hot, where a later write (a
key object re-wrapped by `rotate`) shadows older copies; the next move of the address takes
the copies reads see and clears the others.

A move is crash-safe by its order: copy every object to the destination, read each copy back
and compare it (size and SHA-256 of the uncompressed bytes) with what reads saw, and only
then delete the other copies, lowest tier first. At every moment, each object's first copy in
read order is the one reads saw before or its verified copy, so a crash anywhere leaves the
address readable, and the same move run again finishes the job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, cast

import zstandard

from streams.artifacts.crypto import KEY_SUFFIX
from streams.artifacts.storage import ObjectBackend, S3BlobStore, Source, artifact_backend
from streams.blobs import (
    CHUNK_BYTES,
    FileBlobStore,
    HashedChunks,
    Stored,
    digest_of,
    is_address,
    verified,
)
from streams.config import Settings
from streams.errors import BlobIntegrityError, BlobNotFoundError, BlobStoreError
from streams.stale.settings import StaleSettings

__all__ = ["TIERS", "TieredStore", "tiered_store"]

TIERS = ("hot", "warm", "cold")  # in read order
# The objects of an address: its content object, and an encrypted store's key object.
OBJECT_SUFFIXES = ("", KEY_SUFFIX)
COMPRESSED = ".zst"
LEVEL = 3  # zstd's default: ~2.8x on text-like content at ~110 MiB/s on one core
_HEADER_BYTES = 18  # the longest a zstd frame header can be
_LOOKUPS = 3  # a read that finds its copy gone (moved meanwhile) looks again, this often


def tiered_store(settings: Settings, *, hot: ObjectBackend | None = None) -> TieredStore:
    """The artifact store's tiers: its backend (or `hot`), the warm directory, and the cold
    bucket when PIT_STALE_COLD_BUCKET names one."""
    own = StaleSettings.of(settings)
    cold = None
    if own.cold_bucket is not None:
        cold = S3BlobStore(own.cold_bucket, endpoint_url=own.cold_endpoint_url, kind="artifact")
    return TieredStore(artifact_backend(settings) if hot is None else hot,
                       FileBlobStore(own.warm_dir, kind="artifact"), cold)


@dataclass(frozen=True, eq=False)  # a tier is itself: compared by identity
class _Tier:
    """One place objects live: `backend` holds them as they are, or compressed."""

    name: str
    backend: ObjectBackend
    compressed: bool
    level: int = LEVEL

    def object_suffix(self, suffix: str) -> str:
        return suffix + COMPRESSED if self.compressed else suffix

    def holds(self, address: str, suffix: str) -> bool:
        return self.backend.raw_size(address, suffix=self.object_suffix(suffix)) is not None

    def size(self, address: str, suffix: str) -> int | None:
        """The size of the object (uncompressed), None if this tier has none."""
        if not self.compressed:
            return self.backend.raw_size(address, suffix=suffix)
        try:
            head = _head(self.backend.read_raw(address, suffix=self.object_suffix(suffix),
                                               chunk_size=_HEADER_BYTES), _HEADER_BYTES)
        except BlobNotFoundError:
            return None
        size = _content_size(head, self._what(address, suffix))
        if size is None:  # a frame that does not record its size (not written here): count
            size = sum(len(chunk) for chunk in self.read(address, suffix))
        return size

    def read(self, address: str, suffix: str, chunk_size: int = CHUNK_BYTES
             ) -> Iterator[bytes]:
        """The object's bytes (decompressed); `BlobNotFoundError` at once if there is none."""
        chunks = self.backend.read_raw(address, suffix=self.object_suffix(suffix),
                                       chunk_size=chunk_size)
        if not self.compressed:
            return chunks
        return _decompressed(chunks, self._what(address, suffix), chunk_size)

    def write(self, address: str, suffix: str, chunks: Iterable[bytes], size: int | None
              ) -> int:
        """Write the object (atomically, replacing a copy there); the bytes it takes here.
        `size` goes into a compressed copy's header, which must then hold that many bytes."""
        if self.compressed:
            chunks = _compressed(chunks, size, self.level)
        written = _Counted(chunks)
        self.backend.write_raw(address, written, suffix=self.object_suffix(suffix))
        return written.size

    def delete(self, address: str, suffix: str) -> bool:
        return self.backend.delete_raw(address, suffix=self.object_suffix(suffix))

    def addresses(self, suffix: str) -> Iterator[str]:
        return self.backend.raw_addresses(self.object_suffix(suffix))

    def _what(self, address: str, suffix: str) -> str:
        return f"{self.backend.kind} {address}{suffix} in the {self.name} tier"


class TieredStore:
    """An `ObjectBackend` over the hot, warm and (when there is one) cold tier; `move`,
    `purge` and `tier_of` for the Stale Manager's worker."""

    def __init__(self, hot: ObjectBackend, warm: ObjectBackend,
                 cold: ObjectBackend | None = None, *, level: int = LEVEL) -> None:
        self.hot, self.warm, self.cold = hot, warm, cold
        self.kind = hot.kind
        self._hot = _Tier("hot", hot, compressed=False)
        self._tiers = [self._hot, _Tier("warm", warm, compressed=True, level=level)]
        if cold is not None:
            self._tiers.append(_Tier("cold", cold, compressed=True, level=level))

    # --- the Stale Manager's operations ----------------------------------------------------

    @property
    def tiers(self) -> tuple[str, ...]:
        """The tiers there are, in read order: hot, warm, and cold if configured."""
        return tuple(tier.name for tier in self._tiers)

    def tier_of(self, address: str) -> str | None:
        """Where `address` is read from now: the first tier, hot to cold, holding its content
        object (or, without one anywhere, another object of it); None if no tier has any."""
        digest_of(address, self.kind)
        for suffix in OBJECT_SUFFIXES:
            tier = self._first(address, suffix)
            if tier is not None:
                return tier.name
        return None

    def move(self, address: str, to_tier: str) -> int:
        """Move every object of `address` to `to_tier` (hot, warm or cold: down, or back up);
        the bytes written there, 0 if it was there already. Copies first, verified, then the
        other copies go: interrupted anywhere, the address stays readable."""
        destination = self._tier(to_tier)
        written, holders = self._copy_all(address, destination)
        # every object is in the destination now and reads back right: the other copies can
        # go, lowest tier first, so the copy reads see stays the old one or the new one
        for tier in reversed(self._tiers):
            for suffix, tiers in holders.items():
                if tier is not destination and tier in tiers:
                    tier.delete(address, suffix)
        return written

    def purge(self, address: str) -> int:
        """Delete every object of `address` from every tier; how many there were (0 when run
        again). Key objects go first: once they are gone, a copy a crash left behind cannot
        be decrypted."""
        digest_of(address, self.kind)
        return sum(tier.delete(address, suffix)
                   for suffix in reversed(OBJECT_SUFFIXES) for tier in reversed(self._tiers))

    # --- BlobBackend -----------------------------------------------------------------------

    def store(self, source: Source) -> Stored:
        stored = self.hot.store(source)
        if stored.newly_stored and any(tier.holds(stored.address, "")
                                       for tier in self._tiers[1:]):
            return Stored(stored.address, stored.size, False)  # it was there, in a lower tier
        return stored

    def stream(self, address: str, chunk_size: int = CHUNK_BYTES) -> Iterator[bytes]:
        """The content in chunks, verified against `address` whichever tier it comes from
        (from cold: restored to hot first)."""
        def read(tier: _Tier) -> Iterator[bytes]:
            if tier is self._hot:  # the hot backend's own read, verified as it always was
                return self.hot.stream(address)
            return verified(tier.read(address, "", chunk_size), address, self.kind,
                            f"{tier.name} copy")

        return self._read(address, "", read)

    def get(self, address: str) -> bytes:
        return b"".join(self.stream(address))

    def __contains__(self, address: object) -> bool:
        return is_address(address) and self._first(address, "") is not None

    def size(self, address: str) -> int:
        size = self.raw_size(address)
        if size is None:
            raise BlobNotFoundError(f"unknown {self.kind} {address}")
        return size

    # --- ObjectBackend ---------------------------------------------------------------------

    def write_raw(self, address: str, chunks: Iterable[bytes], *, suffix: str = "",
                  exclusive: bool = False) -> bool:
        """Write to hot; with `exclusive`, only if no tier has the object."""
        if exclusive and any(tier.holds(address, suffix) for tier in self._tiers[1:]):
            return False
        return self.hot.write_raw(address, chunks, suffix=suffix, exclusive=exclusive)

    def read_raw(self, address: str, *, suffix: str = "", chunk_size: int = CHUNK_BYTES
                 ) -> Iterator[bytes]:
        return self._read(address, suffix, lambda tier: tier.read(address, suffix, chunk_size))

    def raw_size(self, address: str, *, suffix: str = "") -> int | None:
        for tier in self._tiers:
            size = tier.size(address, suffix)
            if size is not None:
                return size
        return None

    def raw_addresses(self, suffix: str) -> Iterator[str]:
        """The addresses with an object `suffix` in any tier, each once."""
        seen: set[str] = set()
        for tier in self._tiers:
            for address in tier.addresses(suffix):
                if address not in seen:
                    seen.add(address)
                    yield address

    def delete_raw(self, address: str, *, suffix: str = "") -> bool:
        """Delete the object from every tier; True if one had it."""
        deleted = [tier.delete(address, suffix) for tier in reversed(self._tiers)]
        return any(deleted)

    # --- inside ----------------------------------------------------------------------------

    def _tier(self, name: str) -> _Tier:
        for tier in self._tiers:
            if tier.name == name:
                return tier
        if name == "cold":
            raise BlobStoreError("there is no cold tier: PIT_STALE_COLD_BUCKET names no bucket")
        raise BlobStoreError(f"unknown storage tier {name!r}: hot, warm or cold")

    def _first(self, address: str, suffix: str) -> _Tier | None:
        return next((tier for tier in self._tiers if tier.holds(address, suffix)), None)

    def _holders(self, address: str, suffix: str) -> list[_Tier]:
        return [tier for tier in self._tiers if tier.holds(address, suffix)]

    def _read(self, address: str, suffix: str, read: Callable[[_Tier], Iterator[bytes]]
              ) -> Iterator[bytes]:
        """`read` of the first tier with the object. A content object in cold is restored to
        hot first, with the address's other objects, and read there; another object (a key
        object) is read where it is: a key rotation reads them all, and must not bring every
        cold artifact back to hot."""
        for _ in range(_LOOKUPS):
            tier = self._first(address, suffix)
            if tier is None:
                break
            if tier.name == "cold" and suffix == "":
                self._copy_all(address, self._hot)  # a cold read restores on demand
                tier = self._hot
            try:
                return read(tier)
            except BlobNotFoundError:
                continue  # moved meanwhile: look again
        raise BlobNotFoundError(f"unknown {self.kind} {address}{suffix}")

    def _copy_all(self, address: str, destination: _Tier
                  ) -> tuple[int, dict[str, list[_Tier]]]:
        """Copy each object of `address` whose copy reads see is not in `destination` there,
        verified; (bytes written, the tiers holding each object before)."""
        holders = {suffix: tiers for suffix in OBJECT_SUFFIXES
                   if (tiers := self._holders(address, suffix))}
        if not holders:
            raise BlobNotFoundError(f"unknown {self.kind} {address}")
        written = 0
        for suffix, tiers in holders.items():
            if tiers[0] is not destination:
                written += self._copy(address, suffix, tiers[0], destination)
        return written, holders

    def _copy(self, address: str, suffix: str, source: _Tier, destination: _Tier) -> int:
        """Copy one object, then read the copy back: it must be the bytes read from `source`
        (else it goes, and `BlobIntegrityError`). The bytes written."""
        what = f"{self.kind} {address}{suffix}"
        # a compressed copy records the size in its header (an uncompressed one needs none)
        size = source.size(address, suffix) if destination.compressed else None
        seen = HashedChunks(source.read(address, suffix))
        try:
            written = destination.write(address, suffix, seen, size)
        except zstandard.ZstdError as exc:  # the source changed size while it was read
            raise BlobStoreError(f"cannot copy {what} from the {source.name} tier to the "
                                 f"{destination.name} tier: {exc}") from None
        try:
            landed = HashedChunks(destination.read(address, suffix))
            for _ in landed:
                pass
            if (landed.address, landed.size) != (seen.address, seen.size):
                raise BlobIntegrityError(
                    f"{what}: its copy in the {destination.name} tier reads back as "
                    f"{landed.size} bytes hashing to {landed.address}, not the {seen.size} "
                    f"bytes hashing to {seen.address} read from the {source.name} tier")
        except BaseException:
            destination.delete(address, suffix)  # a bad copy must not shadow the good one
            raise
        return written


class _Counted:
    """Chunks passing through, counted: `size` once all are through."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks, self.size = chunks, 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.size += len(chunk)
            yield chunk


def _compressed(chunks: Iterable[bytes], size: int | None, level: int) -> Iterator[bytes]:
    """One zstd frame of `chunks` (which must be `size` bytes, when it is given), in chunks."""
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
    chunker = compressor.chunker(size=-1 if size is None else size, chunk_size=CHUNK_BYTES)
    for chunk in chunks:
        yield from chunker.compress(chunk)
    yield from chunker.finish()


def _decompressed(chunks: Iterable[bytes], what: str, chunk_size: int) -> Iterator[bytes]:
    """The content of one zstd frame, in chunks of `chunk_size` at most (never more in
    memory, however well it compressed); `BlobIntegrityError` if the frame is damaged or
    cut short."""
    source = _Reader(chunks)
    try:
        expected = _content_size(source.peek(_HEADER_BYTES), what)
        # `read` is all a stream reader calls of its source
        reader = zstandard.ZstdDecompressor().stream_reader(cast(BinaryIO, source),
                                                            read_across_frames=False)
        size = 0
        while chunk := reader.read(chunk_size):
            size += len(chunk)
            yield chunk
    except zstandard.ZstdError as exc:
        raise BlobIntegrityError(f"{what} is corrupt: {exc}") from None
    if expected is not None and size != expected:  # zstd checks content, not its length
        raise BlobIntegrityError(f"{what} is corrupt: it holds {size} bytes, its header says "
                                 f"{expected}")


def _content_size(head: bytes, what: str) -> int | None:
    """The content size a frame's header records; None if it records none."""
    try:
        size = zstandard.frame_content_size(head)
    except zstandard.ZstdError:
        raise BlobIntegrityError(f"{what} is corrupt: it does not start with a zstd frame "
                                 "header") from None
    return None if size < 0 else size


def _head(chunks: Iterator[bytes], size: int) -> bytes:
    """The first `size` bytes of `chunks` (all, if fewer); the rest is not read."""
    head = b""
    try:
        for chunk in chunks:
            head += chunk
            if len(head) >= size:
                break
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:  # a started generator closes its file or response now
            close()
    return head[:size]


class _Reader:
    """Chunks as a file-like `read(size)` for zstd's stream reader, with a look ahead."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks, self._pending = iter(chunks), memoryview(b"")

    def peek(self, size: int) -> bytes:
        """Up to `size` bytes from the start, left to read."""
        head = self.read(size)
        self._pending = memoryview(head + bytes(self._pending))
        return head

    def read(self, size: int = -1) -> bytes:
        parts = []
        while size != 0:
            if not self._pending:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._pending = memoryview(chunk)
            part = self._pending if size < 0 else self._pending[:size]
            parts.append(part)
            self._pending = self._pending[len(part):]
            if size > 0:
                size -= len(part)
        return b"".join(parts)
