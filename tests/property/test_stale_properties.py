"""Properties of the Stale Manager (streams/stale/), on random stores and histories:
* evaluation is deterministic, and a replay of the events reproduces the decided state;
* nothing a keep rule, a hold or the training lineage protects is ever planned for deletion
  (checked against the brute-force reading of the rules in streams/stale/bench.py, not the
  Evaluator's own code);
* apply trashes exactly the confirmed plan's items that are still as planned - never an item
  outside the plan, never one that changed, was held or protected since.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.stale.bench import must_keep
from streams.stale.manager import (
    STALE,
    ApplyPlan,
    ContinueApply,
    ItemTrashed,
    ObserveArtifacts,
    PlaceHold,
    PlanCleanup,
    SetRetentionPolicy,
    item_record,
)
from streams.stale.policy import DAY_MS, Action, Evaluator, Item, retention_from

NOW = 1_800_000_000_000
PROTECTING = {"policies": [
    {"name": "reclaim", "priority": 10, "rules": [
        {"type": "MaxAge", "days": 30},
        {"type": "MinAccessCount", "count": 50},
        {"type": "MinQualityScore", "score": 0.9},
        {"type": "PreserveTrainingData"}]},
    {"name": "releases", "priority": 10, "rules": [{"type": "KeepTagged", "tags": ["release"]}]},
    {"name": "archive", "priority": 5, "rules": [{"type": "MaxAge", "days": 10,
                                                  "action": "archive"}]}]}


def addr(n: int) -> str:
    return f"sha256:{n:064x}"


@st.composite
def stores(draw, max_items: int = 25) -> list[Item]:
    n = draw(st.integers(1, max_items))
    items = []
    for i in range(n):
        parents = tuple(sorted({addr(p) for p in draw(st.lists(st.integers(0, i - 1),
                                                               max_size=2))})) if i else ()
        idle = draw(st.integers(0, 90))
        used = NOW - idle * DAY_MS
        items.append(Item(
            addr(i), draw(st.integers(0, 10_000)), used - draw(st.integers(0, 5)) * DAY_MS,
            used, draw(st.integers(0, 100)),
            draw(st.none() | st.floats(0, 1)),
            tuple(draw(st.lists(st.sampled_from(["training", "release", "misc"]), max_size=2,
                                unique=True))),
            parents, (), draw(st.integers(1, 3)), draw(st.booleans()) and i % 7 == 6,
            draw(st.booleans()) and i % 5 == 4))   # removed from the catalog
    return items


def decided(events_by_command):
    """The state of folding every event, from the initial state (a replay)."""
    state = STALE.initial_state("default")
    for events, at in events_by_command:
        for event in events:
            state = STALE.evolve(state, event, at)
    return state


@settings(max_examples=60, deadline=None)
@given(stores(), st.sets(st.integers(0, 24), max_size=4))
def test_nothing_protected_is_planned_for_deletion_and_evaluation_is_deterministic(items,
                                                                                    held):
    holds = {addr(h): "case" for h in held if h < len(items)}
    retention = retention_from(PROTECTING)
    mapping = {i.address: i for i in items}
    first = Evaluator(retention, mapping, holds, NOW, {}).evaluate_all()
    again = Evaluator(retention, dict(reversed(mapping.items())), holds, NOW, {}).evaluate_all()
    assert first == again
    protected = must_keep(PROTECTING, items, holds, NOW)
    deleted = {e.address for e in first if e.action is Action.DELETE}
    archived = {e.address for e in first if e.action is Action.ARCHIVE}
    assert not deleted & protected
    assert not archived & set(holds)


@st.composite
def histories(draw):
    items = draw(stores())
    changed = draw(st.sets(st.integers(0, len(items) - 1), max_size=5))
    held = draw(st.sets(st.integers(0, len(items) - 1), max_size=3))
    return items, changed, held


@settings(max_examples=60, deadline=None)
@given(histories())
def test_apply_trashes_exactly_the_plans_items_still_as_planned(history):
    items, changed, held = history
    state = STALE.initial_state("default")
    log = []

    def do(command, at=NOW):
        nonlocal state
        events = STALE.decide(state, command, at)
        for event in events:
            state = STALE.evolve(state, event, at)
        log.append((events, at))
        return events

    import json
    do(SetRetentionPolicy(json.dumps(PROTECTING)))
    do(ObserveArtifacts([item_record(i) for i in items]))
    do(PlanCleanup("p"))
    plan = state.plans["p"]
    planned_deletes = {i.address for i in plan.items if i.target == "trash"}
    # between plan and apply: some items are read again, some held
    touched = {items[c].address for c in changed}
    if touched:
        do(ObserveArtifacts([item_record(Item(
            i.address, i.size, i.stored_at, NOW, i.accesses + 1, i.quality, i.tags, i.parents,
            i.names, i.stores, i.orphan, i.removed)) for i in items if i.address in touched]))
    for h in held:
        do(PlaceHold(items[h].address, "late hold"))
    revised = {a for a, r in state.revisions.items()
               if r != next((i.revision for i in plan.items if i.address == a), r)}
    trashed = set()
    events = do(ApplyPlan("p"))
    while True:
        trashed |= {e.address for e in events if isinstance(e, ItemTrashed)}
        if state.plans["p"].status == "applied":
            break
        events = do(ContinueApply("p", state.plans["p"].cursor))
    held_now = {items[h].address for h in held}
    assert trashed == planned_deletes - held_now - revised
    assert trashed <= planned_deletes                      # never outside the plan
    assert not trashed & must_keep(PROTECTING, items, dict.fromkeys(held_now, "late hold"),
                                   NOW)
    assert decided(log) == state                           # a replay reproduces the state


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=512), min_size=1, max_size=8, unique=True),
       st.data())
def test_restore_within_the_grace_gives_the_same_bytes_at_the_same_address(contents, data):
    """Through the decider and the worker's own bookkeeping (`Pending`) over real tiers:
    whatever a plan trashed and moved, what is restored before its purge reads back
    byte-identical at its address, and its purge timer firing later deletes nothing."""
    import tempfile
    from pathlib import Path

    from streams.blobs import FileBlobStore
    from streams.stale.manager import (
        ItemPurged,
        PurgeItem,
        ReportTierMoved,
        RestoreItems,
        TierMoveRequested,
    )
    from streams.stale.tiers import TieredStore
    from streams.stale.worker import Pending

    with tempfile.TemporaryDirectory() as root:
        tiers = TieredStore(*(FileBlobStore(Path(root) / n, kind="artifact")
                              for n in ("hot", "warm", "cold")))
        addresses = [tiers.store(c).address for c in contents]
        keep = set(data.draw(st.sets(st.sampled_from(addresses))))
        state = STALE.initial_state("default")
        pending = Pending()

        def do(command, at=NOW):
            nonlocal state
            events = STALE.decide(state, command, at)
            for event in events:
                state = STALE.evolve(state, event, at)
                pending.take("default", event)
            return events

        def work():  # what the worker does for what the events ask
            for (_, address), target in list(pending.moves.items()):
                tiers.move(address, target)
                do(ReportTierMoved(address, target, 0))
            for (_, address) in list(pending.purges):
                tiers.purge(address)
                pending.purges.pop(("default", address))

        do(SetRetentionPolicy(json.dumps({
            "policies": [{"name": "p", "rules": [
                {"type": "MaxAge", "days": 1},
                {"type": "KeepTagged", "tags": ["keep"]}]}],
            "tiers": {"warm_after_days": 1, "warm_below": 1.0}})))
        do(ObserveArtifacts([item_record(Item(
            a, 1, NOW - 5 * DAY_MS, NOW - 5 * DAY_MS, tags=("keep",) if a in keep else ()))
            for a in addresses]))
        do(PlanCleanup("p"))
        events = do(ApplyPlan("p"))
        work()
        trashed = {e.address: e for e in events if isinstance(e, ItemTrashed)}
        assert set(trashed) == set(addresses) - keep
        assert {e.address for e in events if isinstance(e, TierMoveRequested)} == keep
        if trashed:
            do(RestoreItems("p"))
        for event in trashed.values():  # the purge timers fire after the restore
            assert not [e for e in do(PurgeItem(event.address, event.trash_seq),
                                      NOW + 8 * DAY_MS) if isinstance(e, ItemPurged)]
        work()
        for address, content in zip(addresses, contents, strict=True):
            assert tiers.get(address) == content
