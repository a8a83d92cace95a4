"""The Stale Manager's hands: the `TierWorker` carries out what the decider decided - it moves
an item's bytes between tiers (`TierMoveRequested`) and deletes a purged item's bytes from
every tier (`ItemPurged`) - and reports each as a command (`ReportTierMoved` or
`ReportTierMoveFailed`, `ReportPurged`). The decider never touches a byte. A node output
(`kind` dag_output) is deleted from the DAG's blob store instead, and no catalog is told.

`Pending` is the pure part: the stale events in, the work still owed out - moves requested
and not yet reported, purges not yet reported. On every start the worker rebuilds it from
the whole history, so work interrupted by a crash is done after the restart: a move is
crash-safe by itself (copy, verify, then delete the source: tiers.py), and a purge and its
report are idempotent. After a purge of a cataloged item, the catalog is told
(`RemoveArtifact`), so search no longer offers what cannot be read.

It runs once per cluster (on the leader), blocking I/O in a thread.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from schemas.codec import Codec
from streams.artifacts.catalog import ARTIFACTS, RemoveArtifact
from streams.commands import CommandClient
from streams.config import Settings
from streams.decider import Message
from streams.errors import PitError
from streams.follower import Follower, entity_events
from streams.log import LogRecord
from streams.stale.manager import (
    STALE,
    BytesPurged,
    ItemPurged,
    ReportPurged,
    ReportTierMoved,
    ReportTierMoveFailed,
    TierMoved,
    TierMoveFailed,
    TierMoveRequested,
)
from streams.stale.policy import DAG_OUTPUT
from streams.stale.topics import STALE_EVENTS

log = logging.getLogger(__name__)


@dataclass
class Pending:
    """The work the stale events ask for and no report has answered yet, in order."""

    moves: dict[tuple[str, str], str] = field(default_factory=dict)  # (store, addr) -> tier
    # (store, address) -> (its size, an orphan?, its kind: the artifact store or DAG blobs)
    purges: dict[tuple[str, str], tuple[int, bool, str]] = field(default_factory=dict)

    def take(self, store_id: str, event: Message) -> None:
        key = (store_id, getattr(event, "address", ""))
        match event:
            case TierMoveRequested(target=target):
                self.moves[key] = target
            case TierMoved() | TierMoveFailed():
                self.moves.pop(key, None)
            case ItemPurged(size=size, orphan=orphan, kind=kind):
                self.moves.pop(key, None)
                self.purges[key] = (size, orphan, kind)
            case BytesPurged():
                self.purges.pop(key, None)


class TierWorker:
    """The service `pit up` runs for the Stale Manager (see the module docstring)."""

    def __init__(self, settings: Settings, codec: Codec, engine: Engine | None = None,
                 store: Any = None) -> None:
        self.settings = settings
        self.client = CommandClient(settings, "pit-stale-worker", codec,
                                    deciders=(STALE, ARTIFACTS))
        self.pending = Pending()
        self._store = store
        self._follower = Follower(settings, [STALE_EVENTS], engine)

    @property
    def store(self) -> Any:
        """The tiered store (tiers.py), made on first use."""
        if self._store is None:
            from streams.stale.tiers import tiered_store

            self._store = tiered_store(self.settings)
        return self._store

    def _take(self, record: LogRecord) -> None:
        for store_id, event in entity_events(self.client.codec, STALE, [record]):
            self.pending.take(store_id, event)

    async def work(self) -> None:
        """Do everything pending, reporting each as it is done."""
        for (store_id, address), target in list(self.pending.moves.items()):
            try:
                stored = await asyncio.to_thread(self.store.move, address, target)
            except PitError as exc:
                log.warning("moving %s to %s failed: %s", address, target, exc)
                await self._report(ReportTierMoveFailed(address, target, str(exc), store_id))
            else:
                await self._report(ReportTierMoved(address, target, stored, store_id))
            self.pending.moves.pop((store_id, address), None)
        for (store_id, address), (size, orphan, kind) in list(self.pending.purges.items()):
            purge = self._purge_output if kind == DAG_OUTPUT else self.store.purge
            await asyncio.to_thread(purge, address)  # idempotent: a rerun deletes nothing
            await self._report(ReportPurged(address, size, store_id))
            if not orphan and kind != DAG_OUTPUT:
                await self._report(RemoveArtifact(address, "purged by the Stale Manager",
                                                  store_id))
            self.pending.purges.pop((store_id, address), None)

    def _purge_output(self, address: str) -> None:
        """Delete a node output from the DAG's blob store."""
        from streams.blobs import blob_store

        blob_store(self.settings).delete_raw(address)

    async def _report(self, command: Message) -> None:
        outcome = await self.client.send(command)
        if not outcome.accepted:
            log.info("%s: %s", command.type_name, outcome.reason)

    async def run(self, stop: asyncio.Event) -> None:
        await self._follower.restore(self._take, stop)
        await self.client.start()
        try:
            await self._follower.start()
            await self.work()
            async for records in self._follower.batches(stop, wait_ms=100):
                for record in records:
                    self._take(record)
                if self.pending.moves or self.pending.purges:
                    await self.work()
        finally:
            await self._follower.stop()
            await self.client.close()
