"""The Stale Manager's rules (streams/stale/policy.py, manager.py): the retention document,
every rule type and how verdicts compose, value scoring, and the plan -> apply -> trash ->
purge/restore cycle with its refusals, holds and schedule, decided command by command."""

from __future__ import annotations

import json

import pytest

from streams.decider import Message, Rejection
from streams.stale.manager import (
    APPLY_BATCH,
    STALE,
    ApplyPlan,
    ContinueApply,
    ItemSkipped,
    ItemTrashed,
    ObserveArtifacts,
    PlaceHold,
    PlanApplied,
    PlanCleanup,
    PurgeItem,
    ReportTierMoved,
    RestoreItems,
    RunSchedule,
    ScheduledRun,
    SetRetentionPolicy,
    StaleState,
    TierMoveRequested,
    item_record,
)
from streams.stale.policy import (
    DAY_MS,
    Action,
    Evaluator,
    Item,
    RetentionError,
    Tier,
    parse_retention,
    retention_from,
    retention_json,
)
from streams.timers import TimerScheduled

NOW = 1_800_000_000_000


def addr(n: int) -> str:
    return f"sha256:{n:064x}"


def item(n: int, *, idle_days: float = 0, size: int = 100, **kw) -> Item:
    used = NOW - int(idle_days * DAY_MS)
    return Item(addr(n), size, kw.pop("stored_at", used), used, **kw)


class Store:
    """The decider, driven command by command, its state kept."""

    def __init__(self) -> None:
        self.state: StaleState = STALE.initial_state("default")
        self.now = NOW

    def do(self, command: Message, now: int | None = None) -> list[Message]:
        at = self.now if now is None else now
        events = STALE.decide(self.state, command, at)
        for event in events:
            self.state = STALE.evolve(self.state, event, at)
        return events

    def refused(self, command: Message) -> str:
        with pytest.raises(Rejection) as caught:
            self.do(command)
        return caught.value.reason

    def observe(self, *items: Item) -> None:
        self.do(ObserveArtifacts([item_record(i) for i in items]))

    def policy(self, document: dict) -> None:
        self.do(SetRetentionPolicy(json.dumps(document)))

    def timers(self, events: list[Message]) -> list[TimerScheduled]:
        return [e for e in events if isinstance(e, TimerScheduled)]


def evaluate(document: dict, *items: Item, holds=None, now=NOW):
    retention = retention_from(document)
    evaluator = Evaluator(retention, {i.address: i for i in items}, holds or {}, now, {})
    return {i.address: evaluator.evaluate(i.address) for i in items}


AGE_OUT = {"policies": [{"name": "age", "priority": 10,
                         "rules": [{"type": "MaxAge", "days": 30}]}]}


# --- the document --------------------------------------------------------------------------

def test_an_invalid_document_lists_every_problem():
    with pytest.raises(RetentionError) as caught:
        parse_retention("""
policies:
  - name: bad
    priority: 300
    rules:
      - {type: MaxAge, days: -3}
      - {type: NoSuchRule}
      - {type: KeepTagged, tags: []}
schedule: {cron: "every day"}
colour: blue
""")
    text = "; ".join(caught.value.problems)
    assert "priority: 300 is not within [0, 255]" in text
    assert "days: -3 is not within" in text          # a negative age
    assert "'NoSuchRule' is not one of" in text
    assert "tags: expected a non-empty list" in text
    assert "schedule.cron: 'every day' is not a cron expression" in text
    assert "colour: unknown setting" in text
    assert len(caught.value.problems) == 6


def test_the_canonical_document_reads_back_to_the_same_retention():
    retention = parse_retention(json.dumps({
        "policies": [{"name": "p", "priority": 3, "enabled": False, "rules": [
            {"type": "MaxAge", "days": 9, "action": "archive"},
            {"type": "MaxTotalSize", "bytes": 1000},
            {"type": "MinAccessCount", "count": 2},
            {"type": "MinQualityScore", "score": 0.5},
            {"type": "PreserveTrainingData", "preserve": True, "tags": ["train"]},
            {"type": "KeepTagged", "tags": ["b", "a"]}]}],
        "value": {"weights": {"recency": 2}}, "schedule": {"cron": "0 3 * * *"}}))
    assert parse_retention(retention_json(retention)) == retention


