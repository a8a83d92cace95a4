"""The serverless-shaped second trace has the shape it claims (streams/pool/serverless_trace.py)."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from itertools import pairwise

from streams.pool.serverless_trace import (
    DAY_MS,
    generate_serverless_trace,
    plan_functions,
)

TRACE = generate_serverless_trace()
FUNCTIONS = plan_functions()


def test_it_is_seeded_ordered_and_deterministic() -> None:
    assert generate_serverless_trace() == TRACE
    assert generate_serverless_trace(seed=5) != TRACE
    assert [r.at_ms for r in TRACE] == sorted(r.at_ms for r in TRACE)
    assert all(0 <= r.at_ms < 3 * DAY_MS + 2_000 and r.workflow_id is None for r in TRACE)


def test_popularity_is_heavy_tailed() -> None:
    counts = sorted(Counter(r.model_id for r in TRACE).values(), reverse=True)
    fifth = len(FUNCTIONS) // 5
    assert sum(counts[:fifth]) > 0.75 * len(TRACE)  # a few functions take most calls
    per_day = [f.rate_per_day for f in FUNCTIONS]
    assert sum(rate <= 24 for rate in per_day) > 0.4 * len(FUNCTIONS)  # <= once an hour
    assert max(per_day) > 100 * statistics.median(per_day)


def test_timers_are_periodic_and_http_calls_bursty() -> None:
    calls: dict[str, list[int]] = defaultdict(list)
    for request in TRACE:
        calls[request.model_id].append(request.at_ms)
    timers = [f for f in FUNCTIONS if f.trigger == "timer"]
    http = [f for f in FUNCTIONS if f.trigger == "http"]
    assert 0.15 * len(FUNCTIONS) < len(timers) < 0.45 * len(FUNCTIONS)
    for timer in timers:
        times = calls[timer.function_id]
        assert len(times) == len(range(timer.phase_ms, 3 * DAY_MS, timer.period_ms))
        for gap in (b - a for a, b in pairwise(times)):
            assert abs(gap - timer.period_ms) <= 2_000  # the scheduling jitter only
    # Bursty: inter-arrival times vary more than a Poisson process's (CV > 1).
    busy = [f for f in http if len(calls[f.function_id]) >= 50]
    assert busy
    for function in busy:
        times = calls[function.function_id]
        gaps = [b - a for a, b in pairwise(times)]
        assert statistics.pstdev(gaps) / statistics.mean(gaps) > 1.0
