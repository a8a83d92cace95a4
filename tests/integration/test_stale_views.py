"""The Stale Manager's views (`stale`), its read API and its live metrics, on SQLite and
PostgreSQL, fed by the decider's own events: after a whole story - a scheduled policy,
observations with an orphan and lineage, holds, a plan applied in two batches with items
skipped because they changed, tier moves reported and failed, trash, restore, purge and the
purge's report, scheduled runs made and missed - the views say what the decider's state
says, however the log is cut into batches, a duplicated event changes nothing and `pit
replay stale` rebuilds them exactly."""

from __future__ import annotations

import json
from dataclasses import replace

from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from sqlalchemy import Engine, func, select

from projections import stale as views
from projections.api import make_app
from projections.replay import rebuild
from projections.runtime import Projector, live_tables
from projections.stale import StaleView
from projections.stale_metrics import STALE_BYTES, StaleMetrics
from streams.components import COMPONENTS
from streams.stale.manager import (
    APPLY_BATCH,
    STALE,
    ApplyPlan,
    ContinueApply,
    ObserveArtifacts,
    PlaceHold,
    PlanCleanup,
    PurgeItem,
    ReleaseHold,
    ReportPurged,
    ReportTierMoved,
    ReportTierMoveFailed,
    RestoreItems,
    RunSchedule,
    SetRetentionPolicy,
    StaleState,
    item_record,
)
from streams.stale.policy import DAY_MS, Item, Tier
from streams.times import readable

START = 1_700_000_000_000  # the `decided` harness's clock
FILLER = range(100, 100 + APPLY_BATCH + 10)  # idle items to delete: the apply takes 2 batches
POLICY = {
    "policies": [
        {"name": "old", "priority": 20, "rules": [
            {"type": "MaxAge", "days": 60}, {"type": "PreserveTrainingData"},
            {"type": "KeepTagged", "tags": ["release"]}]},
        {"name": "archive", "priority": 10, "rules": [
            {"type": "MaxAge", "days": 20, "action": "archive"}]}],
    "tiers": {"warm_after_days": 10, "warm_below": 0.5},
    "schedule": {"cron": "0 3 * * *", "window_minutes": 60},
}


def addr(n: int) -> str:
    return f"sha256:{n:064x}"


def observed(n: int, idle_days: float, size: int = 100, **kw) -> dict:
    used = START - int(idle_days * DAY_MS)
    return item_record(Item(addr(n), size, kw.pop("stored_at", used), used, **kw))


def stale_story(decided):
    """The Stale Manager's whole cycle on one store, command by command (the timers' commands
    sent by hand, when they would fire)."""
    log = decided(STALE)
    log.ok(SetRetentionPolicy(json.dumps(POLICY)))
    items = [observed(n, 100, size=1000 + n) for n in FILLER]
    items += [observed(1, 100), observed(2, 100), observed(3, 100),
              observed(4, 100, tags=("release",)), observed(5, 100),
              observed(6, 100, parents=(addr(5),), tags=("training",)),
              observed(7, 30, size=5000), observed(8, 30, size=6000), observed(9, 15),
              observed(10, 1),
              observed(11, 0, size=300, orphan=True, stored_at=START - 2 * DAY_MS)]
    log.ok(ObserveArtifacts(items[:300]))
    log.ok(ObserveArtifacts(items[300:]))
    log.ok(PlaceHold(addr(3), "case 7"))             # kept by the plan
    log.ok(PlaceHold(addr(999), "not stored yet"))   # an address never observed
    log.ok(PlanCleanup("p1"))
    # since the plan: a hold, a read, and a new descendant that protects its ancestor
    log.ok(PlaceHold(addr(2), "audit"))
    log.ok(ObserveArtifacts([observed(1, 100, accesses=1),
                             observed(12, 0, parents=(addr(100),), tags=("training",))]))
    log.ok(ApplyPlan("p1"))
    log.ok(ContinueApply("p1", APPLY_BATCH))         # the next batch's timer fires
    log.ok(ReportTierMoved(addr(7), "cold", 4_000))
    log.ok(ReportTierMoved(addr(4), "warm", 100))
    log.ok(ReportTierMoveFailed(addr(8), "cold", "bucket unreachable"))  # 5, 6, 9: moving
    log.ok(RestoreItems(addr(101)))
    log.ok(ReleaseHold(addr(3)))
    state = log.processor.state("default")
    due = state.next_run_at
    log.ok(RunSchedule(due), after_ms=due + 60_000 - log.now)  # in its window: plans
    purge_at = max(t.purge_at for t in state.trash.values())
    log.ok(PurgeItem(addr(102), state.trash[addr(102)].seq), after_ms=purge_at - log.now)
    log.ok(ReportPurged(addr(102), 1_102))
    log.ok(PurgeItem(addr(11), state.trash[addr(11)].seq))
    log.ok(ReportPurged(addr(11), 300))
    log.ok(ObserveArtifacts([], forget=[addr(11)]))  # the orphan's blob is gone
    log.ok(ObserveArtifacts([observed(102, -8)]))    # stored again since its purge
    missed = log.processor.state("default").next_run_at
    assert log.now > missed + 3_600_000  # the purges came days later: its window is past
    log.ok(RunSchedule(missed))
    return log


