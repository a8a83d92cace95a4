"""Artifact storage on the local filesystem: `store`'s dedup flag under concurrent writers,
raw objects, encryption's errors and concurrency, the keyring, settings and the factory,
and the benchmarks at small sizes."""

from __future__ import annotations

import base64
import io
import json
import multiprocessing
import os
import threading

import pytest

from streams.artifacts.bench import encrypt_overhead, store_retrieve_64k, stream_1g
from streams.artifacts.crypto import KEY_SUFFIX, EncryptedStore, Keyring
from streams.artifacts.errors import DecryptionError
from streams.artifacts.settings import ArtifactSettings
from streams.artifacts.storage import S3BlobStore, artifact_store
from streams.blobs import FileBlobStore, address_of
from streams.config import Settings
from streams.errors import BlobNotFoundError, ConfigError
from streams.stale.tiers import TieredStore

KEY = bytes(range(32))
KEY_TEXT = base64.b64encode(KEY).decode()


def files_under(root) -> list:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def run_at_once(count: int, work) -> list:
    start = threading.Barrier(count)
    results: list = []

    def run(i: int) -> None:
        start.wait()
        results.append(work(i))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_one_of_many_concurrent_writers_of_new_content_reports_it_new(tmp_path):
    store = FileBlobStore(tmp_path)
    data = os.urandom(3 << 20)
    results = run_at_once(8, lambda i: store.store(data if i % 2 else io.BytesIO(data)))
    assert {r.address for r in results} == {address_of(data)}
    assert [r.newly_stored for r in results].count(True) == 1
    assert files_under(tmp_path) == [store.path_of(address_of(data))
                                     .relative_to(tmp_path).as_posix()]


def test_raw_objects_sit_beside_the_blob_and_can_be_created_exclusively(tmp_path):
    store = FileBlobStore(tmp_path, kind="artifact")
    address = store.put(b"content")
    assert store.write_raw(address, [b"k", b"ey"], suffix=".key", exclusive=True)
    assert not store.write_raw(address, [b"other"], suffix=".key", exclusive=True)
    assert b"".join(store.read_raw(address, suffix=".key")) == b"key"
    assert store.write_raw(address, [b"replaced"], suffix=".key")
    assert store.raw_size(address, suffix=".key") == len(b"replaced")
    assert store.raw_size(address, suffix=".nope") is None
    assert list(store.raw_addresses(".key")) == [address]
    assert store.raw_path(address, ".key") == store.path_of(address).with_name(
        store.path_of(address).name + ".key")
    with pytest.raises(BlobNotFoundError, match=f"unknown artifact {address}.nope"):
        store.read_raw(address, suffix=".nope")
    assert len(files_under(tmp_path)) == 2  # no temporary left


def encrypted(root, keyring: Keyring | None = None) -> EncryptedStore:
    return EncryptedStore(FileBlobStore(root, kind="artifact"), keyring or Keyring("k1",
                                                                                    {"k1": KEY}))


def test_concurrent_encrypted_writers_agree_on_one_data_key(tmp_path):
    store = encrypted(tmp_path)
    data = os.urandom((2 << 20) + 5)
    sources = [lambda: data, lambda: io.BytesIO(data),
               lambda: (data[i:i + 4096] for i in range(0, len(data), 4096))]
    results = run_at_once(9, lambda i: store.store(sources[i % 3]()))
    assert {r.address for r in results} == {address_of(data)}
    assert store.get(address_of(data)) == data
    assert len(files_under(tmp_path)) == 2  # the content object and its key object


def _store_encrypted(root: str) -> str:
    return encrypted(root).store(bytes([9]) * (3 << 20)).address


