"""The arbiter (seed M3.4): the pure decider that admits requests for models in front of the
pool. Kueue against the Kubernetes scheduler is the model: the arbiter decides who may run,
the pool decides where.

The entity is one pool (key = pool id), because capacity and fairness span it. Commands:
requests (`SubmitRequest`, `CancelRequest`, `ReleaseRequest`), the policy
(`SetArbitrationPolicy`), facts about capacity (`DescribeModel` from whoever registers a
model's slots and costs; `ObserveModel`, `ObserveHost`, `ReportUtilisation` from the pool's
and runners' reports) and its own timers (`ExpireRequest`, `ReconsiderRequest`). Every
decision is one `RequestDecided` event: granted, queued (position, wait estimate), deferred
(delay) or denied (a `DenialReason`), with the conflicts met, the strategy, the score
breakdown, a rationale and a counterfactual (what would have changed it).

How a request is decided (the rules, in one place):
1. Invalid input is rejected and changes nothing (an unknown model or, under a closed
   policy, tenant; a priority outside +-10,000; scores outside [0, 1]; a re-used id).
2. A tenant with `max_pending_per_tenant` requests pending is denied RATE_LIMITED; a
   model bigger than every host's budget is denied RESOURCE_UNAVAILABLE.
3. No conflict (conflicts.py): granted at once.
4. Over its cost limit: denied COST_EXCEEDED, or under COLLABORATIVE deferred until its
   window has room. CPU saturation: deferred `cpu_defer_s`, then reconsidered.
5. Contention or memory pressure: COLLABORATIVE first offers an equivalent model that is
   free; otherwise the request waits in its model's queue, ordered by the strategy of the
   conflict (routing.py). A full queue (`max_queue`) denies its lowest ranked LOWER_PRIORITY.
6. Whenever capacity may have freed (a release, a model hot, a host's memory, utilisation,
   a new policy), waiting requests are granted in strategy order while they meet no
   conflict. A waiting request times out on a durable timer (streams/timers.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from streams.arbitration import conflicts, fairness, routing
from streams.arbitration.conflicts import Conflict
from streams.arbitration.fairness import Window
from streams.arbitration.policy import (
    MAX_PRIORITY,
    MIN_PRIORITY,
    SCORE_DIMENSIONS,
    ConflictKind,
    DenialReason,
    PolicyError,
    Strategy,
    policy_from,
    policy_json,
)
from streams.arbitration.state import (
    DEFERRED,
    GRANTED,
    WAITING,
    ArbiterState,
    Bucket,
    HostFacts,
    ModelFacts,
    Request,
    initial_state,
)
from streams.arbitration.topics import ARBITRATION_COMMANDS, ARBITRATION_EVENTS
from streams.decider import Decided, Decider, Decision, Message, Rejection, Rules, copy_with
from streams.pool.lifecycle import DEFAULT_POOL
from streams.timers import TIMER_EVENTS, cancel_timer, schedule_timer

K = ConflictKind
GRANT, QUEUE, DEFER, DENY = "granted", "queued", "deferred", "denied"
MAX_SIZE = (1 << 31) - 1  # MB and ms: the views' INTEGER columns
MAX_TIMEOUT_MS = 30 * 86_400_000  # a request waits 30 days at the most
MAX_COST = 1e9            # per call or second: sums of them stay finite
UNKNOWN_MODEL = "unknown model"  # how the rejection of a request for one begins
HOLDS_KEPT = 100          # the mean hold time is a running mean over about this many


# --- commands -------------------------------------------------------------------------------
# Every command carries pool_id (the entity key, Avro default "default") as its last field.

class _ArbitrationCommand(Message):
    key_field = "pool_id"


@dataclass(frozen=True)
class SubmitRequest(_ArbitrationCommand):
    avro_name = "pit.arbitration.SubmitRequest"
    request_id: str
    model_id: str
    tenant: str = "default"
    priority: int = 0
    scores: dict[str, float] = field(default_factory=dict)
    requester: str = ""
    workflow_id: str = ""
    timeout_ms: int = -1      # -1: the policy's default_timeout_s; 0: never
    pool_id: str = DEFAULT_POOL


@dataclass(frozen=True)
class CancelRequest(_ArbitrationCommand):
    avro_name = "pit.arbitration.CancelRequest"
    request_id: str
    reason: str = ""
    pool_id: str = DEFAULT_POOL


@dataclass(frozen=True)
class ReleaseRequest(_ArbitrationCommand):
    avro_name = "pit.arbitration.ReleaseRequest"
    request_id: str
    pool_id: str = DEFAULT_POOL


@dataclass(frozen=True)
class ExpireRequest(_ArbitrationCommand):
    """Sent by the request's timeout timer; `seq` names the submission it was set for."""
    avro_name = "pit.arbitration.ExpireRequest"
    request_id: str
    seq: int
    pool_id: str = DEFAULT_POOL


