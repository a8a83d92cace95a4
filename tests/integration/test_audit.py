"""The audit log: hash chain, tamper detection, history, state as of a time, the archive."""

from __future__ import annotations

from itertools import pairwise

import pytest
from sqlalchemy import Engine, delete, insert, select, update

from projections.audit import format_row, history, state_as_of, verify
from projections.runtime import Projector
from streams.archive import (
    GENESIS,
    archive_count,
    archive_positions,
    archived_records,
    audit_log,
    row_hash,
)
from streams.component import audit_deciders
from streams.components import COMPONENTS, views
from streams.errors import AuditChainError, PitError
from streams.pool.lifecycle import ModelLifecycle, ModelState
from streams.pool.topics import POOL_EVENTS
from streams.topics import DEAD_LETTERS, RESULTS

T0 = 1_700_000_000_000


@pytest.fixture
def archived(engine: Engine, log, story) -> list:
    """The lifecycle story plus outcomes and odd records, projected and archived."""
    records = [*story,
               log.outcome("cmd-1", "m-alpha", T0 + 1),
               log.outcome("cmd-2", "m-beta", T0 + 6),
               log.append(DEAD_LETTERS, b"\xff\x00raw key", b"\x00\x00garbage", T0 + 7,
                          partition=0, headers=(("pit.error", b"bad"), ("bin", b"\xff\x00\x01"))),
               log.append(POOL_EVENTS, "m-gone", None, T0 + 8)]
    projector = Projector(engine, views())
    projector.apply_batch(records[:5])
    projector.apply_batch(records[5:])
    return records


def rows(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(audit_log).order_by(audit_log.c.seq))
                .mappings()]


def where(row: dict) -> str:
    return f"{row['topic']} partition {row['partition']} offset {row['offset']}"


def test_the_chain_verifies(engine: Engine, archived: list) -> None:
    report = verify(engine)
    assert report.ok, report.lines()
    assert report.rows == len(archived)
    stored = rows(engine)
    assert [r["seq"] for r in stored] == list(range(1, len(archived) + 1))
    assert stored[0]["prev_hash"] == GENESIS
    for before, after in pairwise(stored):
        assert after["prev_hash"] == before["hash"]
    assert all(row_hash(r) == r["hash"] for r in stored)
    assert report.head_hash == stored[-1]["hash"]
    assert report.lines() == [f"audit log OK: {len(archived)} rows, head seq {len(archived)} "
                              f"hash {stored[-1]['hash']}"]
    report.raise_for_problems()


def test_an_empty_log_verifies(engine: Engine) -> None:
    report = verify(engine)
    assert report.ok and report.rows == 0 and report.head_hash == GENESIS


@pytest.mark.parametrize("column, value", [
    ("payload_json", '{"model_id": "m-evil"}'),
    ("value", b"\x00forged bytes"),
    ("timestamp_ms", 1),
    ("key", "m-evil"),
    ("error", "nothing to see"),
    ("headers_json", '[["injected", "header"]]'),
])
def test_an_edited_row_is_named(engine: Engine, archived: list, column: str, value) -> None:
    target = rows(engine)[3]
    with engine.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == 4).values({column: value}))
    report = verify(engine)
    assert not report.ok
    assert report.problems == [
        f"row edited: seq 4 ({where(target)}): stored hash does not match its contents"]
    with pytest.raises(AuditChainError, match="seq 4"):
        report.raise_for_problems()
    assert report.lines()[-1] == f"audit log BROKEN: 1 problems in {len(archived)} rows"


def test_an_edit_that_recomputes_its_own_hash_breaks_the_next_link(engine: Engine,
                                                                   archived: list) -> None:
    stored = rows(engine)
    forged = dict(stored[2], payload_json='{"forged": true}')
    forged["hash"] = row_hash(forged)
    with engine.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == 3)
                     .values(payload_json=forged["payload_json"], hash=forged["hash"]))
    report = verify(engine)
    assert len(report.problems) == 1
    assert report.problems[0].startswith(f"chain broken at seq 4 ({where(stored[3])})")


def test_a_deleted_row_is_named(engine: Engine, archived: list) -> None:
    stored = rows(engine)
    with engine.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq.in_([5, 6])))
    report = verify(engine)
    assert report.problems[0] == f"rows deleted: seq 5..6 missing before seq 7 ({where(stored[6])})"
    assert report.problems[1].startswith("chain broken at seq 7")
    assert len(report.problems) == 2


def test_rows_deleted_at_the_end_are_named(engine: Engine, archived: list, log) -> None:
    # two more records on one partition, then the newest one is removed: no gap, no broken
    # link, but the projector's position says that offset was archived
    more = [log.transitioned("m-tail", "Cold", "Warming", T0 + 20),
            log.transitioned("m-tail", "Warming", "Hot", T0 + 21)]
    Projector(engine, views()).apply_batch(more)
    last = rows(engine)[-1]
    with engine.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq == last["seq"]))
    report = verify(engine)
    assert report.problems == [
        f"rows deleted at the end: {POOL_EVENTS} partition {more[1].partition} has rows up "
        f"to offset {more[0].offset} but offset {more[1].offset} was archived"]