# --- rules and how they compose --------------------------------------------------------------

def test_max_age_deletes_what_is_idle_too_long_and_says_when_the_rest_will_go():
    old, young = item(1, idle_days=40), item(2, idle_days=18)
    result = evaluate(AGE_OUT, old, young)
    assert result[old.address].action is Action.DELETE
    assert "idle 40.0 days > 30" in result[old.address].reason
    assert result[young.address].action is Action.KEEP
    assert result[young.address].next_change == "eligible for delete in 12 days"


@pytest.mark.parametrize(("rule", "kw", "reason"), [
    ({"type": "MinAccessCount", "count": 5}, {"accesses": 5}, "read 5 times >= 5"),
    ({"type": "MinQualityScore", "score": 0.7}, {"quality": 0.8}, "quality 0.80 >= 0.7"),
    ({"type": "KeepTagged", "tags": ["release"]}, {"tags": ("release",)}, "tagged release"),
    ({"type": "PreserveTrainingData"}, {"tags": ("training",)}, "training data"),
])
def test_a_keep_rule_is_an_exception_to_its_policys_max_age(rule, kw, reason):
    document = {"policies": [{"name": "p", "rules": [{"type": "MaxAge", "days": 1}, rule]}]}
    kept, other = item(1, idle_days=5, **kw), item(2, idle_days=5)
    result = evaluate(document, kept, other)
    assert (result[kept.address].action, result[kept.address].reason) == (Action.KEEP, reason)
    assert result[other.address].action is Action.DELETE


def test_the_highest_priority_policy_that_decides_wins_and_keep_wins_a_tie():
    old = item(1, idle_days=100, tags=("x",))
    high_delete = {"name": "high", "priority": 20, "rules": [{"type": "MaxAge", "days": 1}]}
    low_keep = {"name": "low", "priority": 10, "rules": [{"type": "KeepTagged", "tags": ["x"]}]}
    assert evaluate({"policies": [high_delete, low_keep]}, old)[old.address].rule == \
        "high/MaxAge"
    tie = dict(low_keep, priority=20)
    decided = evaluate({"policies": [high_delete, tie]}, old)[old.address]
    assert (decided.action, decided.rule) == (Action.KEEP, "low/KeepTagged")
    archive = {"name": "arch", "priority": 20,
               "rules": [{"type": "MaxAge", "days": 1, "action": "archive"}]}
    assert evaluate({"policies": [high_delete, archive]}, old)[old.address].action is \
        Action.ARCHIVE
    disabled = dict(high_delete, enabled=False)
    assert evaluate({"policies": [disabled]}, old)[old.address].rule == "default"


def test_a_hold_keeps_whatever_the_policies_say():
    old = item(1, idle_days=100)
    decided = evaluate(AGE_OUT, old, holds={old.address: "case 42"})[old.address]
    assert (decided.action, decided.reason) == (Action.KEEP, "legal hold: case 42")


def test_training_data_protects_what_it_derives_from():
    raw, cleaned = item(1, idle_days=100), item(2, idle_days=100, parents=(addr(1),))
    trained = item(3, idle_days=100, parents=(addr(2),), tags=("training",))
    unrelated = item(4, idle_days=100)
    document = {"policies": [{"name": "p", "rules": [{"type": "MaxAge", "days": 1},
                                                     {"type": "PreserveTrainingData"}]}]}
    result = evaluate(document, raw, cleaned, trained, unrelated)
    assert [result[i.address].action for i in (raw, cleaned, trained, unrelated)] == \
        [Action.KEEP, Action.KEEP, Action.KEEP, Action.DELETE]
    assert "lineage" in result[raw.address].reason


def test_max_total_size_archives_the_lowest_valued_first_until_the_store_fits():
    items = [item(n, idle_days=n * 10, size=100) for n in range(1, 6)]  # older = less valuable
    document = {"policies": [{"name": "cap", "rules": [
        {"type": "MaxTotalSize", "bytes": 300}, {"type": "KeepTagged", "tags": ["x"]}]}]}
    result = evaluate(document, *items)
    archived = sorted(a for a, e in result.items() if e.action is Action.ARCHIVE)
    assert archived == [addr(4), addr(5)]
    assert all(result[a].target is Tier.COLD for a in archived)