@dataclass(frozen=True)
class ReconsiderRequest(_ArbitrationCommand):
    """Sent by a deferred request's timer: decide it again."""
    avro_name = "pit.arbitration.ReconsiderRequest"
    request_id: str
    seq: int
    deferral: int
    pool_id: str = DEFAULT_POOL


@dataclass(frozen=True)
class SetArbitrationPolicy(_ArbitrationCommand):
    avro_name = "pit.arbitration.SetArbitrationPolicy"
    policy_json: str
    pool_id: str = DEFAULT_POOL


@dataclass(frozen=True)
class DescribeModel(_ArbitrationCommand):
    """What arbitration needs to know of a model beyond the pool: its slots, its costs and
    the models that may serve its requests instead."""
    avro_name = "pit.arbitration.DescribeModel"
    model_id: str
    slots: int = 0
    cost_per_second: float = 0.0
    cost_per_call: float = 0.0
    equivalents: list[str] = field(default_factory=list)
    pool_id: str = DEFAULT_POOL


@dataclass(frozen=True)
class ObserveModel(_ArbitrationCommand):
    avro_name = "pit.arbitration.ObserveModel"
    model_id: str
    memory_mb: int
    load_ms: int
    hot: bool
    pool_id: str = DEFAULT_POOL


@dataclass(frozen=True)
class ObserveHost(_ArbitrationCommand):
    avro_name = "pit.arbitration.ObserveHost"
    host_id: str
    budget_mb: int
    free_mb: int
    alive: bool = True
    pool_id: str = DEFAULT_POOL


@dataclass(frozen=True)
class ReportUtilisation(_ArbitrationCommand):
    avro_name = "pit.arbitration.ReportUtilisation"
    source: str          # a host or runner id
    utilisation: float   # 0..1
    pool_id: str = DEFAULT_POOL


# --- events ---------------------------------------------------------------------------------
# The envelope's entity key is the pool id; key_field names the subject (the Kafka key).


class _Fact(Message):
    """An event about a model, host or source the pool's events are keyed by too: keyed
    `arbitration:<subject>` on Kafka, so `pit audit <model>` still names one story."""

    @property
    def entity_key(self) -> str:
        return f"arbitration:{getattr(self, self.key_field)}"

@dataclass(frozen=True)
class RequestSubmitted(Message):
    avro_name = "pit.arbitration.RequestSubmitted"
    key_field = "request_id"
    request_id: str
    model_id: str
    tenant: str
    priority: int
    scores: dict[str, float]   # every dimension: given, or the tenant's default
    score: float
    requester: str
    workflow_id: str
    timeout_ms: int


@dataclass(frozen=True)
class RequestDecided(Message):
    avro_name = "pit.arbitration.RequestDecided"
    key_field = "request_id"
    request_id: str
    outcome: str               # granted | queued | deferred | denied
    model_id: str
    tenant: str
    strategy: str
    rationale: str
    granted_model: str = ""    # the model granted: model_id or an equivalent (a counter-offer)
    conflicts: list[str] = field(default_factory=list)  # the conflicts met, described
    conflict_kinds: list[str] = field(default_factory=list)
    reason: str = ""           # a DenialReason when denied
    counterfactual: str = ""   # what would have changed the decision
    priority: int = 0
    effective_priority: float = 0.0
    score: float = 0.0
    score_breakdown: dict[str, float] = field(default_factory=dict)
    correction: float = 1.0    # the tenant's fairness correction at the time
    position: int = -1         # queued: requests served before it
    wait_estimate_ms: int = -1
    delay_ms: int = -1         # deferred: when it is reconsidered
    waited_ms: int = 0


@dataclass(frozen=True)
class RequestCancelled(Message):
    avro_name = "pit.arbitration.RequestCancelled"
    key_field = "request_id"
    request_id: str
    reason: str
    waited_ms: int


@dataclass(frozen=True)
class RequestTimedOut(Message):
    avro_name = "pit.arbitration.RequestTimedOut"
    key_field = "request_id"
    request_id: str
    waited_ms: int


@dataclass(frozen=True)
class GrantReleased(Message):
    avro_name = "pit.arbitration.GrantReleased"
    key_field = "request_id"
    request_id: str
    model_id: str
    tenant: str
    held_ms: int
    cost: float


@dataclass(frozen=True)
class ArbitrationPolicySet(Message):
    avro_name = "pit.arbitration.ArbitrationPolicySet"
    key_field = "policy_json"
    policy_json: str


@dataclass(frozen=True)
class ModelDescribed(_Fact):
    avro_name = "pit.arbitration.ModelDescribed"
    key_field = "model_id"
    model_id: str
    slots: int
    cost_per_second: float
    cost_per_call: float
    equivalents: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ModelObserved(_Fact):
    avro_name = "pit.arbitration.ModelObserved"
    key_field = "model_id"
    model_id: str
    memory_mb: int
    load_ms: int
    hot: bool


@dataclass(frozen=True)
class HostObserved(_Fact):
    avro_name = "pit.arbitration.HostObserved"
    key_field = "host_id"
    host_id: str
    budget_mb: int
    free_mb: int
    alive: bool


