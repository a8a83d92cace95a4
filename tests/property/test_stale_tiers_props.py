"""Properties of the storage tiers (streams/stale/tiers.py) on local directories (the cold
tier a directory standing in for the bucket): any sequence of moves, with reads between
them, keeps an address's objects byte-identical and its content readable, and `tier_of`
says where they are."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.artifacts.crypto import KEY_SUFFIX, EncryptedStore, Keyring
from streams.blobs import CHUNK_BYTES, FileBlobStore, address_of
from streams.stale.tiers import TIERS, TieredStore

KEYRING = Keyring("k1", {"k1": bytes(range(32))})

contents = st.one_of(
    st.binary(max_size=2048),
    st.builds(lambda n: b"compressible " * n, st.integers(0, 20_000)),
    # past one chunk: random bytes of a drawn size (drawing each byte is slow)
    st.builds(lambda size, seed: random.Random(seed).randbytes(size),
              st.integers(CHUNK_BYTES - 1, CHUNK_BYTES + 17), st.integers(0, 2**32)))
# a step: the tier to move to, and whether to read the content after the move
steps = st.lists(st.tuples(st.sampled_from(TIERS), st.booleans()), max_size=8)
props = settings(max_examples=30, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def tiers_in(root: Path) -> TieredStore:
    return TieredStore(*(FileBlobStore(root / name, kind="artifact") for name in TIERS))


def holding(tiers: TieredStore, address: str, suffixes: list[str]) -> set[str]:
    """The tiers holding any object of `address`, from the backends themselves."""
    assert tiers.cold is not None
    found = set()
    for name, backend, ending in (("hot", tiers.hot, ""), ("warm", tiers.warm, ".zst"),
                                  ("cold", tiers.cold, ".zst")):
        if any(backend.raw_size(address, suffix=s + ending) is not None for s in suffixes):
            found.add(name)
    return found


@props
@given(data=contents, encrypted=st.booleans(), moves=steps)
def test_any_sequence_of_moves_keeps_the_content_and_says_where_it_is(data, encrypted, moves):
    with tempfile.TemporaryDirectory() as root:
        tiers = tiers_in(Path(root))
        store = EncryptedStore(tiers, KEYRING) if encrypted else tiers
        suffixes = ["", KEY_SUFFIX] if encrypted else [""]
        address = store.store(data).address
        assert address == address_of(data) and tiers.tier_of(address) == "hot"
        # the raw objects as first stored: every tier must hold exactly these bytes
        raw = {s: b"".join(tiers.hot.read_raw(address, suffix=s)) for s in suffixes}
        for tier, read in moves:
            before = tiers.tier_of(address)
            written = tiers.move(address, tier)
            assert tiers.tier_of(address) == tier
            assert holding(tiers, address, suffixes) == {tier}  # no copy left elsewhere
            if before == tier:
                assert written == 0
            assert {s: tiers.raw_size(address, suffix=s) for s in suffixes} == {
                s: len(b) for s, b in raw.items()}
            if read:
                assert store.get(address) == data and store.size(address) == len(data)
                # a read from cold restored it to hot; from elsewhere it stays put
                assert tiers.tier_of(address) == ("hot" if tier == "cold" else tier)
                assert {s: b"".join(tiers.read_raw(address, suffix=s)) for s in suffixes} \
                    == raw
        assert store.get(address) == data
        assert tiers.purge(address) >= len(suffixes) and tiers.tier_of(address) is None
