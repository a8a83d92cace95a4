"""The pure parts of the durable timers (streams/timers.py): the pending-timer table, the
helpers a decider uses, and the records and commands the service writes."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams import timers
from streams.decider import from_record, to_record
from streams.errors import SchemaError
from streams.kafka import ANY_PARTITION
from streams.pool.lifecycle import ModelState, TransitionModel, TransitionReason
from streams.pool.pool import POOL, RecordModelUsage
from streams.pool.topics import POOL_COMMANDS
from streams.timers import (
    TIMER_EVENTS,
    Timer,
    TimerCancelled,
    TimerFired,
    TimerScheduled,
    TimerTable,
    cancel_timer,
    command_output,
    fold,
    schedule_timer,
    timer_output,
    timer_topics,
)
from streams.topics import TIMERS

CODEC = Codec(EmbeddedRegistry())
T0 = 1_800_000_000_000


def timer(timer_id: str, due_at_ms: int) -> Timer:
    return Timer(schedule_timer(timer_id, due_at_ms, RecordModelUsage("m"), POOL))


def test_a_timer_is_due_at_its_due_time_not_before() -> None:
    table = TimerTable()
    assert table.schedule(timer("t", T0 + 1_000))
    assert table.next_due() == T0 + 1_000
    assert table.take_due(T0 + 999) == []
    assert [t.timer_id for t in table.take_due(T0 + 1_000)] == ["t"]
    assert table.take_due(T0 + 10_000) == [] and table.next_due() is None
    assert "t" in table.done and not table.pending


def test_due_timers_come_out_earliest_first_ties_by_id_up_to_a_limit() -> None:
    table = TimerTable()
    for timer_id, due in [("c", 30), ("a", 20), ("b", 20), ("d", 10), ("late", 99)]:
        table.schedule(timer(timer_id, T0 + due))
    assert [t.timer_id for t in table.take_due(T0 + 50, limit=3)] == ["d", "a", "b"]
    assert [t.timer_id for t in table.take_due(T0 + 50)] == ["c"]
    assert list(table.pending) == ["late"]


def test_a_cancelled_timer_never_fires_and_an_id_is_used_once() -> None:
    table = TimerTable()
    table.schedule(timer("t", T0))
    table.resolve("t")
    assert table.take_due(T0 + 1_000_000) == [] and table.next_due() is None
    assert not table.schedule(timer("t", T0 + 5))  # cancelled for good: not rescheduled
    table.schedule(timer("u", T0))
    assert not table.schedule(timer("u", T0 - 5))  # already pending: the first one stands
    assert [(t.timer_id, t.due_at_ms) for t in table.take_due(T0)] == [("u", T0)]


@given(st.dictionaries(st.text("abcdef", min_size=1, max_size=4),
                       st.tuples(st.integers(0, 1_000), st.sampled_from(["pending", "fired",
                                                                          "cancelled"])),
                       max_size=30),
       st.randoms(use_true_random=False), st.integers(0, 1_000), st.integers(0, 3))
def test_pending_is_scheduled_minus_fired_minus_cancelled_in_any_order(timers, rng, now,
                                                                       heap_slack) -> None:
    """The service reads several topics (pit.timers, decider event topics) whose records
    interleave in any order: the table must not depend on it, nor on when its heap is
    rebuilt without the cancelled timers (a small `heap_slack` rebuilds it often)."""
    records = []
    for timer_id, (due, fate) in timers.items():
        records.append(("schedule", timer(timer_id, due)))
        if fate != "pending":
            records.append(("resolve", timer_id))
    rng.shuffle(records)
    table = TimerTable(heap_slack)
    for op, value in records:
        table.schedule(value) if op == "schedule" else table.resolve(value)
    expected = sorted((due, i) for i, (due, fate) in timers.items() if fate == "pending")
    assert sorted(table.pending) == sorted(i for _, i in expected)
    taken = table.take_due(now)
    assert [(t.due_at_ms, t.timer_id) for t in taken] == [e for e in expected if e[0] <= now]
    assert all(t.due_at_ms > now for t in table.pending.values())


def test_schedule_timer_targets_the_deciders_command_topic_and_entity() -> None:
    command = TransitionModel("m", ModelState.WARMING, TransitionReason.USER_REQUEST, {"a": "b"})
    scheduled = schedule_timer("exec-1/n/timeout/1", T0, command, POOL, owner="dag:exec-1")
    assert (scheduled.target_topic, scheduled.key) == (POOL_COMMANDS, "default")  # pool id
    assert scheduled.command_type == "pit.pool.TransitionModel"
    assert json.loads(scheduled.command_json) == {
        "model_id": "m", "to_state": "Warming", "reason": "UserRequest", "metadata": {"a": "b"},
        "pool_id": "default"}
    assert schedule_timer("exec-1/n/timeout/1", T0, command, POOL, "dag:exec-1") == scheduled
    assert scheduled.entity_key == "exec-1/n/timeout/1"  # its Kafka key on any topic
    assert cancel_timer("x", "done") == TimerCancelled("x", "done")


def test_the_fired_command_is_the_scheduled_one_with_the_timer_id_as_command_id() -> None:
    command = RecordModelUsage("m", 3)
    scheduled = timer_output(CODEC, schedule_timer("t-1", T0, command, POOL), T0 - 500,
                             correlation_id="run-7")
    table = TimerTable()
    fold(table, CODEC, scheduled.value)
    pending = table.pending["t-1"]
    assert (pending.correlation_id, pending.scheduled_by) == ("run-7", "t-1/TimerScheduled")

    out = command_output(CODEC, pending, T0 + 3)
    assert (out.topic, out.partition, out.key, out.timestamp_ms) == (
        POOL_COMMANDS, ANY_PARTITION, b"default", T0 + 3)
    decoded = CODEC.decode(out.value)
    assert decoded.name == "pit.pool.RecordModelUsage"
    assert decoded.record["meta"]["command_id"] == "t-1"
    assert decoded.record["meta"]["correlation_id"] == "run-7"
    assert from_record(RecordModelUsage, decoded.record) == command


def test_timer_records_are_keyed_by_timer_and_fold_into_the_table() -> None:
    fired = timer_output(CODEC, TimerFired("t-1", T0, T0 + 7), T0 + 7,
                         causation_id="t-1/TimerScheduled")
    assert (fired.topic, fired.key) == (TIMERS, b"t-1")
    decoded = CODEC.decode(fired.value)
    assert decoded.name == TimerFired.avro_name and decoded.record["error"] is None
    envelope = decoded.record["envelope"]
    assert (envelope["entity_key"], envelope["sequence"], envelope["causation_id"]) == (
        "t-1", 2, "t-1/TimerScheduled")

    table = TimerTable()
    fold(table, CODEC, fired.value)  # fired before its schedule was read: never pending
    fold(table, CODEC, timer_output(CODEC, schedule_timer("t-1", T0, RecordModelUsage("m"),
                                                          POOL), T0).value)
    fold(table, CODEC, None)  # a restored placeholder
    fold(table, CODEC, b"not avro")
    assert not table.pending and set(table.done) == {"t-1"}


def test_fold_decodes_timer_records_only() -> None:
    """A decider's event topic is mostly other events: those are passed over by the name in
    their framing, not decoded."""
    decoded: list[str] = []

    class Counting(Codec):
        def decode(self, data: bytes):  # type: ignore[no-untyped-def]
            found = super().decode(data)
            decoded.append(found.name)
            return found

    codec = Counting(EmbeddedRegistry())
    usage = codec.encode(RecordModelUsage.avro_name, {
        **to_record(RecordModelUsage("m")), "meta": {"command_id": "c", "issued_at": T0,
                                                     "issued_by": "test"}})
    table = TimerTable()
    fold(table, codec, usage)
    fold(table, codec, timer_output(codec, schedule_timer("t-1", T0, RecordModelUsage("m"),
                                                          POOL), T0).value)
    assert decoded == [TimerScheduled.avro_name]
    assert set(table.pending) == {"t-1"}


@pytest.mark.parametrize(("command_type", "command_json", "problem"), [
    ("pit.pool.NoSuchCommand", "{}", "no schema named"),
    ("pit.pool.RecordModelUsage", '{"invocations": 1}', "model_id"),
    ("pit.pool.RecordModelUsage", "{not json", "not JSON"),
])
def test_a_command_that_cannot_be_encoded_says_why(command_type, command_json,
                                                   problem) -> None:
    bad = Timer(TimerScheduled("t", T0, POOL_COMMANDS, "default", command_type, command_json))
    with pytest.raises(SchemaError, match=problem):
        command_output(CODEC, bad, T0)


def test_the_service_follows_pit_timers_and_the_topics_of_deciders_that_ask_for_timers(
        ) -> None:
    asking = replace(POOL, name="asking", event_topic="test.asking.events",
                     events=(*POOL.events, *TIMER_EVENTS))
    assert timer_topics([POOL]) == [TIMERS]
    assert timer_topics([POOL, asking, asking]) == [TIMERS, "test.asking.events"]


def test_cancelled_timers_do_not_pile_up_in_the_heap() -> None:
    """Timeouts of an hour, each cancelled at once: the heap keeps the pending timers and at
    most as many cancelled ones again, plus its slack; what comes due is unchanged."""
    table = TimerTable(heap_slack=10)
    for n in range(1_000):
        table.schedule(timer(f"t-{n}", T0 + 3_600_000 + n))
        if n % 100:  # one in a hundred stays pending
            table.resolve(f"t-{n}")
        assert len(table._heap) <= 2 * len(table.pending) + 10
    assert [t.timer_id for t in table.take_due(T0 + 3_601_000)] == [
        f"t-{n}" for n in range(0, 1_000, 100)]


def test_a_table_remembers_the_latest_done_ids(monkeypatch) -> None:
    """Bounded: past DONE_KEPT the oldest done id is forgotten (a timer scheduled again under
    it would fire again: a duplicate command, answered by its processor with the first
    outcome)."""
    monkeypatch.setattr(timers, "DONE_KEPT", 2)
    table = TimerTable()
    for timer_id in ("t-1", "t-2", "t-3"):
        table.resolve(timer_id)
    assert list(table.done) == ["t-2", "t-3"]