@dataclass(frozen=True)
class UtilisationReported(_Fact):
    avro_name = "pit.arbitration.UtilisationReported"
    key_field = "source"
    source: str
    utilisation: float


# --- evolve ---------------------------------------------------------------------------------

def _without(queues: Any, request: Request, at_ms: int) -> Any:
    """The queues with `request` taken out of its bucket (empty buckets and queues go); a
    new head is head from `at_ms`."""
    buckets: list[Bucket] = []
    for tenant, priority, ids, since in queues.get(request.model_id, ()):
        if (tenant, priority) == (request.tenant, request.priority):
            if ids and ids[0] == request.request_id:
                since = at_ms
            ids = tuple(i for i in ids if i != request.request_id)
        if ids:
            buckets.append((tenant, priority, ids, since))
    return queues.set(request.model_id, tuple(buckets)) if buckets \
        else queues.delete(request.model_id)


def _with(queues: Any, request: Request) -> Any:
    buckets = list(queues.get(request.model_id, ()))
    for i, (tenant, priority, ids, since) in enumerate(buckets):
        if (tenant, priority) == (request.tenant, request.priority):
            buckets[i] = (tenant, priority, (*ids, request.request_id), since)
            break
    else:  # the first of its bucket: its head since it was submitted
        buckets.append((request.tenant, request.priority, (request.request_id,),
                        request.submitted_at))
    return queues.set(request.model_id, tuple(buckets))


def _count(counts: Any, key: str, delta: int) -> Any:
    value = counts.get(key, 0) + delta
    return counts.set(key, value) if value else counts.delete(key)


def _spend(s: ArbiterState, tenant: str, at_ms: int, cost: float) -> Any:
    """The tenant's spend ledger with `cost` at `at_ms`, pruned to its limit's window (kept
    only for tenants with a limit)."""
    limit = s.policy.cost_limits.get(tenant)
    if limit is None or cost <= 0:
        return s.spend
    since = at_ms - int(limit.window_s * 1000)
    return s.spend.set(tenant, (*(e for e in s.spend.get(tenant, ()) if e[0] > since),
                                (at_ms, cost)))


def _leave(s: ArbiterState, request: Request, at_ms: int) -> dict[str, Any]:
    """What a pending (waiting or deferred) request's end changes."""
    changes: dict[str, Any] = {"requests": s.requests.delete(request.request_id),
                               "pending": _count(s.pending, request.tenant, -1)}
    if request.status == WAITING:
        changes["queues"] = _without(s.queues, request, at_ms)
    return changes


def evolve(state: ArbiterState, event: Message, at_ms: int) -> ArbiterState:
    changes = _changes(state, event, at_ms)
    return copy_with(state, **changes) if changes else state


def _changes(s: ArbiterState, event: Message, at_ms: int) -> dict[str, Any]:
    stats = s.stats
    match event:
        case RequestSubmitted():
            request = Request(event.request_id, event.model_id, event.tenant, event.priority,
                              event.score, tuple(sorted(event.scores.items())), event.requester,
                              event.workflow_id, event.timeout_ms, at_ms, s.seq)
            return {"requests": s.requests.set(event.request_id, request), "seq": s.seq + 1,
                    "stats": copy_with(stats, submitted=stats.submitted + 1)}
        case RequestDecided():
            return _decided(s, event, at_ms)
        case RequestCancelled() | RequestTimedOut():
            request = s.requests[event.request_id]
            counted = ({"cancelled": stats.cancelled + 1} if isinstance(event, RequestCancelled)
                       else {"timed_out": stats.timed_out + 1})
            return {**_leave(s, request, at_ms), "stats": copy_with(stats, **counted)}
        case GrantReleased():
            request = s.requests[event.request_id]
            model = request.granted_model
            n, mean = s.holds.get(model, (0, 0.0))
            n = min(n + 1, HOLDS_KEPT)
            promised = s.promised
            if request.promised_mb and model in promised:
                left = promised[model] - request.promised_mb
                promised = promised.set(model, left) if left > 0 else promised.delete(model)
            return {"requests": s.requests.delete(event.request_id),
                    "in_use": _count(s.in_use, model, -1), "promised": promised,
                    "spend": _spend(s, request.tenant, at_ms, event.cost),
                    "holds": s.holds.set(model, (n, mean + (event.held_ms - mean) / n)),
                    "stats": copy_with(stats, released=stats.released + 1)}
        case ArbitrationPolicySet():
            policy = policy_from(json.loads(event.policy_json))
            return {"policy": policy,
                    "window": Window(int(policy.fairness_window_s * 1000), s.window.buckets)}
        case ModelDescribed():
            known = s.models.get(event.model_id) or ModelFacts(event.model_id)
            return {"models": s.models.set(event.model_id, copy_with(
                known, slots=event.slots, cost_per_second=event.cost_per_second,
                cost_per_call=event.cost_per_call, equivalents=tuple(event.equivalents)))}
        case ModelObserved():
            known = s.models.get(event.model_id) or ModelFacts(event.model_id)
            changes: dict[str, Any] = {"models": s.models.set(event.model_id, copy_with(
                known, memory_mb=event.memory_mb, load_ms=event.load_ms, hot=event.hot))}
            if event.hot:  # loaded: its memory now shows in its host's free memory
                changes["promised"] = s.promised.delete(event.model_id)
            return changes
        case HostObserved():
            return {"hosts": s.hosts.set(event.host_id, HostFacts(
                event.host_id, event.budget_mb, event.free_mb, event.alive))}
        case UtilisationReported():
            return {"utilisation": s.utilisation.set(event.source, event.utilisation),
                    "reported_at": s.reported_at.set(event.source, at_ms)}
    return {}  # the timer events change nothing here


