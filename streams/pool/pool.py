"""The pool decider (issue 3, seed M3.1.3): which models are hot, where, and when to load,
evict, prewarm or recover them. Pure: no I/O, no wall clock; time arrives as `now_ms`.

The entity is the whole pool (key = pool id, "default" unless a command says otherwise),
because memory budgets span models. Hosts do the loading: the pool tells them what to do
(LoadRequested, UnloadRequested) and they report back (ReportModelLoaded, ...).

Every lifecycle change goes through `lifecycle.decide` (the seed's TRANSITIONS table stays the
single rulebook) and is applied with `lifecycle.evolve`. `decide` builds its answer by
evolving a working copy event by event (`_Decision.emit`), so what it decides is, by
construction, what a replay of its events reproduces.

Memory, per host, in MB (declared until a load measured it):
  resident  = Warming + Hot + Cooling + Failed-not-yet-unloaded models: what the host holds.
  committed = reserved (placed, waiting for room) + Warming + Hot: what the pool has promised.
Placement needs `committed + need <= budget`; a LoadRequested is only sent when
`resident + need <= budget`; so a host is never told to load a model it has no room for,
even while the models evicted for it are still unloading. Capacity (max models) is counted
the same way. `evolve` keeps these totals per host, with the host's eviction candidates (LRU
order) and waiting loads (FIFO order), up to date model by model, so no decision rescans a
host (tests/property/test_pool_properties.py recounts them from scratch after every event).

Rule decisions (written down because the issue leaves them open):
* Allocate on Hot: cache hit. On Cold: place (evicting idle LRU Hot models on one host if
  needed), load, queue. On Warming or placed-and-waiting: queue. On Cooling: rejected (it
  accepts no new allocations). On Failed: recover (Failed -> Cold, ErrorRecovery) and warm
  like Cold, unless the failed copy is still on its host awaiting unload (rejected: retry).
* Eviction is per host; only Hot models with no allocations are candidates. Least likely
  to be requested soon first, by the predictions last recorded (`PredictionsRecorded`, see
  WarmModel), then least recently used (`streams/pool/eviction.py` says why); without
  predictions, plain LRU. The host needing the fewest evictions wins (then most free
  memory, then id).
* WarmModel (prewarming) may carry the prewarmer's `scores`: its probability of a request
  soon for the models it scores. They are recorded (PredictionsRecorded, so a replay
  ranks the same way) and, if no host has room, the least likely idle model is displaced
  only when the prewarm's probability (the gain) beats that model's (the loss); the
  verdict and its reason are in PredictionsRecorded and ModelEvicted. Without scores it
  never evicts (it cannot weigh the loss), and it is rejected when nothing has room.
  On Hot/Warming/placed models it is a no-op (accepted, no events).
* A model that measures bigger than its host can hold fails (ResourcePressure) and is
  unloaded; its queued allocations fail. Its next placement uses the measured size.
* Entering Failed uses HealthCheckFailure (health threshold, host down, load failure, with
  the cause in metadata) or ResourcePressure (measured too big); Failed -> Cold uses
  ErrorRecovery.
* An allocation that was granted and then ends because its model failed (host down, health)
  gets AllocationFailed with in_flight=true; a queued one that will never be granted gets
  in_flight=false. Releasing a queued request cancels it (AllocationFailed, "cancelled").
* Command rejections emit no event, so they are not in this state: the processor counts them
  from outcomes. The state counts allocation failures by code.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import Any

from streams.decider import Decided, Decider, Decision, Message, Rejection, Rules, copy_with
from streams.persistent import PMap
from streams.pool import lifecycle
from streams.pool.eviction import Displacement, displacement, least_likely
from streams.pool.lifecycle import (
    DEFAULT_POOL,
    ModelLifecycle,
    ModelState,
    ModelTransitioned,
    ModelUsageRecorded,
    RecordModelUsage,
    TransitionModel,
    TransitionReason,
)
from streams.pool.topics import POOL_COMMANDS, POOL_EVENTS

Cold, Warming, Hot, Cooling, Failed = ModelState
R = TransitionReason
HEALTH_FAILURE_THRESHOLD = 3  # consecutive failed health checks that fail a Hot model
# Memory sizes, capacities and load times: the views keep them in INTEGER columns (32 bits
# on PostgreSQL), so a larger value is refused here rather than unstorable there.
MAX_SIZE = (1 << 31) - 1


# --- commands -------------------------------------------------------------------------------
# Every command carries pool_id (the entity key, Avro default "default") as its last field.

class _PoolCommand(Message):
    key_field = "pool_id"


@dataclass(frozen=True)
class RegisterModel(_PoolCommand):
    avro_name = "pit.pool.RegisterModel"
    model_id: str
    uri: str
    memory_mb: int
    expected_load_ms: int
    pool_id: str = DEFAULT_POOL


@dataclass(frozen=True)
class RegisterHost(_PoolCommand):
    avro_name = "pit.pool.RegisterHost"
    host_id: str
    memory_budget_mb: int
    capacity: int
    pool_id: str = DEFAULT_POOL
    endpoint: str = ""  # where the host answers inference calls (http://host:port)


@dataclass(frozen=True)
class AllocateModel(_PoolCommand):
    avro_name = "pit.pool.AllocateModel"
    request_id: str
    model_id: str
    requester: str
    pool_id: str = DEFAULT_POOL
    workflow_id: str = ""  # the workflow run it serves, if any: prewarming learns from it


@dataclass(frozen=True)
class ReleaseModel(_PoolCommand):
    avro_name = "pit.pool.ReleaseModel"
    request_id: str
    pool_id: str = DEFAULT_POOL


@dataclass(frozen=True)
class WarmModel(_PoolCommand):
    avro_name = "pit.pool.WarmModel"
    model_id: str
    probability: float
    reason: str
    pool_id: str = DEFAULT_POOL
    # model -> the prewarmer's probability of a request within its horizon (the models it
    # may displace); empty: never displace
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CoolModel(_PoolCommand):
    avro_name = "pit.pool.CoolModel"
    model_id: str
    reason: TransitionReason = R.SCHEDULED_COOLDOWN
    pool_id: str = DEFAULT_POOL


@dataclass(frozen=True)
class ReportModelLoaded(_PoolCommand):
    avro_name = "pit.pool.ReportModelLoaded"
    host_id: str
    model_id: str
    load_ms: int
    memory_mb: int
    pool_id: str = DEFAULT_POOL


@dataclass(frozen=True)
class ReportModelLoadFailed(_PoolCommand):
    avro_name = "pit.pool.ReportModelLoadFailed"
    host_id: str
    model_id: str
    error: str
    pool_id: str = DEFAULT_POOL


@dataclass(frozen=True)
class ReportModelUnloaded(_PoolCommand):
    avro_name = "pit.pool.ReportModelUnloaded"
    host_id: str
    model_id: str
    pool_id: str = DEFAULT_POOL


@dataclass(frozen=True)
class ReportHealth(_PoolCommand):
    avro_name = "pit.pool.ReportHealth"
    host_id: str
    model_id: str
    ok: bool
    latency_ms: float
    detail: str = ""
    pool_id: str = DEFAULT_POOL


@dataclass(frozen=True)
class ReportHostDown(_PoolCommand):
    avro_name = "pit.pool.ReportHostDown"
    host_id: str
    pool_id: str = DEFAULT_POOL


# --- events ---------------------------------------------------------------------------------
# The envelope's entity key is the pool id; key_field below only names the subject.

@dataclass(frozen=True)
class ModelRegistered(Message):
    avro_name = "pit.pool.ModelRegistered"
    key_field = "model_id"
    model_id: str
    uri: str
    memory_mb: int
    expected_load_ms: int


@dataclass(frozen=True)
class HostRegistered(Message):
    avro_name = "pit.pool.HostRegistered"
    key_field = "host_id"
    host_id: str
    memory_budget_mb: int
    capacity: int
    endpoint: str = ""


@dataclass(frozen=True)
class ModelPlaced(Message):
    """The pool reserved memory for a model on a host; it loads once the host has room."""
    avro_name = "pit.pool.ModelPlaced"
    key_field = "model_id"
    model_id: str
    host_id: str
    memory_mb: int
    reason: TransitionReason  # why it is being loaded: UserRequest, PredictivePrewarm, ...


@dataclass(frozen=True)
class LoadRequested(Message):
    """An instruction for host_id: load the model."""
    avro_name = "pit.pool.LoadRequested"
    key_field = "model_id"
    model_id: str
    host_id: str
    uri: str
    memory_mb: int
    reason: TransitionReason


@dataclass(frozen=True)
class ModelLoaded(Message):
    avro_name = "pit.pool.ModelLoaded"
    key_field = "model_id"
    model_id: str
    host_id: str
    load_ms: int
    memory_mb: int


@dataclass(frozen=True)
class ModelLoadFailed(Message):
    avro_name = "pit.pool.ModelLoadFailed"
    key_field = "model_id"
    model_id: str
    host_id: str
    error: str


@dataclass(frozen=True)
class UnloadRequested(Message):
    """An instruction for host_id: unload the model (it has no allocations left)."""
    avro_name = "pit.pool.UnloadRequested"
    key_field = "model_id"
    model_id: str
    host_id: str
    reason: TransitionReason


@dataclass(frozen=True)
class ModelUnloaded(Message):
    avro_name = "pit.pool.ModelUnloaded"
    key_field = "model_id"
    model_id: str
    host_id: str


@dataclass(frozen=True)
class ModelEvicted(Message):
    avro_name = "pit.pool.ModelEvicted"
    key_field = "model_id"
    model_id: str
    host_id: str
    reason: str = ""  # why this one: a displacement's verdict ("" before predictions)


@dataclass(frozen=True)
class PredictionsRecorded(Message):
    """A prewarm's predictions, which eviction ranks by from now on, and its verdict."""
    avro_name = "pit.pool.PredictionsRecorded"
    key_field = "model_id"
    model_id: str                 # the model to prewarm
    probability: float            # its probability (the gain)
    scores: dict[str, float]      # the prewarmer's scores (see WarmModel)
    victim: str = ""              # the idle model it displaces, if any
    reason: str = ""              # the displacement verdict, if one was needed


