"""`pit stale simulate` (streams/stale/simulate.py): two documents replayed day by day over the
same recorded history - the counts of each day, the bytes freed, the storage cost, the
recorded reads honoured - deterministic, and changing nothing."""

from __future__ import annotations

import json

from streams.stale.manager import (
    STALE,
    ObserveArtifacts,
    PlaceHold,
    SetRetentionPolicy,
    item_record,
)
from streams.stale.policy import DAY_MS, Item, retention_from
from streams.stale.simulate import simulate, simulation_lines

START = 1_800_000_000_000
GIB = 2 ** 30
DELETE_AT_30 = {"policies": [{"name": "age", "priority": 10,
                              "rules": [{"type": "MaxAge", "days": 30}]}], "trash_days": 2}
ARCHIVE_AT_10 = {"policies": [{"name": "age", "priority": 10,
                               "rules": [{"type": "MaxAge", "days": 10, "action": "archive"}]}]}


def addr(n: int) -> str:
    return f"sha256:{n:064x}"


def idle(n: int, days: float, at: int = START, **kw) -> Item:
    used = at - int(days * DAY_MS)
    return Item(addr(n), GIB, used, used, **kw)


def history():
    """The state at START (the current document, three 1-GiB items idle 25 days, one held),
    and what was recorded after it: item 2 read on day 3."""
    state, recorded = STALE.initial_state("default"), []

    def do(command, at, record: bool):
        nonlocal state
        for event in STALE.decide(state, command, at):
            state = STALE.evolve(state, event, at) if not record else state
            if record:
                recorded.append((at, event))

    do(SetRetentionPolicy(json.dumps(DELETE_AT_30)), START - DAY_MS, False)
    do(ObserveArtifacts([item_record(idle(n, 25)) for n in (1, 2, 3)]), START - DAY_MS, False)
    do(PlaceHold(addr(3), "case"), START - DAY_MS, False)
    read_at = START + 3 * DAY_MS - 1
    do(ObserveArtifacts([item_record(idle(2, 0, at=read_at, accesses=1))]), read_at, True)
    return state, recorded


def test_two_documents_replayed_over_the_recorded_reads_day_by_day():
    state, recorded = history()
    found = simulate(state, retention_from(ARCHIVE_AT_10), 10, START, recorded)
    assert (found["days"], found["start"], found["recorded_events"]) == (10, START, 1)
    current, candidate = found["current"], found["candidate"]
    # the current document deletes item 1 when idle past 30 days (day 6): item 2 was read on
    # day 3 (recorded), item 3 is held; its bytes are freed after the 2 trash days
    # (idle 30 days and of low value first, it moved to warm on day 5)
    assert [d["warmed"] for d in current] == [0, 0, 0, 0, 1, 0, 0, 0, 0, 0]
    assert [d["deleted"] for d in current] == [0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert [d["bytes_freed"] for d in current] == [0] * 7 + [GIB] * 3
    # per GiB and month: hot 1.0, warm 0.5
    assert [d["storage_cost"] for d in current] == [3.0] * 4 + [2.5] * 3 + [2.0] * 3
    # the candidate archives items 1 and 2 at once (idle 26 > 10); the read brings item 2
    # back to hot on day 3, counted apart from warm moves
    assert [d["archived"] for d in candidate] == [2] + [0] * 9
    assert [d["promoted"] for d in candidate] == [0, 0, 1] + [0] * 7
    assert sum(d["warmed"] for d in candidate) == sum(d["deleted"] for d in candidate) == 0
    assert candidate[0]["storage_cost"] == 2 * 0.15 + 1.0        # two cold, the held one hot
    assert candidate[2]["storage_cost"] == 0.15 + 2 * 1.0


def test_without_the_recorded_read_the_current_document_deletes_item_2_as_well():
    state, _ = history()
    found = simulate(state, retention_from(ARCHIVE_AT_10), 10, START)
    assert [d["deleted"] for d in found["current"]] == [0, 0, 0, 0, 0, 2, 0, 0, 0, 0]
    assert sum(d["promoted"] for d in found["candidate"]) == 0


def test_the_simulation_is_deterministic_and_changes_nothing():
    state, recorded = history()
    before = (state, list(recorded))
    first = simulate(state, retention_from(ARCHIVE_AT_10), 10, START, recorded)
    assert simulate(state, retention_from(ARCHIVE_AT_10), 10, START, recorded) == first
    assert (state, recorded) == before
    assert not state.plans and not state.trash and not state.moving  # nothing was decided
    assert state.tiers == STALE.initial_state("default").tiers


def test_the_policy_set_last_in_the_records_is_the_current_one():
    state, recorded = history()
    newer = STALE.decide(state, SetRetentionPolicy(json.dumps(ARCHIVE_AT_10)), START + 1)
    found = simulate(state, retention_from(ARCHIVE_AT_10), 3, START,
                     [*recorded, *((START + 1, e) for e in newer)])
    assert found["current"] == found["candidate"]


def test_simulation_lines_put_each_day_of_both_side_by_side():
    state, recorded = history()
    lines = simulation_lines(simulate(state, retention_from(ARCHIVE_AT_10), 3, START,
                                      recorded))
    assert lines[0].startswith("day  | current: warm  hot  archive  delete")
    assert len(lines) == 4
    current, candidate = (cells.split() for cells in lines[1].split("|")[1:])
    assert current == ["0", "0", "0", "0", "0.0", "3.0000"]
    assert candidate == ["0", "0", "2", "0", "0.0", "1.3000"]
