"""Properties of artifact storage (streams/blobs.py, streams/artifacts/crypto.py) on the local
backend: round trips, deterministic addresses, and encryption that opens only what it sealed,
with the right key."""

from __future__ import annotations

import base64
import hashlib
import io
import itertools
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.artifacts.crypto import (
    CHUNK_BYTES,
    KEY_SUFFIX,
    EncryptedStore,
    Keyring,
    plaintext_size,
    rotate,
    seal,
    sealed_size,
    unseal,
)
from streams.artifacts.errors import DecryptionError
from streams.blobs import FileBlobStore, Stored

MIB = 1 << 20
KEYRING = Keyring("k1", {"k1": bytes(range(32))})

small = st.binary(max_size=2048)
# content larger than a chunk is random bytes of a drawn size (drawing each byte is slow)
large = st.builds(lambda size, seed: random.Random(seed).randbytes(size),
                  st.one_of(st.integers(0, 3 * CHUNK_BYTES + 17),
                            st.integers(CHUNK_BYTES + 1, 3 * CHUNK_BYTES + 17)),
                  st.integers(0, 2**32))
boundaries = st.sampled_from([CHUNK_BYTES - 1, CHUNK_BYTES, CHUNK_BYTES + 1, 2 * CHUNK_BYTES])
contents = st.one_of(small, small, large,
                     st.builds(lambda n: bytes(n % 251 for n in range(n)), boundaries))
