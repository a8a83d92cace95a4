"""Conflict detection (seed M3.4.1): the four kinds, found from what the arbiter knows.

* model contention: a model with `slots` serves at most that many grants at once; more
  requesters than slots (granted + waiting) contend;
* memory pressure: a cold model needs its memory on a host; it conflicts when that is more
  than `memory_threshold` of the free memory left after what earlier grants promised, or
  more than any one host has free;
* CPU saturation: a host or runner reported utilisation at or above `cpu_threshold`, within
  the last `utilisation_ttl_s` (a reporter that died stops counting);
* cost limit: the tenant's spend in its window, plus what a grant costs at once, passes
  its limit.

`would_conflict` checks one request against the state without scanning the pending
requests (it reads the maintained totals: grants per model, promised memory, the queues'
lengths), and names only that request in what it finds; `detect` lists every conflict among
the pending requests with all of theirs. The property tests hold both equal to a brute-force
recount from the raw request list.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.arbitration.policy import ConflictKind
from streams.arbitration.state import DEFERRED, GRANTED, WAITING, ArbiterState, Request

K = ConflictKind


@dataclass(frozen=True)
class Conflict:
    kind: ConflictKind
    subject: str                 # the model (contention, memory), the tenant (cost), or ""
    requests: tuple[str, ...]    # the requests in it, sorted
    available: float             # slots / MB / threshold / limit
    requested: float             # requesters / MB / utilisation / spend

    def describe(self) -> str:
        match self.kind:
            case K.MODEL_CONTENTION:
                return (f"model {self.subject}: {self.requested:g} requesters for"
                        f" {self.available:g} slot(s)")
            case K.MEMORY_PRESSURE:
                return (f"memory: {self.requested:g} MB wanted by cold model(s),"
                        f" {max(self.available, 0):g} MB available")
            case K.CPU_SATURATION:
                return f"CPU at {self.requested:.0%}, threshold {self.available:.0%}"
            case K.COST_LIMIT:
                return (f"tenant {self.subject}: spend {self.requested:g} against its limit"
                        f" {self.available:g}")
        return self.kind.value  # pragma: no cover - every kind is matched above


def memory_need(state: ArbiterState, model_id: str) -> int:
    """MB a grant of the model would newly need: none if it is hot or already promised."""
    model = state.models.get(model_id)
    if model is None or model.hot or model_id in state.promised:
        return 0
    return model.memory_mb


def memory_available(state: ArbiterState) -> tuple[float, float]:
    """(MB cold models may still take, the most free on one host); both infinite with no
    host observed: then the pool alone decides where models fit."""
    if not len(state.hosts):
        return float("inf"), float("inf")
    total, most = state.free_mb()
    return state.policy.memory_threshold * total - state.promised_mb, most


def busiest(state: ArbiterState, now_ms: int) -> float:
    """The highest utilisation reported within the policy's `utilisation_ttl_s`."""
    since = now_ms - state.policy.utilisation_ttl_s * 1000
    return max((u for source, u in state.utilisation.items()
                if state.reported_at.get(source, 0) >= since), default=0.0)


def call_cost(state: ArbiterState, model_id: str) -> float:
    model = state.models.get(model_id)
    return model.cost_per_call if model else 0.0


def over_cost(state: ArbiterState, tenant: str, model_id: str, now_ms: int
              ) -> tuple[float, float] | None:
    """(limit, spend) if a grant to `tenant` of `model_id` now passes its cost limit."""
    limit = state.policy.cost_limits.get(tenant)
    if limit is None:
        return None
    spent = state.spent(tenant, now_ms)
    if spent >= limit.limit or spent + call_cost(state, model_id) > limit.limit:
        return limit.limit, spent
    return None


def would_conflict(state: ArbiterState, request: Request, now_ms: int) -> list[Conflict]:
    """Every conflict granting `request` (not yet granted) now would meet, in kind order."""
    found: list[Conflict] = []
    model = state.models.get(request.model_id)
    used = state.in_use.get(request.model_id, 0)
    if model is not None and model.slots and used >= model.slots:
        # the request, and how many contend: the waiting ones are listed by `detect`
        found.append(Conflict(K.MODEL_CONTENTION, request.model_id, (request.request_id,),
                              model.slots, used + state.waiting(request.model_id) + 1))
    need = memory_need(state, request.model_id)
    if need:
        available, most = memory_available(state)
        if need > available or need > most:
            found.append(Conflict(K.MEMORY_PRESSURE, request.model_id, (request.request_id,),
                                  min(available, most), need))
    utilisation = busiest(state, now_ms)
    if utilisation >= state.policy.cpu_threshold:
        found.append(Conflict(K.CPU_SATURATION, "", (request.request_id,),
                              state.policy.cpu_threshold, utilisation))
    cost = over_cost(state, request.tenant, request.model_id, now_ms)
    if cost is not None:
        found.append(Conflict(K.COST_LIMIT, request.tenant, (request.request_id,), *cost))
    return found


def detect(state: ArbiterState, now_ms: int) -> list[Conflict]:
    """Every conflict among the pending (waiting or deferred) requests, in a stable order:
    contention per model, memory, CPU, cost per tenant."""
    pending = sorted((r for r in state.requests.values() if r.status in (WAITING, DEFERRED)),
                     key=lambda r: r.seq)
    if not pending:
        return []
    found: list[Conflict] = []
    for model_id in sorted({r.model_id for r in pending}):
        model = state.models.get(model_id)
        if model is None or not model.slots:
            continue
        asking = [r.request_id for r in pending if r.model_id == model_id]
        used = state.in_use.get(model_id, 0)
        if used + len(asking) > model.slots:
            found.append(Conflict(K.MODEL_CONTENTION, model_id, tuple(sorted(asking)),
                                  model.slots, used + len(asking)))
    cold = {r.model_id: memory_need(state, r.model_id) for r in pending}
    wanted = sum(need for need in cold.values())
    if wanted:
        available, most = memory_available(state)
        if wanted > available or max(cold.values()) > most:
            found.append(Conflict(
                K.MEMORY_PRESSURE, "", tuple(sorted(r.request_id for r in pending
                                                    if cold[r.model_id])),
                min(available, most), wanted))
    utilisation = busiest(state, now_ms)
    if utilisation >= state.policy.cpu_threshold:
        found.append(Conflict(K.CPU_SATURATION, "", tuple(sorted(r.request_id for r in pending)),
                              state.policy.cpu_threshold, utilisation))
    for tenant in sorted({r.tenant for r in pending}):
        over = [r for r in pending if r.tenant == tenant
                and over_cost(state, tenant, r.model_id, now_ms) is not None]
        if over:
            limit, spent = over_cost(state, tenant, over[0].model_id, now_ms)  # type: ignore[misc]
            found.append(Conflict(K.COST_LIMIT, tenant, tuple(sorted(r.request_id for r in over)),
                                  limit, spent))
    return found


def granted_within_capacity(state: ArbiterState) -> bool:
    """The invariant no decision may break: no model holds more grants than its slots."""
    held: dict[str, int] = {}
    for r in state.requests.values():
        if r.status == GRANTED:
            held[r.granted_model] = held.get(r.granted_model, 0) + 1
    return all(not (m := state.models.get(model_id)) or not m.slots or n <= m.slots
               for model_id, n in held.items())
