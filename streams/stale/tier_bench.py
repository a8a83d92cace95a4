"""Benchmarks of the storage tiers (streams/stale/tiers.py): figures for `pit bench` (they
report, they do not print or assert).

The content is text-like: runs of pseudo-words (letters drawn with English-like frequencies)
cut from a large corpus, each followed by a random hex id, like logs or model output. zstd
compresses it about 2.8x: neither random bytes (no gain, and a slow compressor looks fast)
nor repeated blocks (a ratio no real artifact has). Every call draws fresh content, so the
addresses it stores and then purges are its own, never an artifact already in the store.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Iterator

from streams.errors import BlobStoreError
from streams.stale.tiers import TieredStore

MIB = 1 << 20
SMALL = 64 << 10
_LETTERS = b"etaoinshrdlcumwfgypbvkjxqz"  # most frequent first
_CORPUS_MIB = 16  # larger than zstd's window at its default level: matches are not free


def measure_tiers(tiered: TieredStore, *, mib: int = 64, restores: int = 9
                  ) -> dict[str, float]:
    """On `tiered`, which needs a cold tier: `stale_migrate_mib_per_s`, MiB of original
    content per second of moving `mib` MiB from hot to cold (read, compress, upload, read
    back and check, delete the hot copy); `stale_cold_restore_64k_ms`, the median
    milliseconds of reading a 64 KiB artifact that is in cold (restored to hot, then read and
    verified), of `restores` artifacts. Everything it stores it purges."""
    text = _TextLike(random.Random(os.urandom(16)))
    if "cold" not in tiered.tiers:  # said before anything is stored
        raise BlobStoreError("measure_tiers needs a cold tier: PIT_STALE_COLD_BUCKET names no "
                             "bucket")
    address = tiered.store(text.chunks(mib * MIB)).address
    try:
        started = time.perf_counter()
        tiered.move(address, "cold")
        migrate_s = time.perf_counter() - started
    finally:
        tiered.purge(address)
    restore_ms = []
    for _ in range(restores):
        small = tiered.store(b"".join(text.chunks(SMALL))).address
        try:
            tiered.move(small, "cold")
            started = time.perf_counter()
            tiered.get(small)
            restore_ms.append((time.perf_counter() - started) * 1000)
        finally:
            tiered.purge(small)
    return {"stale_migrate_mib_per_s": mib / migrate_s,
            "stale_cold_restore_64k_ms": statistics.median(restore_ms)}


class _TextLike:
    """Text-like content from a seeded generator (see the module's docstring)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        # byte -> letter, skewed towards the frequent ones: one translate() per word
        table = bytes(_LETTERS[min(int((i / 256) ** 1.8 * 26), 25)] for i in range(256))
        words = [rng.randbytes(rng.randint(2, 9)).translate(table) for _ in range(8000)]
        self._corpus = b" ".join(rng.choices(words, k=_CORPUS_MIB * MIB // 6))

    def chunks(self, size: int) -> Iterator[bytes]:
        """`size` bytes, in chunks of 1 MiB at most."""
        rng, corpus = self._rng, self._corpus
        while size > 0:
            parts, length = [], 0
            while length < min(size, MIB):
                start = rng.randrange(len(corpus) - 4096)
                parts += [corpus[start:start + rng.randint(64, 4096)],
                          b"%08x\n" % rng.getrandbits(32)]
                length += len(parts[-2]) + len(parts[-1])
            chunk = b"".join(parts)[:min(size, MIB)]
            size -= len(chunk)
            yield chunk