def _decided(s: ArbiterState, e: RequestDecided, at_ms: int) -> dict[str, Any]:
    request = s.requests[e.request_id]
    stats, was = s.stats, request.status
    pending_before = was in (WAITING, DEFERRED)
    match e.outcome:
        case "granted":
            model = e.granted_model
            need = conflicts.memory_need(s, model)
            changes = {"queues": _without(s.queues, request, at_ms) if was == WAITING
                       else s.queues,
                       "pending": _count(s.pending, request.tenant, -1) if pending_before
                       else s.pending,
                       "in_use": _count(s.in_use, model, 1),
                       "promised": _count(s.promised, model, need) if need else s.promised,
                       "window": s.window.record(request.tenant, at_ms),
                       "spend": _spend(s, request.tenant, at_ms,
                                       conflicts.call_cost(s, model)),
                       "last_tenant": request.tenant}
            changes["requests"] = s.requests.set(e.request_id, copy_with(
                request, status=GRANTED, granted_model=model, granted_at=at_ms,
                promised_mb=need, waiting_on=None))
            changes["stats"] = copy_with(
                stats, granted=stats.granted + 1,
                waited=stats.waited + pending_before,
                wait_total_ms=stats.wait_total_ms + (e.waited_ms if pending_before else 0))
            return changes
        case "queued":
            kind = ConflictKind(e.conflict_kinds[0]) if e.conflict_kinds else None
            changes = {"requests": s.requests.set(e.request_id, copy_with(
                request, status=WAITING, waiting_on=kind))}
            if was != WAITING:
                changes["queues"] = _with(s.queues, request)
                changes["stats"] = copy_with(stats, queued=stats.queued + 1)
                if not pending_before:
                    changes["pending"] = _count(s.pending, request.tenant, 1)
            return changes
        case "deferred":
            changes = {"requests": s.requests.set(e.request_id, copy_with(
                request, status=DEFERRED, deferrals=request.deferrals + 1,
                waiting_on=K.CPU_SATURATION if K.CPU_SATURATION.value in e.conflict_kinds
                else K.COST_LIMIT)),
                "stats": copy_with(stats, deferred=stats.deferred + 1)}
            if was == WAITING:
                changes["queues"] = _without(s.queues, request, at_ms)
            if not pending_before:
                changes["pending"] = _count(s.pending, request.tenant, 1)
            return changes
    # denied
    changes = _leave(s, request, at_ms) if pending_before \
        else {"requests": s.requests.delete(e.request_id)}
    return {**changes, "stats": copy_with(stats, denied=stats.denied + 1)}


# --- decide ---------------------------------------------------------------------------------

def _timer_id(state: ArbiterState, request: Request, what: str) -> str:
    return f"arbitration/{state.pool_id}/{request.request_id}/{request.seq}/{what}"


def _seconds(ms: float) -> str:
    return f"{ms / 1000:.1f} s" if ms < 120_000 else f"{ms / 60_000:.1f} min"


class _Decision(Decision[ArbiterState]):
    """The arbiter's working copy, with the one way a request's decision is written."""

    __slots__ = ()

    def decided(self, request: Request, outcome: str, strategy: Strategy | None,
                rationale: str, found: Sequence[Conflict] = (), **details: Any) -> None:
        state = self.state
        policy = state.policy
        correction = routing.corrections(state, self.now)(request.tenant)
        weights = policy.score_weights
        total = sum(weights.values()) or 1.0
        pending = request.status in (WAITING, DEFERRED)
        waited = self.now - request.submitted_at if pending else 0
        self.emit(RequestDecided(
            request.request_id, outcome, request.model_id, request.tenant,
            strategy.value if strategy else "", rationale,
            conflicts=[c.describe() for c in found],
            conflict_kinds=[c.kind.value for c in found],
            priority=request.priority,
            effective_priority=routing.effective_priority(state, request, self.now),
            score=request.score,
            score_breakdown={d: weights.get(d, 0.0) * v / total for d, v in request.scores},
            correction=correction, waited_ms=waited, **details))
        scheduled = request.status != "" and request.timeout_ms > 0
        if outcome in (GRANT, DENY) and scheduled:
            self.emit(cancel_timer(_timer_id(state, request, "timeout"), outcome))
        if outcome in (QUEUE, DEFER) and not pending and request.timeout_ms > 0:
            self.emit(schedule_timer(_timer_id(state, request, "timeout"),
                                     request.submitted_at + request.timeout_ms,
                                     ExpireRequest(request.request_id, request.seq,
                                                   state.pool_id), ARBITER))