def test_an_inserted_row_is_named(engine: Engine, archived: list) -> None:
    stored = rows(engine)
    n = len(stored)
    # make room at seq 4 by renumbering the rows after it, then insert a forged row there
    with engine.begin() as conn:
        for seq in range(n, 3, -1):
            conn.execute(update(audit_log).where(audit_log.c.seq == seq).values(seq=seq + 1))
        forged = dict(stored[2], seq=4, offset=999, prev_hash=stored[2]["hash"])
        forged["hash"] = row_hash(forged)  # even a well-formed row cannot be slipped in
        conn.execute(insert(audit_log).values(forged))
    report = verify(engine)
    assert not report.ok
    text = "\n".join(report.problems)
    assert f"chain broken at seq 5 ({where(stored[3])})" in text
    assert f"row edited: seq 5 ({where(stored[3])})" in text  # seq is part of the hash
    # appending a row at the end is caught by its link too
    with engine.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq == 4))
        for seq in range(5, n + 2):
            conn.execute(update(audit_log).where(audit_log.c.seq == seq).values(seq=seq - 1))
    assert verify(engine).ok
    with engine.begin() as conn:
        conn.execute(insert(audit_log).values(dict(stored[-1], seq=n + 1, offset=1000,
                                                   prev_hash=GENESIS)))
    problems = verify(engine).problems
    assert problems[0].startswith(f"chain broken at seq {n + 1}")
    assert any(p.startswith(f"row edited: seq {n + 1}") for p in problems)


def test_reordered_rows_are_named(engine: Engine, archived: list) -> None:
    stored = rows(engine)
    with engine.begin() as conn:  # swap seq 2 and 3
        conn.execute(update(audit_log).where(audit_log.c.seq == 2).values(seq=-2))
        conn.execute(update(audit_log).where(audit_log.c.seq == 3).values(seq=2))
        conn.execute(update(audit_log).where(audit_log.c.seq == -2).values(seq=3))
    report = verify(engine)
    text = "\n".join(report.problems)
    assert f"row edited: seq 2 ({where(stored[2])})" in text
    assert f"row edited: seq 3 ({where(stored[1])})" in text
    assert "chain broken at seq 2" in text


def test_reordering_within_a_partition_is_caught_even_when_rehashed(engine: Engine,
                                                                    log) -> None:
    records = [log.transitioned("m-one", "Cold", "Warming", T0),
               log.transitioned("m-one", "Warming", "Hot", T0 + 1)]
    Projector(engine, views()).apply_batch(records)
    stored = rows(engine)
    # a careful forger swaps the two rows and recomputes the whole chain
    first, second = dict(stored[1], seq=1, prev_hash=GENESIS), dict(stored[0], seq=2)
    first["hash"] = row_hash(first)
    second["prev_hash"] = first["hash"]
    second["hash"] = row_hash(second)
    with engine.begin() as conn:
        conn.execute(delete(audit_log))
        conn.execute(insert(audit_log), [first, second])
    problems = verify(engine).problems
    assert problems == [f"rows reordered: seq 2 ({where(second)}) comes after offset "
                        f"{first['offset']} of the same partition (seq 1)"]


def test_history_of_an_entity(engine: Engine, archived: list) -> None:
    events = history(engine, "m-alpha")
    assert [(e["topic"], e["event_type"]) for e in events] == [
        (POOL_EVENTS, "ModelTransitioned"), (POOL_EVENTS, "ModelTransitioned"),
        (POOL_EVENTS, "ModelUsageRecorded"), (POOL_EVENTS, "ModelUsageRecorded"),
        (POOL_EVENTS, "ModelTransitioned"), (RESULTS, "Outcome")]  # in archive order
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert events[0]["payload"]["to_state"] == "Warming"
    assert events[0]["payload"]["envelope"]["sequence"] == 1
    assert events[5]["key"] == "cmd-1" and events[5]["entity_key"] == "m-alpha"
    by_command = history(engine, "cmd-2")  # the Kafka key works too
    assert [e["topic"] for e in by_command] == [RESULTS]
    assert history(engine, "nobody") == []
    tombstone = history(engine, "m-gone")
    assert tombstone[0]["payload"] is None and tombstone[0]["value_size"] is None


def test_history_rows_print_as_one_line_each(engine: Engine, archived: list) -> None:
    lines = [format_row(row) for row in history(engine, "m-alpha")]
    assert lines[0] == (f"#1 2023-11-14T22:13:20.000Z {POOL_EVENTS}[{archived[0].partition}]@0 "
                        'ModelTransitioned m-alpha {"model_id":"m-alpha","from_state":"Cold",'
                        '"to_state":"Warming","reason":"UserRequest","time_in_previous_ms":0,'
                        '"metadata":{}}')
    assert all("\n" not in line for line in lines)
    dead = format_row(history(engine, "\\xff\\x00raw key")[0])
    assert "undecodable: UnknownSchemaError" in dead
    assert format_row(history(engine, "m-gone")[0]).endswith("m-gone tombstone")