forms = st.sampled_from(["bytes", "file", "chunks"])
props = settings(max_examples=40, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def source(data: bytes, form: str, cuts: list[int]):
    """`data` as bytes, a binary file, or an iterable of pieces cut at `cuts`."""
    if form == "bytes":
        return data
    if form == "file":
        return io.BytesIO(data)
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return (data[a:b] for a, b in itertools.pairwise(points))


@contextmanager
def fresh_store(keyring: Keyring | None = None) -> Iterator[FileBlobStore | EncryptedStore]:
    with tempfile.TemporaryDirectory() as root:
        backend = FileBlobStore(Path(root), kind="artifact")
        yield backend if keyring is None else EncryptedStore(backend, keyring)


@props
@given(data=contents, form=forms, cuts=st.lists(st.integers(0, 4 * MIB), max_size=6),
       encrypted=st.booleans())
def test_what_is_stored_comes_back_whole_and_once(data, form, cuts, encrypted):
    with fresh_store(KEYRING if encrypted else None) as store:
        stored = store.store(source(data, form, cuts))
        assert stored == Stored("sha256:" + hashlib.sha256(data).hexdigest(), len(data), True)
        assert store.get(stored.address) == data
        assert b"".join(store.stream(stored.address)) == data
        assert stored.address in store and store.size(stored.address) == len(data)
        again = store.store(source(data, form, cuts[::-1]))
        assert again == Stored(stored.address, len(data), False)  # deduplicated


@props
@given(data=small, first=st.lists(st.integers(0, 4096), max_size=4),
       second=st.lists(st.integers(0, 4096), max_size=4), forms=st.tuples(forms, forms))
def test_the_address_is_the_hash_however_the_content_arrives(data, first, second, forms):
    with fresh_store() as one, fresh_store(KEYRING) as other:
        address = one.store(source(data, forms[0], first)).address
        assert other.store(source(data, forms[1], second)).address == address
        assert address == "sha256:" + hashlib.sha256(data).hexdigest()


@props
@given(size=st.one_of(st.integers(0, 4 * CHUNK_BYTES), boundaries))
def test_the_sealed_size_is_exact_and_reversible(size):
    assert plaintext_size(sealed_size(size)) == size
    if size <= 2 * CHUNK_BYTES + 1:
        sealed = b"".join(seal(b"label", bytes(32), [bytes(size)]))
        assert len(sealed) == sealed_size(size)
        assert b"".join(unseal(b"label", bytes(32), [sealed])) == bytes(size)


def tampered(data: bytes, position: int, mask: int) -> bytes:
    position %= len(data)
    return data[:position] + bytes([data[position] ^ mask]) + data[position + 1:]


@props
@given(data=st.one_of(small, small, large), target=st.sampled_from(["content", "key"]),
       position=st.integers(0, 2**32), mask=st.integers(1, 255))
def test_any_altered_byte_of_either_object_is_refused(data, target, position, mask):
    with fresh_store(KEYRING) as store:
        address = store.store(data).address
        path = store.backend.raw_path(address, "" if target == "content" else KEY_SUFFIX)
        path.write_bytes(tampered(path.read_bytes(), position, mask))
        with pytest.raises(DecryptionError, match=f"cannot decrypt artifact {address}"):
            store.get(address)


@props
@given(data=st.one_of(small, large), target=st.sampled_from(["content", "key"]),
       cut=st.integers(0, 2**32), extra=st.binary(min_size=1, max_size=64))
def test_a_cut_or_lengthened_object_is_refused(data, target, cut, extra):
    with fresh_store(KEYRING) as store:
        address = store.store(data).address
        path = store.backend.raw_path(address, "" if target == "content" else KEY_SUFFIX)
        whole = path.read_bytes()
        for changed in (whole[:cut % len(whole)], whole + extra):
            path.write_bytes(changed)
            with pytest.raises(DecryptionError, match=address):
                store.get(address)


@props
@given(data=small, other_key=st.binary(min_size=32, max_size=32),
       same_id=st.booleans())
def test_a_wrong_key_is_refused_never_garbage(data, other_key, same_id):
    with fresh_store(KEYRING) as store:
        address = store.store(data).address
        kek_id = "k1" if same_id else "k2"
        wrong = EncryptedStore(store.backend, Keyring(kek_id, {kek_id: other_key}))
        if same_id and other_key == KEYRING.keys["k1"]:
            assert wrong.get(address) == data
            return
        reason = "its data key does not unwrap" if same_id else "key id is not in the keyring"
        with pytest.raises(DecryptionError, match=f"{address} with key 'k1': .*{reason}"):
            wrong.get(address)


@props
@given(first=small, second=small, with_keys=st.booleans())
def test_swapped_objects_of_two_blobs_are_refused(first, second, with_keys):
    if first == second:
        return
    with fresh_store(KEYRING) as store:
        a, b = store.store(first).address, store.store(second).address
        suffixes = ["", KEY_SUFFIX] if with_keys else [""]
        for suffix in suffixes:
            path_a, path_b = (store.backend.raw_path(x, suffix) for x in (a, b))
            content_a, content_b = path_a.read_bytes(), path_b.read_bytes()
            path_a.write_bytes(content_b)
            path_b.write_bytes(content_a)
        for address in (a, b):
            with pytest.raises(DecryptionError, match=address):
                store.get(address)


@settings(max_examples=15, deadline=None)
@given(contents=st.lists(small, min_size=1, max_size=6, unique=True))
def test_rotation_rewraps_keys_and_never_touches_content(contents):
    with fresh_store(KEYRING) as store:
        addresses = [store.store(data).address for data in contents]
        sealed = {a: store.backend.raw_path(a).read_bytes() for a in addresses}
        new = Keyring("k2", {"k2": bytes(range(32, 64))})
        assert rotate(store, new) == len(addresses)
        assert {a: store.backend.raw_path(a).read_bytes() for a in addresses} == sealed
        rotated = EncryptedStore(store.backend, new)  # the old key is no longer needed
        assert [rotated.get(a) for a in addresses] == contents
        assert rotate(store, new) == 0


key_ids = st.text("abcxyz019._-", min_size=1, max_size=12)


@props
@given(keys=st.dictionaries(key_ids, st.binary(min_size=32, max_size=32), min_size=1,
                            max_size=4), pick=st.integers(0, 3))
def test_a_keyring_from_text_is_the_keyring_written_and_hides_its_keys(keys, pick):
    text = ",".join(f"{k}:{base64.b64encode(v).decode()}" for k, v in keys.items())
    first = next(iter(keys))
    assert Keyring.from_text(text) == Keyring(first, keys)
    active = list(keys)[pick % len(keys)]
    keyring = Keyring.from_text(text, active)
    assert keyring.active == active
    assert not any(base64.b64encode(v).decode() in repr(keyring) for v in keys.values())