def test_orphans_wait_out_their_grace_then_go():
    young = item(1, orphan=True, stored_at=NOW - 3_600_000)
    old = item(2, orphan=True, stored_at=NOW - 2 * DAY_MS)
    result = evaluate({}, young, old)
    assert result[young.address].action is Action.KEEP
    assert result[old.address].action is Action.DELETE


def test_value_ranks_deterministically_with_a_stable_tie_break():
    twins = [item(n, idle_days=3) for n in (5, 2, 9)]
    evaluator = Evaluator(retention_from({}), {i.address: i for i in twins}, {}, NOW, {})
    assert evaluator.ranked() == [addr(2), addr(5), addr(9)]
    busy = item(7, idle_days=0, accesses=500, quality=0.9)
    idle = item(8, idle_days=200)
    evaluator = Evaluator(retention_from({}), {i.address: i for i in (busy, idle)}, {}, NOW, {})
    assert evaluator.values[busy.address].total > evaluator.values[idle.address].total


def test_an_idle_low_value_kept_item_moves_to_the_warm_tier():
    document = {"tiers": {"warm_after_days": 10, "warm_below": 0.9}}
    decided = evaluate(document, item(1, idle_days=20))[addr(1)]
    assert (decided.action, decided.target) == (Action.KEEP, Tier.WARM)


# --- plan, apply, trash, purge, restore --------------------------------------------------------

def planned(store: Store, plan_id: str = "p1") -> None:
    store.do(PlanCleanup(plan_id))


def test_plan_then_apply_trashes_exactly_the_plan_and_purges_after_the_grace():
    store = Store()
    store.policy(dict(AGE_OUT, trash_days=7))
    store.observe(item(1, idle_days=40), item(2, idle_days=2), item(3, idle_days=50))
    planned(store)
    plan = store.state.plans["p1"]
    assert [(i.address, i.target) for i in plan.items] == [(addr(1), "trash"),
                                                            (addr(3), "trash")]
    assert not store.state.trash  # nothing happens until the plan is confirmed
    events = store.do(ApplyPlan("p1"))
    assert {e.address for e in events if isinstance(e, ItemTrashed)} == {addr(1), addr(3)}
    assert any(isinstance(e, PlanApplied) for e in events)
    purge = store.timers(events)[0]
    assert purge.due_at_ms == NOW + 7 * DAY_MS
    seq = store.state.trash[addr(1)].seq
    store.do(PurgeItem(addr(1), seq), now=purge.due_at_ms)
    assert addr(1) in store.state.purged and addr(1) not in store.state.trash
    assert "was purged" in store.refused(RestoreItems(addr(1)))
    store.do(RestoreItems(addr(3)))
    assert not store.state.trash
    # the restored item's purge timer fires later and changes nothing
    assert store.do(PurgeItem(addr(3), store.state.trash_seq), now=purge.due_at_ms) == []


def test_apply_is_refused_for_unknown_expired_or_already_applied_plans():
    store = Store()
    store.policy(dict(AGE_OUT, plan_ttl_hours=1))
    store.observe(item(1, idle_days=40))
    assert "no plan 'nope'" in store.refused(ApplyPlan("nope"))
    planned(store)
    store.now = NOW + 2 * 3_600_000
    assert "expired" in store.refused(ApplyPlan("p1"))
    store.now = NOW
    planned(store, "p2")
    store.do(ApplyPlan("p2"))
    assert "already applied" in store.refused(ApplyPlan("p2"))
    assert "already used" in store.refused(PlanCleanup("p2"))


