"""The storage tiers (streams/stale/tiers.py) on real backends: hot and warm on the local
filesystem, cold on moto's S3 server - retrieves from each tier, restores on demand,
encrypted content that stays encrypted, moves cut short, purges, and the settings."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
import zstandard

from streams.artifacts.crypto import KEY_SUFFIX, EncryptedStore, Keyring, rotate
from streams.artifacts.storage import PART_BYTES, S3BlobStore, artifact_store
from streams.blobs import FileBlobStore, address_of
from streams.config import Settings
from streams.errors import BlobIntegrityError, BlobNotFoundError, BlobStoreError
from streams.stale.settings import StaleSettings
from streams.stale.tier_bench import measure_tiers
from streams.stale.tiers import TieredStore, tiered_store

MIB = 1 << 20
SUFFIXES = ("", KEY_SUFFIX)


@pytest.fixture
def settings(tmp_path: Path, s3_bucket: str, s3_endpoint: str) -> Settings:
    # the cold tier's endpoint comes from PIT_S3_ENDPOINT_URL, its default
    return Settings.from_env({"PIT_DATA_DIR": str(tmp_path), "PIT_STALE_COLD_BUCKET": s3_bucket,
                              "PIT_S3_ENDPOINT_URL": s3_endpoint})


@pytest.fixture
def tiers(settings: Settings) -> TieredStore:
    return tiered_store(settings)


def keyring(kek_id: str = "k1") -> Keyring:
    return Keyring(kek_id, {kek_id: os.urandom(32)})


def cold_keys(tiers: TieredStore) -> list[str]:
    assert isinstance(tiers.cold, S3BlobStore)
    client, bucket = tiers.cold.client, tiers.cold.bucket
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", ()))


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def stored_in(tiers: TieredStore, address: str) -> dict[str, list[str]]:
    """Which objects of `address` each tier holds, read from the backends themselves."""
    assert tiers.cold is not None
    return {"hot": [s for s in SUFFIXES if tiers.hot.raw_size(address, suffix=s) is not None],
            "warm": [s for s in SUFFIXES
                     if tiers.warm.raw_size(address, suffix=s + ".zst") is not None],
            "cold": [s for s in SUFFIXES
                     if tiers.cold.raw_size(address, suffix=s + ".zst") is not None]}


def only_in(tier: str, suffixes: tuple[str, ...] = ("",)) -> dict[str, list[str]]:
    return {name: list(suffixes) if name == tier else [] for name in ("hot", "warm", "cold")}


def raw_in(backend, address: str, suffix: str) -> bytes:
    """An object of a compressed tier, decompressed by zstd itself."""
    return zstandard.ZstdDecompressor().decompress(
        b"".join(backend.read_raw(address, suffix=suffix + ".zst")))


def test_a_retrieve_from_each_tier_gives_the_same_bytes(tiers, settings):
    contents = [b"", b'{"answer": 42}', b"a line of a log, again and again\n" * 70_000,
                os.urandom(PART_BYTES + 5)]  # incompressible: a multipart upload to cold
    through_factory = artifact_store(settings)  # tiers configured: it reads through them
    assert isinstance(through_factory, TieredStore)
    for data in contents:
        address = tiers.store(data).address
        assert tiers.tier_of(address) == "hot" and stored_in(tiers, address) == only_in("hot")
        for tier in ("warm", "cold", "hot", "cold", "warm", "hot"):
            before = tiers.tier_of(address)  # hot again after a read from cold
            written = tiers.move(address, tier)
            assert stored_in(tiers, address) == only_in(tier)
            assert tiers.tier_of(address) == tier and address in tiers
            if tier == "hot":
                assert written == (0 if before == "hot" else len(data))
            if tier == "warm":
                assert written == tiers.warm.raw_size(address, suffix=".zst")
            assert tiers.size(address) == len(data) and tiers.raw_size(address) == len(data)
            assert tiers.get(address) == data
            assert b"".join(tiers.stream(address)) == data
            assert through_factory.get(address) == data
    assert tiers.move(address, "hot") == 0  # already there: nothing to do
    assert stored_in(tiers, address) == only_in("hot")


def test_a_cold_read_restores_to_hot_and_the_hot_copy_serves_later_reads(tiers):
    data = b"cold content, wanted again " * 3000
    address = tiers.store(data).address
    assert tiers.move(address, "cold") > 0
    assert tiers.hot.raw_size(address) is None
    assert tiers.size(address) == len(data) and address in tiers  # neither restores
    assert stored_in(tiers, address) == only_in("cold")
    assert tiers.get(address) == data
    # restored to hot; the cold copy stays (a read deletes nothing)
    assert stored_in(tiers, address)["hot"] == [""] and tiers.tier_of(address) == "hot"
    assert stored_in(tiers, address)["cold"] == [""]
    assert isinstance(tiers.cold, S3BlobStore)
    tiers.cold.client.delete_object(Bucket=tiers.cold.bucket,
                                    Key=tiers.cold.key_of(address, ".zst"))
    assert tiers.get(address) == data  # from hot, the bucket no longer has it
    # content stored again while it is only in a lower tier was not new
    tiers.move(address, "warm")
    again = tiers.store(data)
    assert (again.address, again.newly_stored) == (address, False)
    assert tiers.store(b"brand new").newly_stored


def test_encrypted_content_stays_encrypted_in_every_tier(tiers, settings):
    ring = keyring("old")
    store = EncryptedStore(tiers, ring)
    data = b"a secret worth keeping, " * 50_000  # 1.2 MiB: two sealed chunks
    address = store.store(data).address
    original = {s: b"".join(tiers.hot.read_raw(address, suffix=s)) for s in SUFFIXES}
    for tier, backend in (("warm", tiers.warm), ("cold", tiers.cold)):
        tiers.move(address, tier)
        assert stored_in(tiers, address) == only_in(tier, SUFFIXES)
        # the same ciphertext and key object, byte for byte: no plaintext anywhere
        copies = {s: raw_in(backend, address, s) for s in SUFFIXES}
        assert copies == original and data[:64] not in copies[""]
        assert address in store and store.size(address) == len(data)
        assert store.get(address) == data
    # from cold, both objects were restored to hot together
    assert stored_in(tiers, address)["hot"] == list(SUFFIXES)
    tiers.move(address, "cold")
    # a key rotation re-wraps the key object (into hot, shadowing the cold one) and the
    # content still reads with the new key alone
    new = keyring("new")
    assert rotate(EncryptedStore(tiers, Keyring("old", {"old": ring.keys["old"],
                                                       "new": new.keys["new"]})), new) == 1
    assert stored_in(tiers, address) == {"hot": [KEY_SUFFIX], "warm": [], "cold": list(SUFFIXES)}
    assert EncryptedStore(tiers, new).get(address) == data
    tiers.move(address, "warm")  # takes the new key object along, and leaves nothing behind
    assert stored_in(tiers, address) == only_in("warm", SUFFIXES)
    assert EncryptedStore(tiers, new).get(address) == data
    encrypted_factory = artifact_store(Settings.from_env(
        {**settings.env, "PIT_KEYRING_KEYS": "new:" + base64.b64encode(new.keys["new"]).decode()}))
    assert isinstance(encrypted_factory, EncryptedStore)
    assert encrypted_factory.get(address) == data


def test_a_move_cut_short_before_the_source_is_deleted_leaves_it_readable(tiers, monkeypatch):
    store = EncryptedStore(tiers, keyring())
    data = b"moved while the power went out " * 2000
    address = store.store(data).address

    def crash(*args, **kwargs):
        raise RuntimeError("power cut")

    monkeypatch.setattr(tiers.hot, "delete_raw", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        tiers.move(address, "cold")
    # copied, not deleted: in both tiers, read from hot
    assert stored_in(tiers, address) == {"hot": list(SUFFIXES), "warm": [],
                                         "cold": list(SUFFIXES)}
    assert store.get(address) == data and tiers.tier_of(address) == "hot"

    # cut between the deletes: the content object gone from hot, its key object not yet
    real_delete = FileBlobStore.delete_raw
    deletes = []

    def crash_on_second(address: str, *, suffix: str = "") -> bool:
        deletes.append(suffix)
        if len(deletes) == 2:
            raise RuntimeError("power cut")
        return real_delete(tiers.hot, address, suffix=suffix)

    monkeypatch.setattr(tiers.hot, "delete_raw", crash_on_second)
    with pytest.raises(RuntimeError, match="power cut"):
        tiers.move(address, "cold")
    assert stored_in(tiers, address) == {"hot": [KEY_SUFFIX], "warm": [],
                                         "cold": list(SUFFIXES)}
    assert store.get(address) == data  # the content restored from cold, the key from hot
    monkeypatch.undo()
    # the same move, run again, finishes it
    tiers.move(address, "cold")
    assert stored_in(tiers, address) == only_in("cold", SUFFIXES)
    assert store.get(address) == data


def test_a_copy_that_fails_or_reads_back_wrong_leaves_the_source_alone(tiers, monkeypatch):
    data = b"copied badly " * 10_000
    address = tiers.store(data).address
    real_write = FileBlobStore.write_raw

    def flip_a_byte(address, chunks, *, suffix="", exclusive=False):
        whole = bytearray(b"".join(chunks))
        whole[len(whole) // 2] ^= 1
        return real_write(tiers.warm, address, [bytes(whole)], suffix=suffix,
                          exclusive=exclusive)

    monkeypatch.setattr(tiers.warm, "write_raw", flip_a_byte)
    with pytest.raises(BlobIntegrityError, match=f"artifact {address} in the warm tier is "
                                                 "corrupt"):
        tiers.move(address, "warm")
    assert stored_in(tiers, address) == only_in("hot")  # the bad copy went
    assert tiers.get(address) == data

    def fail_midway(address, chunks, *, suffix="", exclusive=False):
        for _ in chunks:
            raise BlobStoreError("S3 bucket x: cannot upload: connection reset")
        return True

    monkeypatch.setattr(tiers.cold, "write_raw", fail_midway)
    with pytest.raises(BlobStoreError, match="connection reset"):
        tiers.move(address, "cold")
    assert stored_in(tiers, address) == only_in("hot") and tiers.get(address) == data


def test_a_damaged_lower_copy_is_refused_naming_its_address(tiers):
    data, other = b"the real content " * 100, b"the fake content " * 100
    address = tiers.store(data).address
    tiers.move(address, "warm")
    fake = zstandard.ZstdCompressor().compress(other)
    tiers.warm.write_raw(address, [fake], suffix=".zst")
    with pytest.raises(BlobIntegrityError, match=f"artifact {address} is corrupt: its warm "
                                                 "copy hashes to sha256:"):
        tiers.get(address)
    tiers.warm.write_raw(address, [b"not zstd at all"], suffix=".zst")
    with pytest.raises(BlobIntegrityError, match="does not start with a zstd frame header"):
        tiers.get(address)
    # cut short: zstd itself would not notice a frame missing its end
    whole = zstandard.ZstdCompressor().compress(data)
    tiers.warm.write_raw(address, [whole[:len(whole) // 2]], suffix=".zst")
    with pytest.raises(BlobIntegrityError, match=f"artifact {address} in the warm tier is "
                                                 "corrupt"):
        tiers.get(address)


def test_purge_removes_every_object_from_every_tier(tiers, tmp_path):
    store = EncryptedStore(tiers, keyring())
    secret = store.store(b"to be forgotten " * 1000).address
    tiers.move(secret, "cold")
    store.get(secret)  # restored: now in hot and in cold
    plain = tiers.store(b"plain, in warm").address
    tiers.move(plain, "warm")
    assert tiers.purge(secret) == 4 and tiers.purge(plain) == 1
    assert tiers.purge(secret) == 0 and tiers.purge(plain) == 0  # idempotent
    assert cold_keys(tiers) == [] and files_under(tmp_path) == []
    for address in (secret, plain):
        assert address not in tiers and tiers.tier_of(address) is None
        with pytest.raises(BlobNotFoundError, match=f"unknown artifact {address}"):
            tiers.get(address)
        with pytest.raises(BlobNotFoundError, match=f"unknown artifact {address}"):
            tiers.move(address, "warm")
    with pytest.raises(BlobStoreError, match="not a artifact hash: 'sha256:nope'"):
        tiers.purge("sha256:nope")


def test_without_a_cold_bucket_a_move_to_cold_is_a_one_line_error(tmp_path):
    tiers = tiered_store(Settings.from_env({"PIT_DATA_DIR": str(tmp_path)}))
    assert tiers.cold is None and tiers.tiers == ("hot", "warm")
    address = tiers.store(b"stays warm at most").address
    with pytest.raises(BlobStoreError) as error:
        tiers.move(address, "cold")
    assert str(error.value) == "there is no cold tier: PIT_STALE_COLD_BUCKET names no bucket"
    with pytest.raises(BlobStoreError) as error:
        tiers.move(address, "frozen")
    assert str(error.value) == "unknown storage tier 'frozen': hot, warm or cold"
    with pytest.raises(BlobStoreError, match="needs a cold tier"):
        measure_tiers(tiers, mib=1)
    assert tiers.tier_of(address) == "hot" and tiers.get(address) == b"stays warm at most"


def test_the_settings_and_the_artifact_store_reading_through_the_tiers(tmp_path):
    plain = Settings.from_env({"PIT_DATA_DIR": str(tmp_path)})
    assert StaleSettings.of(plain) == StaleSettings(warm_dir=tmp_path / "warm")
    store = artifact_store(plain)  # made before anything moved: it still finds what will
    tiered = tiered_store(plain)
    address = tiered.store(b"moved by the Stale Manager").address
    tiered.move(address, "warm")
    assert isinstance(store, TieredStore) and store.get(address) == b"moved by the Stale Manager"
    assert isinstance(store.hot, FileBlobStore) and store.hot.root == tmp_path / "artifacts"
    configured = StaleSettings.of(Settings.from_env({
        "PIT_DATA_DIR": str(tmp_path), "PIT_STALE_WARM_DIR": "/srv/warm",
        "PIT_STALE_COLD_BUCKET": "pit-cold", "PIT_S3_ENDPOINT_URL": "http://s3:1",
        "PIT_STALE_COLD_ENDPOINT_URL": "http://cold:2"}))
    assert configured == StaleSettings(Path("/srv/warm"), "pit-cold", "http://cold:2")


def test_the_benchmark_measures_and_leaves_nothing_behind(tiers, tmp_path):
    figures = measure_tiers(tiers, mib=4, restores=3)
    assert set(figures) == {"stale_migrate_mib_per_s", "stale_cold_restore_64k_ms"}
    assert all(value > 0 for value in figures.values())
    assert cold_keys(tiers) == [] and files_under(tmp_path) == []


def test_addresses_of_every_tier_are_listed_once(tiers):
    addresses = [tiers.store(data).address for data in (b"one", b"two", b"three")]
    tiers.move(addresses[1], "warm")
    tiers.move(addresses[2], "cold")
    tiers.get(addresses[2])  # restored: in hot and in cold
    assert sorted(tiers.raw_addresses("")) == sorted(addresses)
    assert address_of(b"three") == addresses[2]
