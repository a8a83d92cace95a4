"""The content-addressed blob store (streams/blobs.py) on a real filesystem."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import threading

import pytest

from streams.blobs import FileBlobStore, address_of, blob_store, is_address
from streams.config import Settings
from streams.errors import BlobIntegrityError, BlobNotFoundError, BlobStoreError


def files_under(root) -> list:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_put_get_round_trip_at_its_fan_out_path(tmp_path):
    store = FileBlobStore(tmp_path)
    data = b'{"out": "hello"}'
    address = store.put(data)
    digest = hashlib.sha256(data).hexdigest()
    assert address == f"sha256:{digest}" == address_of(data) and is_address(address)
    assert store.path_of(address) == tmp_path / digest[:2] / digest[2:]
    assert store.get(address) == data and address in store and store.size(address) == len(data)
    assert FileBlobStore(tmp_path).get(address) == data  # another instance, same files
    assert store.put(data) == address  # idempotent
    assert files_under(tmp_path) == [store.path_of(address)]


def test_streaming_put_and_get_of_a_blob_larger_than_a_chunk(tmp_path):
    store = FileBlobStore(tmp_path)
    data = os.urandom(3 * 1024 * 1024 + 17)
    address = store.put_stream(io.BytesIO(data), chunk_size=1 << 20)
    assert address == address_of(data)
    chunks = list(store.stream(address, chunk_size=1 << 20))
    assert len(chunks) == 4 and b"".join(chunks) == data
    # chunks from an iterable; content already there leaves the one file
    assert store.put_stream(data[i:i + 1000] for i in range(0, len(data), 1000)) == address
    assert files_under(tmp_path) == [store.path_of(address)]


def test_a_corrupt_blob_is_refused_naming_its_address(tmp_path):
    store = FileBlobStore(tmp_path)
    address = store.put(b"the real content")
    store.path_of(address).write_bytes(b"the fake content")  # same size
    with pytest.raises(BlobIntegrityError, match=f"blob {address} is corrupt: its file hashes "
                                                 f"to {address_of(b'the fake content')}"):
        store.get(address)
    with pytest.raises(BlobIntegrityError, match=address):
        b"".join(store.stream(address))


def test_a_damaged_file_of_another_size_is_rewritten_by_put(tmp_path):
    store = FileBlobStore(tmp_path)
    address = store.put(b"0123456789")
    store.path_of(address).write_bytes(b"01234")  # torn by something outside the store
    assert store.put(b"0123456789") == address
    assert store.get(address) == b"0123456789"


def test_unknown_and_malformed_addresses(tmp_path):
    store = FileBlobStore(tmp_path)
    missing = "sha256:" + "0" * 64
    assert missing not in store and "../etc/passwd" not in store and None not in store
    with pytest.raises(BlobNotFoundError, match=f"unknown blob {missing}"):
        store.get(missing)
    with pytest.raises(BlobNotFoundError, match=f"unknown blob {missing}"):
        store.stream(missing)
    for bad in ("sha256:../../x", "md5:" + "0" * 64, "sha256:" + "A" * 64):
        with pytest.raises(BlobStoreError, match="not a blob hash"):
            store.get(bad)


def test_the_pit_blob_store_lives_in_the_data_directory(tmp_path):
    assert blob_store(Settings(data_dir=tmp_path)).root == tmp_path / "blobs"


def test_concurrent_writers_of_the_same_content_leave_one_whole_file(tmp_path):
    store = FileBlobStore(tmp_path)
    data = os.urandom(2 * 1024 * 1024)
    start = threading.Barrier(8)
    addresses: list[str] = []

    def write(streamed: bool) -> None:
        start.wait()
        for _ in range(5):
            if streamed:
                addresses.append(store.put_stream(io.BytesIO(data), chunk_size=64 * 1024))
            else:
                addresses.append(store.put(data))

    threads = [threading.Thread(target=write, args=(i % 2 == 0,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(addresses) == {address_of(data)} and len(addresses) == 40
    assert files_under(tmp_path) == [store.path_of(address_of(data))]  # no temporary left
    assert store.get(address_of(data)) == data


def _put_in_process(root: str, seed: int) -> str:
    return FileBlobStore(root).put(bytes([seed % 256]) * (4 * 1024 * 1024))


def test_concurrent_processes_writing_the_same_content_leave_one_whole_file(tmp_path):
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        addresses = pool.starmap(_put_in_process, [(str(tmp_path), 7)] * 8)
    data = bytes([7]) * (4 * 1024 * 1024)
    assert set(addresses) == {address_of(data)}
    assert files_under(tmp_path) == [FileBlobStore(tmp_path).path_of(address_of(data))]
    assert FileBlobStore(tmp_path).get(address_of(data)) == data


def test_a_reader_never_sees_part_of_a_blob_being_written(tmp_path):
    store = FileBlobStore(tmp_path)
    data = os.urandom(8 * 1024 * 1024)
    address = address_of(data)
    seen: list[bytes] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                seen.append(store.get(address))
            except BlobNotFoundError:
                pass
            except BlobIntegrityError as exc:  # a torn read: what atomic writes rule out
                seen.append(str(exc).encode())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(3):
            store.put_stream(io.BytesIO(data), chunk_size=256 * 1024)
            store.path_of(address).unlink()
    finally:
        done.set()
        reader.join()
    # every read either found nothing or the whole, verified content (get checks the hash)
    assert all(blob == data for blob in seen)
