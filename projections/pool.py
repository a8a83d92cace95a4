"""The pool's views (issue 3), from pit.pool.events alone, and the readers of them.

`pool` (tables `pools`, `pool_allocation_failures`, `pool_models`, `pool_hosts`):
* pools: per pool, the cache statistics the decider keeps (`streams.pool.pool.Stats`): hits,
  misses, evictions, loads, load failures, total load time, prewarm loads; and
  pool_allocation_failures: allocation failures per pool by code;
* pool_models: per model its state, host, URI, declared and measured memory, load time,
  allocations in flight and queued requests;
* pool_hosts: per host its budget, capacity, endpoint, whether it is alive, and the memory
  resident on it (MB and model count) and committed to it, as the decider counts them
  (`Usage`, see the pool module's docstring): a model on a host is resident while Warming,
  Hot, Cooling or Failed (until unloaded), committed while placed, Warming or Hot, with its
  measured size once a load measured it, its declared size before.

`pool_health` (tables `pool_health`, `pool_health_checks`): one row per HealthRecorded
(history), and per model its current health: the last check, its consecutive failures (reset
by a new load, as the decider resets them) and a status: ok, failing, failed (the decider's
threshold reached) or unchecked (loaded again since).

Every column comes from the events (times are the envelopes' occurred_at), so `pit replay
pool` reproduces the tables. A pool's events carry its per-pool, monotonic envelope
sequence: the `pool` view remembers the last one applied per pool, `pool_health` per model,
so a duplicated event in the log (same event, another offset) changes nothing. Lifecycle
events written before the pool decider (their entity is the model, not a pool, and no
ModelRegistered preceded them) belong to no pool and are left to the `models` view.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    and_,
    func,
    select,
)

from projections.rows import Rows
from projections.runtime import View, constraint_name, index_name, live_tables
from schemas.codec import Decoded
from streams.decider import Message, from_record
from streams.log import LogRecord
from streams.pool.lifecycle import DEFAULT_POOL, ModelState, ModelTransitioned, TransitionReason
from streams.pool.pool import (
    HEALTH_FAILURE_THRESHOLD,
    POOL,
    AllocationFailed,
    AllocationQueued,
    HealthRecorded,
    HostDown,
    HostRegistered,
    LoadRequested,
    ModelAllocated,
    ModelEvicted,
    ModelLoaded,
    ModelLoadFailed,
    ModelPlaced,
    ModelRegistered,
    ModelReleased,
    ModelUnloaded,
)
from streams.pool.topics import POOL_EVENTS
from streams.sql import Long, insert_rows
from streams.times import iso

log = logging.getLogger(__name__)

_ID = String(255)
STATES = tuple(state.value for state in ModelState)
_RESIDENT = frozenset({"Warming", "Hot", "Cooling", "Failed"})
_COMMITTED = frozenset({"Cold", "Warming", "Hot"})
_STATS = ("hits", "misses", "evictions", "loads", "load_failures", "load_time_total_ms",
          "prewarm_loads")


def _select(events: Sequence[tuple[Decoded, LogRecord]], wanted: frozenset[type[Message]]
            ) -> list[tuple[type[Message], dict[str, Any]]]:
    """The pool events of these types, as (type, decoded record): not parsed yet."""
    selected: list[tuple[type[Message], dict[str, Any]]] = []
    types: dict[str, type[Message] | None] = {}  # None: a type not wanted
    for decoded, _ in events:
        name = decoded.name
        if name not in types:
            event_type = POOL.event_type(name)
            types[name] = event_type if event_type in wanted else None
        if (wanted_type := types[name]) is not None:
            selected.append((wanted_type, decoded.record))
    return selected


def _parse(events: Sequence[tuple[Decoded, LogRecord]], wanted: frozenset[type[Message]]
           ) -> list[tuple[Message, dict[str, Any]]]:
    """The pool events of these types, with their envelopes."""
    return [(from_record(event_type, record), record["envelope"])
            for event_type, record in _select(events, wanted)]


# --- the `pool` view ----------------------------------------------------------------------------

_POOL_EVENTS = frozenset({ModelRegistered, HostRegistered, ModelTransitioned, ModelPlaced,
                          LoadRequested, ModelLoaded, ModelLoadFailed, ModelUnloaded,
                          ModelEvicted, AllocationQueued, ModelAllocated, ModelReleased,
                          AllocationFailed, HostDown})
_FIRST_EVENTS = frozenset({ModelRegistered, HostRegistered})  # a pool's first event is one


def _weight(model: dict[str, Any]) -> tuple[int, int, int]:
    """What the model adds to its host: resident MB, resident count, committed MB."""
    if model["host_id"] is None:
        return 0, 0, 0
    need = model["memory_mb"] if model["memory_mb"] is not None else model["declared_memory_mb"]
    resident = model["state"] in _RESIDENT
    return (need if resident else 0, int(resident),
            need if model["state"] in _COMMITTED else 0)


class PoolView(View):
    name = "pool"
    topics = (POOL_EVENTS,)
    table_names = ("pools", "pool_allocation_failures", "pool_models", "pool_hosts")

    def define(self, metadata: MetaData, suffix: str = "", token: str = "") -> dict[str, Table]:
        pools = Table(
            "pools" + suffix, metadata,
            Column("pool_id", _ID, nullable=False),
            *(Column(name, Long, nullable=False) for name in _STATS),
            Column("last_sequence", Long, nullable=False),
            Column("updated_at_ms", Long, nullable=False),
            PrimaryKeyConstraint("pool_id", name=constraint_name("pk", "pools", token)),
        )
        failures = Table(
            "pool_allocation_failures" + suffix, metadata,
            Column("pool_id", _ID, nullable=False),
            Column("code", String(64), nullable=False),
            Column("count", Long, nullable=False),
            PrimaryKeyConstraint("pool_id", "code",
                                 name=constraint_name("pk", "pool_allocation_failures", token)),
        )
        models = Table(
            "pool_models" + suffix, metadata,
            Column("pool_id", _ID, nullable=False),
            Column("model_id", _ID, nullable=False),
            Column("uri", Text, nullable=False),
            Column("declared_memory_mb", Integer, nullable=False),
            Column("expected_load_ms", Integer, nullable=False),
            Column("state", String(16), nullable=False),
            Column("reason", String(32)),              # why it entered its state
            Column("entered_at_ms", Long),
            Column("host_id", _ID),                    # where it is, or is placed to load
            Column("memory_mb", Integer),              # measured by its last load
            Column("load_ms", Integer),                # measured by its last load
            Column("allocations", Integer, nullable=False),
            Column("queued", Integer, nullable=False),
            Column("updated_at_ms", Long, nullable=False),
            PrimaryKeyConstraint("pool_id", "model_id",
                                 name=constraint_name("pk", "pool_models", token)),
            Index(index_name("pool_models", "host_id", token), "pool_id", "host_id"),
        )
        hosts = Table(
            "pool_hosts" + suffix, metadata,
            Column("pool_id", _ID, nullable=False),
            Column("host_id", _ID, nullable=False),
            Column("memory_budget_mb", Integer, nullable=False),
            Column("capacity", Integer, nullable=False),
            Column("endpoint", Text, nullable=False),
            Column("alive", Boolean, nullable=False),
            Column("resident_mb", Long, nullable=False),
            Column("model_count", Integer, nullable=False),
            Column("committed_mb", Long, nullable=False),
            Column("updated_at_ms", Long, nullable=False),
            PrimaryKeyConstraint("pool_id", "host_id",
                                 name=constraint_name("pk", "pool_hosts", token)),
        )
        return {"pools": pools, "pool_allocation_failures": failures, "pool_models": models,
                "pool_hosts": hosts}

    def apply_batch(self, conn: Connection, tables: dict[str, Table],
                    events: Sequence[tuple[Decoded, LogRecord]]) -> None:
        selected = _select(events, _POOL_EVENTS)
        if not selected:
            return
        pools = Rows(tables["pools"], ("pool_id",))
        pools.load(conn, {(record["envelope"]["entity_key"],) for _, record in selected})
        last = {key[0]: row["last_sequence"] for key, row in pools.rows.items()}
        fresh = []
        for event_type, record in selected:
            envelope = record["envelope"]
            pool_id, sequence = envelope["entity_key"], envelope["sequence"]
            if pool_id not in last and event_type not in _FIRST_EVENTS:
                continue  # no pool: a lifecycle event from before the pool decider
            if sequence <= last.get(pool_id, 0):
                continue  # the same event again (a duplicate in the log): already applied
            last[pool_id] = sequence
            fresh.append((from_record(event_type, record), pool_id, sequence,
                          envelope["occurred_at"]))
        if not fresh:
            return
        batch = _PoolBatch(conn, tables, pools, fresh)
        for event, pool_id, sequence, at_ms in fresh:
            batch.apply(event, pool_id, sequence, at_ms)
        batch.write(conn)
        if batch.unknown:
            log.warning("pool view: %d events named models or hosts it never saw registered"
                        " (the log it read began later); `pit replay pool` rebuilds it from"
                        " the archive", batch.unknown)


class _PoolBatch:
    """One batch of pool events applied to the rows it touches."""

    def __init__(self, conn: Connection, tables: dict[str, Table], pools: Rows,
                 fresh: list[tuple[Message, str, int, int]]) -> None:
        self.pools = pools
        self.failures = Rows(tables["pool_allocation_failures"], ("pool_id", "code"))
        self.models = Rows(tables["pool_models"], ("pool_id", "model_id"))
        self.hosts = Rows(tables["pool_hosts"], ("pool_id", "host_id"))
        self.unknown = 0  # events about models or hosts without a row: skipped
        model_keys, host_keys, codes = set(), set(), set()
        for event, pool_id, _, _ in fresh:
            if (model_id := getattr(event, "model_id", None)) is not None:
                model_keys.add((pool_id, model_id))
            if (host_id := getattr(event, "host_id", None)) is not None:
                host_keys.add((pool_id, host_id))
            if isinstance(event, HostDown):
                model_keys.update((pool_id, m) for m in event.models)
            elif isinstance(event, AllocationFailed):
                codes.add((pool_id, event.code))
        self.models.load(conn, model_keys)
        host_keys.update((key[0], row["host_id"]) for key, row in self.models.rows.items()
                         if row["host_id"] is not None)
        self.hosts.load(conn, host_keys)
        self.failures.load(conn, codes)

    def write(self, conn: Connection) -> None:
        for rows in (self.pools, self.failures, self.models, self.hosts):
            rows.write(conn)

    def count(self, pool_id: str, name: str, amount: int = 1) -> None:
        self.pools.changed((pool_id,))[name] += amount

    def row(self, rows: Rows, key: tuple) -> dict[str, Any] | None:
        """The row to change, or None (counted) when the view never saw it registered."""
        if key in rows.rows:
            return rows.changed(key)
        self.unknown += 1
        return None

    def model(self, pool_id: str, model_id: str, at_ms: int, **changes: Any) -> None:
        """Change a model, and the usage of the host(s) it leaves or joins to match."""
        row = self.row(self.models, (pool_id, model_id))
        if row is None:
            return
        before, old_host = _weight(row), row["host_id"]
        row.update(changes, updated_at_ms=at_ms)
        after, new_host = _weight(row), row["host_id"]
        if old_host is not None:
            self._reweigh(pool_id, old_host, before, -1, at_ms)
        if new_host is not None:
            self._reweigh(pool_id, new_host, after, 1, at_ms)

    def _reweigh(self, pool_id: str, host_id: str, weight: tuple[int, int, int], sign: int,
                 at_ms: int) -> None:
        if weight == (0, 0, 0):
            return
        host = self.row(self.hosts, (pool_id, host_id))
        if host is None:
            return
        host["resident_mb"] += sign * weight[0]
        host["model_count"] += sign * weight[1]
        host["committed_mb"] += sign * weight[2]
        host["updated_at_ms"] = at_ms

    def apply(self, event: Message, pool_id: str, sequence: int, at_ms: int) -> None:
        if (pool_id,) not in self.pools.rows:
            self.pools.add((pool_id,), **dict.fromkeys(_STATS, 0), last_sequence=0,
                           updated_at_ms=at_ms)
        pool = self.pools.changed((pool_id,))
        pool["last_sequence"], pool["updated_at_ms"] = sequence, at_ms
        match event:
            case ModelRegistered(model_id=m):
                if (pool_id, m) not in self.models.rows:
                    self.models.add((pool_id, m), uri=event.uri,
                                    declared_memory_mb=event.memory_mb,
                                    expected_load_ms=event.expected_load_ms, state="Cold",
                                    reason=None, entered_at_ms=None, host_id=None,
                                    memory_mb=None, load_ms=None, allocations=0, queued=0,
                                    updated_at_ms=at_ms)
            case HostRegistered(host_id=h):
                if (pool_id, h) not in self.hosts.rows:
                    self.hosts.add((pool_id, h), resident_mb=0, model_count=0, committed_mb=0)
                self.hosts.changed((pool_id, h)).update(
                    memory_budget_mb=event.memory_budget_mb, capacity=event.capacity,
                    endpoint=event.endpoint, alive=True, updated_at_ms=at_ms)
            case ModelTransitioned(model_id=m, to_state=state, reason=reason):
                self.model(pool_id, m, at_ms, state=state.value, reason=reason.value,
                           entered_at_ms=at_ms)
            case ModelPlaced(model_id=m, host_id=h):
                self.model(pool_id, m, at_ms, host_id=h)
            case LoadRequested(reason=TransitionReason.PREDICTIVE_PREWARM):
                self.count(pool_id, "prewarm_loads")
            case ModelLoaded(model_id=m, load_ms=load_ms, memory_mb=mb):
                self.count(pool_id, "loads")
                self.count(pool_id, "load_time_total_ms", load_ms)
                self.model(pool_id, m, at_ms, memory_mb=mb, load_ms=load_ms)
            case ModelLoadFailed(model_id=m) | ModelUnloaded(model_id=m):
                if isinstance(event, ModelLoadFailed):
                    self.count(pool_id, "load_failures")
                self.model(pool_id, m, at_ms, host_id=None)
            case ModelEvicted():
                self.count(pool_id, "evictions")
            case AllocationQueued(model_id=m):
                self.count(pool_id, "misses")
                self.requests(pool_id, m, at_ms, queued=1)
            case ModelAllocated(model_id=m, cache_hit=hit):
                if hit:
                    self.count(pool_id, "hits")
                # a miss was queued until now
                self.requests(pool_id, m, at_ms, allocations=1, queued=-(not hit))
            case ModelReleased(model_id=m):
                self.requests(pool_id, m, at_ms, allocations=-1)
            case AllocationFailed(model_id=m, code=code, in_flight=in_flight):
                if (pool_id, code) not in self.failures.rows:
                    self.failures.add((pool_id, code), count=0)
                self.failures.changed((pool_id, code))["count"] += 1
                if in_flight:
                    self.requests(pool_id, m, at_ms, allocations=-1)
                else:
                    self.requests(pool_id, m, at_ms, queued=-1)
            case HostDown(host_id=h, models=on_host):
                host = self.row(self.hosts, (pool_id, h))
                if host is not None:
                    host.update(alive=False, resident_mb=0, model_count=0, committed_mb=0,
                                updated_at_ms=at_ms)
                for m in on_host:  # the host holds nothing now: no usage to move
                    if (row := self.row(self.models, (pool_id, m))) is not None:
                        row.update(host_id=None, updated_at_ms=at_ms)

    def requests(self, pool_id: str, model_id: str, at_ms: int, *, allocations: int = 0,
                 queued: int = 0) -> None:
        """A model's allocations in flight and queued requests change (its usage does not)."""
        row = self.row(self.models, (pool_id, model_id))
        if row is not None:
            row.update(allocations=row["allocations"] + allocations,
                       queued=row["queued"] + queued, updated_at_ms=at_ms)


