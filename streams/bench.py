"""`pit bench`: measured figures, one JSON object. Benchmarks report; they do not assert.

`backbone` measures the kernel; each component adds its parts in its descriptor's
`benches` (streams/component.py). `pit bench <name>` runs one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.archive import pending_engine
from streams.broker import catalog_broker
from streams.client import PitClient
from streams.component import Bench, PitFactory, bench_note
from streams.components import COMPONENTS, views
from streams.config import Settings
from streams.errors import PitError
from streams.kafka import (
    BUSY_FETCH_WAIT_MS,
    getmany_ready,
    make_producer,
    produce_all,
    start_consumer,
    stop_clients,
    topic_size,
)
from streams.pool.lifecycle import (
    LIFECYCLE,
    ModelState,
    TransitionModel,
    TransitionReason,
)
from streams.pool.topics import POOL_COMMANDS, POOL_EVENTS
from streams.processor import ArchiveFirst, Output, Processor, Unarchived, run_processor
from streams.sql import connect, create_tables
from streams.stats import percentile
from streams.topics import RESULTS, load_catalog

if TYPE_CHECKING:
    from streams.app import Stack


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


def _archive(scratch: str) -> Engine:
    """A SQLite archive as `pit up` keeps it on the embedded broker: processors run on it
    archive their events before publishing their outcomes."""
    engine = connect(f"sqlite:///{scratch}/archive.db")
    create_tables(engine)
    return engine


@contextlib.asynccontextmanager
async def commands_waiting(n: int) -> AsyncIterator[Settings]:
    """A fresh embedded broker holding `n` lifecycle commands (`lifecycle_commands`) on the
    pool's command topic, nothing read yet: what the processor benches start from."""
    with catalog_broker() as broker:
        settings = Settings(bootstrap_servers=broker.bootstrap_servers)
        bench_note(f"producing {n:,} lifecycle commands")
        await produce_all(make_producer(settings, **{"linger.ms": 20}),
                          lifecycle_commands(Codec(EmbeddedRegistry()), n))
        yield settings


@contextlib.asynccontextmanager
async def processor_running(settings: Settings) -> AsyncIterator[None]:
    """The pool's processor deciding on `settings`' broker as `pit up` runs it (an
    archive-first SQLite archive in a scratch directory), ready; stopped on exit."""
    with tempfile.TemporaryDirectory() as scratch:
        processor = Processor(LIFECYCLE, Codec(EmbeddedRegistry()))
        stop, ready = asyncio.Event(), asyncio.Event()
        engine = _archive(scratch)
        # No projector runs here: nothing would ever be archived to wait for
        durable = ArchiveFirst(engine, pending_engine(engine),
                               unarchived=Unarchived(limit=math.inf))
        task = asyncio.create_task(run_processor(processor, settings, engine, stop, ready,
                                                 archive_first=durable))
        await ready.wait()
        try:
            yield
        finally:
            stop.set()
            await task
            engine.dispose()
            durable.pending_db.dispose()


async def bench_processor(n: int = 60_000) -> dict[str, float]:
    """Commands decided per second through the embedded broker, end to end, as `pit up` runs
    the processor: consumed, decided, events produced and archived (SQLite), outcomes
    produced, everything acknowledged, offsets committed."""
    async with commands_waiting(n) as settings, processor_running(settings):
        started = time.perf_counter()
        while await topic_size(settings, RESULTS) < n:
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
    bench_note(f"processor: {n:,} commands in {elapsed:.2f}s")
    return {"processor_events_per_s": round(n / elapsed)}


PASS_THROUGH_GROUP = "bench.pass-through"


async def pass_through(settings: Settings, n: int) -> float:
    """The processor's loop with the decision taken out, over the first `n` records of the
    pool's command topic: read as `run_processor` reads them (a consumer group,
    `getmany_ready`), and for each one two records of its size written as the processor
    writes an event and an outcome - the events acknowledged first, then the outcomes, then
    the offsets committed. Returns the seconds from the first batch read to the last
    commit."""
    consumer = await start_consumer(settings, group_id=PASS_THROUGH_GROUP,
                                    auto_offset_reset="earliest",
                                    fetch_max_wait_ms=BUSY_FETCH_WAIT_MS,
                                    max_partition_fetch_bytes=4 << 20)
    consumer.subscribe([POOL_COMMANDS])
    producer = make_producer(settings)
    answered, started = 0, 0.0
    try:
        while answered < n:
            batch = await getmany_ready(consumer, 50, 5000)
            records = [m for messages in batch.values() for m in messages]
            if not records:
                continue
            started = started or time.perf_counter()
            for topic in (POOL_EVENTS, RESULTS):
                await produce_all(producer, [Output(topic, m.partition, m.key, m.value,
                                                    m.timestamp) for m in records])
            await consumer.commit()
            answered += len(records)
    finally:
        await stop_clients(consumer, producer, failed=False)
    return time.perf_counter() - started


async def bench_pass_through(n: int = 60_000) -> dict[str, float]:
    """The processor's ceiling on this broker and machine (`pass_through`): what is left of
    a command's cost without decoding, deciding, encoding or the archive write."""
    async with commands_waiting(n) as settings:
        elapsed = await pass_through(settings, n)
        bench_note(f"pass-through (the processor's loop, no decision): {n:,} commands in"
                   f" {elapsed:.2f}s")
        return {"processor_pass_through_per_s": round(n / elapsed)}


async def bench_roundtrip(n: int = 1000) -> dict[str, float]:
    """Client -> command topic -> processor -> results topic -> client, one at a time."""
    with catalog_broker() as broker:
        settings = Settings(bootstrap_servers=broker.bootstrap_servers)
        latencies = []
        async with processor_running(settings), PitClient(settings) as client:
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
        return {"roundtrip_p50_ms": round(statistics.median(latencies), 2),
                "roundtrip_p99_ms": round(percentile(latencies, 0.99), 2)}


async def bench_backbone(settings: Settings, _pit: PitFactory) -> dict[str, Any]:
    from projections.bench import bench_projections

    figures: dict[str, Any] = bench_codec()
    bench_note(f"codec: {figures}")
    figures |= await bench_processor()
    figures |= await bench_pass_through()
    figures["processor_vs_pass_through"] = round(
        figures["processor_events_per_s"] / figures["processor_pass_through_per_s"], 2)
    figures |= await bench_roundtrip()
    bench_note(f"round trip: p50 {figures['roundtrip_p50_ms']} ms,"
               f" p99 {figures['roundtrip_p99_ms']} ms")
    with tempfile.TemporaryDirectory() as scratch:
        figures |= await bench_projections(Path(scratch), views(settings), settings)
    return figures


def in_process_pit(data_dir: Path) -> Stack:
    """The `PitFactory` a bench is handed: `pit up` in this process on `data_dir`, not yet
    started, without the host monitor (a bench registers no model host); its projector in a
    process of its own, as `pit up`'s."""
    from streams.app import Stack

    return Stack(Settings(data_dir=data_dir), progress=False, without={"host-monitor"},
                 projector_process=True)


BENCHES: dict[str, Bench] = {
    "backbone": bench_backbone,
    **{name: bench for component in COMPONENTS for name, bench in component.benches.items()},
}


async def run_bench(component: str, settings: Settings) -> dict[str, Any]:
    if component != "all" and component not in BENCHES:
        raise PitError(f"unknown benchmark {component!r}; known: all, {', '.join(BENCHES)}")
    figures: dict[str, Any] = {}
    for name, bench in BENCHES.items():
        if component in ("all", name):
            figures |= await bench(settings, in_process_pit)
    return figures
