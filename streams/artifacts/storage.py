"""Where artifact content lives: one backend interface, a local and an S3 implementation.

Addresses are "sha256:<hex>" of the plaintext content (streams/blobs.py). `BlobBackend` is
what the Artifact Store reads and writes; `ObjectBackend` adds raw objects beside the blobs
(unverified, under an address and a suffix), on which `EncryptedStore`
(streams/artifacts/crypto.py) keeps ciphertext and key objects, and between which the
Stale Manager's storage tiers (streams/stale/tiers.py) move them.

* `FileBlobStore` (streams/blobs.py): the local default, `<data_dir>/artifacts`.
* `S3BlobStore`: a bucket, blobs at "blobs/<2 hex>/<62 hex>". A store streams: content goes
  up in 8 MiB parts of a multipart upload to a temporary key "tmp/<uuid>" while it is hashed
  (the address is known only at the end, and an upload names its key at the start), then a
  server-side copy puts it at its address unless it is there already, and the temporary
  object goes. At most two parts are in memory, whatever the size. Content of one part
  goes up in one PUT straight to its address, created only if absent. Reads stream and
  verify: `BlobIntegrityError` naming the address after the last chunk. Concurrent writers of
  the same content leave one object (every write of an address carries the same bytes, and
  S3 replaces objects atomically); `newly_stored` is exact for one-part content and may be
  true for more than one writer of larger content. A crashed writer can leave a "tmp/"
  object: a bucket lifecycle rule that expires "tmp/" after a day cleans them up.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from itertools import chain
from typing import Any, BinaryIO, Protocol

from streams.artifacts.crypto import EncryptedStore, Keyring
from streams.artifacts.settings import ArtifactSettings
from streams.blobs import (
    CHUNK_BYTES,
    FileBlobStore,
    HashedChunks,
    Stored,
    chunks_of,
    digest_of,
    is_address,
    verified,
)
from streams.config import Settings
from streams.errors import BlobNotFoundError, BlobStoreError

__all__ = ["BlobBackend", "ObjectBackend", "S3BlobStore", "Source", "Stored", "artifact_backend",
           "artifact_store"]

Source = bytes | BinaryIO | Iterable[bytes]
PART_BYTES = 8 << 20  # S3 wants parts of 5 MiB at least (all but the last)
_MISSING = {"404", "NoSuchKey", "NotFound"}


class BlobBackend(Protocol):
    """Content by address."""

    def store(self, source: Source) -> Stored:
        """Store bytes, a binary file or an iterable of chunks, streamed."""
        ...

    def stream(self, address: str) -> Iterator[bytes]:
        """The content in chunks, verified: an error after the last chunk if it is not the
        content of `address` (use what it yielded only once it finished)."""
        ...

    def get(self, address: str) -> bytes: ...

    def __contains__(self, address: object) -> bool: ...

    def size(self, address: str) -> int: ...


class ObjectBackend(BlobBackend, Protocol):
    """A backend that also keeps raw objects beside its blobs, `suffix` naming which."""

    kind: str

    def write_raw(self, address: str, chunks: Iterable[bytes], *, suffix: str = "",
                  exclusive: bool = False) -> bool:
        """Write atomically, replacing what is there, or with `exclusive` only if nothing is;
        True if written."""
        ...

    def read_raw(self, address: str, *, suffix: str = "", chunk_size: int = CHUNK_BYTES
                 ) -> Iterator[bytes]: ...

    def raw_size(self, address: str, *, suffix: str = "") -> int | None: ...

    def raw_addresses(self, suffix: str) -> Iterator[str]: ...

    def delete_raw(self, address: str, *, suffix: str = "") -> bool:
        """Delete the object (with "", the blob itself); True if there was one."""
        ...


def artifact_store(settings: Settings) -> BlobBackend:
    """The Pit's artifact store: files in `<data_dir>/artifacts` or the S3 bucket
    (PIT_ARTIFACT_BACKEND), read through the storage tiers (a retrieve finds content the
    Stale Manager moved to warm or cold), encrypted when a keyring is configured."""
    from streams.stale.tiers import tiered_store  # here: tiers.py imports this module

    own = ArtifactSettings.of(settings)
    backend = tiered_store(settings, hot=artifact_backend(settings))
    keyring = Keyring.from_settings(own)
    return backend if keyring is None else EncryptedStore(backend, keyring)


def artifact_backend(settings: Settings) -> ObjectBackend:
    """Where the artifact store keeps its objects (the hot tier): files in
    `<data_dir>/artifacts` or the S3 bucket (PIT_ARTIFACT_BACKEND)."""
    own = ArtifactSettings.of(settings)
    if own.backend == "s3":
        assert own.s3_bucket is not None  # ArtifactSettings.of refuses s3 without a bucket
        return S3BlobStore(own.s3_bucket, endpoint_url=own.s3_endpoint_url, kind="artifact")
    return FileBlobStore(settings.data_dir / "artifacts", kind="artifact")


class S3BlobStore:
    """Blobs in an S3 bucket (which must exist). Credentials and, unless given, the region
    come from boto3's usual chain (AWS_* variables, ~/.aws)."""

    def __init__(self, bucket: str, *, endpoint_url: str | None = None,
                 region: str | None = None, kind: str = "blob") -> None:
        import boto3  # here: the local backend need not pay for importing boto3
        from botocore.config import Config

        self.bucket, self.endpoint_url, self.kind = bucket, endpoint_url, kind
        self.client: Any = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}))

    def key_of(self, address: str, suffix: str = "") -> str:
        digest = digest_of(address, self.kind)
        return f"blobs/{digest[:2]}/{digest[2:]}{suffix}"

    def __contains__(self, address: object) -> bool:
        return is_address(address) and self.raw_size(str(address)) is not None

    def size(self, address: str) -> int:
        size = self.raw_size(address)
        if size is None:
            raise BlobNotFoundError(f"unknown {self.kind} {address}")
        return size

    def store(self, source: Source, chunk_size: int = CHUNK_BYTES) -> Stored:
        hashed = HashedChunks([bytes(source)] if isinstance(source, bytes | bytearray | memoryview)
                              else chunks_of(source, chunk_size))
        whole, parts = _one_or_many(_parts(iter(hashed), PART_BYTES))
        if whole is not None:  # all of it in hand: one PUT, straight to its address
            address, size = hashed.address, hashed.size
            there = self.raw_size(address)
            if there == size:
                return Stored(address, size, False)
            # exclusive unless a damaged object of another size is there to replace
            return Stored(address, size, self._put(self.key_of(address), whole,
                                                   exclusive=there is None))
        tmp = f"tmp/{uuid.uuid4().hex}"
        self._multipart(tmp, parts, exclusive=False)
        try:
            address, size = hashed.address, hashed.size
            if self.raw_size(address) == size:
                return Stored(address, size, False)
            with self._errors(f"copy to {address}"):
                self.client.copy({"Bucket": self.bucket, "Key": tmp}, self.bucket,
                                 self.key_of(address))
            return Stored(address, size, True)
        finally:
            with self._errors(f"delete {tmp}"):
                self.client.delete_object(Bucket=self.bucket, Key=tmp)

    def stream(self, address: str, chunk_size: int = CHUNK_BYTES) -> Iterator[bytes]:
        return verified(self.read_raw(address, chunk_size=chunk_size), address, self.kind,
                        "object")

    def get(self, address: str) -> bytes:
        return b"".join(self.stream(address))

    # --- raw objects -----------------------------------------------------------------------

    def write_raw(self, address: str, chunks: Iterable[bytes], *, suffix: str = "",
                  exclusive: bool = False) -> bool:
        key = self.key_of(address, suffix)
        whole, parts = _one_or_many(_parts(iter(chunks), PART_BYTES))
        if whole is not None:
            return self._put(key, whole, exclusive=exclusive)
        return self._multipart(key, parts, exclusive=exclusive)

    def read_raw(self, address: str, *, suffix: str = "", chunk_size: int = CHUNK_BYTES
                 ) -> Iterator[bytes]:
        key = self.key_of(address, suffix)
        with self._errors(f"read {key}"):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            except self.client.exceptions.ClientError as exc:
                if _code(exc) in _MISSING:
                    raise BlobNotFoundError(f"unknown {self.kind} {address}{suffix}") from None
                raise
        return self._body(body, key, chunk_size)

    def raw_size(self, address: str, *, suffix: str = "") -> int | None:
        key = self.key_of(address, suffix)
        with self._errors(f"look up {key}"):
            try:
                return self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
            except self.client.exceptions.ClientError as exc:
                if _code(exc) in _MISSING:
                    return None
                raise

    def delete_raw(self, address: str, *, suffix: str = "") -> bool:
        """Delete the object; True if there was one (S3's DELETE does not say, so a HEAD
        first)."""
        if self.raw_size(address, suffix=suffix) is None:
            return False
        key = self.key_of(address, suffix)
        with self._errors(f"delete {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=key)
        return True

    def raw_addresses(self, suffix: str) -> Iterator[str]:
        with self._errors("list blobs"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix="blobs/")
            for page in pages:
                for item in page.get("Contents", ()):
                    name = item["Key"].removeprefix("blobs/").replace("/", "", 1)
                    address = "sha256:" + name.removesuffix(suffix)
                    if name.endswith(suffix) and is_address(address):
                        yield address

    # --- S3 calls --------------------------------------------------------------------------

    def _put(self, key: str, body: bytes, *, exclusive: bool) -> bool:
        with self._errors(f"write {key}"):
            try:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=body,
                                       **({"IfNoneMatch": "*"} if exclusive else {}))
            except self.client.exceptions.ClientError as exc:
                if exclusive and _code(exc) == "PreconditionFailed":
                    return False
                raise
        return True

    def _multipart(self, key: str, parts: Iterable[bytes], *, exclusive: bool) -> bool:
        with self._errors(f"upload {key}"):
            upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)
            upload_id = upload["UploadId"]
            try:
                done = []
                for number, part in enumerate(parts, 1):
                    etag = self.client.upload_part(Bucket=self.bucket, Key=key,
                                                   UploadId=upload_id, PartNumber=number,
                                                   Body=part)["ETag"]
                    done.append({"PartNumber": number, "ETag": etag})
                    del part  # gone before the next part is gathered: one part in memory
                self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id,
                    MultipartUpload={"Parts": done},
                    **({"IfNoneMatch": "*"} if exclusive else {}))
            except BaseException as exc:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                                   UploadId=upload_id)
                if (exclusive and isinstance(exc, self.client.exceptions.ClientError)
                        and _code(exc) == "PreconditionFailed"):
                    return False
                raise
        return True

    def _body(self, body: Any, key: str, chunk_size: int) -> Iterator[bytes]:
        with self._errors(f"read {key}"), closing(body):
            yield from body.iter_chunks(chunk_size)

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """S3 and connection failures as one-line `BlobStoreError`s."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            message = exc.response.get("Error", {}).get("Message", "")
            raise BlobStoreError(f"S3 bucket {self.bucket}: cannot {doing}: {_code(exc)} "
                                 f"{message}".rstrip()) from None
        except BotoCoreError as exc:
            raise BlobStoreError(f"S3 bucket {self.bucket}: cannot {doing}: {exc}") from None


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _parts(chunks: Iterator[bytes], size: int) -> Iterator[bytes]:
    """The chunks regrouped into parts of at least `size` bytes, but the last."""
    gathered: list[bytes] = []
    length = 0
    for chunk in chunks:
        gathered.append(chunk)
        length += len(chunk)
        if length >= size:
            yield b"".join(gathered)
            gathered.clear()
            length = 0
    if gathered:
        yield b"".join(gathered)


def _one_or_many(parts: Iterator[bytes]) -> tuple[bytes | None, Iterator[bytes]]:
    """(the whole content, nothing) if `parts` has one part at most, else (None, all parts)."""
    first = next(parts, b"")
    second = next(parts, None)
    if second is None:
        return first, iter(())
    return None, chain((first, second), parts)
