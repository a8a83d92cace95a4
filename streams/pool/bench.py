"""Pool benchmarks: decider micro-benchmarks (pure, in process) - the cache-hit allocation
decision, and a miss on a full pool (the decision that must evict) - then the pool processor
and the allocation round trip through the embedded broker, and `bench_pool`, the pool's
`pit bench` part.

Target (seed M3.1.3): allocation on a cache hit < 100 µs with 1,000+ models; a miss that
evicts well under 1 ms.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import deque

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.broker import catalog_broker
from streams.commands import CommandClient
from streams.component import bench_note
from streams.config import Settings
from streams.decider import Message
from streams.errors import PitError
from streams.pool.client import PoolOps
from streams.pool.lifecycle import ModelState, RecordModelUsage, TransitionModel, TransitionReason
from streams.pool.pool import (
    POOL,
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
from streams.processor import Processor, run_processor
from streams.stats import percentile
from streams.throughput import decided_per_second

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
        assert host is not None  # allocated: placed on a host
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


async def bench_alloc_roundtrip(n: int = 1000, models: int = 1000) -> dict[str, float]:
    """`allocate_model` (PoolOps) on a Hot model, end to end through the embedded broker:
    AllocateModel -> pool processor -> outcome on pit.results and ModelAllocated on
    pit.pool.events -> client; then the release. 1,000 registered, Hot models."""
    with catalog_broker() as broker:
        settings = Settings(bootstrap_servers=broker.bootstrap_servers)
        processor = Processor(POOL, Codec(EmbeddedRegistry()))
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_processor(processor, settings, None, stop, ready))
        await ready.wait()
        latencies = []
        async with CommandClient(settings, "bench", deciders=(POOL,)) as client:
            pool = PoolOps(client)
            bench_note(f"registering {models:,} models and loading them (reported as a host would)")
            await pool.register_host("bench-host", models * 100, models)
            for m in range(models):
                await client.publish(RegisterModel(f"m-{m}", f"python:bench:m{m}", 100, 10))
                await client.publish(TransitionModel(f"m-{m}", ModelState.WARMING,
                                                     TransitionReason.USER_REQUEST))
                await client.publish(ReportModelLoaded("bench-host", f"m-{m}", 10, 100))
            await client.send(RecordModelUsage(f"m-{models - 1}"))  # all decided by now
            for i in range(n + 50):
                started = time.perf_counter()
                allocation = await pool.allocate_model(f"m-{i % models}", "bench")
                if i >= 50:  # the first ones warm connections and caches
                    latencies.append((time.perf_counter() - started) * 1000)
                if not allocation.cache_hit:
                    raise PitError(f"allocation round trip bench: {allocation} was a miss")
                await pool.release_model(allocation.request_id)
        stop.set()
        await task
        return {"pool_alloc_roundtrip_p50_ms": round(statistics.median(latencies), 2),
                "pool_alloc_roundtrip_p99_ms": round(percentile(latencies, 0.99), 2)}


async def bench_pool_processor(n: int = 40_000, models: int = 1000) -> dict[str, float]:
    """Pool commands decided per second through the embedded broker. A pool is one entity on
    one partition, so this is the ceiling of one pool: allocations and releases of 1,000 Hot
    models, decided, produced and committed like any command."""
    codec = Codec(EmbeddedRegistry())
    commands: list = [RegisterHost("bench-host", models * 100, models)]
    for m in range(models):
        commands += [RegisterModel(f"m-{m}", f"python:bench:m{m}", 100, 10),
                     TransitionModel(f"m-{m}", ModelState.WARMING, TransitionReason.USER_REQUEST),
                     ReportModelLoaded("bench-host", f"m-{m}", 10, 100)]
    for i in range(n // 2):
        commands += [AllocateModel(f"r-{i}", f"m-{i % models}", "bench"), ReleaseModel(f"r-{i}")]
    per_s, processor = await decided_per_second(POOL, codec, commands, archive=False)
    if processor.state("default").stats.hits != n // 2:
        raise PitError("pool processor bench: not every allocation was a cache hit")
    return {"pool_processor_commands_per_s": round(per_s)}


async def bench_pool(settings: Settings) -> dict[str, float]:
    """The pool decider in process, the allocation round trip through the broker,
    prewarming and eviction on the seeded trace and on the serverless-shaped one, lookahead
    prewarming on the seeded workflow trace, and host health checks on a real model."""
    from streams.pool.lookahead_bench import bench_lookahead
    from streams.pool.prewarm_bench import bench_prewarm, bench_second_trace

    figures = bench_allocation_hit()
    bench_note(f"pool allocation hit: p99 {figures['pool_alloc_hit_p99_us']} µs")
    figures |= bench_allocation_miss()
    bench_note("pool allocation miss that evicts:"
               f" p99 {figures['pool_alloc_miss_evict_p99_us']} µs")
    figures |= await bench_pool_processor()
    figures |= await bench_alloc_roundtrip()
    bench_note(f"allocation round trip: p50 {figures['pool_alloc_roundtrip_p50_ms']} ms,"
               f" p99 {figures['pool_alloc_roundtrip_p99_ms']} ms")
    bench_note("replaying the seeded 4-day trace: LRU, prewarming with predictive eviction,"
               " Belady's MIN")
    figures |= await asyncio.to_thread(bench_prewarm)
    bench_note(f"hit rate {figures['pool_hit_rate']} ({figures['pool_hit_rate_vs_optimal']}"
               f" of MIN's {figures['pool_hit_rate_optimal']}), cold starts"
               f" -{figures['prewarm_cold_start_reduction']:.0%}")
    bench_note("replaying the serverless-shaped second trace the same three ways")
    figures |= await asyncio.to_thread(bench_second_trace)
    bench_note("replaying the seeded workflow trace with and without lookahead prewarming")
    figures |= await asyncio.to_thread(bench_lookahead)
    bench_note("health checks on a real (npz) model: detection, false positives, overhead")
    figures |= await asyncio.to_thread(bench_health)
    return figures


def bench_health() -> dict[str, float]:
    from streams.pool.health import (
        measure_detection,
        measure_false_positives,
        measure_overhead,
    )

    return measure_detection() | measure_false_positives() | measure_overhead()