# --- the `pool_health` view ---------------------------------------------------------------------

_HEALTH_EVENTS = frozenset({HealthRecorded, ModelLoaded})
_CHECK_COLUMNS = ("event_id", "pool_id", "model_id", "host_id", "ok", "latency_ms",
                  "consecutive_failures", "detail", "occurred_at_ms", "sequence")


def health_status(ok: bool, consecutive_failures: int) -> str:
    if ok:
        return "ok"
    return "failed" if consecutive_failures >= HEALTH_FAILURE_THRESHOLD else "failing"


class PoolHealthView(View):
    name = "pool_health"
    topics = (POOL_EVENTS,)
    table_names = ("pool_health", "pool_health_checks")

    def define(self, metadata: MetaData, suffix: str = "", token: str = "") -> dict[str, Table]:
        current = Table(
            "pool_health" + suffix, metadata,
            Column("pool_id", _ID, nullable=False),
            Column("model_id", _ID, nullable=False),
            Column("host_id", _ID, nullable=False),
            Column("status", String(16), nullable=False),  # ok|failing|failed|unchecked
            Column("ok", Boolean, nullable=False),           # the last check's result
            Column("latency_ms", Float, nullable=False),
            Column("consecutive_failures", Integer, nullable=False),
            Column("detail", Text, nullable=False),
            Column("checked_at_ms", Long, nullable=False),
            Column("checks", Long, nullable=False),
            Column("failed_checks", Long, nullable=False),
            Column("last_sequence", Long, nullable=False),
            PrimaryKeyConstraint("pool_id", "model_id",
                                 name=constraint_name("pk", "pool_health", token)),
        )
        checks = Table(
            "pool_health_checks" + suffix, metadata,
            Column("event_id", String(255), nullable=False),
            Column("pool_id", _ID, nullable=False),
            Column("model_id", _ID, nullable=False),
            Column("host_id", _ID, nullable=False),
            Column("ok", Boolean, nullable=False),
            Column("latency_ms", Float, nullable=False),
            Column("consecutive_failures", Integer, nullable=False),
            Column("detail", Text, nullable=False),
            Column("occurred_at_ms", Long, nullable=False),
            Column("sequence", Long, nullable=False),
            PrimaryKeyConstraint("event_id", name=constraint_name("pk", "pool_health_checks",
                                                                  token)),
            Index(index_name("pool_health_checks", "model_id", token),
                  "pool_id", "model_id", "sequence"),
            Index(index_name("pool_health_checks", "ok", token), "pool_id", "ok", "sequence"),
        )
        return {"pool_health": current, "pool_health_checks": checks}

    def apply_batch(self, conn: Connection, tables: dict[str, Table],
                    events: Sequence[tuple[Decoded, LogRecord]]) -> None:
        # always true: narrows the events to the two types _parse was asked for
        parsed = [(event, envelope) for event, envelope in _parse(events, _HEALTH_EVENTS)
                  if isinstance(event, HealthRecorded | ModelLoaded)]
        if not parsed:
            return
        current = Rows(tables["pool_health"], ("pool_id", "model_id"))
        current.load(conn, {(envelope["entity_key"], event.model_id)
                            for event, envelope in parsed})
        history = []
        for event, envelope in parsed:
            key = (envelope["entity_key"], event.model_id)
            sequence, at_ms = envelope["sequence"], envelope["occurred_at"]
            row = current.get(key)
            if row is not None and sequence <= row["last_sequence"]:
                continue  # the same event again (a duplicate in the log): already applied
            if isinstance(event, ModelLoaded):
                if row is not None:  # a new load starts a new count, as in the decider
                    current.changed(key).update(host_id=event.host_id, status="unchecked",
                                                consecutive_failures=0, last_sequence=sequence)
                continue
            if row is None:
                row = current.add(key, checks=0, failed_checks=0)
            current.changed(key).update(
                host_id=event.host_id, ok=event.ok, latency_ms=event.latency_ms,
                consecutive_failures=event.consecutive_failures, detail=event.detail,
                status=health_status(event.ok, event.consecutive_failures),
                checked_at_ms=at_ms, checks=row["checks"] + 1,
                failed_checks=row["failed_checks"] + (not event.ok), last_sequence=sequence)
            history.append((envelope["event_id"], *key, event.host_id, event.ok,
                            event.latency_ms, event.consecutive_failures, event.detail, at_ms,
                            sequence))
        current.write(conn)
        insert_rows(conn, tables["pool_health_checks"], _CHECK_COLUMNS, history)


