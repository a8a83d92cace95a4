"""Many concurrent allocations through the embedded broker, against real hosts (ModelHost
in process: HTTP, Kafka, loaders): no model is loaded twice, no allocation is lost, and the
pool never asks a host for more than its budget."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.app import Stack
from streams.client import PitClient
from streams.config import Settings
from streams.decider import from_record
from streams.history import read_topic
from streams.pool.errors import AllocationError
from streams.pool.host import ModelHost
from streams.pool.pool import (
    POOL,
    AllocationFailed,
    AllocationQueued,
    LoadRequested,
    ModelAllocated,
    ModelEvicted,
    ModelLoaded,
    ModelReleased,
    ModelUnloaded,
)
from streams.pool.topics import POOL_EVENTS

SENTIMENT = "python:streams.pool.examples:sentiment"


async def pool_log(stack: Stack) -> list:
    codec = Codec(EmbeddedRegistry())
    events = []
    for record in await read_topic(stack.settings, POOL_EVENTS, stack.engine):
        decoded = codec.decode(record.value)
        events.append(from_record(POOL.event_type(decoded.name), decoded.record))
    return events


@contextlib.asynccontextmanager
async def pool_with_hosts(tmp_path, *hosts: tuple[str, int, int]):
    async with Stack(Settings(data_dir=tmp_path), progress=False) as stack:
        running = []
        try:
            for host_id, memory_mb, capacity in hosts:
                running.append(await ModelHost(stack.settings, host_id, memory_mb, capacity,
                                               say=lambda _line: None).start())
            async with PitClient(stack.settings, issued_by="concurrency-test") as client:
                yield stack, client
        finally:
            for host in running:
                await host.close()


async def test_concurrent_allocations_load_each_model_once_and_lose_none(tmp_path) -> None:
    models = [f"m{i}" for i in range(6)]
    async with pool_with_hosts(tmp_path, ("h1", 1000, 4), ("h2", 1000, 4)) as (stack, client):
        for model_id in models:
            assert (await client.pool.register_model(model_id, SENTIMENT, 50, 5)).accepted
        rng = random.Random(3)
        wanted = [rng.choice(models) for _ in range(300)]  # the same and different models

        allocations = await asyncio.gather(*(
            client.pool.allocate_model(model_id, f"user-{i}", request_id=f"r{i}")
            for i, model_id in enumerate(wanted)))

        assert [a.model_id for a in allocations] == wanted
        assert len({a.request_id for a in allocations}) == len(wanted)
        replies = await asyncio.gather(*(client.pool.infer(a, "good fast service")
                                         for a in allocations[:20]))
        assert all(reply["label"] == "positive" for reply in replies)
        released = await asyncio.gather(*(client.pool.release_model(a.request_id)
                                          for a in allocations))
        assert all(outcome.accepted for outcome in released)

        log = await pool_log(stack)
        loads = Counter(e.model_id for e in log if isinstance(e, LoadRequested))
        assert loads == Counter({m: 1 for m in set(wanted)})  # no double load
        assert Counter(e.model_id for e in log if isinstance(e, ModelLoaded)) == loads
        granted = Counter(e.request_id for e in log if isinstance(e, ModelAllocated))
        assert granted == Counter({f"r{i}": 1 for i in range(len(wanted))})  # none lost
        assert not [e for e in log if isinstance(e, AllocationFailed)]
        assert len([e for e in log if isinstance(e, ModelReleased)]) == len(wanted)
        misses = len([e for e in log if isinstance(e, AllocationQueued)])
        hits = len([e for e in log if isinstance(e, ModelAllocated) and e.cache_hit])
        assert hits + misses == len(wanted) and misses >= len(loads)


async def test_concurrent_allocations_beyond_capacity_evict_only_idle_models(tmp_path) -> None:
    """One host holds two models; five models are wanted at once, in waves. Every request
    is either granted or refused with the pool's reason, and the host never holds more than
    it can: an allocated model is never evicted."""
    models = [f"big{i}" for i in range(5)]
    async with pool_with_hosts(tmp_path, ("solo", 200, 2)) as (stack, client):
        for model_id in models:
            assert (await client.pool.register_model(model_id, SENTIMENT, 100, 5)).accepted

        async def use(i: int, model_id: str) -> str:
            try:
                allocation = await client.pool.allocate_model(model_id, f"user-{i}",
                                                         request_id=f"w{i}")
            except AllocationError as refused:
                assert "cannot place" in str(refused) or "Cooling" in str(refused), refused
                return "refused"
            await asyncio.sleep(0.05)  # hold it a moment: the model is busy meanwhile
            assert (await client.pool.release_model(allocation.request_id)).accepted
            return "granted"

        results = []
        for wave in range(4):
            results += await asyncio.gather(*(use(wave * 10 + i, models[(wave + i) % 5])
                                              for i in range(10)))
        assert results.count("granted") >= 8

        log = await pool_log(stack)
        held: set[str] = set()
        allocated: Counter = Counter()
        for event in log:
            match event:
                case LoadRequested(model_id=m):
                    held.add(m)
                    assert len(held) <= 2, f"the host was asked to hold {sorted(held)}"
                case ModelUnloaded(model_id=m):
                    held.discard(m)
                case ModelAllocated(model_id=m):
                    allocated[m] += 1
                case ModelReleased(model_id=m) | AllocationFailed(model_id=m, in_flight=True):
                    allocated[m] -= 1
                case ModelEvicted(model_id=m):
                    assert allocated[m] == 0, f"{m} was evicted while allocated"
        assert any(isinstance(e, ModelEvicted) for e in log)  # the LRU really worked