def _state_of(state: StaleState, address: str) -> str:
    if address in state.purged:
        return "purged"
    if address in state.trash:
        return "trashed"
    return "moving" if address in state.moving else "live"


def assert_matches_stale(engine: Engine, state: StaleState) -> None:
    """Every item the decider names has its row saying what the state says, the store's
    totals are the state's, and every plan's row and items are the state's plan."""
    store_id = state.store_id
    named = set(state.items) | set(state.holds) | set(state.trash) | set(state.purged) \
        | set(state.moving)
    for address in named:
        row = views.item(engine, address, store_id=store_id)
        assert row is not None, address
        assert row["observed"] == (address in state.items), address
        assert row["tier"] == state.tiers.get(address, Tier.HOT).value, address
        assert row["state"] == _state_of(state, address), address
        assert (row["held"], row["hold_reason"]) == (address in state.holds,
                                                     state.holds.get(address, "")), address
        if (item := state.items.get(address)) is not None:
            assert (row["size"], row["accesses"], row["last_used_at"], row["orphan"]) == (
                item.size, item.accesses, item.last_used_at, item.orphan), address
        if (trashed := state.trash.get(address)) is not None:
            assert (row["trashed_by"], row["trashed_at"], row["purge_at"]) == (
                trashed.plan_id, trashed.trashed_at, trashed.purge_at), address
        assert row["moving_to"] == state.moving.get(address, ""), address
        if row["plan_id"]:  # what the last plan that listed it said, its value included
            listed = next(i for i in state.plans[row["plan_id"]].items if i.address == address)
            assert (row["action"], row["rule"], row["value_score"]) == (
                listed.action.value, listed.rule, listed.value), address
        else:
            assert row["value_score"] is None, address
    table = live_tables(StaleView())["stale_items"]
    with engine.connect() as conn:
        observed_rows = conn.execute(select(func.count()).select_from(table).where(
            table.c.store_id == store_id, table.c.observed.is_(True))).scalar()
    assert observed_rows == len(state.items)

    found = views.status(engine, store_id)
    live = [i for a, i in state.items.items()
            if a not in state.trash and a not in state.purged and a not in state.moving]
    for tier in Tier:
        in_tier = [i for i in live if state.tiers.get(i.address, Tier.HOT) is tier]
        assert found["tiers"][tier.value] == {"items": len(in_tier),
                                              "bytes": sum(i.size for i in in_tier)}, tier
    assert (found["trash_items"], found["trash_bytes"]) == (
        len(state.trash), sum(state.items[a].size for a in state.trash))
    assert (found["moving_items"], found["purged_items"], found["holds"]) == (
        len(state.moving), len(state.purged), len(state.holds))
    assert (found["policy_version"], found["document"], found["next_run_at"],
            found["last_run_at"], found["last_plan"]) == (
        state.policy_version, state.document, state.next_run_at, state.last_run_at,
        state.last_plan)

    assert {p["plan_id"] for p in views.plans(engine, 1_000, store_id=store_id)} == \
        set(state.plans)
    for plan in state.plans.values():
        row = views.plan(engine, plan.plan_id, store_id=store_id, limit=len(plan.items) + 1)
        assert row is not None, plan.plan_id
        assert {k: row[k] for k in ("created_at", "expires_at", "policy_version", "scheduled",
                                    "status", "cursor", "trashed", "moved", "skipped",
                                    "bytes_freed", "applied_at")} == {
            "created_at": plan.created_at, "expires_at": plan.expires_at,
            "policy_version": plan.policy_version, "scheduled": plan.scheduled,
            "status": plan.status, "cursor": plan.cursor, "trashed": plan.trashed,
            "moved": plan.moved, "skipped": plan.skipped, "bytes_freed": plan.bytes_freed,
            "applied_at": plan.applied_at}, plan.plan_id
        assert row["items"] == len(plan.items)
        listed = row["item_rows"]
        assert [(r["position"], r["address"], r["action"], r["target"], r["reason"], r["rule"],
                 r["size"], r["tier"], r["revision"], r["value_score"]) for r in listed] == [
            (n, i.address, i.action.value, i.target, i.reason, i.rule, i.size, i.tier,
             i.revision, i.value) for n, i in enumerate(plan.items)], plan.plan_id
        assert all(0.0 < i.value < 1.0 for i in plan.items), plan.plan_id
        outcomes = [r["outcome"] for r in listed]
        assert outcomes.count("trashed") == plan.trashed
        assert sum(outcomes.count(o) for o in ("moving", "moved", "move_failed")) == plan.moved
        assert outcomes.count("skipped") == plan.skipped
        assert outcomes.count("pending") == len(plan.items) - plan.cursor