# --- readers (the API and `pit pool status`) ----------------------------------------------------

def _pool_tables() -> dict[str, Table]:
    return {**live_tables(PoolView()), **live_tables(PoolHealthView())}


def _without_pool(row: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(row).items() if k != "pool_id"}


def _hosts(conn: Connection, tables: dict[str, Table], pool_id: str) -> list[dict[str, Any]]:
    hosts, models = tables["pool_hosts"], tables["pool_models"]
    placed: dict[str, list[str]] = {}
    for host_id, model_id in conn.execute(
            select(models.c.host_id, models.c.model_id)
            .where(models.c.pool_id == pool_id, models.c.host_id.is_not(None))
            .order_by(models.c.model_id)):
        placed.setdefault(host_id, []).append(model_id)
    rows = conn.execute(select(hosts).where(hosts.c.pool_id == pool_id)
                        .order_by(hosts.c.host_id)).mappings()
    return [{**_without_pool(row), "models": placed.get(row["host_id"], [])} for row in rows]


def pool_hosts(engine: Engine, pool_id: str = DEFAULT_POOL) -> list[dict[str, Any]]:
    """The pool's hosts with their memory, each with the models placed on it."""
    with engine.connect() as conn:
        return _hosts(conn, _pool_tables(), pool_id)


def pool_status(engine: Engine, pool_id: str = DEFAULT_POOL, *, recent: int = 10
                ) -> dict[str, Any] | None:
    """The pool at a glance; None when no event of the pool has been projected yet."""
    tables = _pool_tables()
    pools, models = tables["pools"], tables["pool_models"]
    failures, health, checks = (tables["pool_allocation_failures"], tables["pool_health"],
                                tables["pool_health_checks"])
    with engine.connect() as conn:
        pool = conn.execute(select(pools).where(pools.c.pool_id == pool_id)).mappings().first()
        if pool is None:
            return None
        hosts = _hosts(conn, tables, pool_id)
        by_state: Counter[str] = Counter(dict(conn.execute(
            select(models.c.state, func.count()).where(models.c.pool_id == pool_id)
            .group_by(models.c.state)).all()))
        placed = [_without_pool(row) for row in conn.execute(
            select(models).where(models.c.pool_id == pool_id,
                                 (models.c.host_id.is_not(None)) | (models.c.state != "Cold"))
            .order_by(models.c.model_id)).mappings()]
        failed_by_code = dict(conn.execute(
            select(failures.c.code, failures.c["count"]).where(failures.c.pool_id == pool_id)
            .order_by(failures.c.code)).all())
        unhealthy = [_without_pool(row) for row in conn.execute(
            select(health).where(health.c.pool_id == pool_id,
                                 health.c.status.in_(("failing", "failed")))
            .order_by(health.c.model_id)).mappings()]
        recent_failures = [_without_pool(row) for row in conn.execute(
            select(checks).where(and_(checks.c.pool_id == pool_id, checks.c.ok.is_(False)))
            .order_by(checks.c.sequence.desc()).limit(recent)).mappings()]
    hits, misses, loads = pool["hits"], pool["misses"], pool["loads"]
    cache = {name: pool[name] for name in _STATS}
    cache.update(hit_rate=hits / (hits + misses) if hits + misses else None,
                 mean_load_ms=pool["load_time_total_ms"] / loads if loads else None,
                 allocation_failures=failed_by_code)
    return {
        "pool_id": pool_id, "sequence": pool["last_sequence"],
        "updated_at_ms": pool["updated_at_ms"],
        "hosts": hosts,
        "models": {"count": sum(by_state.values()),
                   "by_state": {state: by_state.get(state, 0) for state in STATES},
                   "placed": placed},
        "cache": cache,
        "health": {"unhealthy": unhealthy, "recent_failures": recent_failures},
    }


