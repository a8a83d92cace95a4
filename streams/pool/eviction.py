"""Which model leaves when the pool is full (issue 15): the pure rule, and its ceiling.

Pure code, as the deciders are: the inputs are the eviction candidates and the predicted
probabilities the caller holds (in the pool decider, the prewarmer's scores folded from the
log; in the bench, the same engine's), so the same log gives the same choices.

**The rule.** Evict the idle model least likely to be requested soon; ties (most often:
no predictor gives either model any chance) go to the least recently used. LRU guesses
the next request from the last one alone; the predictors also know the models a timer, a
workflow step or the hour of the day is about to call, which LRU evicts just before
their call. Only idle models (loaded, no allocation) are candidates: a busy or loading one
is never passed in.

**Prewarming may displace.** A prewarm that finds no room evicts the least likely idle
model only if its own probability is higher than that model's: the expected cold starts
avoided (the gain) must beat the expected cold starts caused (the loss), both within the
same horizon. Without displacement a full pool, the usual case, could never be prewarmed;
with it unconditionally (as LRU prewarming does), a guess could push out a sure thing.

**The ceiling.** `belady_min` is the offline optimum the rule is measured against.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from streams.pool.trace import Request


def least_likely(idle: Iterable[str], probability: Mapping[str, float]) -> list[str]:
    """`idle` (least recently used first) in eviction order: least likely to be requested
    first, then least recently used. A model without a prediction counts as 0."""
    order = list(idle)
    rank = {model: i for i, model in enumerate(order)}
    return sorted(order, key=lambda m: (probability.get(m, 0.0), rank[m]))


@dataclass(frozen=True)
class Displacement:
    """A prewarm's verdict on the idle model it would push out."""
    model_id: str
    gain: float         # the prewarmed model's probability of a request soon
    victim: str
    loss: float         # the victim's
    reason: str

    @property
    def worth_it(self) -> bool:
        return self.gain > self.loss


def displacement(model_id: str, gain: float, victim: str, loss: float) -> Displacement:
    """Whether prewarming `model_id` may evict `victim` (the least likely idle model)."""
    verdict = "beats" if gain > loss else "does not beat"
    reason = (f"prewarm of {model_id}: predicted gain {gain:.3f} {verdict} the loss"
              f" {loss:.3f} of evicting {victim}")
    return Displacement(model_id, gain, victim, loss, reason)


def belady_min(trace: Sequence[Request], capacity: int, load_ms: int) -> list[bool]:
    """Hit or miss per request under Belady's MIN: on a miss the model loads (taking
    `load_ms`; requests before it is ready are misses too) and, if the pool is over
    `capacity`, the model whose next *useful* request is farthest away leaves (possibly
    the one just loaded: it still serves the request that loaded it). Useful: at or after
    its load finishes; a request that comes while it is loading misses whatever is kept,
    and counting it would keep a loading model over a ready one (a delayed hit).

    MIN fetches on demand only. Offline, fetching ahead is unbounded: a clairvoyant
    prefetcher loads every model `load_ms` before its request and misses nothing, a
    ceiling that says nothing. So MIN bounds eviction, and prewarming may beat it.
    """
    indices: dict[str, list[int]] = {}
    for i, request in enumerate(trace):
        indices.setdefault(request.model_id, []).append(i)
    times = {m: [trace[i].at_ms for i in idx] for m, idx in indices.items()}
    never = len(trace)

    def next_useful(model: str, after: int, ready_ms: int) -> int:
        idx = indices[model]
        k = max(bisect_right(idx, after), bisect_left(times[model], ready_ms))
        return idx[k] if k < len(idx) else never

    ready: dict[str, int] = {}  # resident model -> when its load finishes
    hits = []
    for i, request in enumerate(trace):
        model, at = request.model_id, request.at_ms
        loaded = ready.get(model)
        hits.append(loaded is not None and loaded <= at)
        if loaded is None:
            ready[model] = at + load_ms
        if len(ready) > capacity:
            victim = max(ready, key=lambda m: (next_useful(m, i, ready[m]), m))
            del ready[victim]
    return hits