def test_an_item_that_changed_since_the_plan_is_skipped_with_the_reason():
    store = Store()
    store.policy(AGE_OUT)
    store.observe(item(1, idle_days=40), item(2, idle_days=40), item(3, idle_days=40))
    planned(store)
    store.observe(item(1, idle_days=40, accesses=1))           # read since
    store.do(PlaceHold(addr(2), "audit"))                       # held since
    events = store.do(ApplyPlan("p1"))
    skipped = {e.address: e.reason for e in events if isinstance(e, ItemSkipped)}
    assert "changed since the plan" in skipped[addr(1)]
    assert "legal hold" in skipped[addr(2)]
    assert [e.address for e in events if isinstance(e, ItemTrashed)] == [addr(3)]


def test_a_new_descendant_protects_its_ancestors_from_a_plan_made_before_it():
    store = Store()
    store.policy({"policies": [{"name": "p", "rules": [{"type": "MaxAge", "days": 1},
                                                       {"type": "PreserveTrainingData"}]}]})
    store.observe(item(1, idle_days=40))
    planned(store)
    store.observe(item(2, parents=(addr(1),), tags=("training",)))
    events = store.do(ApplyPlan("p1"))
    assert [e.address for e in events if isinstance(e, ItemSkipped)] == [addr(1)]


def test_a_large_apply_goes_in_batches_each_resumed_by_a_timer():
    store = Store()
    store.policy(AGE_OUT)
    store.observe(*(item(n, idle_days=40) for n in range(APPLY_BATCH + 10)))
    planned(store)
    events = store.do(ApplyPlan("p1"))
    assert sum(isinstance(e, ItemTrashed) for e in events) == APPLY_BATCH
    resume = [t for t in store.timers(events) if "apply" in t.timer_id]
    assert len(resume) == 1 and resume[0].due_at_ms == NOW
    assert store.state.plans["p1"].cursor == APPLY_BATCH
    events = store.do(ContinueApply("p1", APPLY_BATCH))
    assert sum(isinstance(e, ItemTrashed) for e in events) == 10
    assert store.state.plans["p1"].status == "applied"
    assert store.do(ContinueApply("p1", APPLY_BATCH)) == []  # fired twice: nothing more


def test_archive_requests_a_tier_move_that_the_worker_reports():
    store = Store()
    store.policy({"policies": [{"name": "p", "rules": [
        {"type": "MaxAge", "days": 10, "action": "archive"}]}]})
    store.observe(item(1, idle_days=40))
    planned(store)
    events = store.do(ApplyPlan("p1"))
    moves = [e for e in events if isinstance(e, TierMoveRequested)]
    assert [(m.source, m.target) for m in moves] == [("hot", "cold")]
    store.do(ReportTierMoved(addr(1), "cold", 42))
    assert store.state.tiers[addr(1)] is Tier.COLD and not store.state.moving
    planned(store, "p2")
    assert store.state.plans["p2"].items == ()  # archived already: nothing more to do


def test_a_schedule_sets_a_durable_timer_and_a_late_run_is_skipped():
    store = Store()
    events = store.do(SetRetentionPolicy(json.dumps(dict(
        AGE_OUT, schedule={"cron": "0 3 * * *", "window_minutes": 60, "apply": True}))))
    due = store.state.next_run_at
    assert due is not None and due > NOW
    assert [t.due_at_ms for t in store.timers(events)] == [due]
    store.observe(item(1, idle_days=40))
    events = store.do(RunSchedule(due), now=due + 5 * 60_000)
    assert any(isinstance(e, ItemTrashed) for e in events)          # planned and applied
    assert store.state.next_run_at == due + DAY_MS
    late = store.state.next_run_at
    events = store.do(RunSchedule(late), now=late + 3 * 3_600_000)
    run = next(e for e in events if isinstance(e, ScheduledRun))
    assert run.plan_id == "" and "past the 60-minute window" in run.skipped_reason
    assert store.state.next_run_at == late + DAY_MS


def test_bad_commands_are_refused_with_the_reason():
    store = Store()
    assert "invalid retention policy" in store.refused(SetRetentionPolicy("policies: 3"))
    assert "not an artifact address" in store.refused(PlaceHold("nope"))
    assert "not in the trash" in store.refused(RestoreItems(addr(1)))
    bad = item_record(item(1))
    bad["size"] = -1
    assert "size must not be negative" in store.refused(ObserveArtifacts([bad]))