@dataclass(frozen=True)
class AllocationQueued(Message):
    avro_name = "pit.pool.AllocationQueued"
    key_field = "request_id"
    request_id: str
    model_id: str
    requester: str
    workflow_id: str = ""


@dataclass(frozen=True)
class ModelAllocated(Message):
    avro_name = "pit.pool.ModelAllocated"
    key_field = "request_id"
    request_id: str
    model_id: str
    requester: str
    host_id: str
    cache_hit: bool
    endpoint: str = ""     # the host's inference URL, so the requester can call the model
    workflow_id: str = ""


@dataclass(frozen=True)
class ModelReleased(Message):
    avro_name = "pit.pool.ModelReleased"
    key_field = "request_id"
    request_id: str
    model_id: str
    host_id: str


@dataclass(frozen=True)
class AllocationFailed(Message):
    avro_name = "pit.pool.AllocationFailed"
    key_field = "request_id"
    request_id: str
    model_id: str
    code: str       # load_failed | host_down | health_check | too_big | no_room | cancelled
    reason: str
    in_flight: bool  # True: it had been granted and ends here; False: it never will be


@dataclass(frozen=True)
class HealthRecorded(Message):
    avro_name = "pit.pool.HealthRecorded"
    key_field = "model_id"
    model_id: str
    host_id: str
    ok: bool
    latency_ms: float
    consecutive_failures: int
    detail: str = ""