def _over_share(state: ArbiterState, tenant: str, now_ms: int) -> str:
    totals = state.window.totals(now_ms)
    share, entitled = fairness.shares(totals, routing.tenant_weights(state, totals)).get(
        tenant, (0.0, 0.0))
    if entitled and share > entitled * 1.05:
        return f"tenant {tenant} is {share / entitled - 1:.0%} over its share"
    return ""


def _grant(d: _Decision, request: Request, model_id: str, strategy: Strategy | None,
           rationale: str) -> None:
    d.decided(request, GRANT, strategy, rationale, granted_model=model_id)


def _counter_offer(d: _Decision, request: Request) -> str | None:
    """An equivalent model that could be granted now without conflict, if any."""
    model = d.state.models[request.model_id]
    for other in model.equivalents:
        if other in d.state.models and not conflicts.would_conflict(
                d.state, copy_with(request, model_id=other), d.now):
            return other
    return None


def _queue_strategy(state: ArbiterState, found: list[Conflict]) -> Strategy:
    kind = next(c.kind for c in found if c.kind in (K.MODEL_CONTENTION, K.MEMORY_PRESSURE))
    return state.policy.strategy(kind)


def _worst_waiting(state: ArbiterState, model_id: str, key: Any) -> Request | None:
    """The waiting request of the model served last: the newest of some bucket."""
    tails = [state.requests[ids[-1]] for _, _, ids, _ in state.queues.get(model_id, ())
             if ids]
    return max(tails, key=key) if tails else None


def _settle(d: _Decision, request: Request) -> None:
    """Decide a request that is new, or deferred and due again: rules 2-5."""
    state, now, policy = d.state, d.now, d.state.policy
    model = state.models[request.model_id]
    alive = [h.budget_mb for h in state.hosts.values() if h.alive]
    if alive and model.memory_mb > max(alive) and not model.hot:
        d.decided(request, DENY, None,
                  f"model {model.model_id} needs {model.memory_mb} MB, more than any host"
                  f" holds ({max(alive)} MB)", reason=DenialReason.RESOURCE_UNAVAILABLE.value,
                  counterfactual=f"granted if a host with at least {model.memory_mb} MB were"
                                 f" registered")
        return
    found = conflicts.would_conflict(state, request, now)
    if not found:
        used = state.in_use.get(model.model_id, 0)
        slots = f"; model {model.model_id} has {used} of {model.slots} slots in use" \
            if model.slots else ""
        _grant(d, request, model.model_id, None, f"no conflict{slots}")
        return
    kinds = {c.kind for c in found}
    if K.COST_LIMIT in kinds:
        cost = next(c for c in found if c.kind is K.COST_LIMIT)
        strategy = policy.strategy(K.COST_LIMIT)
        if strategy is Strategy.COLLABORATIVE:
            _defer(d, request, found, strategy, _cost_delay(state, request, now),
                   f"{cost.describe()}: reconsidered once its window has room")
            return
        allowed = cost.available - conflicts.call_cost(state, request.model_id)
        d.decided(request, DENY, strategy, cost.describe(), found,
                  reason=DenialReason.COST_EXCEEDED.value,
                  counterfactual=f"granted if tenant {request.tenant}'s spend in its window"
                                 f" were at most {allowed:g} (it is {cost.requested:g})")
        return
    if K.CPU_SATURATION in kinds:
        cpu = next(c for c in found if c.kind is K.CPU_SATURATION)
        _defer(d, request, found, policy.strategy(K.CPU_SATURATION),
               int(policy.cpu_defer_s * 1000), cpu.describe())
        return
    strategy = _queue_strategy(state, found)
    if strategy is Strategy.COLLABORATIVE:
        other = _counter_offer(d, request)
        if other is not None:
            _grant(d, request, other, strategy,
                   f"{found[0].describe()}; counter-offer: equivalent model {other} has room")
            return
    _enqueue(d, request, found, strategy)


def _cost_delay(state: ArbiterState, request: Request, now: int) -> int:
    """ms until enough of the tenant's spend leaves its window for this request's cost."""
    limit = state.policy.cost_limits[request.tenant]
    need = conflicts.call_cost(state, request.model_id)
    window = int(limit.window_s * 1000)
    spent = state.spent(request.tenant, now)
    for at, cost in state.spend.get(request.tenant, ()):
        if at <= now - window:
            continue
        spent -= cost
        if spent < limit.limit and spent + need <= limit.limit:
            return max(1, at + window - now + 1)
    return window


