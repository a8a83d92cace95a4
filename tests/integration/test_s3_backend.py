"""The S3 artifact backend (streams/artifacts/storage.py) against moto's S3 server over HTTP,
plain and encrypted."""

from __future__ import annotations

import io
import multiprocessing
import os
import threading
from functools import partial

import pytest

from streams.artifacts.bench import streamed_round_trip
from streams.artifacts.crypto import KEY_SUFFIX, EncryptedStore, Keyring, rotate
from streams.artifacts.errors import DecryptionError
from streams.artifacts.storage import PART_BYTES, S3BlobStore, artifact_store
from streams.blobs import address_of
from streams.config import Settings
from streams.errors import BlobIntegrityError, BlobNotFoundError, BlobStoreError

MIB = 1 << 20


@pytest.fixture
def s3(s3_bucket: str, s3_endpoint: str) -> S3BlobStore:
    return S3BlobStore(s3_bucket, endpoint_url=s3_endpoint, kind="artifact")


def keys_in(store: S3BlobStore) -> list[str]:
    pages = store.client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", ()))


def keyring(kek_id: str = "k1") -> Keyring:
    return Keyring(kek_id, {kek_id: os.urandom(32)})


def test_round_trips_of_one_part_and_multipart_content(s3):
    small, large = b'{"answer": 42}', os.urandom(2 * PART_BYTES + 5)
    sources = [b"", small, io.BytesIO(large),
               (large[i:i + MIB] for i in range(0, len(large), MIB))]
    results = [s3.store(source) for source in sources]
    assert [r.newly_stored for r in results] == [True, True, True, False]
    for data, result in zip([b"", small, large, large], results, strict=True):
        assert result.address == address_of(data) and result.size == len(data)
        assert s3.get(result.address) == data and b"".join(s3.stream(result.address)) == data
        assert result.address in s3 and s3.size(result.address) == len(data)
    assert s3.store(small).newly_stored is False
    digests = [address_of(data).removeprefix("sha256:") for data in (b"", small, large)]
    # blobs at their fan-out keys, and no temporary upload left behind
    assert keys_in(s3) == sorted(f"blobs/{d[:2]}/{d[2:]}" for d in digests)


def test_a_64_mib_stream_holds_bounded_memory(s3):
    run = streamed_round_trip(partial(S3BlobStore, s3.bucket, endpoint_url=s3.endpoint_url),
                              64 * MIB)
    # two 8 MiB parts in hand at most, and what botocore copies of one; never the 64 MiB
    assert run.peak_rss_mib - run.baseline_rss_mib < 48  # measured: 33
    assert len([k for k in keys_in(s3) if k.startswith("blobs/")]) == 2  # warm-up + 64 MiB


def test_a_corrupt_object_is_refused_naming_its_address(s3):
    for data in (b"the real content", os.urandom(PART_BYTES + 1)):
        address = s3.store(data).address
        s3.client.put_object(Bucket=s3.bucket, Key=s3.key_of(address),
                             Body=b"X" + data[1:])
        with pytest.raises(BlobIntegrityError, match=f"artifact {address} is corrupt: its "
                                                     "object hashes to sha256:"):
            s3.get(address)
        with pytest.raises(BlobIntegrityError, match=address):
            b"".join(s3.stream(address))


def test_missing_blobs_and_missing_buckets_are_one_line_errors(s3, s3_endpoint):
    missing = "sha256:" + "0" * 64
    assert missing not in s3 and "sha256:nope" not in s3
    with pytest.raises(BlobNotFoundError, match=f"unknown artifact {missing}"):
        s3.stream(missing)
    with pytest.raises(BlobNotFoundError, match=f"unknown artifact {missing}"):
        s3.size(missing)
    with pytest.raises(BlobStoreError, match=r"S3 bucket no-such-bucket: cannot write .*"
                                             r"NoSuchBucket"):
        S3BlobStore("no-such-bucket", endpoint_url=s3_endpoint).store(b"x")