def rows(engine: Engine) -> dict:
    tables = live_tables(StaleView())
    with engine.connect() as conn:
        return {name: sorted(tuple(r) for r in conn.execute(select(table)))
                for name, table in tables.items()}


# --- the views ------------------------------------------------------------------------------

def test_the_views_match_the_stale_manager(decided, engine) -> None:
    log = stale_story(decided)
    Projector(engine, [StaleView()]).apply_batch(log.records)
    state = log.processor.state("default")
    assert_matches_stale(engine, state)

    p1 = views.plan(engine, "p1", limit=1_000)
    assert (p1["status"], p1["cursor"], p1["items"]) == ("applied", len(FILLER) + 9,
                                                         len(FILLER) + 9)
    assert p1["apply_started_at"] is not None and p1["applied_at"] >= p1["apply_started_at"]
    outcome = {r["address"]: (r["outcome"], r["outcome_reason"]) for r in p1["item_rows"]}
    assert outcome[addr(2)][0] == "skipped" and "legal hold" in outcome[addr(2)][1]
    assert "changed since the plan" in outcome[addr(1)][1]
    assert "changed since the plan" in outcome[addr(100)][1]   # its lineage grew
    assert outcome[addr(7)] == ("moved", "") and outcome[addr(5)] == ("moving", "")
    assert outcome[addr(8)] == ("move_failed", "bucket unreachable")
    assert outcome[addr(101)] == ("trashed", "")  # restored since: the item says so

    assert views.item(engine, addr(101))["state"] == "live"
    assert views.item(engine, addr(7))["tier"] == "cold"
    assert views.item(engine, addr(8))["tier"] == "hot"
    orphan = views.item(engine, addr(11))
    assert (orphan["observed"], orphan["state"], orphan["orphan"]) == (False, "purged", True)
    assert views.item(engine, addr(102))["state"] == "live"   # stored again since the purge
    never = views.item(engine, addr(999))
    assert (never["observed"], never["held"], never["hold_reason"]) == (
        False, True, "not stored yet")
    kept = views.item(engine, addr(3))
    assert (kept["held"], kept["hold_reason"]) == (False, "")  # held, then released
    assert views.item(engine, "sha256:" + "f" * 64) is None

    status = views.status(engine)
    assert status["last_run_skipped"].endswith("past the 60-minute window")
    assert status["bytes_freed"] == 1_102 + 300
    assert status["plans"] == {"applied": 1, "planned": 1}
    scheduled = views.plans(engine)[0]
    assert scheduled["plan_id"].startswith("scheduled-") and scheduled["scheduled"] is True
    assert views.item(engine, addr(1))["plan_id"] == scheduled["plan_id"]  # listed again

    page = views.plan(engine, "p1", limit=5, offset=3)
    assert [r["position"] for r in page["item_rows"]] == [3, 4, 5, 6, 7]
    assert views.plan(engine, "p1", limit=0)["item_rows"] == []
    assert views.plan(engine, "nope") is None
    assert views.status(engine, "other")["sequence"] == 0


def test_any_batching_duplicates_and_replay_give_the_same_rows(decided, engine,
                                                               monkeypatch) -> None:
    monkeypatch.setattr(views, "ANALYZE_AFTER", 50)  # PostgreSQL: ANALYZE as the tables grow
    log = stale_story(decided)
    projector = Projector(engine, [StaleView()])
    for start in range(0, len(log.records), 7):  # batches cutting through plans and applies
        projector.apply_batch(log.records[start:start + 7])
    assert_matches_stale(engine, log.processor.state("default"))
    before = rows(engine)
    projector.apply_batch(log.records[5:40])  # delivered again: skipped by position
    copies = [replace(r, offset=r.offset + 100_000) for r in log.records[3:30]]
    projector.apply_batch(copies)             # the same events at new offsets: by sequence
    assert rows(engine) == before
    rebuild(engine, StaleView(), log.records)
    assert rows(engine) == before


def test_an_empty_store_reads_as_zeros(engine) -> None:
    found = views.status(engine)
    assert found["sequence"] == 0 and found["tiers"]["hot"] == {"items": 0, "bytes": 0}
    assert views.plans(engine) == [] and views.item(engine, addr(1)) is None


# --- the API --------------------------------------------------------------------------------