def _defer(d: _Decision, request: Request, found: list[Conflict], strategy: Strategy,
           delay_ms: int, rationale: str) -> None:
    deferral = request.deferrals + 1
    d.decided(request, DEFER, strategy, f"{rationale}; deferred {_seconds(delay_ms)}",
              found, delay_ms=delay_ms,
              counterfactual="granted at once without the conflict(s) above")
    d.emit(schedule_timer(_timer_id(d.state, request, f"reconsider/{deferral}"),
                          d.now + delay_ms,
                          ReconsiderRequest(request.request_id, request.seq, deferral,
                                            d.state.pool_id), ARBITER))


def _enqueue(d: _Decision, request: Request, found: list[Conflict], strategy: Strategy
             ) -> None:
    state, now = d.state, d.now
    correction = routing.corrections(state, now)
    key = routing.rank_key(state, strategy, now, correction)
    if state.waiting(request.model_id) >= state.policy.max_queue:
        worst = _worst_waiting(state, request.model_id, key)
        if worst is None or key(request) >= key(worst):
            d.decided(request, DENY, strategy,
                      f"the queue of model {request.model_id} is full"
                      f" ({state.policy.max_queue} waiting) and ranks it last",
                      found, reason=DenialReason.LOWER_PRIORITY.value,
                      counterfactual=f"queued if it ranked above the last waiting"
                                     f" ({_rank_text(state, worst, now, strategy)})")
            return
        d.decided(worst, DENY, strategy,
                  f"the queue of model {request.model_id} is full; {request.request_id}"
                  " ranks above it", found, reason=DenialReason.LOWER_PRIORITY.value,
                  counterfactual="kept its place if it ranked above"
                                 f" {request.request_id}")
        state = d.state
    ahead = routing.position(state, request, strategy, now, correction)
    estimate = routing.wait_estimate_ms(state, request, ahead, strategy)
    what = "; ".join(c.describe() for c in found)
    lines = [f"{what}; queued by {strategy.value} at position {ahead + 1},"
             f" expected in ~{_seconds(estimate)}"]
    counterfactual = _queued_counterfactual(state, request, found, strategy, now)
    d.decided(request, QUEUE, strategy, lines[0], found, position=ahead,
              wait_estimate_ms=estimate, counterfactual=counterfactual)


def _rank_text(state: ArbiterState, request: Request | None, now: int,
               strategy: Strategy) -> str:
    if request is None:
        return "none"
    if strategy in (Strategy.PRIORITY, Strategy.COLLABORATIVE):
        return f"{request.request_id}, effective priority" \
               f" {routing.effective_priority(state, request, now):g}"
    return request.request_id


def _queued_counterfactual(state: ArbiterState, request: Request, found: list[Conflict],
                           strategy: Strategy, now: int) -> str:
    parts = []
    for conflict in found:
        if conflict.kind is K.MODEL_CONTENTION:
            parts.append(f"granted at once if a slot of {conflict.subject} were free"
                         f" ({state.in_use.get(conflict.subject, 0)} of"
                         f" {conflict.available:g} in use)")
        elif conflict.kind is K.MEMORY_PRESSURE:
            short = conflict.requested - max(conflict.available, 0)
            parts.append(f"granted at once if {short:g} MB more were free on a host")
    if strategy in (Strategy.PRIORITY, Strategy.COLLABORATIVE):
        first = routing.next_waiting(state, request.model_id, strategy, now,
                                     routing.corrections(state, now))
        if first is not None and first.request_id != request.request_id:
            needed = routing.effective_priority(state, first, now) - \
                routing.effective_priority(state, request, now) + request.priority + 1
            parts.append(f"first in line if priority >= {int(needed)}")
    share = _over_share(state, request.tenant, now)
    if share:
        parts.append(share)
    return "; ".join(parts)


def _drain(d: _Decision) -> None:
    """Rule 6: grant waiting requests, in strategy order, while they meet no conflict."""
    for _ in range(len(d.state.requests) + 1):
        state, now = d.state, d.now
        if not len(state.queues):
            return
        correction = routing.corrections(state, now)
        candidates = []
        for model_id in sorted(state.queues):
            request = state.requests[state.queues[model_id][0][2][0]]
            kind = request.waiting_on or K.MODEL_CONTENTION
            head = routing.next_waiting(state, model_id, state.policy.strategy(kind), now,
                                        correction)
            if head is not None:
                candidates.append(head)
        across = routing.rank_key(state, state.policy.strategy(K.MEMORY_PRESSURE), now,
                                  correction)
        for head in sorted(candidates, key=across):
            found = conflicts.would_conflict(state, head, now)
            if not found:
                strategy = state.policy.strategy(head.waiting_on or K.MODEL_CONTENTION)
                _grant(d, head, head.model_id, strategy,
                       f"granted after {_seconds(now - head.submitted_at)} waiting:"
                       f" served first by {strategy.value}"
                       f" (effective priority {routing.effective_priority(state, head, now):g},"
                       f" correction {correction(head.tenant):.2f}, score {head.score:.2f})")
                break
            if any(c.kind is K.CPU_SATURATION for c in found):
                return  # nothing is granted while the CPU is saturated
            if all(c.kind is K.COST_LIMIT for c in found):
                _settle(d, head)  # its turn came, its budget had gone: denied or deferred
                break
        else:
            return