def test_concurrent_threads_storing_the_same_content_leave_one_object(s3):
    small, large = b"same small content", os.urandom(PART_BYTES + 3)
    start = threading.Barrier(8)
    results = []

    def write(data: bytes) -> None:
        start.wait()
        results.append(s3.store(io.BytesIO(data)))

    threads = [threading.Thread(target=write, args=(small if i % 2 else large,))
               for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {r.address for r in results} == {address_of(small), address_of(large)}
    assert any(r.newly_stored for r in results)
    assert keys_in(s3) == sorted(s3.key_of(address_of(d)) for d in (small, large))
    assert s3.get(address_of(small)) == small and s3.get(address_of(large)) == large


def _store_in_process(bucket: str, endpoint_url: str, encrypt: Keyring | None) -> str:
    store = S3BlobStore(bucket, endpoint_url=endpoint_url)
    target = store if encrypt is None else EncryptedStore(store, encrypt)
    return target.store(bytes([7]) * (PART_BYTES + 11)).address


def test_concurrent_processes_storing_the_same_content_leave_one_object(s3):
    ring = keyring()
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        plain = pool.starmap(_store_in_process, [(s3.bucket, s3.endpoint_url, None)] * 3)
        encrypted = pool.starmap(_store_in_process, [(s3.bucket, s3.endpoint_url, ring)] * 3)
    data = bytes([7]) * (PART_BYTES + 11)
    assert set(plain) == set(encrypted) == {address_of(data)}
    # the plain writers' object was replaced by the encrypted ones': one object and its key
    assert keys_in(s3) == [s3.key_of(address_of(data)), s3.key_of(address_of(data), KEY_SUFFIX)]
    assert EncryptedStore(s3, ring).get(address_of(data)) == data


def test_encrypted_round_trip_concurrent_writers_and_rotation(s3):
    old = keyring("old")
    store = EncryptedStore(s3, old)
    contents = [b"", b"secret", os.urandom(PART_BYTES + 100), b"shared"]
    addresses = [store.store(io.BytesIO(data)).address for data in contents]
    start = threading.Barrier(6)
    results = []

    def write() -> None:
        start.wait()
        results.append(store.store(b"shared content, written at once"))

    threads = [threading.Thread(target=write) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    contents.append(b"shared content, written at once")
    addresses.append(results[0].address)
    assert {r.address for r in results} == {address_of(contents[-1])}
    for address, data in zip(addresses, contents, strict=True):
        assert store.get(address) == data and store.size(address) == len(data)
        assert data == b"" or data not in b"".join(s3.read_raw(address))

    etags = {k: s3.client.head_object(Bucket=s3.bucket, Key=k)["ETag"] for k in keys_in(s3)}
    new = keyring("new")
    assert rotate(store, new) == len(set(addresses)) and rotate(store, new) == 0
    after = {k: s3.client.head_object(Bucket=s3.bucket, Key=k)["ETag"] for k in keys_in(s3)}
    changed = {k for k in etags if etags[k] != after[k]}
    assert changed == {k for k in etags if k.endswith(KEY_SUFFIX)}  # content untouched
    rotated = EncryptedStore(s3, new)
    assert [rotated.get(a) for a in addresses] == contents
    with pytest.raises(DecryptionError, match=f"{addresses[1]} with key 'new': that key id is "
                                              "not in the keyring"):
        store.get(addresses[1])


def test_the_factory_gives_the_configured_bucket(s3, s3_endpoint):
    settings = Settings.from_env({"PIT_ARTIFACT_BACKEND": "s3", "PIT_S3_BUCKET": s3.bucket,
                                  "PIT_S3_ENDPOINT_URL": s3_endpoint})
    store = artifact_store(settings)
    assert isinstance(store.hot, S3BlobStore)
    address = store.store(b"via settings").address
    assert s3.get(address) == b"via settings"
