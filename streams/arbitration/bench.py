"""`pit bench arbitration`: the arbiter's figures (issue 12). Benchmarks report; they do not
assert.

* detection and resolution with 1,000 requests pending: `would_conflict` for one more
  request, and a whole decision on a release (who is next, the grant), timed one by one;
* a seeded contended trace in virtual time: four tenants of weights 1, 1, 2 and 4 share a
  model of 4 slots; every tenant asks for more than its share (b, c and d 1.5 times, a ten
  times), 5% of requests are BACKGROUND. From it: the fairness deviation and Gini over the
  last window of arrivals (120 s, all tenants backlogged), the longest BACKGROUND
  wait against the mean wait, and the wait estimates' error against the actual waits;
* requests decided per second through the processor and the embedded broker, as
  `pit up` runs it;
* the cost of arbitration on a Hot model's allocation: direct and arbitrated round trips,
  alternately, in one run.
"""

from __future__ import annotations

import heapq
import json
import random
import time
from typing import Any

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.arbitration import conflicts, fairness
from streams.arbitration.arbiter import (
    ARBITER,
    DescribeModel,
    ObserveModel,
    ReleaseRequest,
    RequestDecided,
    SetArbitrationPolicy,
    SubmitRequest,
)
from streams.arbitration.state import ArbiterState, Request
from streams.component import bench_note
from streams.config import Settings
from streams.decider import Decider, Message
from streams.errors import PitError
from streams.stats import percentile
from streams.throughput import decided_per_second

WEIGHTS = {"a": 1.0, "b": 1.0, "c": 2.0, "d": 4.0}
# What each asks, in multiples of its weight: all more than they are entitled to (so the
# shares measure the arbiter, not idle tenants), a ten times its share.
DEMAND = {"a": 10.0, "b": 1.5, "c": 3.0, "d": 6.0}


def _apply(state: ArbiterState, command: Message, now_ms: int) -> tuple[ArbiterState, list]:
    events = ARBITER.decide(state, command, now_ms)
    for event in events:
        state = ARBITER.evolve(state, event, now_ms)
    return state, list(events)


def _setup(slots: int = 4) -> ArbiterState:
    state = ARBITER.initial_state("default")
    policy = {"tenants": WEIGHTS, "fairness_window_s": 120, "max_queue": 100_000,
              "default_timeout_s": 0}
    for command in (SetArbitrationPolicy(json.dumps(policy)), DescribeModel("m", slots=slots),
                    ObserveModel("m", 1000, 3000, True)):
        state, _ = _apply(state, command, 0)
    return state


def _pending(n: int, seed: int = 1) -> tuple[ArbiterState, int]:
    """The arbiter with `n` requests waiting on a full model, at time `now`."""
    rng = random.Random(seed)
    state, now = _setup(slots=4), 1_000
    for i in range(4 + n):
        tenant = rng.choice(list(WEIGHTS))
        state, _ = _apply(state, SubmitRequest(f"r{i}", "m", tenant,
                                               rng.choice((-100, 0, 0, 100))), now)
        now += 1
    return state, now


def bench_decisions(pending: int = 1000, samples: int = 2000) -> dict[str, float]:
    state, now = _pending(pending)
    probe = Request("probe", "m", "b", 0, 0.5, (), "", "", 0, now, state.seq)
    detect = []
    for _ in range(samples):
        started = time.perf_counter()
        conflicts.would_conflict(state, probe, now)
        detect.append((time.perf_counter() - started) * 1000)
    resolve = []
    granted = [r.request_id for r in state.requests.values() if r.status == "granted"]
    for i in range(samples):
        holder = granted.pop(0)
        started = time.perf_counter()
        events = ARBITER.decide(state, ReleaseRequest(holder), now)
        resolve.append((time.perf_counter() - started) * 1000)
        for event in events:
            state = ARBITER.evolve(state, event, now)
        granted += [e.request_id for e in events
                    if isinstance(e, RequestDecided) and e.outcome == "granted"]
        state, _ = _apply(state, SubmitRequest(f"refill{i}", "m", "c"), now)  # stay at 1,000
        now += 1
    return {"arb_detect_p99_ms_1k": round(percentile(detect, 0.99), 4),
            "arb_resolve_p99_ms_1k": round(percentile(resolve, 0.99), 4)}


