"""The chaos campaign's own checks (streams/campaigns/chaos.py), on made-up facts: a repeated
node run is excused only when a killed runner had it in flight; an entity's sequence numbers
that repeat or skip are reported once, a skip only once a later read confirms it; the Stale
Manager's deletions are held against its confirmed plans, keep tags and legal holds, and
what it never trashed must read back."""

from __future__ import annotations

from types import SimpleNamespace

import streams.artifacts.storage as storage
from streams.campaigns.chaos import (
    INFLIGHT_S,
    Campaign,
    Findings,
    LogFacts,
    repeated_runs,
    stale_violations,
)
from streams.dag.execution import NodeCompleted
from streams.dag.topics import DAG_EVENTS
from streams.errors import PitError
from streams.stale.topics import STALE_EVENTS

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


# --- the Stale Manager ---------------------------------------------------------------------------

def stale(facts: LogFacts, event_type: str, n: int, **record) -> None:
    envelope = {"event_id": f"{event_type}-{n}-{sorted(record.items())}", "entity_key":
                "default", "sequence": n}
    facts.add(STALE_EVENTS, event_type, {"envelope": envelope, **record})


def stale_log() -> LogFacts:
    """p1 lists a and b to trash and is confirmed; p2 lists c but is never confirmed; d is
    held, then trashed by p1 anyway; e is held and released, then trashed; f purged only."""
    facts = LogFacts()
    events = [
        ("HoldPlaced", {"address": "d", "reason": "case"}),
        ("HoldPlaced", {"address": "e", "reason": "case"}),
        ("HoldReleased", {"address": "e"}),
        ("PlanItemsListed", {"plan_id": "p1", "items": [
            {"address": a, "target": "trash"} for a in "abde"] + [
            {"address": "w", "target": "warm"}]}),
        ("PlanItemsListed", {"plan_id": "p2", "items": [{"address": "c", "target": "trash"}]}),
        ("PlanApplyStarted", {"plan_id": "p1"}),
        ("ItemTrashed", {"address": "a", "plan_id": "p1"}),
        ("ItemTrashed", {"address": "b", "plan_id": "p1"}),   # b is tagged keep
        ("ItemTrashed", {"address": "c", "plan_id": "p2"}),   # p2 never confirmed
        ("ItemTrashed", {"address": "d", "plan_id": "p1"}),   # held
        ("ItemTrashed", {"address": "e", "plan_id": "p1"}),   # released first: fine
        ("ItemTrashed", {"address": "w", "plan_id": "p1"}),   # p1 only moved it to warm
        ("ItemPurged", {"address": "a"}),
        ("ItemPurged", {"address": "f"}),                     # never trashed
    ]
    for n, (event_type, record) in enumerate(events, 1):
        stale(facts, event_type, n, **record)
    return facts


def test_the_stale_managers_deletions_are_held_to_plans_keeps_and_holds() -> None:
    found = stale_violations(stale_log(), kept={"b"})
    assert sorted(found) == [
        ("b", "trashed though tagged keep"),
        ("c", "trashed outside confirmed plan p2"),
        ("d", "trashed under a legal hold (plan p1)"),
        ("f", "purged without being trashed"),
        ("w", "trashed outside confirmed plan p1")]
    assert stale_violations(LogFacts(), kept={"b"}) == []


def test_check_stale_counts_each_harmed_item_once_and_reads_back_the_rest(monkeypatch,
                                                                          capsys) -> None:
    contents = {"x": b"same", "y": b"changed", "a": b"trashed: not read"}

    class Store:
        def get(self, address: str) -> bytes:
            if address == "z":
                raise PitError("no such object")
            return b"other" if address == "y" else contents[address]

    monkeypatch.setattr(storage, "artifact_store", lambda settings: Store())
    campaign = object.__new__(Campaign)
    campaign.facts, campaign.found, campaign.point, campaign.seed = stale_log(), Findings(), 3, 11
    campaign.load = SimpleNamespace(kept={"b"}, stored={**contents, "z": b"lost"})
    campaign.pit = SimpleNamespace(up=SimpleNamespace(env={}))
    campaign.check_stale()
    campaign.check_stale()  # a second look finds nothing new
    assert campaign.found.stale == {"b", "c", "d", "f", "w", "y", "z"}
    assert campaign.found.violations == 7
    notes = "\n".join(campaign.found.lines)
    assert "stale manager: y reads back different content" in notes
    assert "stale manager: z unreadable, never trashed: no such object" in notes
    assert "kill point 3 (--seed 11)" in notes
    assert len(campaign.found.lines) == 7
    capsys.readouterr()