def test_an_archived_item_used_again_is_planned_back_to_the_hot_tier():
    store = Store()
    store.policy({"policies": [{"name": "p", "rules": [
        {"type": "MaxAge", "days": 10, "action": "archive"}]}]})
    store.observe(item(1, idle_days=40))
    planned(store)
    store.do(ApplyPlan("p1"))
    store.do(ReportTierMoved(addr(1), "cold", 42))
    store.observe(item(1, idle_days=0, accesses=3))  # read again: its cold copy came back
    planned(store, "p2")
    back = store.state.plans["p2"].items
    assert [(i.tier, i.target) for i in back] == [("cold", "hot")]
    assert "back to the hot tier" in back[0].reason


def test_the_engine_lists_what_it_deletes_and_archives():
    document = {"policies": [{"name": "p", "rules": [
        {"type": "MaxAge", "days": 10, "action": "archive"}, {"type": "MaxAge", "days": 50}]}]}
    items = [item(1, idle_days=60), item(2, idle_days=20), item(3, idle_days=1)]
    evaluator = Evaluator(retention_from(document), {i.address: i for i in items}, {}, NOW, {})
    # phases in one policy: archived after 10 days idle, deleted after 50
    assert (evaluator.deletable(), evaluator.archivable()) == ([addr(1)], [addr(2)])


# --- node outputs in the DAG's blob store -------------------------------------------------------

def test_a_node_output_is_kept_while_its_workflows_run_and_dag_output_days_after():
    document = {"dag_output_days": 30, "tiers": {"warm_after_days": 0, "warm_below": 1.0}}
    running = item(1, idle_days=0, kind="dag_output")
    recent = item(2, idle_days=10, kind="dag_output")
    old = item(3, idle_days=40, kind="dag_output")
    result = evaluate(document, running, recent, old)
    assert result[running.address].reason == "node output of a workflow still running"
    assert result[recent.address].next_change == "eligible for delete in 20 days"
    assert result[old.address].action is Action.DELETE
    assert result[old.address].rule == "dag_outputs"
    # never a tier move: node outputs stay in the DAG's blob store
    assert {result[i.address].target for i in (running, recent)} == {Tier.HOT}


def test_dag_outputs_follow_the_workflows_that_name_each_blob():
    from streams.dag.execution import ExecutionCompleted, ExecutionRestarted, NodeCompleted
    from streams.stale.observer import DagOutputs

    outputs = DagOutputs()
    outputs.take(NodeCompleted("e1", "n", 1, output_hash=addr(1)), NOW - 5 * DAY_MS)
    outputs.take(ExecutionCompleted("e1", "{}", 1, 1), NOW - 4 * DAY_MS)
    outputs.take(NodeCompleted("e2", "n", 1, output_hash=addr(2)), NOW - DAY_MS)
    stored = {addr(1): 10, addr(2): 20, addr(3): 30, addr(4): 40}
    seen: dict[str, int] = {}
    items = outputs.items(stored, seen, NOW, cataloged=[addr(4)])
    assert items[addr(1)].last_used_at == NOW - 4 * DAY_MS        # its workflow ended then
    assert items[addr(1)].stored_at <= items[addr(1)].last_used_at
    assert items[addr(2)].last_used_at == NOW                     # e2 still runs
    assert items[addr(3)].orphan and items[addr(3)].kind == "dag_output"
    assert addr(4) not in items                                   # an artifact's content
    outputs.take(ExecutionRestarted("e1", "n"), NOW)
    assert outputs.items(stored, seen, NOW, [])[addr(1)].last_used_at == NOW


def test_an_empty_observation_is_refused():
    assert "nothing observed" in Store().refused(ObserveArtifacts([]))


# --- content removed from the catalog ------------------------------------------------------