def model_health(engine: Engine, model_id: str, pool_id: str = DEFAULT_POOL, *,
                 limit: int = 50) -> dict[str, Any] | None:
    """A model's current health and its latest checks (newest first); None for a model the
    pool does not know."""
    tables = _pool_tables()
    models, health, checks = (tables["pool_models"], tables["pool_health"],
                              tables["pool_health_checks"])
    with engine.connect() as conn:
        model = conn.execute(select(models.c.state, models.c.host_id).where(
            models.c.pool_id == pool_id, models.c.model_id == model_id)).first()
        current = conn.execute(select(health).where(
            health.c.pool_id == pool_id, health.c.model_id == model_id)).mappings().first()
        if model is None and current is None:
            return None
        history = [_without_pool(row) for row in conn.execute(
            select(checks).where(checks.c.pool_id == pool_id, checks.c.model_id == model_id)
            .order_by(checks.c.sequence.desc()).limit(limit)).mappings()]
    return {"pool_id": pool_id, "model_id": model_id,
            "state": model.state if model is not None else None,
            "host_id": model.host_id if model is not None else None,
            "health": _without_pool(current) if current is not None else None,
            "checks": history}


def _when(ms: int | None) -> str:
    return "-" if ms is None else iso(ms)


def _plural(n: int, word: str, plural: str = "") -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


