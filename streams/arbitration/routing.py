"""Who goes next (seed M3.4.3 and the strategies of M3.4.2): the order waiting requests are
served in, their positions and wait estimates.

A model's waiting requests are kept in buckets of one tenant and one base priority, each
oldest first (streams/arbitration/state.py). Within a bucket the oldest ranks first under
every strategy, so choosing the next request looks at the buckets' heads only, a few
entries however long the queue is.

Aging counts from when a request became the head of its bucket, not from its submission:
starvation is a tenant's turn being skipped, not the length of its own backlog. Counted from
submission, a tenant that floods the queue would own its oldest - most aged - requests and
win every turn, whatever its share. Aging rises in whole `aging_step`s, so within a step the
fairness correction decides between tenants of equal priority.

The strategies, as the order they serve in:
* PRIORITY (and COLLABORATIVE, once its counter-offer is declined): effective priority
  (priority + aging, capped), then the tenant's fairness correction, then the score, then
  arrival;
* QUEUE: arrival;
* ROUND_ROBIN: the tenant after the one served last, in name order, then arrival;
* WEIGHTED_RANDOM: a draw weighted by the tenant's weight times its correction, seeded from
  the request id and the grants so far, so the same log draws the same.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

from streams.arbitration import fairness
from streams.arbitration.policy import Strategy
from streams.arbitration.state import ArbiterState, Request

S = Strategy


def _head_since(state: ArbiterState, request: Request) -> int | None:
    """When `request` became the head of its bucket; None if it is not the head. A request
    in no queue (new, or deferred) counts as a head since its submission."""
    for tenant, priority, ids, since in state.queues.get(request.model_id, ()):
        if (tenant, priority) == (request.tenant, request.priority):
            return since if ids and ids[0] == request.request_id else None
    return request.submitted_at


_UNKNOWN = -1


def effective_priority(state: ArbiterState, request: Request, now_ms: int,
                       since: int | None = _UNKNOWN) -> float:
    """The priority plus what waiting at the head of its bucket earned it: aging_per_s a
    second, in whole aging_steps, up to aging_cap, so low priority never starves. `since`:
    when it became head, if the caller knows (None: it is not a head)."""
    policy = state.policy
    if since == _UNKNOWN:
        since = _head_since(state, request)
    if since is None:
        return float(request.priority)
    points = min(policy.aging_cap, policy.aging_per_s * max(0, now_ms - since) / 1000)
    if policy.aging_step:
        points -= points % policy.aging_step
    return request.priority + points


def corrections(state: ArbiterState, now_ms: int) -> Callable[[str], float]:
    """Each tenant's fairness correction now (computed once per tenant asked)."""
    totals = state.window.totals(now_ms)
    weights = tenant_weights(state, totals)
    known: dict[str, float] = {}

    def correction(tenant: str) -> float:
        if tenant not in known:
            known[tenant] = fairness.correction(totals, weights, tenant)
        return known[tenant]
    return correction


def tenant_weights(state: ArbiterState, totals: dict[str, int]) -> dict[str, float]:
    """The weights of the policy's tenants, of the tenants granted in the window and of
    those waiting: everyone the fairness measures cover."""
    names = set(state.policy.tenants) | set(totals) | set(state.pending)
    return {t: state.policy.weight(t) for t in sorted(names)}