@dataclass(frozen=True)
class HostDown(Message):
    avro_name = "pit.pool.HostDown"
    key_field = "host_id"
    host_id: str
    models: list[str] = field(default_factory=list)


# --- state ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Model:
    model_id: str
    uri: str
    declared_memory_mb: int
    expected_load_ms: int
    lifecycle: ModelLifecycle
    host: str | None = None            # where it is, or is placed to load
    memory_mb: int | None = None       # measured by its last load
    load_ms: int | None = None         # measured by its last load
    allocations: frozenset[str] = frozenset()  # request ids in flight
    queued: tuple[str, ...] = ()       # request ids waiting for Hot, oldest first
    health_failures: int = 0           # consecutive
    reason: TransitionReason | None = None  # why it entered its current state
    load_reason: TransitionReason = R.USER_REQUEST  # why it was last placed
    last_used: int = 0                 # pool tick of its last use: the LRU order
    placed_at: int = 0                 # pool tick of its placement: FIFO of waiting loads

    @property
    def state(self) -> ModelState:
        return self.lifecycle.state

    @property
    def need_mb(self) -> int:
        return self.declared_memory_mb if self.memory_mb is None else self.memory_mb

    @property
    def waiting(self) -> bool:
        """Placed on a host, not loading yet (the host is still making room)."""
        return self.state is Cold and self.host is not None


@dataclass(frozen=True, slots=True)
class Usage:
    resident_mb: int = 0
    resident_count: int = 0
    committed_mb: int = 0
    committed_count: int = 0


@dataclass(frozen=True, slots=True)
class Host:
    host_id: str
    memory_budget_mb: int
    capacity: int
    endpoint: str = ""
    alive: bool = True
    models: frozenset[str] = frozenset()  # placed here: waiting, loading, loaded, leaving
    # Kept up to date by evolve, model by model, so decide never rescans the host:
    usage: Usage = Usage()  # the memory and counts of `models` (see the module docstring)
    idle: tuple[tuple[int, str], ...] = ()  # (last_used, model_id) of its Hot models with
    #                                          no allocations, LRU first: eviction candidates
    waiting: tuple[tuple[int, str], ...] = ()  # (placed_at, model_id) of its waiting models,
    #                                             oldest first: the order they load in


@dataclass(frozen=True, slots=True)
class Request:
    request_id: str
    model_id: str
    requester: str
    allocated: bool  # False while queued
    workflow_id: str = ""


@dataclass(frozen=True, slots=True)
class Stats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    loads: int = 0
    load_failures: int = 0
    load_time_total_ms: int = 0
    prewarm_loads: int = 0
    allocation_failures: tuple[tuple[str, int], ...] = ()  # (code, count), sorted by code

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def failed(self, code: str) -> Stats:
        counts = dict(self.allocation_failures)
        counts[code] = counts.get(code, 0) + 1
        return copy_with(self, allocation_failures=tuple(sorted(counts.items())))


@dataclass(frozen=True, slots=True)
class PoolState:
    pool_id: str
    models: PMap[str, Model] = field(default_factory=PMap)
    hosts: PMap[str, Host] = field(default_factory=PMap)
    requests: PMap[str, Request] = field(default_factory=PMap)  # active: queued or allocated
    stats: Stats = Stats()
    tick: int = 0  # events applied: the pool's logical clock for LRU and FIFO order
    # the last recorded predictions (PredictionsRecorded), replaced whole, never changed
    predicted: dict[str, float] = field(default_factory=dict)

    def usage(self, host_id: str) -> Usage:
        return self.hosts[host_id].usage

    def lru(self, host_id: str) -> list[str]:
        """The host's Hot models (allocated or not), least recently used first. For
        inspection: eviction reads the maintained `Host.idle` instead."""
        hot = [self.models[m] for m in self.hosts[host_id].models]
        return [m.model_id for m in sorted(hot, key=_lru_key) if m.state is Hot]


def _lru_key(model: Model) -> tuple[int, str]:
    return model.last_used, model.model_id


def initial_state(pool_id: str) -> PoolState:
    return PoolState(pool_id)


# --- evolve: apply one fact ------------------------------------------------------------------

def _weight(model: Model) -> tuple[int, int, int, int]:
    """What the model adds to its host's Usage (resident MB, count, committed MB, count)."""
    state = model.state
    if state is Cold:  # placed, waiting for room: promised, not held
        return 0, 0, model.need_mb, 1
    if state is Warming or state is Hot:
        return model.need_mb, 1, model.need_mb, 1
    return model.need_mb, 1, 0, 0  # Cooling or Failed: held until unloaded, not promised


def _idle_key(model: Model) -> tuple[int, str] | None:
    """The model's place among its host's eviction candidates, if it is one."""
    if model.state is Hot and not model.allocations:
        return model.last_used, model.model_id
    return None


def _waiting_key(model: Model) -> tuple[int, str] | None:
    """The model's place in its host's queue of waiting loads, if it waits."""
    return (model.placed_at, model.model_id) if model.state is Cold else None


def _resorted(keys: tuple[tuple[int, str], ...], old: tuple[int, str] | None,
              new: tuple[int, str] | None) -> tuple[tuple[int, str], ...]:
    """The sorted `keys` without `old` and with `new` (either may be None)."""
    if old == new:
        return keys
    if old is not None:
        i = bisect_left(keys, old)
        keys = keys[:i] + keys[i + 1:]
    if new is not None:
        i = bisect_left(keys, new)
        keys = (*keys[:i], new, *keys[i:])
    return keys