# --- the rules ------------------------------------------------------------------------------

def _on_submit(d: _Decision, c: SubmitRequest) -> None:
    state, policy = d.state, d.state.policy
    if not c.request_id or not c.model_id:
        raise Rejection("request_id and model_id must not be empty")
    if not c.tenant:
        raise Rejection("tenant must not be empty")
    known = state.requests.get(c.request_id)
    if known is not None:
        raise Rejection(f"request {c.request_id} is already submitted (it is {known.status})")
    if c.model_id not in state.models:
        raise Rejection(f"{UNKNOWN_MODEL} {c.model_id!r}: arbitration has not been told of it"
                        " (DescribeModel, or the pool's registration)")
    if policy.closed and c.tenant not in policy.tenants:
        raise Rejection(f"unknown tenant {c.tenant!r}; the policy names"
                        f" {', '.join(sorted(policy.tenants))}")
    if not MIN_PRIORITY <= c.priority <= MAX_PRIORITY:
        raise Rejection(f"priority {c.priority} is outside {MIN_PRIORITY}..{MAX_PRIORITY}")
    for dimension, value in c.scores.items():
        if dimension not in SCORE_DIMENSIONS:
            raise Rejection(f"unknown score {dimension!r} (known: {', '.join(SCORE_DIMENSIONS)})")
        if not 0.0 <= value <= 1.0:
            raise Rejection(f"score {dimension} is {value}; scores lie within [0, 1]")
    if not -1 <= c.timeout_ms <= MAX_TIMEOUT_MS:
        raise Rejection(f"timeout_ms {c.timeout_ms} is outside -1..{MAX_TIMEOUT_MS} (-1: the"
                        " policy's default, 0: none)")
    timeout = int(policy.default_timeout_s * 1000) if c.timeout_ms == -1 else c.timeout_ms
    scores = policy.scores_of(c.tenant, c.scores)
    d.emit(RequestSubmitted(c.request_id, c.model_id, c.tenant, c.priority, scores,
                            policy.score(scores), c.requester, c.workflow_id, timeout))
    request = d.state.requests[c.request_id]
    if state.pending.get(c.tenant, 0) >= policy.max_pending_per_tenant:
        d.decided(request, DENY, None,
                  f"tenant {c.tenant} has {state.pending[c.tenant]} requests pending, its"
                  f" limit is {policy.max_pending_per_tenant}",
                  reason=DenialReason.RATE_LIMITED.value,
                  counterfactual=f"considered if tenant {c.tenant} had fewer than"
                                 f" {policy.max_pending_per_tenant} requests pending")
        return
    _settle(d, request)


def _pending(state: ArbiterState, request_id: str) -> Request:
    request = state.requests.get(request_id)
    if request is None:
        raise Rejection(f"unknown request {request_id!r} (never submitted, or already ended)")
    return request


def _on_cancel(d: _Decision, c: CancelRequest) -> None:
    request = _pending(d.state, c.request_id)
    if request.status == GRANTED:
        raise Rejection(f"request {c.request_id} is granted: release it instead")
    d.emit(RequestCancelled(c.request_id, c.reason or "cancelled",
                            d.now - request.submitted_at))
    if request.timeout_ms > 0:
        d.emit(cancel_timer(_timer_id(d.state, request, "timeout"), "cancelled"))


def _on_release(d: _Decision, c: ReleaseRequest) -> None:
    request = d.state.requests.get(c.request_id)
    if request is None:
        raise Rejection(f"unknown request {c.request_id!r} (never granted, or already"
                        " released)")
    if request.status != GRANTED:
        raise Rejection(f"request {c.request_id} was never granted (it is {request.status}):"
                        " cancel it instead")
    model = d.state.models[request.granted_model]
    held = max(0, d.now - request.granted_at)
    d.emit(GrantReleased(c.request_id, request.granted_model, request.tenant, held,
                         model.cost_per_second * held / 1000))
    _drain(d)


def _on_expire(d: _Decision, c: ExpireRequest) -> None:
    request = d.state.requests.get(c.request_id)
    if request is None or request.seq != c.seq or request.status == GRANTED:
        return  # decided before its timer fired: nothing to do
    d.emit(RequestTimedOut(c.request_id, d.now - request.submitted_at))


def _on_reconsider(d: _Decision, c: ReconsiderRequest) -> None:
    request = d.state.requests.get(c.request_id)
    if request is None or request.seq != c.seq or request.status != DEFERRED \
            or request.deferrals != c.deferral:
        return  # no longer deferred, or deferred again since
    _settle(d, request)


