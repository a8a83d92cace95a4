"""What arbitration learns from the pool: the `PoolObserver` follows pit.pool.events, folds
them with the pool's own `evolve` (pure, so its picture is exactly the pool's), and tells
the arbiter what changed - each model's memory, measured load time and whether it is Hot
(`ObserveModel`), each host's budget and the memory it could still give a cold model
(`ObserveHost`). The arbiter decides on these commands, which become its events: a replay
sees exactly what each decision saw, and the arbiter never reads the pool's state.

`facts` is the pure part: a pool state in, the facts arbitration needs out. A host's free
memory is its budget less the models it must keep (allocated, loading, or placed and
waiting); idle Hot models do not count, since the pool evicts them for a cold one.

It runs once per cluster (on the leader). On every start it rebuilds the pools from the
whole history and sends every fact again; the arbiter accepts a fact it already has with no
event, so a restart costs one command per model and host, and changes nothing.

It tells at most every TELL_EVERY_S what changed since: a host's free memory changes with
every allocation and release of a model it holds (in use, then idle), and told each time
that doubled the commands and events of a busy pool for facts that were stale a moment
later. Arbitration decides on facts at most that old; the pool still places every model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from sqlalchemy import Engine

from schemas.codec import Codec
from streams.arbitration.arbiter import ARBITER, ObserveHost, ObserveModel
from streams.commands import CommandClient
from streams.config import Settings
from streams.decider import Message
from streams.errors import PitError
from streams.follower import Follower
from streams.log import LogRecord
from streams.pool.host import pool_events
from streams.pool.lifecycle import ModelState
from streams.pool.pool import POOL, PoolState
from streams.pool.topics import POOL_EVENTS
from streams.waiting import unless_stopped

log = logging.getLogger(__name__)
TELL_EVERY_S = 0.5


@dataclass(frozen=True)
class Facts:
    models: dict[str, tuple[int, int, bool]]      # model -> (memory MB, load ms, hot)
    hosts: dict[str, tuple[int, int, bool]]       # host -> (budget MB, free MB, alive)


def facts(state: PoolState) -> Facts:
    models = {m.model_id: (m.need_mb, m.load_ms if m.load_ms is not None
                           else m.expected_load_ms, m.state is ModelState.HOT)
              for m in state.models.values()}
    hosts = {}
    for host in state.hosts.values():
        kept = sum(state.models[m].need_mb for m in host.models
                   if state.models[m].allocations or state.models[m].state is not
                   ModelState.HOT)
        hosts[host.host_id] = (host.memory_budget_mb,
                               max(0, host.memory_budget_mb - kept) if host.alive else 0,
                               host.alive)
    return Facts(models, hosts)


def changes(pool_id: str, old: Facts | None, new: Facts) -> list[Message]:
    """The commands that tell the arbiter what differs from `old` (everything, if None)."""
    sent: list[Message] = []
    for model_id, (memory, load, hot) in sorted(new.models.items()):
        if old is None or old.models.get(model_id) != (memory, load, hot):
            sent.append(ObserveModel(model_id, memory, load, hot, pool_id))
    for host_id, (budget, free, alive) in sorted(new.hosts.items()):
        if old is None or old.hosts.get(host_id) != (budget, free, alive):
            sent.append(ObserveHost(host_id, budget, free, alive, pool_id))
    return sent


class PoolObserver:
    """The service `pit up` runs for arbitration (see the module docstring)."""

    def __init__(self, settings: Settings, codec: Codec, engine: Engine | None = None) -> None:
        self.settings = settings
        self.client = CommandClient(settings, "pit-pool-observer", codec, deciders=(ARBITER,))
        self.pools: dict[str, PoolState] = {}
        self.told: dict[str, Facts] = {}    # what the arbiter was last told, per pool
        self._follower = Follower(settings, [POOL_EVENTS], engine)

    def _take(self, record: LogRecord) -> None:
        for pool_id, event in pool_events(self.client.codec, [record]):
            self._apply(pool_id, event, record.timestamp_ms)

    def _apply(self, pool_id: str, event: Message, at_ms: int) -> None:
        state = self.pools.get(pool_id) or POOL.initial_state(pool_id)
        self.pools[pool_id] = POOL.evolve(state, event, at_ms)

    async def _tell(self, stop: asyncio.Event) -> None:
        for pool_id, state in sorted(self.pools.items()):
            now = facts(state)
            for command in changes(pool_id, self.told.get(pool_id), now):
                outcome = await unless_stopped(self.client.send(command), stop)
                if outcome is None:  # pit up is stopping (a restart tells everything again)
                    return
                if not outcome.accepted:  # a fact the arbiter refuses: say so, go on
                    log.warning("arbitration refused %s: %s", command, outcome.reason)
            self.told[pool_id] = now

    async def run(self, stop: asyncio.Event) -> None:
        await self._follower.restore(self._take, stop)
        await self.client.start()
        try:
            await self._follower.start()
            await self._tell(stop)
            told_at = time.monotonic()
            async for records in self._follower.batches(stop, wait_ms=100):
                for record in records:
                    self._take(record)
                if time.monotonic() - told_at < TELL_EVERY_S:
                    continue
                try:
                    await self._tell(stop)
                except PitError as exc:  # the broker or pit up is away: tell it all later
                    log.warning("could not tell arbitration about the pool: %s", exc)
                    self.told.clear()
                told_at = time.monotonic()
        finally:
            await self._follower.stop()
            await self.client.close()