def status_lines(status: dict[str, Any]) -> list[str]:
    """`pit pool status`: the pool at a glance, as text."""
    hosts, models, cache = status["hosts"], status["models"], status["cache"]
    alive = sum(1 for h in hosts if h["alive"])
    lines = [f"pool {status['pool_id']}: {_plural(len(hosts), 'host')} ({alive} alive), "
             f"{_plural(models['count'], 'model')}; as of {_when(status['updated_at_ms'])}"
             f" (sequence {status['sequence']})", "", "hosts"]
    width = max((len(h["host_id"]) for h in hosts), default=0)
    for h in hosts:
        used = f"{h['resident_mb']}/{h['memory_budget_mb']} MB"
        lines.append(f"  {h['host_id']:<{width}}  {'alive' if h['alive'] else 'DOWN ':5}  "
                     f"{used:>17}  {h['model_count']}/{h['capacity']} models  "
                     f"{h['endpoint'] or '-'}  {', '.join(h['models']) or '-'}")
    if not hosts:
        lines.append("  (none registered)")
    counts = ", ".join(f"{n} {state}" for state, n in models["by_state"].items())
    lines += ["", f"models: {counts}"]
    width = max((len(m["model_id"]) for m in models["placed"]), default=0)
    for m in models["placed"]:
        size = m["memory_mb"] if m["memory_mb"] is not None else m["declared_memory_mb"]
        extra = [f"{_plural(m['allocations'], 'allocation')}"] if m["allocations"] else []
        extra += [f"{m['queued']} queued"] if m["queued"] else []
        extra += [f"({m['reason']})"] if m["state"] == "Failed" and m["reason"] else []
        where = f"on {m['host_id']}" if m["host_id"] else "no host"
        lines.append(f"  {m['model_id']:<{width}}  {m['state']:<7}  {where}  {size} MB"
                     + (f"  {', '.join(extra)}" if extra else ""))
    rate = "-" if cache["hit_rate"] is None else f"{cache['hit_rate']:.1%}"
    mean = "-" if cache["mean_load_ms"] is None else f"{cache['mean_load_ms']:.0f} ms"
    lines += ["", f"cache: hit rate {rate} ({_plural(cache['hits'], 'hit')}, "
                  f"{_plural(cache['misses'], 'miss', 'misses')}), "
                  f"{_plural(cache['evictions'], 'eviction')}, {_plural(cache['loads'], 'load')}"
                  f" (mean {mean}), {_plural(cache['load_failures'], 'load failure')}, "
                  f"{_plural(cache['prewarm_loads'], 'prewarm load')}"]
    if cache["allocation_failures"]:
        lines.append("  allocation failures: " + ", ".join(
            f"{code} {n}" for code, n in cache["allocation_failures"].items()))
    health = status["health"]
    lines += ["", f"health: {len(health['unhealthy'])} unhealthy"]
    for h in health["unhealthy"]:
        lines.append(f"  {h['model_id']} on {h['host_id']}: {h['status']}, "
                     f"{_plural(h['consecutive_failures'], 'failed check')} in a row:"
                     f" {h['detail']}")
    if health["recent_failures"]:
        lines.append("  recent failed checks:")
        for c in health["recent_failures"]:
            lines.append(f"    {_when(c['occurred_at_ms'])}  {c['model_id']} on {c['host_id']}"
                         f"  {c['latency_ms']:.1f} ms  {c['detail']}")
    return lines