def test_concurrent_encrypted_writers_in_processes(tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        addresses = pool.map(_store_encrypted, [str(tmp_path)] * 8)
    data = bytes([9]) * (3 << 20)
    assert set(addresses) == {address_of(data)}
    assert encrypted(tmp_path).get(address_of(data)) == data
    assert len(files_under(tmp_path)) == 2


def test_encrypted_content_is_not_the_plaintext_and_names_its_key(tmp_path):
    store = encrypted(tmp_path)
    data = b"a secret worth keeping " * 100
    address = store.store(data).address
    assert data[:64] not in store.backend.raw_path(address).read_bytes()
    key_object = json.loads(store.backend.raw_path(address, KEY_SUFFIX).read_bytes())
    assert sorted(key_object) == ["kek_id", "nonce", "wrapped_key"]
    assert key_object["kek_id"] == "k1"


def test_decryption_errors_are_one_line_naming_the_address(tmp_path):
    store = encrypted(tmp_path)
    address = store.store(b"content").address
    missing = "sha256:" + "0" * 64
    with pytest.raises(BlobNotFoundError, match=f"unknown artifact {missing}"):
        store.stream(missing)
    assert missing not in store and address in store
    store.backend.raw_path(address, KEY_SUFFIX).write_bytes(b"{}")
    with pytest.raises(DecryptionError, match=f"^cannot decrypt artifact {address}: its key "
                                              "object is malformed$"):
        store.get(address)
    store.backend.raw_path(address, KEY_SUFFIX).unlink()
    assert address not in store
    with pytest.raises(DecryptionError, match=f"{address}: its key object is missing"):
        store.get(address)


def test_keyring_from_a_file_and_its_errors(tmp_path):
    path = tmp_path / "keyring.json"
    path.write_text(json.dumps({"active": "b", "keys": {"a": KEY_TEXT, "b": KEY_TEXT}}))
    assert Keyring.from_file(path) == Keyring("b", {"a": KEY, "b": KEY})
    for document, message in [
        ({"active": "c", "keys": {"a": KEY_TEXT}}, "active key id 'c' is not among"),
        ({"active": "a", "keys": {"a": base64.b64encode(b"short").decode()}},
         "key 'a' is 5 bytes, not 32"),
        ({"active": "a", "keys": {"a": "not base64!"}}, "is not a keyring"),
        ({"keys": {}}, "is not a keyring"),
        ({"active": "a b", "keys": {"a b": KEY_TEXT}}, "key id 'a b' is not"),
    ]:
        path.write_text(json.dumps(document))
        with pytest.raises(ConfigError, match=message):
            Keyring.from_file(path)
    with pytest.raises(ConfigError, match=r"PIT_KEYRING: cannot read .*nope\.json"):
        Keyring.from_file(tmp_path / "nope.json")
    assert KEY_TEXT not in repr(Keyring("a", {"a": KEY}))


def test_keyring_from_the_environment_and_its_errors():
    assert Keyring.from_text(f"a:{KEY_TEXT}, b:{KEY_TEXT}", "b").active == "b"
    for text, message in [("a", "'a' is not id:base64"), (f"a:{KEY_TEXT}x", "'a' is not"),
                          (f"a:{KEY_TEXT},a:{KEY_TEXT}", "key id 'a' is there twice")]:
        with pytest.raises(ConfigError, match=f"PIT_KEYRING_KEYS: {message}"):
            Keyring.from_text(text)


def test_settings_choose_the_backend_and_keep_key_material_out_of_the_repr(tmp_path):
    settings = Settings.from_env({"PIT_DATA_DIR": str(tmp_path)})
    own = ArtifactSettings.of(settings)
    assert (own.backend, own.keyring_file) == ("file", None)
    store = artifact_store(settings)  # read through the Stale Manager's tiers
    assert isinstance(store, TieredStore) and store.hot.root == tmp_path / "artifacts"
    env = {"PIT_DATA_DIR": str(tmp_path), "PIT_KEYRING_KEYS": f"k9:{KEY_TEXT}"}
    settings = Settings.from_env(env)
    assert KEY_TEXT not in repr(settings) + repr(ArtifactSettings.of(settings))
    store = artifact_store(settings)
    assert isinstance(store, EncryptedStore) and store.keyring.active == "k9"
    assert store.backend.hot.root == tmp_path / "artifacts"
    s3 = artifact_store(Settings.from_env({"PIT_ARTIFACT_BACKEND": "s3",
                                           "PIT_S3_BUCKET": "pit-artifacts",
                                           "PIT_S3_ENDPOINT_URL": "http://127.0.0.1:1"}))
    s3 = s3.hot
    assert isinstance(s3, S3BlobStore) and (s3.bucket, s3.endpoint_url) == (
        "pit-artifacts", "http://127.0.0.1:1")


@pytest.mark.parametrize(("env", "message"), [
    ({"PIT_ARTIFACT_BACKEND": "disk"}, "PIT_ARTIFACT_BACKEND must be file or s3, got 'disk'"),
    ({"PIT_ARTIFACT_BACKEND": "s3"}, "PIT_ARTIFACT_BACKEND=s3 needs PIT_S3_BUCKET"),
    ({"PIT_KEYRING": "/k.json", "PIT_KEYRING_KEYS": "a:b"}, "both set"),
])
def test_impossible_artifact_settings_are_config_errors(env, message):
    with pytest.raises(ConfigError, match=message):
        ArtifactSettings.of(Settings.from_env(env))


def test_the_benchmarks_run_and_stream_in_bounded_memory(tmp_path):
    figures = store_retrieve_64k(tmp_path / "small", n=20)
    assert set(figures) >= {"artifact_store_64k_ms", "artifact_retrieve_64k_ms"}
    stream = stream_1g(tmp_path / "stream", size=64 << 20)
    assert stream["artifact_stream_1g_mib_per_s"] > 0
    # 64 MiB streamed through a process that grows by a few MiB at most
    growth = stream["artifact_stream_1g_peak_rss_mib"] - stream[
        "artifact_stream_1g_baseline_rss_mib"]
    assert growth < 16
    assert encrypt_overhead(size=1 << 20, repeats=1)["encrypt_ms_per_mib"] > 0


def test_the_dedup_corpus_saves_what_its_duplicates_weigh(tmp_path):
    from streams.artifacts.bench import dedup_savings

    figures = dedup_savings(tmp_path, stores=200)
    assert 0 < figures["dedup_savings"] < 1
    assert figures["dedup_unique_stored"] < figures["dedup_total_stored"] == 200
    # every unique content is on disk once
    assert len([p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()]) \
        == figures["dedup_unique_stored"]