def _on_policy(d: _Decision, c: SetArbitrationPolicy) -> None:
    try:
        policy = policy_from(json.loads(c.policy_json))
    except json.JSONDecodeError as exc:
        raise Rejection(f"invalid arbitration policy: not JSON ({exc})") from None
    except PolicyError as exc:
        raise Rejection(str(exc)) from None
    canonical = policy_json(policy)
    if canonical != policy_json(d.state.policy):
        d.emit(ArbitrationPolicySet(canonical))
        _drain(d)


def _size(name: str, value: int) -> None:
    if not 0 <= value <= MAX_SIZE:
        raise Rejection(f"{name} must lie in 0..{MAX_SIZE}, got {value}")


def _on_describe(d: _Decision, c: DescribeModel) -> None:
    if not c.model_id:
        raise Rejection("model_id must not be empty")
    _size("slots", c.slots)
    if not (0 <= c.cost_per_second <= MAX_COST and 0 <= c.cost_per_call <= MAX_COST):
        raise Rejection(f"model {c.model_id}: costs must lie within 0..{MAX_COST:g}")
    if c.model_id in c.equivalents:
        raise Rejection(f"model {c.model_id} cannot be its own equivalent")
    held = d.state.in_use.get(c.model_id, 0)
    if c.slots and c.slots < held:
        raise Rejection(f"model {c.model_id} holds {held} grants: its slots cannot drop to"
                        f" {c.slots} until they are released")
    known = d.state.models.get(c.model_id)
    described = (c.slots, c.cost_per_second, c.cost_per_call, tuple(c.equivalents))
    if known is None or (known.slots, known.cost_per_second, known.cost_per_call,
                         known.equivalents) != described:
        d.emit(ModelDescribed(c.model_id, c.slots, c.cost_per_second, c.cost_per_call,
                              list(c.equivalents)))
        _drain(d)


def _on_observe_model(d: _Decision, c: ObserveModel) -> None:
    if not c.model_id:
        raise Rejection("model_id must not be empty")
    _size("memory_mb", c.memory_mb)
    _size("load_ms", c.load_ms)
    known = d.state.models.get(c.model_id)
    if known is None or (known.memory_mb, known.load_ms, known.hot) != (
            c.memory_mb, c.load_ms, c.hot):
        d.emit(ModelObserved(c.model_id, c.memory_mb, c.load_ms, c.hot))
        _drain(d)


def _on_observe_host(d: _Decision, c: ObserveHost) -> None:
    if not c.host_id:
        raise Rejection("host_id must not be empty")
    _size("budget_mb", c.budget_mb)
    _size("free_mb", c.free_mb)
    if c.free_mb > c.budget_mb:
        raise Rejection(f"host {c.host_id}: free_mb {c.free_mb} exceeds its budget"
                        f" {c.budget_mb}")
    facts = HostFacts(c.host_id, c.budget_mb, c.free_mb, c.alive)
    if d.state.hosts.get(c.host_id) != facts:
        d.emit(HostObserved(c.host_id, c.budget_mb, c.free_mb, c.alive))
        _drain(d)


def _on_utilisation(d: _Decision, c: ReportUtilisation) -> None:
    if not c.source:
        raise Rejection("source must not be empty")
    if not 0.0 <= c.utilisation <= 1.0:
        raise Rejection(f"utilisation {c.utilisation} is outside [0, 1]")
    # the same figure again is an event only once half its time to live has gone: it says
    # the source is alive, and costs the log one record per source per half TTL
    refresh_ms = d.state.policy.utilisation_ttl_s * 500
    if d.state.utilisation.get(c.source) != c.utilisation or \
            d.now - d.state.reported_at.get(c.source, 0) >= refresh_ms:
        d.emit(UtilisationReported(c.source, c.utilisation))
        _drain(d)


_RULES: Rules[_Decision] = Rules("the arbiter", "pool_id", {
    SubmitRequest: _on_submit,
    CancelRequest: _on_cancel,
    ReleaseRequest: _on_release,
    ExpireRequest: _on_expire,
    ReconsiderRequest: _on_reconsider,
    SetArbitrationPolicy: _on_policy,
    DescribeModel: _on_describe,
    ObserveModel: _on_observe_model,
    ObserveHost: _on_observe_host,
    ReportUtilisation: _on_utilisation,
})


def decide(state: ArbiterState, command: Message, now_ms: int) -> Decided:
    return _RULES.decide(_Decision(state, now_ms, evolve), command)


COMMANDS = _RULES.commands
EVENTS = (RequestSubmitted, RequestDecided, RequestCancelled, RequestTimedOut, GrantReleased,
          ArbitrationPolicySet, ModelDescribed, ModelObserved, HostObserved,
          UtilisationReported, *TIMER_EVENTS)

ARBITER: Decider[ArbiterState] = Decider(
    name="arbitration",
    command_topic=ARBITRATION_COMMANDS,
    event_topic=ARBITRATION_EVENTS,
    commands=COMMANDS,
    events=EVENTS,
    initial_state=initial_state,
    decide=decide,
    evolve=evolve,
    entity_of=attrgetter("pool_id"),
)

