"""What the Stale Manager learns of the content: the `CatalogObserver` follows
pit.artifacts.events, folds them with the catalog's own `evolve` (pure, so its picture is
exactly the catalog's), and tells the Stale Manager what changed as `ObserveArtifacts`
commands - each item's size, age, last use, reads, quality, tags, lineage, names and
stores. It also lists the hot tier's blobs: one the catalog does not know is an orphan (a
crash between a blob write and its StoreArtifact), reported with the time it was first
seen, so the grace period counts from then. Asked to (PIT_STALE_DAG_OUTPUTS=1), it follows
pit.dag.events too, for the node
outputs in the DAG's blob store (streams/blobs.py): which workflows produced or read each
blob, and when the last of them ended (`DagOutputs`); a blob there that no workflow names is
an orphan as well. The Stale Manager decides on these commands, which become its events: a
replay sees exactly what each plan saw.

`items_of`, `orphans_of` and `DagOutputs.items` are the pure part: what the logs and the
stores hold in, the items the Stale Manager needs out.

It runs once per cluster (on the leader). On every start it rebuilds the catalog from the
whole history and tells everything again; the Stale Manager accepts an item it already has
with no event, so a restart costs commands but changes nothing. It tells at most every
TELL_EVERY_S, and lists the stores every PIT_STALE_SCAN_S (10 minutes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Mapping
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
from streams.dag.execution import (
    DAG,
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionRestarted,
    ExecutionTimedOut,
    NodeCompleted,
    NodeScheduled,
)
from streams.dag.topics import DAG_EVENTS
from streams.decider import Message
from streams.errors import PitError
from streams.follower import Follower, entity_events
from streams.log import LogRecord
from streams.persistent import PMap
from streams.stale.manager import MAX_OBSERVED, STALE, ObserveArtifacts, item_record
from streams.stale.policy import DAG_OUTPUT, Item
from streams.stale.settings import StaleSettings
from streams.waiting import unless_stopped

log = logging.getLogger(__name__)
TELL_EVERY_S = 0.5


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


@dataclass
class DagOutputs:
    """Which workflows name each blob of the DAG's blob store - as a node's output, or as a
    node's input by reference - and when those that name any blob ended. Only executions
    that name a blob are remembered (outputs past 32 KiB go to the blob store; most
    workflows never do), so this stays small however many workflows run."""

    refs: dict[str, set[str]] = field(default_factory=dict)   # blob address -> executions
    named: set[str] = field(default_factory=set)              # executions naming any blob
    ended: dict[str, int] = field(default_factory=dict)       # ... of those: ended at, ms

    def take(self, event: Message, at_ms: int) -> None:
        match event:
            case NodeCompleted(output_hash=address, execution_id=execution) if address:
                self._names(execution, [address])
            case NodeScheduled(input_refs=refs, execution_id=execution) if refs not in ("",
                                                                                      "{}"):
                self._names(execution, [r["hash"] for r in json.loads(refs).values()
                                        if isinstance(r, dict) and "hash" in r])
            case ExecutionCompleted() | ExecutionFailed() | ExecutionCancelled() | \
                    ExecutionTimedOut() if event.execution_id in self.named:
                self.ended[event.execution_id] = at_ms
            case ExecutionRestarted(execution_id=execution):
                self.ended.pop(execution, None)

    def _names(self, execution: str, addresses: Iterable[str]) -> None:
        for address in addresses:
            self.refs.setdefault(address, set()).add(execution)
            self.named.add(execution)
        self.ended.pop(execution, None)  # it runs

    def items(self, stored: Mapping[str, int], first_seen: dict[str, int], now_ms: int,
              cataloged: Iterable[str]) -> dict[str, Item]:
        """The blob store's blobs (`stored`: address -> size) as items: a blob no workflow
        names is an orphan (dated from when first seen); one whose workflows all ended was
        last used when the last ended; one a running workflow names is in use now. A blob
        whose content is also an artifact is left to the artifact's policy (one address,
        one item: the Stale Manager keeps one story per address)."""
        cataloged = set(cataloged)
        found = {}
        for address, size in stored.items():
            if address in cataloged:
                continue
            seen = first_seen.setdefault(address, now_ms)
            executions = self.refs.get(address, set())
            if not executions:
                found[address] = Item(address, size, seen, seen, orphan=True, kind=DAG_OUTPUT)
                continue
            ends = [self.ended.get(e) for e in executions]
            used = now_ms if None in ends else max(e for e in ends if e is not None)
            found[address] = Item(address, size, min(seen, used), used, kind=DAG_OUTPUT)
        return found


class CatalogObserver:
    """The service `pit up` runs for the Stale Manager (see the module docstring)."""

    def __init__(self, settings: Settings, codec: Codec, engine: Engine | None = None) -> None:
        self.settings = settings
        own = StaleSettings.of(settings)
        self.scan_every_s, self.dag_outputs = own.scan_every_s, own.dag_outputs
        self.client = CommandClient(settings, "pit-catalog-observer", codec, deciders=(STALE,))
        self.catalogs: dict[str, Catalog] = {}
        self.told: dict[str, dict[str, Item]] = {}   # per store: what it was last told
        self.orphans: dict[str, Item] = {}  # blobs no catalog or workflow knows, and outputs
        self.first_seen: dict[str, int] = {}
        self.dag = DagOutputs()
        self._follower = Follower(
            settings, [ARTIFACT_EVENTS, DAG_EVENTS] if self.dag_outputs else [ARTIFACT_EVENTS],
            engine)

    def _take(self, record: LogRecord) -> None:
        for key, event in entity_events(self.client.codec, (ARTIFACTS, DAG), [record]):
            if record.topic == DAG_EVENTS:
                self.dag.take(event, record.timestamp_ms)
            else:
                self._apply(key, event, record.timestamp_ms)

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
        """List the artifact store's hot tier and the DAG's blob store (a thread: a bucket
        listing can take a while)."""
        from streams.artifacts.storage import artifact_backend
        from streams.blobs import blob_store

        now = int(time.time() * 1000)
        hot = artifact_backend(self.settings)  # the hot tier's objects, however wrapped
        listed = {a: hot.raw_size(a) or 0 for a in hot.raw_addresses("")}
        known = self.catalogs.get("default")
        cataloged = known.state.artifacts if known else PMap()
        self.orphans = orphans_of(cataloged, listed, self.first_seen, now)
        if not self.dag_outputs:
            return
        blobs = blob_store(self.settings)
        outputs = {a: blobs.raw_size(a) or 0 for a in blobs.raw_addresses("")}
        for address, item in self.dag.items(outputs, self.first_seen, now, cataloged).items():
            self.orphans.setdefault(address, item)  # the artifact store's copy comes first

    async def _tell(self, stop: asyncio.Event) -> None:
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
                outcome = await unless_stopped(self.client.send(command), stop)
                if outcome is None:  # pit up is stopping (a restart tells everything again)
                    return
                if not outcome.accepted:  # an item the Stale Manager refuses: say so, go on
                    log.warning("the stale manager refused an observation: %s", outcome.reason)
            self.told[store_id] = now

    async def run(self, stop: asyncio.Event) -> None:
        await self._follower.restore(self._take, stop)
        await self.client.start()
        try:
            await self._follower.start()
            await asyncio.to_thread(self.scan)
            await self._tell(stop)
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
                    await self._tell(stop)
                except PitError as exc:  # the broker or pit up is away: tell it all later
                    log.warning("could not tell the stale manager about the catalog: %s", exc)
                    self.told.clear()
                told_at = now
        finally:
            await self._follower.stop()
            await self.client.close()