REPLAYED = audit_deciders(COMPONENTS)


def test_state_as_of_replays_the_entity(engine: Engine, archived: list) -> None:
    assert state_as_of(engine, "m-alpha", T0 - 1, REPLAYED) is None  # nothing had happened yet
    assert state_as_of(engine, "m-alpha", T0, REPLAYED) == ModelLifecycle(
        "m-alpha", ModelState.WARMING, entered_at_ms=T0, transition_count=1)
    at_2s = state_as_of(engine, "m-alpha", T0 + 2_000, REPLAYED)
    assert at_2s.state is ModelState.HOT and at_2s.usage_count == 3
    assert at_2s.time_in_state_ms(T0 + 2_000) == 1_000
    final = state_as_of(engine, "m-alpha", T0 + 10**9, REPLAYED)
    assert (final.state, final.transition_count, final.usage_count) == (ModelState.COOLING, 3, 5)
    beta = state_as_of(engine, "m-beta", T0 + 3_000, REPLAYED)
    assert beta.state is ModelState.FAILED and beta.failure_count == 1
    # no pool events for a command
    assert state_as_of(engine, "cmd-1", T0 + 10**9, REPLAYED) is None
    with pytest.raises(PitError, match="no decider"):
        state_as_of(engine, "m-alpha", T0, REPLAYED, topic=RESULTS)


def test_the_archive_gives_back_the_exact_records(engine: Engine, archived: list) -> None:
    got = list(archived_records(engine))
    assert sorted(got, key=lambda r: (r.topic, r.partition, r.offset)) == got
    assert sorted(got, key=lambda r: (r.topic, r.partition, r.offset)) == sorted(
        archived, key=lambda r: (r.topic, r.partition, r.offset))
    dead = next(r for r in got if r.topic == DEAD_LETTERS)
    assert dead.key == b"\xff\x00raw key" and dead.value == b"\x00\x00garbage"
    assert dead.headers == (("pit.error", b"bad"), ("bin", b"\xff\x00\x01"))

    pool = list(archived_records(engine, [POOL_EVENTS]))
    assert {r.topic for r in pool} == {POOL_EVENTS}
    assert archive_count(engine, [POOL_EVENTS]) == len(pool)

    positions = archive_positions(engine)
    expected: dict = {}
    for r in archived:
        expected[(r.topic, r.partition)] = max(r.offset, expected.get((r.topic, r.partition), -1))
    assert positions == expected

    after = {tp: offset - 1 for tp, offset in positions.items()}  # only each last record
    tail = list(archived_records(engine, after=after))
    assert {(r.topic, r.partition, r.offset) for r in tail} == {
        (t, p, o) for (t, p), o in positions.items()}
    assert archive_count(engine, after=after) == len(tail)
    assert list(archived_records(engine, after=positions)) == []


def test_compaction_keeps_each_keys_latest_value_pending_ones_included(engine: Engine,
                                                                        log) -> None:
    from streams.archive import compacted_positions, keep_pending, pending_engine
    from streams.topics import SCHEMAS

    def put(key: str | None, value: bytes | None, at: int):
        return log.append(SCHEMAS, key, value, T0 + at, partition=0)

    records = [put("a/1", b'{"v": 1}', 0), put("b/1", b'{"v": 2}', 1),
               put("a/1", b'{"v": 3}', 2), put("c/1", b'{"v": 4}', 3),
               put("c/1", None, 4), put(None, b'{"v": 5}', 5)]
    Projector(engine, views()).apply_batch(records)
    pending_db = pending_engine(engine)
    assert compacted_positions(engine, pending_db, SCHEMAS) == {(0, 1), (0, 2)}
    assert compacted_positions(engine, pending_db, "no.such.topic") == set()
    # made durable by a writer, not archived yet: it supersedes the archived b/1, and a
    # pending record the archive already holds changes nothing
    keep_pending(pending_db, [put("b/1", b'{"v": 6}', 6), records[0]])
    assert compacted_positions(engine, pending_db, SCHEMAS) == {(0, 2), (0, 6)}
    if pending_db is not engine:
        pending_db.dispose()


def test_a_model_registered_and_not_yet_changed_is_cold_as_of_then(engine: Engine, log,
                                                                    story) -> None:
    registered = log.append(POOL_EVENTS, "m-new", log.codec.encode(
        "pit.pool.ModelRegistered", {
            "envelope": log.envelope("m-new", "ModelRegistered", T0 - 500),
            "model_id": "m-new", "uri": "python:x:y", "memory_mb": 10,
            "expected_load_ms": 5}), T0 - 500)
    Projector(engine, views()).apply_batch([registered, *story])
    assert state_as_of(engine, "m-new", T0 - 501, REPLAYED) is None  # not registered yet
    assert state_as_of(engine, "m-new", T0 - 100, REPLAYED) == ModelLifecycle("m-new")