def bench_trace(requests: int = 6000, seed: int = 7, slots: int = 4,
                mean_hold_ms: float = 1000.0) -> dict[str, float]:
    """The contended trace, in virtual time."""
    rng = random.Random(seed)
    state, now = _setup(slots), 0
    tenants, demand = list(DEMAND), list(DEMAND.values())
    rate_per_ms = sum(demand) / sum(WEIGHTS.values()) * slots / mean_hold_ms
    arrivals, t = [], 0.0
    for i in range(requests):
        t += rng.expovariate(rate_per_ms)
        tenant = rng.choices(tenants, demand)[0]
        priority = -1000 if rng.random() < 0.05 else 0
        arrivals.append((int(t), f"q{i}", tenant, priority))
    heap: list[tuple[int, int, str, str]] = [(at, 1, rid, f"{tenant}|{p}")
                                              for at, rid, tenant, p in arrivals]
    heapq.heapify(heap)
    submitted: dict[str, int] = {}
    estimates: dict[str, int] = {}
    waits: dict[str, int] = {}
    background: set[str] = set()
    granted_at: list[tuple[int, str]] = []

    def note(events: list, at: int) -> None:
        for e in events:
            if not isinstance(e, RequestDecided):
                continue
            if e.outcome == "queued":
                estimates[e.request_id] = e.wait_estimate_ms
            elif e.outcome == "granted":
                waits[e.request_id] = at - submitted[e.request_id]
                granted_at.append((at, e.tenant))
                hold = int(rng.expovariate(1 / mean_hold_ms))
                heapq.heappush(heap, (at + hold, 0, e.request_id, ""))

    while heap:
        at, kind, rid, info = heapq.heappop(heap)
        now = at
        if kind == 1:
            tenant, level = info.split("|")
            submitted[rid] = at
            if level == "-1000":
                background.add(rid)
            state, events = _apply(state, SubmitRequest(rid, "m", tenant, int(level)), now)
        else:
            state, events = _apply(state, ReleaseRequest(rid), now)
        note(events, now)
    # fairness over the last window of arrivals: every tenant has requests waiting
    busy_until = arrivals[-1][0]
    window = [tenant for at, tenant in granted_at if busy_until - 120_000 < at <= busy_until]
    totals = {t: window.count(t) for t in WEIGHTS}
    # Wait estimates against actual waits in the steady state: queued once a hold had been
    # measured (before, the estimate rests on a default), granted while arrivals went on
    # (after, the contention it assumed stops, and every wait shortens).
    first_release = min(at + waits[r] for r, at in submitted.items() if r in waits
                        and waits[r] > 0)
    errors = [abs(estimates[r] - waits[r]) / waits[r] for r in estimates
              if r in waits and waits[r] > 0 and submitted[r] >= first_release
              and submitted[r] + waits[r] <= busy_until]
    mean_wait = sum(waits.values()) / len(waits)
    bg_waits = [waits[r] for r in background if r in waits]
    return {"arb_fairness_deviation": round(fairness.deviation(totals, WEIGHTS), 4),
            "arb_gini": round(fairness.normalised_gini(totals, WEIGHTS), 4),
            "arb_low_priority_max_wait_ratio": round(max(bg_waits) / mean_wait, 2)
            if bg_waits and mean_wait else 0.0,
            "arb_wait_estimate_mape": round(sum(errors) / len(errors), 4) if errors else 0.0,
            "arb_trace_requests": requests}


async def bench_arbitration_processor(n: int = 20_000) -> dict[str, float]:
    """Requests decided per second through the embedded broker, as `pit up` runs the
    processor: requests for a model with free slots, each released."""
    setup: list[Message] = [DescribeModel("m", slots=0), ObserveModel("m", 1000, 3000, True)]
    commands = setup + [SubmitRequest(f"b{i // 2}", "m", "t") if i % 2 == 0
                        else ReleaseRequest(f"b{i // 2}") for i in range(n)]
    per_s, processor = await decided_per_second(ARBITER, Codec(EmbeddedRegistry()), commands)
    if processor.state("default").stats.granted != n // 2:
        raise PitError("arbitration processor bench: not every request was granted")
    return {"arb_requests_per_s": round(per_s)}


