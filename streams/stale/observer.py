"""What the Stale Manager learns of the content: the `CatalogObserver` follows
pit.artifacts.events, folds them with the catalog's own `evolve` (pure, so its picture is
exactly the catalog's), and tells the Stale Manager what changed as `ObserveArtifacts`
commands - each item's size, age, last use, reads, quality, tags, lineage, names and
stores. It also lists the hot tier's blobs: one the catalog does not know is an orphan (a
crash between a blob write and its StoreArtifact), reported with the time it was first
seen, so the grace period counts from then. The Stale Manager decides on these commands,
which become its events: a replay sees exactly what each plan saw.

`items_of` is the pure part: a catalog state and the times of its stores and reads in, the
items the Stale Manager needs out.

It runs once per cluster (on the leader). On every start it rebuilds the catalog from the
whole history and tells everything again; the Stale Manager accepts an item it already has
with no event, so a restart costs commands but changes nothing. It tells at most every
TELL_EVERY_S, and lists the blob store every SCAN_EVERY_S.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import Engine

from schemas.codec import Codec
from streams.artifacts.catalog import (
    ARTIFACTS,
    ArtifactAccessRecorded,
    ArtifactDeduplicated,
    ArtifactStored,
    CatalogState,
)
from streams.artifacts.topics import ARTIFACT_EVENTS
from streams.commands import CommandClient
from streams.config import Settings
from streams.decider import Message
from streams.errors import PitError
from streams.follower import Follower, entity_events
from streams.log import LogRecord
from streams.stale.manager import MAX_OBSERVED, STALE, ObserveArtifacts, item_record
from streams.stale.policy import Item

log = logging.getLogger(__name__)
TELL_EVERY_S = 0.5
SCAN_EVERY_S = 600.0


@dataclass
class Catalog:
    """One store's catalog as the observer folds it, with the times `evolve` does not keep."""

    state: CatalogState
    last_used: dict[str, int] = field(default_factory=dict)  # address -> ms


def items_of(catalog: Catalog) -> dict[str, Item]:
    """Every cataloged artifact as the Stale Manager sees it."""
    found = {}
    for address, a in catalog.state.artifacts.items():
        found[address] = Item(
            address, a.size, a.stored_at, max(a.stored_at, catalog.last_used.get(address, 0)),
            a.accesses, a.quality.score if a.quality is not None else None, a.tags,
            tuple(sorted(p for p, _ in a.parents)), a.names, a.stores, False, a.removed)
    return found


def orphans_of(known: Iterable[str], stored: dict[str, int], first_seen: dict[str, int],
               now_ms: int) -> dict[str, Item]:
    """Blobs in the store (`stored`: address -> size) that no catalog knows, each dated from
    when it was first seen (`first_seen`, updated)."""
    known = set(known)
    found = {}
    for address, size in stored.items():
        if address in known:
            continue
        seen = first_seen.setdefault(address, now_ms)
        found[address] = Item(address, size, seen, seen, orphan=True)
    return found


class CatalogObserver:
    """The service `pit up` runs for the Stale Manager (see the module docstring)."""

    def __init__(self, settings: Settings, codec: Codec, engine: Engine | None = None,
                 *, scan_every_s: float = SCAN_EVERY_S) -> None:
        self.settings, self.scan_every_s = settings, scan_every_s
        self.client = CommandClient(settings, "pit-catalog-observer", codec, deciders=(STALE,))
        self.catalogs: dict[str, Catalog] = {}
        self.told: dict[str, dict[str, Item]] = {}   # per store: what it was last told
        self.orphans: dict[str, Item] = {}          # of the default store's blob store
        self.first_seen: dict[str, int] = {}
        self._follower = Follower(settings, [ARTIFACT_EVENTS], engine)

    def _take(self, record: LogRecord) -> None:
        for store_id, event in entity_events(self.client.codec, ARTIFACTS, [record]):
            self._apply(store_id, event, record.timestamp_ms)

    def _apply(self, store_id: str, event: Message, at_ms: int) -> None:
        catalog = self.catalogs.get(store_id)
        if catalog is None:
            catalog = self.catalogs[store_id] = Catalog(ARTIFACTS.initial_state(store_id))
        catalog.state = ARTIFACTS.evolve(catalog.state, event, at_ms)
        match event:
            case ArtifactStored() | ArtifactDeduplicated():
                catalog.last_used[event.address] = at_ms
            case ArtifactAccessRecorded():
                catalog.last_used[event.address] = max(
                    catalog.last_used.get(event.address, 0), event.interval_end)

    def scan(self) -> None:
        """List the hot tier's blobs (a thread: a bucket listing can take a while)."""
        from streams.artifacts.storage import artifact_store

        store = artifact_store(self.settings)
        listed = {a: store.size(a) for a in _addresses(store)}
        known = self.catalogs.get("default")
        self.orphans = orphans_of(known.state.artifacts if known else (), listed,
                                  self.first_seen, int(time.time() * 1000))

    async def _tell(self) -> None:
        stores = set(self.catalogs) | {"default"}
        for store_id in sorted(stores):
            catalog = self.catalogs.get(store_id)
            now = items_of(catalog) if catalog else {}
            if store_id == "default":
                now.update({a: i for a, i in self.orphans.items() if a not in now})
            before = self.told.get(store_id, {})
            changed = [i for a, i in sorted(now.items()) if before.get(a) != i]
            gone = sorted(a for a, i in before.items() if i.orphan and a not in now)
            for start in range(0, max(len(changed), 1 if gone else 0), MAX_OBSERVED):
                command = ObserveArtifacts(
                    [item_record(i) for i in changed[start:start + MAX_OBSERVED]],
                    gone if start == 0 else [], store_id)
                outcome = await self.client.send(command)
                if not outcome.accepted:  # an item the Stale Manager refuses: say so, go on
                    log.warning("the stale manager refused an observation: %s", outcome.reason)
            self.told[store_id] = now

    async def run(self, stop: asyncio.Event) -> None:
        await self._follower.restore(self._take, stop)
        await self.client.start()
        try:
            await self._follower.start()
            await asyncio.to_thread(self.scan)
            await self._tell()
            told_at = scanned_at = time.monotonic()
            async for records in self._follower.batches(stop, wait_ms=100):
                for record in records:
                    self._take(record)
                now = time.monotonic()
                if now - told_at < TELL_EVERY_S:
                    continue
                try:
                    if now - scanned_at >= self.scan_every_s:
                        await asyncio.to_thread(self.scan)
                        scanned_at = now
                    await self._tell()
                except PitError as exc:  # the broker or pit up is away: tell it all later
                    log.warning("could not tell the stale manager about the catalog: %s", exc)
                    self.told.clear()
                told_at = now
        finally:
            await self._follower.stop()
            await self.client.close()


def _addresses(store: object) -> list[str]:
    """The addresses of the content a store holds (hot tier), whatever its wrapping."""
    backend = getattr(store, "backend", store)  # EncryptedStore keeps its objects in one
    backend = getattr(backend, "hot", backend)  # the tiered store: the hot tier's
    raw = getattr(backend, "raw_addresses", None)
    return sorted(raw("")) if raw is not None else []