def _reweigh(host: Host, old: Model | None, new: Model | None) -> Host:
    """The host with `old` (as it was on it) replaced by `new` (as it is now on it)."""
    usage = host.usage
    before = _weight(old) if old is not None else (0, 0, 0, 0)
    after = _weight(new) if new is not None else (0, 0, 0, 0)
    return copy_with(
        host,
        usage=Usage(usage.resident_mb - before[0] + after[0],
                    usage.resident_count - before[1] + after[1],
                    usage.committed_mb - before[2] + after[2],
                    usage.committed_count - before[3] + after[3]),
        idle=_resorted(host.idle, _idle_key(old) if old is not None else None,
                       _idle_key(new) if new is not None else None),
        waiting=_resorted(host.waiting, _waiting_key(old) if old is not None else None,
                          _waiting_key(new) if new is not None else None))


def _model_set(s: PoolState, model_id: str, hosts: PMap[str, Host] | None = None,
               **changes: Any) -> dict[str, Any]:
    """The model with `changes`, and its host's usage, eviction candidates and load queue
    to match (`hosts`: the host map as this event already changed it, if it did)."""
    old = s.models[model_id]
    new = copy_with(old, **changes)
    hosts = s.hosts if hosts is None else hosts
    if old.host is not None or new.host is not None:
        if old.host == new.host:
            host_id = new.host
            assert host_id is not None  # the same host, and one of them has one
            if (_weight(old) != _weight(new) or _idle_key(old) != _idle_key(new)
                    or _waiting_key(old) != _waiting_key(new)):
                hosts = hosts.set(host_id, _reweigh(hosts[host_id], old, new))
        else:
            if old.host is not None:
                hosts = hosts.set(old.host, _reweigh(hosts[old.host], old, None))
            if new.host is not None:
                hosts = hosts.set(new.host, _reweigh(hosts[new.host], None, new))
    if hosts is s.hosts:
        return {"models": s.models.set(model_id, new)}
    return {"models": s.models.set(model_id, new), "hosts": hosts}


def _host_models(state: PoolState, host_id: str,
                 change: Callable[[frozenset[str]], frozenset[str]]) -> PMap[str, Host]:
    host = state.hosts[host_id]
    return state.hosts.set(host_id, copy_with(host, models=change(host.models)))


def evolve(state: PoolState, event: Message, at_ms: int) -> PoolState:
    """Apply one event. Only the touched entries are copied (see PMap), never the pool."""
    tick = state.tick + 1
    return copy_with(state, tick=tick, **_changes(state, event, at_ms, tick))


def _changes(s: PoolState, event: Message, at_ms: int, tick: int) -> dict[str, Any]:
    """The fields of the pool state that `event` changes, with their new values."""
    match event:
        case ModelRegistered(model_id=m, uri=uri, memory_mb=mb, expected_load_ms=ms):
            return {"models": s.models.set(m, Model(m, uri, mb, ms, lifecycle.initial_state(m)))}
        case HostRegistered(host_id=h, memory_budget_mb=budget, capacity=capacity,
                            endpoint=endpoint):
            known = s.hosts.get(h)
            if known is not None:  # back up (emptied by HostDown), or alive at a new endpoint:
                # what it holds stays
                return {"hosts": s.hosts.set(h, copy_with(known, endpoint=endpoint, alive=True))}
            return {"hosts": s.hosts.set(h, Host(h, budget, capacity, endpoint))}
        case ModelTransitioned(model_id=m, reason=reason):
            changed = lifecycle.evolve(s.models[m].lifecycle, event, at_ms)
            return _model_set(s, m, lifecycle=changed, reason=reason)
        case ModelUsageRecorded(model_id=m):  # use keeps a model warm: it moves up the LRU
            used = lifecycle.evolve(s.models[m].lifecycle, event, at_ms)
            return _model_set(s, m, lifecycle=used, last_used=tick)
        case ModelPlaced(model_id=m, host_id=h, reason=reason):
            return _model_set(s, m, _host_models(s, h, lambda ms: ms | {m}),
                              host=h, placed_at=tick, load_reason=reason)
        case LoadRequested(reason=R.PREDICTIVE_PREWARM):
            return {"stats": copy_with(s.stats, prewarm_loads=s.stats.prewarm_loads + 1)}
        case ModelLoaded(model_id=m, load_ms=load_ms, memory_mb=mb):
            stats = copy_with(s.stats, loads=s.stats.loads + 1,
                          load_time_total_ms=s.stats.load_time_total_ms + load_ms)
            return {"stats": stats, **_model_set(
                s, m, memory_mb=mb, load_ms=load_ms, health_failures=0, last_used=tick)}
        case ModelLoadFailed(model_id=m, host_id=h) | ModelUnloaded(model_id=m, host_id=h):
            changes = _model_set(s, m, _host_models(s, h, lambda ms: ms - {m}), host=None)
            if isinstance(event, ModelLoadFailed):
                changes["stats"] = copy_with(s.stats, load_failures=s.stats.load_failures + 1)
            return changes
        case ModelEvicted():
            return {"stats": copy_with(s.stats, evictions=s.stats.evictions + 1)}
        case PredictionsRecorded(model_id=m, probability=p, scores=scores):
            return {"predicted": {**scores, m: p}}  # the prewarmed model's own, too
        case AllocationQueued(request_id=r, model_id=m, requester=who, workflow_id=w):
            return {**_model_set(s, m, queued=(*s.models[m].queued, r)),
                    "requests": s.requests.set(r, Request(r, m, who, False, w)),
                    "stats": copy_with(s.stats, misses=s.stats.misses + 1)}
        case ModelAllocated(request_id=r, model_id=m, requester=who, cache_hit=hit,
                            workflow_id=w):
            model = s.models[m]
            used = lifecycle.evolve(model.lifecycle, ModelUsageRecorded(m, 1), at_ms)
            queued = tuple(q for q in model.queued if q != r) if model.queued else ()
            changes = {"requests": s.requests.set(r, Request(r, m, who, True, w)), **_model_set(
                s, m, lifecycle=used, allocations=model.allocations | {r}, queued=queued,
                last_used=tick)}
            if hit:
                changes["stats"] = copy_with(s.stats, hits=s.stats.hits + 1)
            return changes
        case ModelReleased(request_id=r, model_id=m):
            return {"requests": s.requests.delete(r), **_model_set(
                s, m, allocations=s.models[m].allocations - {r}, last_used=tick)}
        case AllocationFailed(request_id=r, model_id=m, code=code):
            model = s.models[m]
            return {"requests": s.requests.delete(r), "stats": s.stats.failed(code),
                    **_model_set(s, m, allocations=model.allocations - {r},
                                 queued=tuple(q for q in model.queued if q != r))}
        case HealthRecorded(model_id=m, consecutive_failures=failures):
            return _model_set(s, m, health_failures=failures)
        case HostDown(host_id=h):
            host, models = s.hosts[h], s.models
            for m in host.models:
                models = models.set(m, copy_with(models[m], host=None))
            return {"models": models,
                    "hosts": s.hosts.set(h, copy_with(host, alive=False, models=frozenset(),
                                                  usage=Usage(), idle=(), waiting=()))}
    return {}  # UnloadRequested and unknown events change nothing but the clock


