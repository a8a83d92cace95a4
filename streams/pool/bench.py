"""Pool decider micro-benchmarks (pure, in process): the cache-hit allocation decision, and
a miss on a full pool (the decision that must evict).

Target (seed M3.1.3): allocation on a cache hit < 100 µs with 1,000+ models; a miss that
evicts well under 1 ms.
"""

from __future__ import annotations

import random
import time
from collections import deque

from streams.decider import Message
from streams.pool.pool import (
    AllocateModel,
    ModelEvicted,
    PoolState,
    RegisterHost,
    RegisterModel,
    ReleaseModel,
    ReportModelLoaded,
    ReportModelUnloaded,
    decide,
    evolve,
    initial_state,
)
from streams.stats import percentile

T0 = 1_700_000_000_000


def _apply(state: PoolState, command: Message, now_ms: int) -> PoolState:
    for event in decide(state, command, now_ms):
        state = evolve(state, event, now_ms)
    return state


def hot_pool(models: int = 1000, hosts: int = 10) -> PoolState:
    """A pool where every model is Hot, spread over the hosts (all released, so idle)."""
    state = initial_state("default")
    per_host = -(-models // hosts)
    for h in range(hosts):
        state = _apply(state, RegisterHost(f"host-{h}", per_host * 100, per_host), T0)
    for m in range(models):
        state = _apply(state, RegisterModel(f"model-{m}", f"py://model-{m}", 100, 50), T0)
    for m in range(models):
        model_id = f"model-{m}"
        state = _apply(state, AllocateModel(f"warm-{m}", model_id, "bench"), T0)
        host = state.models[model_id].host
        state = _apply(state, ReportModelLoaded(host, model_id, 50, 100), T0)
        state = _apply(state, ReleaseModel(f"warm-{m}"), T0)
    return state


def bench_allocation_hit(models: int = 1000, hosts: int = 10, samples: int = 20_000,
                         seed: int = 7) -> dict[str, float]:
    """p99 of `decide(AllocateModel)` on a Hot model, and of applying what it decided."""
    state = hot_pool(models, hosts)
    rng = random.Random(seed)
    model_ids = [f"model-{rng.randrange(models)}" for _ in range(samples)]
    decide_us: list[float] = []
    evolve_us: list[float] = []
    clock = time.perf_counter_ns
    for i, model_id in enumerate(model_ids):
        command = AllocateModel(f"req-{i}", model_id, "bench")
        started = clock()
        events = decide(state, command, T0 + i)
        decided = clock()
        for event in events:
            state = evolve(state, event, T0 + i)  # allocations accumulate: a busy pool
        decide_us.append((decided - started) / 1000)
        evolve_us.append((clock() - decided) / 1000)
    assert state.stats.hits == samples, "every allocation must have been a cache hit"
    return {
        "pool_alloc_hit_p99_us": round(percentile(decide_us, 0.99), 2),
        "pool_alloc_hit_p50_us": round(percentile(decide_us, 0.50), 2),
        "pool_alloc_hit_evolve_p99_us": round(percentile(evolve_us, 0.99), 2),
    }


def bench_allocation_miss(models: int = 1000, hosts: int = 10, samples: int = 1000,
                          spare: int = 20, seed: int = 7) -> dict[str, float]:
    """p99 of `decide(AllocateModel)` on a Cold model when every host is full, so the
    decision must evict. After each one the hosts do their work (the victim unloads, the
    model loads, the request is released), so the pool stays full and the victim becomes
    the next Cold candidate."""
    state = hot_pool(models, hosts)
    cold = [f"spare-{i}" for i in range(spare)]
    for model_id in cold:
        state = _apply(state, RegisterModel(model_id, f"py://{model_id}", 100, 50), T0)
    rng = random.Random(seed)
    rng.shuffle(cold)
    waiting = deque(cold)
    decide_us: list[float] = []
    clock = time.perf_counter_ns
    for i in range(samples):
        now, model_id, request_id = T0 + i, waiting.popleft(), f"miss-{i}"
        started = clock()
        events = decide(state, AllocateModel(request_id, model_id, "bench"), now)
        decide_us.append((clock() - started) / 1000)
        victims = [e for e in events if isinstance(e, ModelEvicted)]
        assert len(victims) == 1, "every miss must evict exactly one model"
        for event in events:
            state = evolve(state, event, now)
        host = victims[0].host_id
        state = _apply(state, ReportModelUnloaded(host, victims[0].model_id), now)
        state = _apply(state, ReportModelLoaded(host, model_id, 50, 100), now)
        state = _apply(state, ReleaseModel(request_id), now)
        waiting.append(victims[0].model_id)
    assert state.stats.evictions == samples
    return {
        "pool_alloc_miss_evict_p99_us": round(percentile(decide_us, 0.99), 2),
        "pool_alloc_miss_evict_p50_us": round(percentile(decide_us, 0.50), 2),
    }


if __name__ == "__main__":
    print(bench_allocation_hit())
    print(bench_allocation_miss())
