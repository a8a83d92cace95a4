"""The chaos campaign's own checks (streams/campaigns/chaos.py), on made-up facts: a repeated
node run is excused only when a killed runner had it in flight; an entity's sequence numbers
that repeat or skip are reported once, a skip only once a later read confirms it."""

from __future__ import annotations

from streams.campaigns.chaos import INFLIGHT_S, LogFacts, repeated_runs
from streams.dag.execution import NodeCompleted
from streams.dag.topics import DAG_EVENTS

KILLED_AT = 1_000.0


def run(execution: str, node: str, pid: int, t: float) -> dict:
    return {"e": execution, "n": node, "pid": pid, "t": t}


def test_a_rerun_is_excused_only_for_a_killed_runners_run_in_flight() -> None:
    ledger = [
        run("x", "a", 7, KILLED_AT - 1), run("x", "a", 8, KILLED_AT + 5),   # in flight: excused
        run("x", "b", 7, KILLED_AT - INFLIGHT_S - 5), run("x", "b", 8, KILLED_AT + 5),  # long done
        run("x", "c", 8, 10.0), run("x", "c", 9, 11.0), run("x", "c", 9, 12.0),  # live runners
        run("y", "a", 8, 10.0),                                             # once: fine
    ]
    excused, other = repeated_runs(ledger, {7: KILLED_AT})
    assert excused == 1
    assert other == {("x", "b"): (1, [7, 8]), ("x", "c"): (2, [8, 9, 9])}
    assert repeated_runs(ledger[-1:], {}) == (0, {})


def event(entity: str, sequence: int, event_id: str, node: str = "") -> tuple:
    record = {"envelope": {"event_id": event_id, "entity_key": entity, "sequence": sequence},
              "execution_id": entity, "node_id": node}
    return DAG_EVENTS, NodeCompleted.__name__, record


def test_sequences_that_repeat_or_skip_are_reported_once() -> None:
    facts = LogFacts()
    for sequence, event_id in ((1, "e1"), (3, "e3"), (2, "e2"), (2, "e2-again")):
        facts.add(*event("x", sequence, event_id, node=f"n{sequence}"))
    assert facts.sequence_faults == [f"{DAG_EVENTS} x: sequence 2 twice"]
    assert facts.events == {"e1": 1, "e2": 1, "e3": 1, "e2-again": 1}
    assert facts.completed[("x", "n2")] == 2

    facts.add(*event("y", 1, "y1"))
    facts.add(*event("y", 4, "y4"))  # 2 and 3 may still be on their way to the archive
    facts.settle()
    assert len(facts.sequence_faults) == 1
    facts.add(*event("y", 3, "y3"))  # 3 arrived; 2 never does
    facts.settle()
    assert facts.sequence_faults[1:] == [f"{DAG_EVENTS} y: sequence numbers [2] missing"]
    facts.settle()
    assert len(facts.sequence_faults) == 2