# --- decide: the rules -----------------------------------------------------------------------

class _Decision(Decision[PoolState]):
    """The pool's working copy, with the one way its rules change a model's lifecycle."""

    __slots__ = ()

    def transition(self, model_id: str, target: ModelState, reason: TransitionReason,
                   **metadata: str) -> None:
        """A lifecycle change, checked by the lifecycle's own decide (the one rulebook)."""
        model = self.state.models[model_id]
        if model.host is not None:
            metadata.setdefault("host", model.host)
        command = TransitionModel(model_id, target, reason, metadata)
        self.emit(*lifecycle.decide(model.lifecycle, command, self.now))


def _model(state: PoolState, model_id: str) -> Model:
    model = state.models.get(model_id)
    if model is None:
        raise Rejection(f"unknown model {model_id!r}")
    return model


def _host(state: PoolState, host_id: str) -> Host:
    host = state.hosts.get(host_id)
    if host is None:
        raise Rejection(f"unknown host {host_id!r}")
    if not host.alive:
        raise Rejection(f"host {host_id} is down")
    return host


def _held(state: PoolState, host_id: str, model_id: str) -> Model:
    """A host's report about a model: the host must hold (or be placed to load) it."""
    _host(state, host_id)
    model = _model(state, model_id)
    if model.host != host_id:
        where = f"on host {model.host}" if model.host else "on no host"
        raise Rejection(f"host {host_id} does not hold model {model_id} (it is {where})")
    return model


def _host_of(model: Model) -> str:
    """The host of a model the pool has placed (Warming, Hot, Cooling, or Failed there)."""
    assert model.host is not None, f"model {model.model_id} is {model.state} on no host"
    return model.host


def _choose_host(state: PoolState, model: Model, *, evict: bool) -> tuple[str, list[str]]:
    """Where the model goes and which idle Hot models must leave first, or a Rejection."""
    need = model.need_mb
    alive = sorted(h for h, host in state.hosts.items() if host.alive)
    if not alive:
        raise Rejection(f"cannot place model {model.model_id}: no host is alive")
    best_fit: tuple[int, str] | None = None
    best_evict: tuple[int, int, str, list[str]] | None = None
    closest = (-1, "")  # (MB obtainable, host) for the rejection message
    for host_id in alive:
        host = state.hosts[host_id]
        usage = host.usage  # maintained by evolve: no rescan of the host's models
        free = host.memory_budget_mb - usage.committed_mb
        if free >= need and usage.committed_count < host.capacity:
            if best_fit is None or free > -best_fit[0]:
                best_fit = (-free, host_id)
            continue
        if not evict:
            closest = max(closest, (free, host_id))
            continue
        # Idle Hot models, least likely first: the only ones that may be evicted.
        victims: list[str] = []
        count = usage.committed_count
        for victim in _eviction_order(state, host):
            if free >= need and count < host.capacity:
                break
            victims.append(victim)
            free += state.models[victim].need_mb
            count -= 1
        closest = max(closest, (free, host_id))
        if free >= need and count < host.capacity:
            candidate = (len(victims), -free, host_id, victims)
            if best_evict is None or candidate[:3] < best_evict[:3]:
                best_evict = candidate
    if best_fit is not None:
        return best_fit[1], []
    if best_evict is not None:
        return best_evict[2], best_evict[3]
    obtainable, host_id = closest
    how = ("even after evicting every idle model (allocated or draining models are never"
           " evicted)" if evict else "without evicting (a prewarm without scores never evicts)")
    if obtainable >= need:  # memory would do: the model count is what is full
        raise Rejection(f"cannot place model {model.model_id}: every host is at its capacity"
                        f" of models {how}")
    raise Rejection(f"cannot place model {model.model_id}: needs {need} MB, the most any host"
                    f" can offer {how} is {obtainable} MB (host {host_id})")


def _eviction_order(state: PoolState, host: Host) -> Iterable[str]:
    """The host's idle models in the order they are evicted (`eviction.least_likely`)."""
    lru = map(itemgetter(1), host.idle)
    return least_likely(lru, state.predicted) if state.predicted else lru


def _place(d: _Decision, model_id: str, *, evict: bool, reason: TransitionReason,
           why: str = "") -> None:
    """Cold (or Failed without a host) -> placed on a host, loading as soon as it has room.
    `why`: the reason each eviction records."""
    model = d.state.models[model_id]
    host_id, victims = _choose_host(d.state, model, evict=evict)  # may reject: nothing emitted
    if model.state is Failed:
        d.transition(model_id, Cold, R.ERROR_RECOVERY)
    for victim in victims:
        d.emit(ModelEvicted(victim, host_id, why or _eviction_reason(d.state, victim)))
        _cool(d, victim, R.RESOURCE_PRESSURE)
    d.emit(ModelPlaced(model_id, host_id, model.need_mb, reason))
    _start_waiting(d, host_id)