def _draw(request_id: str, salt: int) -> float:
    digest = hashlib.blake2b(f"{request_id}/{salt}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 1) / (2 ** 64 + 2)  # in (0, 1)


def rank_key(state: ArbiterState, strategy: Strategy, now_ms: int,
             correction: Callable[[str], float]) -> Callable[[Request], tuple]:
    """The sort key of a waiting request under `strategy`: lower goes first."""
    match strategy:
        case S.QUEUE:
            return lambda r: (r.seq,)
        case S.ROUND_ROBIN:
            tenants = sorted(state.pending)
            last = state.last_tenant

            def turn(r: Request) -> tuple:
                after = [t for t in tenants if t > last] + [t for t in tenants if t <= last]
                return (after.index(r.tenant) if r.tenant in after else len(after), r.seq)
            return turn
        case S.WEIGHTED_RANDOM:
            salt = state.stats.granted

            def draw(r: Request) -> tuple:
                weight = state.policy.weight(r.tenant) * correction(r.tenant)
                # Efraimidis-Spirakis: the largest u ** (1 / w) wins
                return (-math.log(_draw(r.request_id, salt)) / weight, r.seq)
            return draw
        case _:
            heads: dict[str, dict[str, int]] = {}  # model -> its heads' since, read once

            def since(r: Request) -> int | None:
                if r.model_id not in heads:
                    heads[r.model_id] = {ids[0]: at for _, _, ids, at
                                         in state.queues.get(r.model_id, ()) if ids}
                found = heads[r.model_id]
                if r.request_id in found:
                    return found[r.request_id]
                return r.submitted_at if r.status != "waiting" else None

            return lambda r: (-effective_priority(state, r, now_ms, since(r)),
                              -correction(r.tenant), -r.score, r.seq)


def heads(state: ArbiterState, model_id: str) -> list[Request]:
    return [state.requests[ids[0]] for _, _, ids, _ in state.queues.get(model_id, ()) if ids]


def next_waiting(state: ArbiterState, model_id: str, strategy: Strategy, now_ms: int,
                 correction: Callable[[str], float]) -> Request | None:
    """The waiting request of `model_id` that `strategy` serves next."""
    found = heads(state, model_id)
    return min(found, key=rank_key(state, strategy, now_ms, correction)) if found else None


def position(state: ArbiterState, request: Request, strategy: Strategy, now_ms: int,
             correction: Callable[[str], float]) -> int:
    """How many waiting requests of its model are served before `request` (0: next). Whole
    buckets are counted by their head's rank, its own bucket by arrival."""
    key = rank_key(state, strategy, now_ms, correction)
    mine = key(request)
    ahead = 0
    for tenant, priority, ids, _ in state.queues.get(request.model_id, ()):
        if (tenant, priority) == (request.tenant, request.priority):
            ahead += ids.index(request.request_id) if request.request_id in ids else len(ids)
        elif ids and key(state.requests[ids[0]]) < mine:
            ahead += len(ids)
    return ahead


DEFAULT_HOLD_MS = 10_000.0  # a grant's hold before any was measured


def _turns(state: ArbiterState, request: Request, strategy: Strategy) -> float:
    """How many grants of its model go before `request` is granted, itself included.

    Under QUEUE that is its position. Under the others, tenants waiting at its priority
    share the grants (by weight; equally under ROUND_ROBIN), so its own tenant's backlog
    ahead of it counts in full and the others' in proportion; every request waiting at a
    higher priority goes first."""
    higher, peers, mine = 0, {request.tenant}, 0
    for tenant, priority, ids, _ in state.queues.get(request.model_id, ()):
        if priority > request.priority:
            higher += len(ids)
        elif priority == request.priority:
            peers.add(tenant)
            if tenant == request.tenant:
                mine = ids.index(request.request_id) if request.request_id in ids else len(ids)
    if strategy is S.ROUND_ROBIN:
        share = 1 / len(peers)
    else:
        weights = {t: state.policy.weight(t) for t in peers}
        share = weights[request.tenant] / sum(weights.values())
    return higher + (mine + 1) / share


def wait_estimate_ms(state: ArbiterState, request: Request, ahead: int,
                     strategy: Strategy) -> int:
    """When the request should be granted: its turns (`_turns`, or `ahead` + 1 under QUEUE)
    at the rate grants of its model free up (slots / mean hold), plus the model's measured
    load time while it is cold."""
    model = state.models.get(request.model_id)
    mean = state.mean_hold_ms(request.model_id)
    if mean is None:
        means = [m for _, m in state.holds.values()]
        mean = sum(means) / len(means) if means else DEFAULT_HOLD_MS
    slots = model.slots if model is not None and model.slots else 1
    in_use = state.in_use.get(request.model_id, 0)
    if model is not None and model.slots and in_use < slots and not ahead:
        wait = 0.0
    else:
        turns = ahead + 1 if strategy is S.QUEUE else _turns(state, request, strategy)
        wait = turns * mean / slots
    if model is not None and not model.hot:
        wait += model.load_ms
    return int(wait)
