"""Persistent (immutable, structure-sharing) collections for decider states.

A decider's `evolve` returns a new state per event; with a plain dict every event would copy
every entity. These collections copy only the part an update touches.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any, ClassVar, Generic, TypeVar

K = TypeVar("K", bound=str)
V = TypeVar("V")
_SHARDS = 64
_EMPTY: dict = {}


def _shard(key: str) -> int:
    # crc32, not hash(): the layout (and so iteration order) is the same in every process.
    return zlib.crc32(key.encode()) & (_SHARDS - 1)


class PMap(Generic[K, V]):
    """An immutable str-keyed map whose `set`/`delete` copy one of 64 shards, not the whole
    map: evolving a pool of 10,000 models copies ~160 entries, not 10,000. Equality is by
    content. Callers never depend on its iteration order (they sort where order matters)."""

    __slots__ = ("_len", "_shards")

    def __init__(self, shards: tuple[dict, ...] | None = None, length: int = 0) -> None:
        self._shards = shards if shards is not None else (_EMPTY,) * _SHARDS
        self._len = length

    def get(self, key: K, default: Any = None) -> Any:
        return self._shards[_shard(key)].get(key, default)

    def __getitem__(self, key: K) -> V:
        return self._shards[_shard(key)][key]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._shards[_shard(key)]

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[K]:
        for shard in self._shards:
            yield from shard

    def values(self) -> Iterator[V]:
        for shard in self._shards:
            yield from shard.values()

    def items(self) -> Iterator[tuple[K, V]]:
        for shard in self._shards:
            yield from shard.items()

    def set(self, key: K, value: V) -> PMap[K, V]:
        index = _shard(key)
        old = self._shards[index]
        new = dict(old)
        new[key] = value
        shards = list(self._shards)
        shards[index] = new
        return PMap(tuple(shards), self._len + (key not in old))

    def delete(self, key: K) -> PMap[K, V]:
        index = _shard(key)
        if key not in self._shards[index]:
            return self
        new = dict(self._shards[index])
        del new[key]
        shards = list(self._shards)
        shards[index] = new
        return PMap(tuple(shards), self._len - 1)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PMap):
            return NotImplemented
        return self._len == other._len and all(
            a == b for a, b in zip(self._shards, other._shards, strict=True))

    __hash__: ClassVar[None] = None  # type: ignore[assignment]  # unhashable, like dict

    def __repr__(self) -> str:
        return f"PMap({dict(sorted(self.items()))!r})"