def _eviction_reason(state: PoolState, victim: str) -> str:
    if not state.predicted:
        return ""
    return (f"least likely idle model (predicted {state.predicted.get(victim, 0.0):.3f}),"
            " then least recently used")


def _start_waiting(d: _Decision, host_id: str) -> None:
    """Send LoadRequested to the host's waiting models, oldest first, while they fit."""
    host = d.state.hosts[host_id]
    for _, model_id in host.waiting:  # a snapshot: each load leaves the live queue
        model, usage = d.state.models[model_id], d.state.usage(host_id)
        if (usage.resident_mb + model.need_mb > host.memory_budget_mb
                or usage.resident_count >= host.capacity):
            return  # first in, first loaded: no overtaking
        d.transition(model.model_id, Warming, model.load_reason)
        d.emit(LoadRequested(model.model_id, host_id, model.uri, model.need_mb,
                             model.load_reason))


def _cool(d: _Decision, model_id: str, reason: TransitionReason) -> None:
    """Hot -> Cooling; the unload is requested once the model has no allocations left."""
    d.transition(model_id, Cooling, reason)
    model = d.state.models[model_id]
    if not model.allocations:
        d.emit(UnloadRequested(model_id, _host_of(model), reason))


def _fail(d: _Decision, model_id: str, reason: TransitionReason, code: str, why: str) -> None:
    """The model goes to Failed: its in-flight allocations end, queued ones are answered."""
    model = d.state.models[model_id]
    for request_id in sorted(model.allocations):
        d.emit(AllocationFailed(request_id, model_id, code, why, True))
    for request_id in model.queued:
        d.emit(AllocationFailed(request_id, model_id, code, why, False))
    d.transition(model_id, Failed, reason, cause=why)


def _fail_queue(d: _Decision, model_id: str, code: str, why: str) -> None:
    for request_id in d.state.models[model_id].queued:
        d.emit(AllocationFailed(request_id, model_id, code, why, False))


def _on_register_model(d: _Decision, c: RegisterModel) -> None:
    if not c.model_id or not c.uri:
        raise Rejection("model_id and uri must not be empty")
    if not (0 < c.memory_mb <= MAX_SIZE and 0 <= c.expected_load_ms <= MAX_SIZE):
        raise Rejection(f"model {c.model_id}: memory_mb must lie in 1..{MAX_SIZE} and"
                        f" expected_load_ms in 0..{MAX_SIZE} (got {c.memory_mb},"
                        f" {c.expected_load_ms})")
    known = d.state.models.get(c.model_id)
    if known is not None:
        if (known.uri, known.declared_memory_mb, known.expected_load_ms) != (
                c.uri, c.memory_mb, c.expected_load_ms):
            raise Rejection(f"model {c.model_id} is already registered with other parameters"
                            f" ({known.uri}, {known.declared_memory_mb} MB,"
                            f" {known.expected_load_ms} ms)")
        return  # the same registration again: nothing to do
    d.emit(ModelRegistered(c.model_id, c.uri, c.memory_mb, c.expected_load_ms))


def _on_register_host(d: _Decision, c: RegisterHost) -> None:
    if not c.host_id:
        raise Rejection("host_id must not be empty")
    if not (0 < c.memory_budget_mb <= MAX_SIZE and 0 < c.capacity <= MAX_SIZE):
        raise Rejection(f"host {c.host_id}: memory_budget_mb and capacity must lie in"
                        f" 1..{MAX_SIZE} (got {c.memory_budget_mb}, {c.capacity})")
    known = d.state.hosts.get(c.host_id)
    if known is not None:
        if (known.memory_budget_mb, known.capacity) != (c.memory_budget_mb, c.capacity):
            # The endpoint may change (a restarted host listens elsewhere); the budget not.
            raise Rejection(f"host {c.host_id} is already registered with other parameters"
                            f" ({known.memory_budget_mb} MB, capacity {known.capacity})")
        if known.alive and known.endpoint == c.endpoint:
            return  # the same registration again
    d.emit(HostRegistered(c.host_id, c.memory_budget_mb, c.capacity, c.endpoint))  # new/back


def _on_allocate(d: _Decision, c: AllocateModel) -> None:
    if not c.request_id:
        raise Rejection("request_id must not be empty")
    if c.request_id in d.state.requests:
        raise Rejection(f"request {c.request_id} is already active")
    model = _model(d.state, c.model_id)
    state = model.state
    if state is Hot:  # the cache hit: the path that must stay fast
        host_id = _host_of(model)
        endpoint = d.state.hosts[host_id].endpoint
        d.emit(ModelAllocated(c.request_id, c.model_id, c.requester, host_id, True,
                              endpoint, c.workflow_id))
        return
    if state is Cooling:
        raise Rejection(f"model {c.model_id} is Cooling; it accepts no new allocations"
                        " (retry once it is Cold)")
    if state is Failed and model.host is not None:
        raise Rejection(f"model {c.model_id} is Failed and still on host {model.host},"
                        " awaiting its unload; retry after it")
    if state is Failed or (state is Cold and model.host is None):
        _place(d, c.model_id, evict=True, reason=R.USER_REQUEST)
    d.emit(AllocationQueued(c.request_id, c.model_id, c.requester, c.workflow_id))


def _on_release(d: _Decision, c: ReleaseModel) -> None:
    request = d.state.requests.get(c.request_id)
    if request is None:
        raise Rejection(f"unknown request {c.request_id!r} (never allocated, or already ended)")
    if not request.allocated:
        d.emit(AllocationFailed(c.request_id, request.model_id, "cancelled",
                                "released while queued", False))
        return
    model = d.state.models[request.model_id]
    host_id = _host_of(model)  # allocated: Hot, or Cooling since
    d.emit(ModelReleased(c.request_id, request.model_id, host_id))
    if model.state is Cooling and model.allocations == {c.request_id}:  # drained: it may go
        d.emit(UnloadRequested(model.model_id, host_id, model.reason or R.USER_REQUEST))