async def bench_arbitrated_roundtrip(n: int = 500, models: int = 50) -> dict[str, float]:
    """A Hot model allocated directly and through arbitration, alternately, in one run, end
    to end through the embedded broker (the pool's and the arbiter's processors in
    process): the p99 of the arbitrated round trip minus the direct one's."""
    import asyncio
    import statistics

    from streams.arbitration.client import allocation_ops
    from streams.broker import catalog_broker
    from streams.commands import CommandClient
    from streams.pool.lifecycle import ModelState, TransitionModel, TransitionReason
    from streams.pool.pool import POOL, RegisterModel, ReportModelLoaded
    from streams.processor import Processor, run_processor

    with catalog_broker() as broker:
        settings = Settings(bootstrap_servers=broker.bootstrap_servers)
        codec = Codec(EmbeddedRegistry())
        stop = asyncio.Event()
        readies = [asyncio.Event(), asyncio.Event()]
        deciders: tuple[Decider[Any], ...] = (POOL, ARBITER)
        tasks = [asyncio.create_task(run_processor(Processor(decider, codec), settings, None,
                                                   stop, ready))
                 for decider, ready in zip(deciders, readies, strict=True)]
        for ready in readies:
            await ready.wait()
        direct: list[float] = []
        arbitrated: list[float] = []
        async with CommandClient(settings, "bench", codec, deciders=deciders) as client:
            pool, arbitration = allocation_ops(client)
            await pool.register_host("bench-host", models * 100, models)
            for m in range(models):
                await client.publish(RegisterModel(f"m-{m}", f"python:bench:m{m}", 100, 10))
                await client.publish(TransitionModel(f"m-{m}", ModelState.WARMING,
                                                     TransitionReason.USER_REQUEST))
                await client.publish(ReportModelLoaded("bench-host", f"m-{m}", 10, 100))
                await client.publish(ObserveModel(f"m-{m}", 100, 10, True))
            await arbitration.observe_host("bench-host", models * 100, models * 100)
            for i in range(2 * n + 50):
                through = i % 2 == 1
                started = time.perf_counter()
                allocation = await pool.allocate_model(
                    f"m-{i % models}", "bench", tenant="t" if through else None)
                elapsed = (time.perf_counter() - started) * 1000
                if i >= 50:  # the first ones warm connections and caches
                    (arbitrated if through else direct).append(elapsed)
                await pool.release_model(allocation.request_id)
        stop.set()
        for task in tasks:
            await task
    p99 = percentile(arbitrated, 0.99) - percentile(direct, 0.99)
    bench_note(f"hot allocation: direct p50 {statistics.median(direct):.2f} ms, arbitrated"
               f" p50 {statistics.median(arbitrated):.2f} ms")
    return {"arb_roundtrip_overhead_ms_p99": round(p99, 2),
            "arb_roundtrip_overhead_ms_p50": round(statistics.median(arbitrated)
                                                   - statistics.median(direct), 2)}


async def bench_arbitration(_settings: Settings) -> dict[str, Any]:
    figures: dict[str, Any] = bench_decisions()
    bench_note(f"decisions with 1,000 pending: detect p99 {figures['arb_detect_p99_ms_1k']} ms,"
               f" resolve p99 {figures['arb_resolve_p99_ms_1k']} ms")
    figures |= bench_trace()
    bench_note(f"contended trace of {figures['arb_trace_requests']:,} requests: fairness deviation"
               f" {figures['arb_fairness_deviation']}, Gini {figures['arb_gini']}, the"
               f" longest BACKGROUND wait {figures['arb_low_priority_max_wait_ratio']}x the"
               f" mean wait, wait estimates off by {figures['arb_wait_estimate_mape']:.0%}")
    figures |= await bench_arbitration_processor()
    figures |= await bench_arbitrated_roundtrip()
    return figures