def test_removed_content_is_deleted_like_an_old_orphan_unless_held_or_still_referenced():
    keep_all = {"policies": [{"name": "keep", "priority": 50,
                              "rules": [{"type": "KeepTagged", "tags": ["x"]}]}]}
    gone = item(1, removed=True, tags=("x",))               # fresh, even tagged: removed
    held = item(2, removed=True)
    parent = item(3, removed=True)                          # a cataloged artifact derives from it
    child = item(4, parents=(addr(3),), tags=("x",))
    dead_child = item(5, removed=True, parents=(addr(6),))  # only removed content refers
    dead_parent = item(6, removed=True)
    trained_on = item(7, removed=True)
    training = item(8, parents=(addr(7),), tags=("training",))
    result = evaluate(keep_all, gone, held, parent, child, dead_child, dead_parent, trained_on,
                      training, holds={addr(2): "case 7"})
    assert (result[gone.address].action, result[gone.address].rule) == (Action.DELETE,
                                                                          "removed")
    assert "removed from the catalog" in result[gone.address].reason
    assert result[held.address].reason == "legal hold: case 7"
    assert (result[parent.address].action, result[parent.address].rule) == (Action.KEEP,
                                                                              "lineage")
    assert result[dead_child.address].action is result[dead_parent.address].action is \
        Action.DELETE
    assert (result[trained_on.address].action, result[trained_on.address].reason) == (
        Action.KEEP, "training data derives from it (lineage)")


def test_removed_content_stored_again_before_the_apply_is_skipped_not_trashed():
    store = Store()
    store.observe(item(1), item(2, removed=True))
    planned(store)
    assert [(i.address, i.target, i.rule) for i in store.state.plans["p1"].items] == [
        (addr(2), "trash", "removed")]
    store.observe(item(2))                       # cataloged again under some name
    events = store.do(ApplyPlan("p1"))
    assert not [e for e in events if isinstance(e, ItemTrashed)]
    assert "changed since the plan" in next(e for e in events
                                            if isinstance(e, ItemSkipped)).reason


# --- when an item's decision next changes --------------------------------------------------

def test_an_archived_item_says_when_its_delete_phase_comes():
    phases = {"policies": [{"name": "age", "priority": 10, "rules": [
        {"type": "MaxAge", "days": 30, "action": "archive"}, {"type": "MaxAge", "days": 365}]}]}
    archived = evaluate(phases, item(1, idle_days=60))[addr(1)]
    assert (archived.action, archived.next_change) == (Action.ARCHIVE,
                                                        "eligible for delete in 305 days")
    young = evaluate(phases, item(2, idle_days=18))[addr(2)]
    assert young.next_change == "eligible for archive in 12 days"
    # an equal-priority policy's delete does not overrule an archive: no date promised
    other = {"name": "other", "priority": 10, "rules": [{"type": "MaxAge", "days": 100}]}
    only_archive = {"name": "age", "priority": 10,
                    "rules": [{"type": "MaxAge", "days": 30, "action": "archive"}]}
    decided = evaluate({"policies": [only_archive, other]}, item(3, idle_days=60))[addr(3)]
    assert (decided.action, decided.next_change) == (Action.ARCHIVE, "")
    # a higher-priority one does
    higher = dict(other, priority=20)
    decided = evaluate({"policies": [only_archive, higher]}, item(3, idle_days=60))[addr(3)]
    assert decided.next_change == "eligible for delete in 40 days"


def test_an_item_kept_by_a_rule_changes_only_when_a_higher_priority_phase_comes():
    document = {"policies": [{"name": "p", "rules": [{"type": "MaxAge", "days": 30},
                                                     {"type": "KeepTagged", "tags": ["x"]}]}]}
    kept = evaluate(document, item(1, idle_days=10, tags=("x",)))[addr(1)]
    assert (kept.action, kept.next_change) == (Action.KEEP, "")
    above = {"name": "top", "priority": 5, "rules": [{"type": "MaxAge", "days": 50}]}
    kept = evaluate({"policies": [*document["policies"], above]},
                    item(1, idle_days=10, tags=("x",)))[addr(1)]
    assert kept.next_change == "eligible for delete in 40 days"


# --- value components ------------------------------------------------------------------------

def values(document: dict, *items: Item):
    evaluator = Evaluator(retention_from(document), {i.address: i for i in items}, {}, NOW, {})
    return evaluator.values


