"""`pit bench`: measured figures, one JSON object. Benchmarks report; they do not assert.

Each component adds a function to BENCHES; `pit bench <component>` runs one of them.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.broker import EmbeddedBroker
from streams.client import PitClient
from streams.config import Settings
from streams.errors import PitError
from streams.kafka import make_producer, partitions_of, produce_all, start_consumer
from streams.pool.bench import percentile
from streams.pool.lifecycle import (
    LIFECYCLE,
    ModelState,
    RecordModelUsage,
    TransitionModel,
    TransitionReason,
)
from streams.pool.pool import RegisterModel
from streams.pool.topics import POOL_COMMANDS
from streams.processor import Output, Processor, run_processor
from streams.topics import RESULTS, load_catalog


def _say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def _sample_event(codec: Codec) -> tuple[str, dict]:
    envelope = {"event_id": str(uuid.uuid4()), "event_type": "ModelTransitioned",
                "entity_key": "model-1", "sequence": 7, "correlation_id": "c", "causation_id": "c",
                "occurred_at": 1_700_000_000_000, "producer": "pool-processor"}
    return "pit.pool.ModelTransitioned", {
        "envelope": envelope, "model_id": "model-1", "from_state": "Hot", "to_state": "Cooling",
        "reason": "ScheduledCooldown", "time_in_previous_ms": 1234, "metadata": {}}


def bench_codec(n: int = 50_000) -> dict[str, float]:
    codec = Codec(EmbeddedRegistry())
    name, record = _sample_event(codec)
    started = time.perf_counter()
    for _ in range(n):
        data = codec.encode(name, record)
    encode_us = (time.perf_counter() - started) / n * 1e6
    started = time.perf_counter()
    for _ in range(n):
        codec.decode(data)
    decode_us = (time.perf_counter() - started) / n * 1e6
    return {"codec_encode_us": round(encode_us, 2), "codec_decode_us": round(decode_us, 2)}


def lifecycle_commands(codec: Codec, n: int, models: int = 1000) -> list[Output]:
    """n valid lifecycle commands: models cycle Cold -> Warming -> Hot -> Cooling -> Cold."""
    cycle = [ModelState.WARMING, ModelState.HOT, ModelState.COOLING, ModelState.COLD]
    catalog = load_catalog()
    partitions = catalog[POOL_COMMANDS].partitions
    outputs = []
    for i in range(n):
        model, step = f"model-{i % models}", (i // models) % len(cycle)
        meta = {"command_id": f"bench-{i}", "issued_at": 0, "issued_by": "bench",
                "correlation_id": None}
        value = codec.encode(TransitionModel.avro_name, {
            "meta": meta, "model_id": model, "to_state": cycle[step],
            "reason": TransitionReason.USER_REQUEST, "metadata": {}})
        outputs.append(Output(POOL_COMMANDS, (i % models) % partitions, model.encode(), value,
                              int(time.time() * 1000)))
    return outputs


async def _results_count(settings: Settings) -> int:
    from aiokafka import TopicPartition

    consumer = await start_consumer(settings)
    try:
        tps = [TopicPartition(RESULTS, p) for p in await partitions_of(consumer, RESULTS)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await consumer.stop()


async def bench_processor(n: int = 60_000) -> dict[str, float]:
    """Commands decided per second through the embedded broker, end to end: consumed,
    decided, events and outcomes produced and acknowledged, offsets committed."""
    with EmbeddedBroker(1) as broker:
        broker.apply(load_catalog())
        settings = Settings(bootstrap_servers=broker.bootstrap_servers)
        codec = Codec(EmbeddedRegistry())
        _say(f"producing {n:,} lifecycle commands")
        await produce_all(make_producer(settings, **{"linger.ms": 20}),
                          lifecycle_commands(codec, n))
        processor = Processor(LIFECYCLE, codec)
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_processor(processor, settings, None, stop, ready))
        await ready.wait()
        started = time.perf_counter()
        while await _results_count(settings) < n:
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        stop.set()
        await task
        _say(f"processor: {n:,} commands in {elapsed:.2f}s")
        return {"processor_events_per_s": round(n / elapsed)}


async def bench_roundtrip(n: int = 1000) -> dict[str, float]:
    """Client -> command topic -> processor -> results topic -> client, one at a time."""
    with EmbeddedBroker(1) as broker:
        broker.apply(load_catalog())
        settings = Settings(bootstrap_servers=broker.bootstrap_servers)
        processor = Processor(LIFECYCLE, Codec(EmbeddedRegistry()))
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_processor(processor, settings, None, stop, ready))
        await ready.wait()
        latencies = []
        async with PitClient(settings) as client:
            for i in range(n + 50):
                model = f"rt-{i % 100}"
                target = [ModelState.WARMING, ModelState.HOT, ModelState.COOLING,
                          ModelState.COLD][(i // 100) % 4]
                started = time.perf_counter()
                outcome = await client.pool.transition(model, target)
                if i >= 50:  # the first commands warm connections and caches
                    latencies.append((time.perf_counter() - started) * 1000)
                if not outcome.accepted:
                    raise PitError(f"round trip bench: {outcome.line()}")
        stop.set()
        await task
        return {"roundtrip_p50_ms": round(statistics.median(latencies), 2),
                "roundtrip_p99_ms": round(percentile(latencies, 0.99), 2)}


async def bench_alloc_roundtrip(n: int = 1000, models: int = 1000) -> dict[str, float]:
    """`PitClient.allocate_model` on a Hot model, end to end through the embedded broker:
    AllocateModel -> pool processor -> outcome on pit.results and ModelAllocated on
    pit.pool.events -> client; then the release. 1,000 registered, Hot models."""
    from streams.pool.pool import POOL, ReportModelLoaded

    with EmbeddedBroker(1) as broker:
        broker.apply(load_catalog())
        settings = Settings(bootstrap_servers=broker.bootstrap_servers)
        processor = Processor(POOL, Codec(EmbeddedRegistry()))
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_processor(processor, settings, None, stop, ready))
        await ready.wait()
        latencies = []
        async with PitClient(settings, issued_by="bench") as client:
            _say(f"registering {models:,} models and loading them (reported as a host would)")
            await client.pool.register_host("bench-host", models * 100, models)
            for m in range(models):
                await client.publish(RegisterModel(f"m-{m}", f"python:bench:m{m}", 100, 10))
                await client.publish(TransitionModel(f"m-{m}", ModelState.WARMING,
                                                     TransitionReason.USER_REQUEST))
                await client.publish(ReportModelLoaded("bench-host", f"m-{m}", 10, 100))
            await client.send(RecordModelUsage(f"m-{models - 1}"))  # all decided by now
            for i in range(n + 50):
                started = time.perf_counter()
                allocation = await client.pool.allocate_model(f"m-{i % models}", "bench")
                if i >= 50:  # the first ones warm connections and caches
                    latencies.append((time.perf_counter() - started) * 1000)
                if not allocation.cache_hit:
                    raise PitError(f"allocation round trip bench: {allocation} was a miss")
                await client.pool.release_model(allocation.request_id)
        stop.set()
        await task
        return {"pool_alloc_roundtrip_p50_ms": round(statistics.median(latencies), 2),
                "pool_alloc_roundtrip_p99_ms": round(percentile(latencies, 0.99), 2)}


async def bench_pool_processor(n: int = 40_000, models: int = 1000) -> dict[str, float]:
    """Pool commands decided per second through the embedded broker. A pool is one entity on
    one partition, so this is the ceiling of one pool: allocations and releases of 1,000 Hot
    models, decided, produced and committed like any command."""
    from streams.decider import to_record
    from streams.pool.pool import POOL, AllocateModel, RegisterHost, ReleaseModel, ReportModelLoaded

    codec = Codec(EmbeddedRegistry())
    commands: list = [RegisterHost("bench-host", models * 100, models)]
    for m in range(models):
        commands += [RegisterModel(f"m-{m}", f"python:bench:m{m}", 100, 10),
                     TransitionModel(f"m-{m}", ModelState.WARMING, TransitionReason.USER_REQUEST),
                     ReportModelLoaded("bench-host", f"m-{m}", 10, 100)]
    for i in range(n // 2):
        commands += [AllocateModel(f"r-{i}", f"m-{i % models}", "bench"), ReleaseModel(f"r-{i}")]
    now = int(time.time() * 1000)
    outputs = [Output(POOL_COMMANDS, 0, b"default", codec.encode(command.avro_name, {
        "meta": {"command_id": f"pool-bench-{i}", "issued_at": now, "issued_by": "bench",
                 "correlation_id": None}, **to_record(command)}), now)
        for i, command in enumerate(commands)]
    with EmbeddedBroker(1) as broker:
        broker.apply(load_catalog())
        settings = Settings(bootstrap_servers=broker.bootstrap_servers)
        _say(f"producing {len(outputs):,} pool commands onto one partition")
        await produce_all(make_producer(settings, **{"linger.ms": 20}), outputs)
        processor = Processor(POOL, codec)
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_processor(processor, settings, None, stop, ready))
        await ready.wait()
        started = time.perf_counter()
        while await _results_count(settings) < len(outputs):
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        stop.set()
        await task
        if processor.state("default").stats.hits != n // 2:
            raise PitError("pool processor bench: not every allocation was a cache hit")
        _say(f"pool processor: {len(outputs):,} commands in {elapsed:.2f}s")
        return {"pool_processor_commands_per_s": round(len(outputs) / elapsed)}


async def bench_backbone(settings: Settings) -> dict[str, float]:
    from projections.bench import bench_projections

    figures = bench_codec()
    _say(f"codec: {figures}")
    figures |= await bench_processor()
    figures |= await bench_roundtrip()
    _say(f"round trip: p50 {figures['roundtrip_p50_ms']} ms, p99 {figures['roundtrip_p99_ms']} ms")
    with tempfile.TemporaryDirectory() as scratch:
        figures |= await bench_projections(Path(scratch), settings)
    return figures


async def bench_pool(settings: Settings) -> dict[str, float]:
    """The pool decider in process, the allocation round trip through the broker,
    prewarming on the seeded trace, lookahead prewarming on the seeded workflow trace, and
    host health checks on a real model."""
    from streams.pool.bench import bench_allocation_hit, bench_allocation_miss
    from streams.pool.lookahead_bench import bench_lookahead
    from streams.pool.prewarm_bench import bench_prewarm

    figures = bench_allocation_hit()
    _say(f"pool allocation hit: p99 {figures['pool_alloc_hit_p99_us']} µs")
    figures |= bench_allocation_miss()
    _say(f"pool allocation miss that evicts: p99 {figures['pool_alloc_miss_evict_p99_us']} µs")
    figures |= await bench_pool_processor()
    figures |= await bench_alloc_roundtrip()
    _say(f"allocation round trip: p50 {figures['pool_alloc_roundtrip_p50_ms']} ms,"
         f" p99 {figures['pool_alloc_roundtrip_p99_ms']} ms")
    _say("replaying the seeded 4-day trace with and without prewarming")
    figures |= await asyncio.to_thread(bench_prewarm)
    _say("replaying the seeded workflow trace with and without lookahead prewarming")
    figures |= await asyncio.to_thread(bench_lookahead)
    _say("health checks on a real (npz) model: detection, false positives, overhead")
    figures |= await asyncio.to_thread(bench_health)
    return figures


def bench_health() -> dict[str, float]:
    from streams.pool.health import (
        measure_detection,
        measure_false_positives,
        measure_overhead,
    )

    return measure_detection() | measure_false_positives() | measure_overhead()


async def bench_dag(settings: Settings) -> dict[str, float]:
    """The execution decider in process on a 10,000-node DAG, then workflows end to end
    through the embedded broker (streams/dag/bench.py)."""
    from streams.dag.bench import (
        bench_processor_restore,
        bench_resume,
        bench_schedule,
        bench_throughput,
    )

    figures = await asyncio.to_thread(bench_schedule)
    _say(f"dag scheduling: p99 {figures['dag_schedule_p99_ms']} ms, checkpoint"
         f" {figures['dag_checkpoint_ms']} ms at 10,000 nodes")
    figures |= await asyncio.to_thread(bench_processor_restore, Codec(EmbeddedRegistry()))
    for label in ("1k", "20k"):
        _say(f"dag processor restore after {label} finished nodes"
             f" ({figures[f'dag_restore_history_events_{label}']} events):"
             f" {figures[f'dag_restore_ms_{label}']} ms from the checkpoint topic,"
             f" {figures[f'dag_restore_full_ms_{label}']} ms reading it all")
    with tempfile.TemporaryDirectory() as scratch:
        figures |= await bench_throughput(Path(scratch))
        _say(f"dag end to end: {figures['dag_nodes_per_s_wide']} nodes/s wide,"
             f" {figures['dag_nodes_per_s_deep']} deep, 10,000 nodes in"
             f" {figures['dag_10k_wall_s']} s")
        figures |= await bench_resume(Path(scratch))
        _say(f"dag resume after a crash: {figures['dag_resume_s']} s")
    return figures


async def bench_artifacts(settings: Settings) -> dict[str, float]:
    """Storage in process on the local backend, a 1 GiB streamed round trip in a subprocess,
    encryption, deduplication on a seeded corpus, and search over 100,000 artifacts on the
    embedded backend (streams/artifacts/bench.py, projections/search/bench.py)."""
    from projections.search.bench import search_p99_100k
    from streams.artifacts.bench import (
        dedup_savings,
        encrypt_overhead,
        store_retrieve_64k,
        stream_1g,
    )

    with tempfile.TemporaryDirectory(prefix="pit-artifacts-bench-") as scratch:
        figures = await asyncio.to_thread(store_retrieve_64k, Path(scratch) / "small")
        _say(f"artifacts 64 KiB: store {figures['artifact_store_64k_ms']} ms, retrieve"
             f" {figures['artifact_retrieve_64k_ms']} ms")
        figures |= await asyncio.to_thread(stream_1g, Path(scratch) / "large")
        _say(f"artifacts 1 GiB streamed: {figures['artifact_stream_1g_mib_per_s']} MiB/s,"
             f" peak RSS {figures['artifact_stream_1g_peak_rss_mib']} MiB")
        figures |= await asyncio.to_thread(encrypt_overhead)
        figures |= await asyncio.to_thread(dedup_savings, Path(scratch) / "dedup")
        _say(f"artifacts: encryption {figures['encrypt_ms_per_mib']} ms/MiB, dedup savings"
             f" {figures['dedup_savings']}")
        figures |= await asyncio.to_thread(search_p99_100k, Path(scratch) / "search.db")
        _say(f"search over 100,000 artifacts: p99 {figures['search_p99_ms_100k']} ms")
    return figures


BENCHES: dict[str, Callable[[Settings], Awaitable[dict[str, float]]]] = {
    "backbone": bench_backbone,
    "pool": bench_pool,
    "dag": bench_dag,
    "artifacts": bench_artifacts,
}


async def run_bench(component: str, settings: Settings) -> dict[str, float]:
    if component != "all" and component not in BENCHES:
        raise PitError(f"unknown benchmark {component!r}; known: all, {', '.join(BENCHES)}")
    figures: dict[str, float] = {}
    for name, bench in BENCHES.items():
        if component in ("all", name):
            figures |= await bench(settings)
    return figures
