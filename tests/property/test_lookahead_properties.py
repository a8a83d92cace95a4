"""The lookahead predictor on random workflows (the seeded workflow trace's generator, with
instruments and branches) run by the real execution decider in a random completion order:
its counts match a recount after every event, every node it warms runs and was not yet
ready when warmed, no node is warmed twice, and a node behind a branch's untaken side never
is."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.dag.execution import (
    Definitions,
    NodeScheduled,
    NodeSkipped,
    P,
    ReportNodeCompleted,
    ReportNodeStarted,
    StartExecution,
    decide,
    evolve,
    initial_state,
)
from streams.pool.lookahead import LookaheadPredictor, _Run
from streams.pool.workflow_trace import workflow_trace

T0 = 1_700_000_000_000


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 10_000), data=st.data())
def test_lookahead_on_random_workflows(seed: int, data: st.DataObject) -> None:
    trace = workflow_trace(seed, workflows=1, executions=1, nodes=(3, 14),
                           instrument_share=0.5, branch_share=0.2)
    spec = trace.executions[0]
    definitions = Definitions()
    predictor = LookaheadPredictor(definitions)
    state = initial_state("e")
    now = T0
    in_flight: list[tuple[str, int]] = []
    warmed: list[str] = []
    scheduled: set[str] = set()
    skipped: set[str] = set()

    def send(command) -> None:
        nonlocal state
        for event in decide(state, command, now, definitions):
            state = evolve(state, event, now, definitions)
            for hint in predictor.apply(event, now):
                assert state.node(hint.node_id).status is P  # not ready yet
                assert hint.node_id not in scheduled
                warmed.append(hint.node_id)
            run = predictor.runs.get("e")
            if run is not None:  # the counts kept event by event are a recount's
                fresh = _Run(run.state, run.shape)
                assert (run.blocked, run.promising) == (fresh.blocked, fresh.promising)
            if isinstance(event, NodeScheduled):
                scheduled.add(event.node_id)
                in_flight.append((event.node_id, event.attempt))
            elif isinstance(event, NodeSkipped):
                skipped.add(event.node_id)

    send(StartExecution("e", spec.workflow.canonical_json()))
    while in_flight:
        now += 1_000
        node, attempt = in_flight.pop(data.draw(st.integers(0, len(in_flight) - 1)))
        if data.draw(st.booleans()):
            send(ReportNodeStarted("e", node, attempt))
        side = spec.sides.get(node)
        output = {"out": 1} if side is None else {"true" if data.draw(st.booleans())
                                                  else "false": 1}
        send(ReportNodeCompleted("e", node, attempt, json.dumps(output)))

    assert "e" not in predictor.runs  # completed, forgotten
    assert len(warmed) == len(set(warmed))
    assert set(warmed) <= scheduled
    assert not set(warmed) & skipped
    models = {n.id for n in spec.workflow.nodes if n.model}
    assert set(warmed) <= models