def test_deduplicated_or_derivable_content_is_less_unique():
    alone, twice = item(1, idle_days=5), item(2, idle_days=5, stores=4, names=("a", "b"))
    parent = item(3, idle_days=5)
    derivable = item(4, idle_days=5, parents=(addr(3),))
    orphaned_lineage = item(5, idle_days=5, parents=(addr(99),))   # its parent is gone
    found = values({}, alone, twice, parent, derivable, orphaned_lineage)
    assert found[addr(1)].uniqueness == 1.0
    assert found[addr(2)].uniqueness == 0.5                   # 1 / sqrt(4 stores)
    assert found[addr(4)].uniqueness == 0.5                   # can be derived again
    assert found[addr(5)].uniqueness == 1.0                   # cannot: nothing to derive from
    # the other components being equal, less unique is worth less
    assert found[addr(2)].total < found[addr(1)].total
    assert found[addr(4)].total < found[addr(3)].total


def test_changing_the_weights_changes_the_score():
    busy_but_poor = item(1, idle_days=60, accesses=900, quality=0.1)
    fresh_and_good = item(2, idle_days=0, accesses=0, quality=0.9)
    by_reads = {"value": {"weights": {"recency": 0, "frequency": 1, "quality": 0,
                                      "training": 0, "uniqueness": 0}}}
    by_recency = {"value": {"weights": {"recency": 1, "frequency": 0, "quality": 0,
                                        "training": 0, "uniqueness": 0}}}
    reads, recency = values(by_reads, busy_but_poor, fresh_and_good), \
        values(by_recency, busy_but_poor, fresh_and_good)
    assert reads[addr(1)].total > reads[addr(2)].total
    assert recency[addr(1)].total < recency[addr(2)].total
    assert recency[addr(2)].total == 1.0 and reads[addr(2)].total == 0.0
    # the components are the same whatever the weights: only their mix moves
    assert reads[addr(1)].components() == recency[addr(1)].components()


def test_ranking_is_deterministic_whatever_the_order_items_arrive_in():
    items = [item(n, idle_days=n % 3, accesses=n % 2) for n in range(12)]
    rankings = {tuple(Evaluator(retention_from({}), {i.address: i for i in order}, {}, NOW,
                                {}).ranked())
                for order in (items, items[::-1], items[3:] + items[:3])}
    assert len(rankings) == 1
    ranked = rankings.pop()
    found = values({}, *items)
    assert len({found[a].total for a in ranked}) < len(ranked)   # there are ties
    assert list(ranked) == sorted(found, key=lambda a: (found[a].total, a))  # broken by address


# --- dedup: one content, several names ----------------------------------------------------------

def test_content_under_two_names_one_tagged_keep_is_never_trashed():
    """The catalog keeps one entry per address: a second name on the same content is a
    dedup, and its tags are united - so the keep tag of one name protects the content all
    its names share, through the observer's fold and the plan."""
    from streams.artifacts.catalog import ARTIFACTS, StoreArtifact
    from streams.stale.observer import Catalog, items_of

    catalog = Catalog(ARTIFACTS.initial_state("default"))
    stored_at = NOW - 400 * DAY_MS
    for command in (StoreArtifact(addr(1), 100, name="scratch"),
                    StoreArtifact(addr(1), 100, name="release-1", tags=["keep"]),
                    StoreArtifact(addr(2), 100, name="scratch-2")):
        for event in ARTIFACTS.decide(catalog.state, command, stored_at):
            catalog.state = ARTIFACTS.evolve(catalog.state, event, stored_at)
    found = items_of(catalog)
    assert (found[addr(1)].names, found[addr(1)].tags, found[addr(1)].stores) == (
        ("scratch", "release-1"), ("keep",), 2)
    store = Store()
    store.policy({"policies": [{"name": "p", "rules": [
        {"type": "MaxAge", "days": 30}, {"type": "KeepTagged", "tags": ["keep"]}]}]})
    store.observe(*found.values())
    planned(store)
    plan = {i.address: i for i in store.state.plans["p1"].items}
    assert plan[addr(2)].target == "trash"
    # kept (idle and of low value, it may go to the warm tier: moved, never deleted)
    assert plan[addr(1)].target == "warm" and plan[addr(1)].reason.startswith("tagged keep")
    store.do(ApplyPlan("p1"))
    assert set(store.state.trash) == {addr(2)}