def _on_warm(d: _Decision, c: WarmModel) -> None:
    if not 0.0 <= c.probability <= 1.0:
        raise Rejection(f"probability must be within [0, 1], got {c.probability}")
    model = _model(d.state, c.model_id)
    if model.state in (Hot, Warming) or model.waiting:
        return  # already warm or on its way: nothing to do
    if model.state is Cooling:
        raise Rejection(f"model {c.model_id} is Cooling; it cannot be prewarmed until Cold")
    if model.state is Failed and model.host is not None:
        raise Rejection(f"model {c.model_id} is Failed and still on host {model.host}")
    if not c.scores:
        _place(d, c.model_id, evict=False, reason=R.PREDICTIVE_PREWARM)
        return
    try:
        _choose_host(d.state, model, evict=False)
    except Rejection:  # no room: weigh the least likely idle model, host by host
        verdict = _displacement(d.state, model, c)
        d.emit(PredictionsRecorded(c.model_id, c.probability, c.scores,
                                   verdict.victim if verdict.worth_it else "", verdict.reason))
        if verdict.worth_it:
            _place(d, c.model_id, evict=True, reason=R.PREDICTIVE_PREWARM, why=verdict.reason)
        return
    d.emit(PredictionsRecorded(c.model_id, c.probability, c.scores))
    _place(d, c.model_id, evict=False, reason=R.PREDICTIVE_PREWARM)


def _displacement(state: PoolState, model: Model, c: WarmModel) -> Displacement:
    """The verdict on the least likely idle model of the host eviction would choose with
    the command's scores; a model that needs more than one victim is not prewarmed."""
    scored = copy_with(state, predicted=dict(c.scores))
    try:
        host_id, victims = _choose_host(scored, model, evict=True)
    except Rejection as rejection:
        return Displacement(c.model_id, c.probability, "", 1.0, rejection.reason)
    if len(victims) != 1:
        return Displacement(c.model_id, c.probability, "", 1.0,
                            f"prewarm of {c.model_id} would evict {len(victims)} models on"
                            f" host {host_id}; it displaces one at most")
    return displacement(c.model_id, c.probability, victims[0], c.scores.get(victims[0], 0.0))


def _on_cool(d: _Decision, c: CoolModel) -> None:
    _model(d.state, c.model_id)
    _cool(d, c.model_id, c.reason)  # lifecycle.decide rejects anything but Hot -> Cooling


def _on_loaded(d: _Decision, c: ReportModelLoaded) -> None:
    model = _held(d.state, c.host_id, c.model_id)
    if model.state is not Warming:
        raise Rejection(f"model {c.model_id} is {model.state} on host {c.host_id};"
                        " a load report needs Warming")
    if not (0 < c.memory_mb <= MAX_SIZE and 0 <= c.load_ms <= MAX_SIZE):
        raise Rejection(f"memory_mb must lie in 1..{MAX_SIZE} and load_ms in 0..{MAX_SIZE}"
                        f" (got {c.memory_mb}, {c.load_ms})")
    d.emit(ModelLoaded(c.model_id, c.host_id, c.load_ms, c.memory_mb))
    host, usage = d.state.hosts[c.host_id], d.state.usage(c.host_id)
    if max(usage.resident_mb, usage.committed_mb) > host.memory_budget_mb:
        why = (f"model {c.model_id} measured {c.memory_mb} MB (declared"
               f" {model.declared_memory_mb} MB): host {c.host_id} is over its"
               f" {host.memory_budget_mb} MB budget")
        _fail(d, c.model_id, R.RESOURCE_PRESSURE, "too_big", why)
        d.emit(UnloadRequested(c.model_id, c.host_id, R.RESOURCE_PRESSURE))
        return
    d.transition(c.model_id, Hot, model.load_reason)
    endpoint = d.state.hosts[c.host_id].endpoint
    for request_id in model.queued:
        request = d.state.requests[request_id]
        d.emit(ModelAllocated(request_id, c.model_id, request.requester, c.host_id, False,
                              endpoint, request.workflow_id))
    _start_waiting(d, c.host_id)  # a smaller measured size may have made room


def _on_load_failed(d: _Decision, c: ReportModelLoadFailed) -> None:
    model = _held(d.state, c.host_id, c.model_id)
    if model.state is not Warming:
        raise Rejection(f"model {c.model_id} is {model.state} on host {c.host_id};"
                        " a load failure report needs Warming")
    why = f"load of {c.model_id} failed on host {c.host_id}: {c.error}"
    _fail(d, c.model_id, R.HEALTH_CHECK_FAILURE, "load_failed", why)
    d.emit(ModelLoadFailed(c.model_id, c.host_id, c.error))  # its reservation is released
    _start_waiting(d, c.host_id)


def _on_unloaded(d: _Decision, c: ReportModelUnloaded) -> None:
    model = _held(d.state, c.host_id, c.model_id)
    if not (model.state is Failed or (model.state is Cooling and not model.allocations)):
        raise Rejection(f"model {c.model_id} is {model.state} on host {c.host_id} with"
                        f" {len(model.allocations)} allocations; no unload was requested")
    d.emit(ModelUnloaded(c.model_id, c.host_id))
    if model.state is Cooling:
        d.transition(c.model_id, Cold, model.reason or R.USER_REQUEST)
    _start_waiting(d, c.host_id)


