"""The Arbitration Engine's view (`arbitration`) on SQLite and PostgreSQL, fed by the
arbiter's own events: it agrees with the decider's state, a duplicated event changes
nothing, the readers answer what `pit arbitration` and the API show, and `pit replay`
rebuilds it exactly."""

from __future__ import annotations

import json

from sqlalchemy import select

from projections import arbitration as views
from projections.arbitration import ArbitrationView
from projections.replay import rebuild
from projections.runtime import Projector, live_tables
from streams.arbitration.arbiter import (
    ARBITER,
    CancelRequest,
    DescribeModel,
    ObserveModel,
    ReleaseRequest,
    SetArbitrationPolicy,
    SubmitRequest,
)
from streams.arbitration.state import ArbiterState


def contention(decided):
    """Two tenants contend for a one-slot model: grants, a queue, a release that drains it,
    a cancel and a denial, under a policy that names its tenants."""
    log = decided(ARBITER)
    log.ok(SetArbitrationPolicy(json.dumps({"tenants": {"a": 1, "b": 3},
                                            "max_queue": 2})))
    log.ok(DescribeModel("m", slots=1))
    log.ok(ObserveModel("m", 1000, 2500, True))
    log.ok(SubmitRequest("r1", "m", "a"))
    log.ok(SubmitRequest("r2", "m", "b", priority=100, timeout_ms=60_000))
    log.ok(SubmitRequest("r3", "m", "a", priority=-100))
    log.ok(SubmitRequest("r4", "m", "b", priority=1000))   # the queue is full: r3 goes
    log.ok(ReleaseRequest("r1"), after_ms=2_000)
    log.ok(CancelRequest("r2", "changed my mind"))
    return log


def rows(engine) -> dict:
    tables = live_tables(ArbitrationView())
    with engine.connect() as conn:
        return {name: sorted(tuple(r) for r in conn.execute(select(table)))
                for name, table in tables.items()}


def assert_matches_arbiter(engine, state: ArbiterState) -> None:
    """Every live request's row says what the arbiter's state says; the decisions' counts
    are the arbiter's statistics."""
    for request in state.requests.values():
        row = views.request(engine, request.request_id, state.pool_id)
        assert row is not None, request.request_id
        assert row["state"] == request.status, request.request_id
        assert (row["tenant"], row["priority"], row["model_id"]) == (
            request.tenant, request.priority, request.model_id)
        assert row["granted_model"] == request.granted_model
    found = views.status(engine, state.pool_id, now_ms=2_000_000_000_000)
    assert found is not None
    stats = state.stats
    assert found["decisions"].get("granted", 0) == stats.granted
    assert found["decisions"].get("denied", 0) == stats.denied
    assert found["decisions"].get("queued", 0) == stats.queued
    assert found["requests"]["waiting"] == sum(state.waiting(m) for m in state.queues)
    assert found["requests"]["cancelled"] == stats.cancelled
    assert found["requests"]["released"] == stats.released
    policy, _ = views.policy_of(engine, state.pool_id)
    assert json.loads(policy)["tenants"] == dict(state.policy.tenants)


def test_the_view_matches_the_arbiter(decided, engine) -> None:
    log = contention(decided)
    Projector(engine, [ArbitrationView()]).apply_batch(log.records)
    assert_matches_arbiter(engine, log.processor.state("default"))
    r3 = views.request(engine, "r3")
    assert r3["state"] == "denied" and r3["reason"] == "lower_priority"
    assert [d["outcome"] for d in views.request(engine, "r4")["decisions"]] == [
        "queued", "granted"]


def test_a_duplicated_event_changes_nothing_and_replay_rebuilds(decided, engine) -> None:
    log = contention(decided)
    projector = Projector(engine, [ArbitrationView()])
    projector.apply_batch(log.records)
    before = rows(engine)
    projector.apply_batch(log.records[3:6])  # delivered again
    assert rows(engine) == before
    rebuild(engine, ArbitrationView(), log.records)
    assert rows(engine) == before


def test_decisions_are_queried_by_request_tenant_outcome_and_time(decided, engine) -> None:
    log = contention(decided)
    Projector(engine, [ArbitrationView()]).apply_batch(log.records)
    assert {d["request_id"] for d in views.decisions(engine, tenant="a")} == {"r1", "r3"}
    assert [d["request_id"] for d in views.decisions(engine, outcome="denied")] == ["r3"]
    first = min(d["decided_at_ms"] for d in views.decisions(engine))
    assert len(views.decisions(engine, until_ms=first)) == 1
    assert views.decisions(engine, request_id="r4")[0]["outcome"] == "granted"


def test_status_shows_queues_shares_and_the_gini(decided, engine) -> None:
    log = contention(decided)
    Projector(engine, [ArbitrationView()]).apply_batch(log.records)
    found = views.status(engine, now_ms=log.now)
    shares = {t["tenant"]: t for t in found["tenants"]}
    assert shares["a"]["granted"] == 1 and shares["b"]["granted"] == 1
    assert shares["b"]["entitled"] == 0.75
    assert 0 < found["gini"] < 1
    text = "\n".join(views.status_lines(found))
    assert "Gini" in text and "a: 50.0% of grants / 25.0% entitled" in text
