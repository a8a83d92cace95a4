"""The lookahead measurement (streams/pool/lookahead_bench.py) on a small seeded workflow
trace: valid workflows, the same figures for the same seed, every execution completed, and
fewer cold starts with lookahead than without."""

from __future__ import annotations

from streams.dag.definition import NodeKind, check
from streams.pool.lookahead_bench import bench_lookahead, replay
from streams.pool.workflow_trace import workflow_trace

SMALL = {"executions": 150, "hours": 2.0}


def test_the_trace_is_seeded_and_its_workflows_are_valid():
    trace = workflow_trace(3, **SMALL)
    assert trace == workflow_trace(3, **SMALL)
    assert trace.executions != workflow_trace(4, **SMALL).executions
    for workflow in trace.workflows:
        check(workflow)
    models = {m.model_id for m in trace.models}
    used = {n.model for w in trace.workflows for n in w.nodes if n.kind == NodeKind.INSTRUMENT}
    assert used and used <= models
    starts = [e.at_ms for e in trace.executions]
    assert starts == sorted(starts) and len(starts) == SMALL["executions"]


def test_the_same_seed_gives_the_same_figures():
    first = bench_lookahead(5, **SMALL)
    assert bench_lookahead(5, **SMALL) == first
    assert first["lookahead_allocations"] > 0


def test_lookahead_cuts_cold_starts_and_every_execution_completes():
    trace = workflow_trace(5, **SMALL)
    without = replay(trace, prewarm=True, lookahead=False, capacity=24)
    with_ = replay(trace, prewarm=True, lookahead=True, capacity=24)
    assert without.executions == with_.executions == len(trace.executions)
    assert with_.allocations == without.allocations == (
        with_.cold + with_.loading + with_.hot)
    assert with_.lookahead_warms > 0 and without.lookahead_warms == 0
    assert with_.cold < without.cold
    assert with_.wait_ms < without.wait_ms