async def test_stale_api(decided, engine) -> None:
    client = TestClient(TestServer(make_app(engine, COMPONENTS)))
    await client.start_server()
    try:
        empty = await client.get("/stale")
        assert empty.status == 404 and "no Stale Manager events yet" in (
            await empty.json())["error"]
        log = stale_story(decided)
        Projector(engine, [StaleView()]).apply_batch(log.records)
        state = log.processor.state("default")

        status = await (await client.get("/stale")).json()
        # the view's row, each moment in ISO with its milliseconds beside it (streams/times.py)
        assert status == json.loads(json.dumps(readable(views.status(engine))))
        assert status["last_run_at_ms"] == views.status(engine)["last_run_at"]
        assert status["policy_version"] == state.policy_version == 1
        assert status["tiers"]["cold"]["items"] == 1

        listed = await (await client.get("/stale/plans")).json()
        assert listed["count"] == 2 and listed["plans"][1]["plan_id"] == "p1"
        assert (await (await client.get("/stale/plans", params={"limit": 1})).json()
                )["count"] == 1

        plan = await (await client.get("/stale/plans/p1",
                                       params={"limit": 2, "offset": 1})).json()
        assert plan["status"] == "applied" and plan["items"] == len(state.plans["p1"].items)
        assert [r["address"] for r in plan["item_rows"]] == [
            i.address for i in state.plans["p1"].items[1:3]]
        unknown = await client.get("/stale/plans/nope")
        assert unknown.status == 404 and (await unknown.json()) == {"error": "unknown plan nope"}
        bad = await client.get("/stale/plans/p1", params={"limit": "x"})
        assert bad.status == 400 and "limit must be a non-negative integer" in (
            await bad.json())["error"]

        item = await (await client.get(f"/stale/items/{addr(7)}")).json()
        assert (item["tier"], item["state"], item["plan_id"]) == ("cold", "live", "p1")
        planned = next(i for i in state.plans["p1"].items if i.address == addr(7))
        assert item["value_score"] == planned.value and 0 < planned.value < 1
        assert plan["item_rows"][0]["value_score"] == state.plans["p1"].items[1].value
        missing = await client.get(f"/stale/items/{addr(4242)}")
        assert missing.status == 404 and "unknown item" in (await missing.json())["error"]
        assert (await client.get("/stale", params={"store": "other"})).status == 404
    finally:
        await client.close()


# --- live metrics ---------------------------------------------------------------------------

def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_follow_the_events_once(decided, engine) -> None:
    watched = [*(("pit_stale_items_total", {"decision": d})
                 for d in ("delete", "archive", "warm", "promote")),
               ("pit_stale_bytes_freed_total", {}), ("pit_stale_run_seconds_count", {}),
               ("pit_stale_run_seconds_sum", {}),
               ("pit_stale_move_failures_total", {"target": "cold"})]
    before = {(n, tuple(sorted(labels.items()))): sample(n, **labels) for n, labels in watched}

    def grown() -> dict[str, float]:
        return {f"{n}{dict(labels) or ''}": round(sample(n, **dict(labels)) - value, 6)
                for (n, labels), value in before.items()}

    log = stale_story(decided)
    state = log.processor.state("default")
    projector = Projector(engine, [StaleView()], observers=[StaleMetrics(engine)])
    half = len(log.records) // 2
    projector.apply_batch(log.records[:half])
    projector.apply_batch(log.records)  # overlaps: the first half is not observed twice
    planned = [i.target for p in state.plans.values() for i in p.items]
    p1 = state.plans["p1"]
    started = views.plan(engine, "p1", limit=0)["apply_started_at"]
    assert grown() == {
        "pit_stale_items_total{'decision': 'delete'}": planned.count("trash"),
        "pit_stale_items_total{'decision': 'archive'}": planned.count("cold"),
        "pit_stale_items_total{'decision': 'warm'}": planned.count("warm"),
        "pit_stale_items_total{'decision': 'promote'}": planned.count("hot"),
        "pit_stale_bytes_freed_total": 1_102 + 300,
        "pit_stale_run_seconds_count": 1,
        "pit_stale_run_seconds_sum": (p1.applied_at - started) / 1000,
        "pit_stale_move_failures_total{'target': 'cold'}": 1,  # the bucket was unreachable
    }
    status = views.status(engine)
    for tier in ("hot", "warm", "cold"):
        assert sample("pit_stale_bytes", tier=tier) == status["tiers"][tier]["bytes"]
    assert sample("pit_stale_bytes", tier="cold") == 5_000

    again = grown()
    copies = [replace(r, offset=r.offset + 100_000) for r in log.records]
    projector.apply_batch(copies)  # the same events at new offsets: archived, not observed
    assert grown() == again
    rebuild(engine, StaleView())   # a replay is not live traffic
    assert grown() == again

    STALE_BYTES.labels("cold").set(-1)
    StaleMetrics(engine)           # a restart: the gauge comes back from the view
    assert sample("pit_stale_bytes", tier="cold") == 5_000
