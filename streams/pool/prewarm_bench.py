"""Replay a trace three ways: LRU alone, prewarming with predictive eviction, Belady's MIN.

The pool is deliberately simple so the figures measure policy, not plumbing: a fixed number
of slots and a load that takes `load_ms`. A request is a *hit* when its model is loaded and
ready; otherwise it is a *cold start* (the model was absent, or still loading, so the
request waits). The baseline evicts the least recently used model and prewarms nothing.
The Pit's run prewarms and evicts by the rule of `streams/pool/eviction.py`, as the pool
decider does: idle (loaded) models only, least likely first by the engine's probabilities
as of its last decisions (what the pool's PredictionsRecorded holds), and a prewarm
displaces one only when its probability beats that model's. The engine hears about every
eviction, so a prewarm evicted before its request counts as wrong.

The engine is consulted after every request (workflow steps need that) and every `tick_ms`
in between (time-of-day predictions need that). Everything here is deterministic except
the latency measurement of `decide`, which reads a clock and changes no decision.

Figures (`bench_prewarm`; `bench_second_trace` adds the same with `_second_trace`):
* `pool_hit_rate`: hits / requests with prewarming, in the steady phase: after the first
  `warmup_ms` and outside `[shift, shift + shift_window_ms)`. `pool_hit_rate_lru` is the
  same for the baseline, `pool_hit_rate_optimal` for Belady's MIN (demand loads of
  `load_ms`, the same slots) and `pool_hit_rate_vs_optimal` ours over MIN's.
* `prewarm_accuracy`: correct / made over the whole trace (warm-up and shift included;
  decisions still pending at the end count as wrong).
* `prewarm_cold_start_reduction`: 1 - cold starts with / cold starts of the baseline,
  whole trace (`cold_starts_optimal`: MIN's).
* `prewarm_predict_ms`: p99 wall time of one `decide` call (all predictors, combination and
  bookkeeping) with the trace's 200 models.

The pool holds 50 of the 200 models by default. What prewarming can save is bounded by how
much of the miss stream is foreseeable: later workflow steps and timer calls are; a Zipf
tail request, the first step of a workflow run and a scheduled model's ad-hoc call are
random draws. Eviction that keeps the models the predictors expect (and lets a timer's
model go between its calls) recovers part of the rest. MIN knows every future request and
still misses 7,323 of the 47,393 (first calls, and the tail its 50 slots cannot hold), so
no policy comes near 0.5 of the baseline's 15,930 cold starts by eviction alone. Pass trace
knobs to see other workloads, e.g. `workflow_share`, `zipf_s`, `chain_max`, `periodic_jobs`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from streams.pool.eviction import belady_min, displacement, least_likely
from streams.pool.prewarm import HOUR_MS, MINUTE_MS, PrewarmEngine, PrewarmStats
from streams.pool.serverless_trace import generate_serverless_trace
from streams.pool.trace import DAY_MS, Request, generate_trace, trace_plan
from streams.stats import percentile


@dataclass
class Window:
    """Counts for one slice of the trace (for adaptation curves)."""
    start_ms: int
    requests: int = 0
    hits: int = 0
    cold_starts: int = 0
    made: int = 0
    correct: int = 0


@dataclass
class SimResult:
    requests: int
    hits: int
    cold_starts: int
    steady_requests: int
    steady_hits: int
    prewarm_loads: int
    stats: PrewarmStats | None
    windows: list[Window] = field(default_factory=list)
    decide_ns: list[int] = field(default_factory=list)

    @property
    def steady_hit_rate(self) -> float:
        return self.steady_hits / self.steady_requests if self.steady_requests else 0.0


class LruPool:
    """Fixed slots, loads that take `load_ms`, and one of two eviction rules.

    Without `likelihood`: least recently used out first, and a prewarm always evicts (the
    baseline). With it (a model's probability of a request soon, as the prewarm engine
    predicts it at a time): the rule of `streams/pool/eviction.py`, among the loaded
    models only, and a prewarm displaces one only when its gain beats the loss.
    """

    def __init__(self, capacity: int, load_ms: int,
                 on_evict: Callable[[str, int], None] | None = None,
                 likelihood: Callable[[int], Mapping[str, float]] | None = None) -> None:
        self.capacity, self.load_ms, self.on_evict = capacity, load_ms, on_evict
        self.likelihood = likelihood
        self.ready_at: OrderedDict[str, int] = OrderedDict()

    def request(self, model_id: str, at_ms: int) -> bool:
        """Serve one request; True on a hit. A miss starts the load."""
        ready = self.ready_at.get(model_id)
        if ready is None:
            self.load(model_id, at_ms)
            return False
        self.ready_at.move_to_end(model_id)
        return ready <= at_ms

    def load(self, model_id: str, at_ms: int) -> None:
        if self.likelihood is not None and len(self.ready_at) >= self.capacity:
            victim = self._victim(at_ms, self.likelihood(at_ms))
            if victim is not None:
                self._evict(victim[0], at_ms)
        self.ready_at[model_id] = at_ms + self.load_ms
        while len(self.ready_at) > self.capacity:
            self._evict(next(iter(self.ready_at)), at_ms)

    def prewarm(self, model_id: str, probability: float, at_ms: int) -> bool:
        """Load a predicted model; False when it may not displace anything."""
        if self.likelihood is not None and len(self.ready_at) >= self.capacity:
            victim = self._victim(at_ms, self.likelihood(at_ms))
            if victim is None or not displacement(model_id, probability, *victim).worth_it:
                return False
        self.load(model_id, at_ms)
        return True

    def _victim(self, at_ms: int, probability: Mapping[str, float]) -> tuple[str, float] | None:
        idle = [m for m, ready in self.ready_at.items() if ready <= at_ms]
        if not idle:
            return None
        victim = least_likely(idle, probability)[0]
        return victim, probability.get(victim, 0.0)

    def _evict(self, model_id: str, at_ms: int) -> None:
        del self.ready_at[model_id]
        if self.on_evict is not None:
            self.on_evict(model_id, at_ms)


def simulate(trace: Sequence[Request], *, capacity: int, load_ms: int,
             engine: PrewarmEngine | None = None, tick_ms: int = MINUTE_MS,
             steady: Callable[[int], bool] = lambda _: True,
             window_ms: int = 6 * HOUR_MS, timed: bool = False,
             predictive: bool = False) -> SimResult:
    """Replay `trace`; with `engine`, prewarm, and with `predictive` too, evict by its
    predictions (else LRU)."""
    recorded: dict[str, float] = {}  # as in the pool: the scores of the last decisions
    pool = LruPool(capacity, load_ms, engine.evicted if engine is not None else None,
                   (lambda _: recorded) if predictive else None)
    result = SimResult(0, 0, 0, 0, 0, 0, None)
    decide_ns = result.decide_ns
    windows: dict[int, Window] = {}

    def window(at_ms: int) -> Window:
        start = at_ms - at_ms % window_ms
        return windows.setdefault(start, Window(start))

    def prewarm(now_ms: int) -> None:
        assert engine is not None
        before = time.perf_counter_ns() if timed else 0
        decisions = engine.decide(now_ms, pool.ready_at)
        if timed:
            decide_ns.append(time.perf_counter_ns() - before)
        if decisions and predictive:
            recorded.clear()
            recorded.update(engine.probabilities(now_ms))
        for decision in decisions:
            if not pool.prewarm(decision.model_id, decision.probability, now_ms):
                engine.skipped(decision.model_id)
                continue
            result.prewarm_loads += 1
            window(now_ms).made += 1

    next_tick = 0
    for request in trace:
        if engine is not None:
            while next_tick < request.at_ms:
                prewarm(next_tick)
                next_tick += tick_ms
            correct_before = engine.stats().correct_predictions
        hit = pool.request(request.model_id, request.at_ms)
        slot = window(request.at_ms)
        slot.requests += 1
        result.requests += 1
        result.hits += hit
        result.cold_starts += not hit
        slot.hits += hit
        slot.cold_starts += not hit
        if steady(request.at_ms):
            result.steady_requests += 1
            result.steady_hits += hit
        if engine is not None:
            engine.observe(request.model_id, request.at_ms, request.workflow_id)
            slot.correct += engine.stats().correct_predictions - correct_before
            prewarm(request.at_ms)
    if engine is not None:
        result.stats = engine.stats()
    result.windows = [windows[s] for s in sorted(windows)]
    return result


def bench_prewarm(seed: int = 7, *, capacity: int = 50, load_ms: int = 10_000,
                  horizon_ms: int = 10 * MINUTE_MS, threshold: float = 0.6,
                  warmup_ms: int = DAY_MS, shift_window_ms: int = 6 * HOUR_MS,
                  **trace_knobs: object) -> dict[str, float]:
    """The prewarming figures on the seeded trace (see the module docstring)."""
    plan = trace_plan(seed, **trace_knobs)
    trace = generate_trace(seed, **trace_knobs)  # type: ignore[arg-type]
    shift = plan.shift_ms

    def steady(at_ms: int) -> bool:
        return at_ms >= warmup_ms and not shift <= at_ms < shift + shift_window_ms

    figures = replay(trace, steady, capacity=capacity, load_ms=load_ms,
                     horizon_ms=horizon_ms, threshold=threshold)
    return {**figures, "requests": len(trace), "pool_capacity": capacity}


def replay(trace: Sequence[Request], steady: Callable[[int], bool], *, capacity: int,
           load_ms: int, horizon_ms: int, threshold: float) -> dict[str, float]:
    """One trace three ways: LRU alone (the baseline), prewarming with predictive eviction
    (the Pit's rules), and Belady's MIN (the ceiling: `streams/pool/eviction.py`)."""
    base = simulate(trace, capacity=capacity, load_ms=load_ms, steady=steady)
    engine = PrewarmEngine(horizon_ms=horizon_ms, load_ms=load_ms, threshold=threshold)
    warm = simulate(trace, capacity=capacity, load_ms=load_ms, engine=engine, steady=steady,
                    timed=True, predictive=True)
    assert warm.stats is not None
    stats = warm.stats
    best = belady_min(trace, capacity, load_ms)
    best_steady = [hit for request, hit in zip(trace, best, strict=True) if steady(request.at_ms)]
    optimal = sum(best_steady) / len(best_steady)
    return {
        "pool_hit_rate": round(warm.steady_hit_rate, 4),
        "pool_hit_rate_lru": round(base.steady_hit_rate, 4),
        "pool_hit_rate_optimal": round(optimal, 4),
        "pool_hit_rate_vs_optimal": round(warm.steady_hit_rate / optimal, 4),
        "prewarm_accuracy": round(stats.accuracy, 4),
        "prewarm_cold_start_reduction": round(1 - warm.cold_starts / base.cold_starts, 4),
        "prewarm_predict_ms": round(percentile(warm.decide_ns, 0.99) / 1e6, 4),
        "prewarm_predictions_made": stats.predictions_made,
        "prewarm_correct_predictions": stats.correct_predictions,
        "prewarm_cold_starts_avoided": stats.cold_starts_avoided,
        "cold_starts_without": base.cold_starts,
        "cold_starts_with": warm.cold_starts,
        "cold_starts_optimal": len(best) - sum(best),
    }


def bench_second_trace(seed: int = 2019, *, capacity: int = 50, load_ms: int = 10_000,
                       horizon_ms: int = 10 * MINUTE_MS, threshold: float = 0.6,
                       warmup_ms: int = DAY_MS, **trace_knobs: object) -> dict[str, float]:
    """The same replay on the serverless-shaped trace (`streams/pool/serverless_trace.py`),
    with the same pool and engine settings: steady after the first day."""
    trace = generate_serverless_trace(seed, **trace_knobs)
    figures = replay(trace, lambda at_ms: at_ms >= warmup_ms, capacity=capacity,
                     load_ms=load_ms, horizon_ms=horizon_ms, threshold=threshold)
    keys = ("pool_hit_rate", "pool_hit_rate_lru", "pool_hit_rate_optimal",
            "pool_hit_rate_vs_optimal", "prewarm_accuracy", "prewarm_cold_start_reduction",
            "cold_starts_without", "cold_starts_with", "cold_starts_optimal")
    return {f"{key}_second_trace": figures[key] for key in keys} | {
        "requests_second_trace": len(trace)}


if __name__ == "__main__":
    import json

    print(json.dumps(bench_prewarm() | bench_second_trace(), indent=2))