def _on_health(d: _Decision, c: ReportHealth) -> None:
    model = _held(d.state, c.host_id, c.model_id)
    if model.state not in (Hot, Cooling):
        raise Rejection(f"model {c.model_id} is {model.state}; health reports apply to Hot"
                        " or Cooling models")
    failures = 0 if c.ok else model.health_failures + 1  # a success resets the count
    d.emit(HealthRecorded(c.model_id, c.host_id, c.ok, c.latency_ms, failures, c.detail))
    if failures >= HEALTH_FAILURE_THRESHOLD:
        why = (f"model {c.model_id} failed {failures} health checks in a row on host"
               f" {c.host_id}: {c.detail}")
        _fail_loaded(d, c.model_id, R.HEALTH_CHECK_FAILURE, "health_check", why)


def _fail_loaded(d: _Decision, model_id: str, reason: TransitionReason, code: str,
                 why: str) -> None:
    """A Hot or Cooling model fails: its allocations end and its host is told to unload it
    (unless a drained Cooling model's unload was requested already)."""
    model = d.state.models[model_id]
    unload_sent = model.state is Cooling and not model.allocations
    _fail(d, model_id, reason, code, why)
    if not unload_sent:
        d.emit(UnloadRequested(model_id, _host_of(model), reason))


def _on_transition(d: _Decision, c: TransitionModel) -> None:
    """An operator's lifecycle command, checked against the seed's table first, then carried
    out the way the pool would do it itself, so memory and hosts stay consistent."""
    model = _model(d.state, c.model_id)
    lifecycle.decide(model.lifecycle, c, d.now)  # the seed's rejection for a bad transition
    match model.state, c.to_state:
        case _, ModelState.HOT:
            raise Rejection(f"model {c.model_id} becomes Hot when its host reports the load"
                            " (ReportModelLoaded), not by command")
        case ModelState.COOLING, ModelState.COLD:
            raise Rejection(f"model {c.model_id} becomes Cold when its host reports the"
                            " unload (ReportModelUnloaded), not by command")
        case ModelState.COLD, ModelState.WARMING:
            if model.waiting:
                return  # already placed: it loads as soon as its host has room
            _place(d, c.model_id, evict=c.reason is not R.PREDICTIVE_PREWARM, reason=c.reason)
        case ModelState.HOT, ModelState.COOLING:
            _cool(d, c.model_id, c.reason)
        case ModelState.FAILED, ModelState.COLD:
            if model.host is not None:
                raise Rejection(f"model {c.model_id} is Failed and still on host {model.host},"
                                " awaiting its unload; recover it after that")
            d.transition(c.model_id, Cold, c.reason, **c.metadata)
        case ModelState.WARMING, ModelState.FAILED:
            why = c.metadata.get("error") or f"failed by command ({c.reason})"
            _fail(d, c.model_id, c.reason, "failed", why)
            d.emit(UnloadRequested(c.model_id, _host_of(model), c.reason))
        case _, ModelState.FAILED:  # Hot or Cooling
            why = c.metadata.get("error") or f"failed by command ({c.reason})"
            _fail_loaded(d, c.model_id, c.reason, "failed", why)


def _on_usage(d: _Decision, c: RecordModelUsage) -> None:
    model = _model(d.state, c.model_id)
    d.emit(*lifecycle.decide(model.lifecycle, c, d.now))


def _on_host_down(d: _Decision, c: ReportHostDown) -> None:
    host = d.state.hosts.get(c.host_id)
    if host is None:
        raise Rejection(f"unknown host {c.host_id!r}")
    if not host.alive:
        raise Rejection(f"host {c.host_id} is already down")
    why = f"host {c.host_id} is down"
    on_host = sorted(host.models)
    for model_id in on_host:
        model = d.state.models[model_id]
        for request_id in sorted(model.allocations):
            d.emit(AllocationFailed(request_id, model_id, "host_down", why, True))
        if model.state in (Warming, Hot, Cooling):
            d.transition(model_id, Failed, R.HEALTH_CHECK_FAILURE, cause=why)
    d.emit(HostDown(c.host_id, on_host))
    # Queued allocations are not lost: their models are recovered and placed elsewhere.
    for model_id in on_host:
        if not d.state.models[model_id].queued:
            continue
        try:
            _choose_host(d.state, d.state.models[model_id], evict=True)
        except Rejection as rejection:
            _fail_queue(d, model_id, "no_room", f"{why}; {rejection.reason}")
            continue
        _place(d, model_id, evict=True, reason=R.ERROR_RECOVERY)


_RULES: Rules[_Decision] = Rules("the pool", "pool_id", {
    RegisterModel: _on_register_model,
    RegisterHost: _on_register_host,
    AllocateModel: _on_allocate,
    ReleaseModel: _on_release,
    WarmModel: _on_warm,
    CoolModel: _on_cool,
    ReportModelLoaded: _on_loaded,
    ReportModelLoadFailed: _on_load_failed,
    ReportModelUnloaded: _on_unloaded,
    ReportHealth: _on_health,
    ReportHostDown: _on_host_down,
    TransitionModel: _on_transition,
    RecordModelUsage: _on_usage,
})


def decide(state: PoolState, command: Message, now_ms: int) -> Decided:
    return _RULES.decide(_Decision(state, now_ms, evolve), command)


COMMANDS = _RULES.commands
EVENTS = (ModelRegistered, HostRegistered, ModelPlaced, LoadRequested, ModelLoaded,
          ModelLoadFailed, UnloadRequested, ModelUnloaded, ModelEvicted, ModelTransitioned,
          ModelUsageRecorded, AllocationQueued, ModelAllocated, ModelReleased, AllocationFailed,
          HealthRecorded, HostDown, PredictionsRecorded)

POOL = Decider(
    name="pool",
    command_topic=POOL_COMMANDS,
    event_topic=POOL_EVENTS,
    commands=COMMANDS,
    events=EVENTS,
    initial_state=initial_state,
    decide=decide,
    evolve=evolve,
    entity_of=attrgetter("pool_id"),
)
