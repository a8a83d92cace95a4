"""The Stale Manager as a client uses it (`PitClient.stale` and `pit stale`): set the
retention policy, hold and release items, plan a cleanup and read the plan back, apply it
(optionally following its progress), restore from the trash. Every operation is a command;
its refusal is a `StaleError` with the Stale Manager's reason, and nothing changed.

Reading a plan waits for the `stale` views to show it (a plan of 100,000 items takes a few
seconds to decide and project): `plan` returns once it is there, or gives up after
`timeout` with the plan id, which `pit stale show <plan>` reads later.

`explain` and `simulate` need the whole state, not a view: `replayed_state` folds the
Stale Manager's events from the history (the archive, then Kafka), as a replay would.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from streams.decider import Message
from streams.errors import PitError
from streams.stale.manager import (
    DEFAULT_STORE,
    STALE,
    ApplyPlan,
    PlaceHold,
    PlanCleanup,
    ReleaseHold,
    RestoreItems,
    SetRetentionPolicy,
    StaleState,
)
from streams.stale.policy import Retention, parse_retention, retention_from, retention_json

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from streams.commands import CommandClient, Outcome
    from streams.config import Settings


class StaleError(PitError):
    """A Stale Manager command refused: the reason, and nothing changed."""


async def wait_for(read: Callable[[], Any], timeout: float) -> Any:
    """Poll `read` (blocking: it runs in a thread) until it gives something truthy, or
    `timeout` passes (then its last answer)."""
    deadline = time.monotonic() + timeout
    found = await asyncio.to_thread(read)
    while not found and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        found = await asyncio.to_thread(read)
    return found


class StaleOps:
    def __init__(self, client: CommandClient) -> None:
        self.client = client
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from streams.sql import connect

            self._engine = connect(self.client.settings.db_url)
        return self._engine

    async def _send(self, command: Any, doing: str) -> Outcome:
        outcome = await self.client.send(command)
        if not outcome.accepted:
            raise StaleError(f"cannot {doing}: {outcome.reason}")
        return outcome

    async def set_policy(self, policy: Retention | Mapping[str, Any] | str, *,
                         store_id: str = DEFAULT_STORE) -> Outcome:
        """Set the retention document (a Retention, its plain data, or YAML/JSON text);
        RetentionError listing every problem before anything is sent."""
        if isinstance(policy, str):
            policy = parse_retention(policy)
        elif not isinstance(policy, Retention):
            policy = retention_from(policy)
        return await self._send(SetRetentionPolicy(retention_json(policy), store_id),
                                "set the retention policy")

    async def hold(self, address: str, reason: str = "", *,
                   store_id: str = DEFAULT_STORE) -> Outcome:
        return await self._send(PlaceHold(address, reason, store_id), f"hold {address}")

    async def release_hold(self, address: str, *, store_id: str = DEFAULT_STORE) -> Outcome:
        return await self._send(ReleaseHold(address, store_id), f"release {address}")

    async def plan(self, *, store_id: str = DEFAULT_STORE, timeout: float = 60.0
                   ) -> dict[str, Any]:
        """Plan a cleanup; the plan as the views show it (without its items: `show`), or
        {"plan_id": ...} if they did not within `timeout`."""
        from projections import stale as views

        plan_id = f"plan-{uuid.uuid4().hex[:12]}"
        await self._send(PlanCleanup(plan_id, store_id), "plan a cleanup")
        found = await wait_for(lambda: views.plan(self.engine, plan_id, store_id=store_id,
                                                  limit=0), timeout)
        return found or {"plan_id": plan_id}

    async def show(self, plan_id: str, *, store_id: str = DEFAULT_STORE, limit: int = 50,
                   offset: int = 0) -> dict[str, Any]:
        from projections import stale as views

        found = await asyncio.to_thread(views.plan, self.engine, plan_id, store_id=store_id,
                                        limit=limit, offset=offset)
        if found is None:
            raise StaleError(f"no plan {plan_id!r} (plan ids: pit stale status)")
        return found

    async def apply(self, plan_id: str, *, store_id: str = DEFAULT_STORE,
                    progress: Callable[[dict[str, Any]], Awaitable[None] | None] | None = None,
                    timeout: float = 3600.0) -> dict[str, Any]:
        """Confirm and carry out a plan; with `progress`, follow it until applied, calling
        `progress(plan)` as it advances. The plan as the views last showed it."""
        from projections import stale as views

        await self._send(ApplyPlan(plan_id, store_id), f"apply plan {plan_id}")
        deadline = time.monotonic() + timeout
        seen = None
        while True:
            found = await asyncio.to_thread(views.plan, self.engine, plan_id,
                                            store_id=store_id, limit=0)
            if found and (found["cursor"], found["status"]) != seen:
                seen = (found["cursor"], found["status"])
                if progress is not None:
                    done = progress(found)
                    if done is not None:
                        await done
            if progress is None or (found and found["status"] == "applied") \
                    or time.monotonic() > deadline:
                return found or {"plan_id": plan_id}
            await asyncio.sleep(0.1)

    async def restore(self, target: str, *, store_id: str = DEFAULT_STORE) -> Outcome:
        """Bring back a trashed item (its address) or every trashed item of a plan."""
        return await self._send(RestoreItems(target, store_id), f"restore {target}")


def replayed_state(settings: Settings, engine: Engine | None,
                   store_id: str = DEFAULT_STORE) -> StaleState:
    """The Stale Manager's state of a store, folded from its whole history."""
    return replayed_history(settings, engine, store_id, None)[0]


def replayed_history(settings: Settings, engine: Engine | None, store_id: str,
                     since_ms: int | None) -> tuple[StaleState, list[tuple[int, Message]]]:
    """A store's state folded from its history up to `since_ms` (all of it: None), and its
    events after that, (at, event) in log order - what `simulate` replays."""
    from schemas.codec import Codec
    from streams.commands import registry_for
    from streams.follower import entity_events
    from streams.history import history_source, kafka_log_reader
    from streams.stale.topics import STALE_EVENTS

    codec = Codec(registry_for(settings))
    state = STALE.initial_state(store_id)
    later: list[tuple[int, Message]] = []
    records = history_source(engine, [STALE_EVENTS],
                             kafka_log_reader(settings, [STALE_EVENTS]))
    for record in records:
        for entity, event in entity_events(codec, STALE, [record]):
            if entity != store_id:
                continue
            if since_ms is not None and record.timestamp_ms > since_ms:
                later.append((record.timestamp_ms, event))
            else:
                state = STALE.evolve(state, event, record.timestamp_ms)
    return state, later
