"""Issue 4, checkpoints: the DAG processor's checkpoint topic (streams/recovery.py) in process.
A restore reads what is recent, not the history; ended executions are held as their final
record and decide every command as their whole state does; records that do not fit the log
(it lost its tail) give a full restore that repairs them; an execution whose last checkpoint
lags far behind is asked for one."""

from __future__ import annotations

import json
from unittest import mock

import pytest

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams import recovery
from streams.dag.bench import T0, ProcessorRun
from streams.dag.definition import Recovery, Strategy, deep_dag, layered_dag
from streams.dag.execution import (
    CancelExecution,
    CheckpointTaken,
    ExecutionStatus,
    ReportNodeCompleted,
    ReportNodeFailed,
    ReportNodeStarted,
    StartExecution,
    TakeCheckpoint,
    TimerFired,
    decide,
    final,
    from_final,
)
from streams.dag.topics import DAG_CHECKPOINTS, DAG_EVENTS
from streams.decider import Rejection
from streams.recovery import MARKS, MARKS_KEY, POINT
from streams.topics import RESULTS

CODEC = Codec(EmbeddedRegistry())
WORKFLOW = layered_dag(30, seed=7, layers=5)
PAIR = deep_dag(2)  # A -> B
A, B = (node.id for node in PAIR.nodes)


def history(run: ProcessorRun, finished: int) -> None:
    """`finished` executions run to completion, then one running with a checkpoint."""
    for n in range(finished):
        run.send(StartExecution(f"done-{n}", WORKFLOW.canonical_json()))
        run.complete(30, f"done-{n}")
    run.send(StartExecution("live", WORKFLOW.canonical_json(), checkpoint_every=0))
    run.complete(10, "live")
    run.send(TakeCheckpoint("live"))
    run.complete(3, "live")


def points(run: ProcessorRun) -> dict[str, dict]:
    """The checkpoint topic as compaction leaves it: the latest record per key."""
    latest = {record.key: record for record in run.of(DAG_CHECKPOINTS)}
    return {key.decode(): CODEC.decode(r.value).record for key, r in latest.items()
            if r.value is not None}


def test_a_restore_reads_the_same_few_records_whatever_the_history() -> None:
    read = []
    for finished in (2, 12):
        run = ProcessorRun(CODEC, "live")
        history(run, finished)
        restore = run.checkpoint_restore()
        full = run.restored()
        assert restore.processor.entities == full.entities
        assert restore.processor.positions == full.positions
        # the points were up to date: only the marks move on to what was read
        assert [out.key for out in restore.written] == [MARKS_KEY]
        read.append(restore.applied)
        assert len(run.events()) > 90 * finished
    assert read[0] == read[1] < 30  # the events since the live execution's checkpoint


def test_the_topic_keeps_one_record_per_execution_and_an_ended_marker_once_ended() -> None:
    run = ProcessorRun(CODEC, "live")
    history(run, 2)
    run.send(StartExecution("cancelled", WORKFLOW.canonical_json()))
    run.send(CancelExecution("cancelled", "no"))
    latest = points(run)
    assert set(latest) == {"done-0", "done-1", "live", "cancelled", MARKS_KEY.decode()}
    live = latest["live"]
    assert live["events_offset"] >= 0 and live["final"] == b""
    snapshot = run.events()[live["events_offset"]:]
    assert any(CODEC.decode(r.value).name == CheckpointTaken.avro_name for r in snapshot[:5])
    for key, status in (("done-0", ExecutionStatus.COMPLETED),
                        ("cancelled", ExecutionStatus.CANCELLED)):
        assert latest[key]["events_offset"] == -1
        assert from_final(latest[key]["final"]).status is status
    marks = CODEC.decode(run.of(DAG_CHECKPOINTS)[-1].value)
    assert marks.name == MARKS and CODEC.decode(run.of(DAG_CHECKPOINTS)[-2].value).name == POINT
    # an ended execution is held small after a restore, and its final record round-trips
    held = run.checkpoint_restore().processor.state("done-0")
    assert held.plan is None and final(held) == latest["done-0"]["final"]


def ended_states():
    """Executions ended every way, as their whole state."""
    run = ProcessorRun(CODEC, "x")
    flaky = deep_dag(2, recovery=Recovery(Strategy.FAIL))
    run.send(StartExecution("completed", PAIR.canonical_json()))
    run.complete(2, "completed")
    run.send(StartExecution("failed", flaky.canonical_json()))
    run.send(ReportNodeFailed("failed", A, 1, "Boom"))
    run.send(StartExecution("cancelled", PAIR.canonical_json()))
    run.send(ReportNodeStarted("cancelled", A, 1))
    run.send(CancelExecution("cancelled", "enough"))
    run.send(StartExecution("timed", PAIR.canonical_json(), timeout_ms=5))
    run.send(TimerFired("timed", "timed/timeout"))
    states = {key: entity.state for key, entity in run.live.entities.items()}
    assert {s.status for s in states.values()} == set(ExecutionStatus) - {
        ExecutionStatus.NEW, ExecutionStatus.RUNNING}
    return states, {"completed": PAIR, "failed": flaky, "cancelled": PAIR, "timed": PAIR}


def outcome(state, command) -> object:
    try:
        return decide(state, command, 2_000_000_000_000)
    except Rejection as rejection:
        return rejection.reason


@pytest.mark.parametrize("key", ["completed", "failed", "cancelled", "timed"])
def test_an_ended_execution_decides_as_its_final_record_does(key: str) -> None:
    states, workflows = ended_states()
    whole = states[key]
    held = from_final(final(whole))
    assert held.plan is None and final(held) == final(whole)
    commands = [
        StartExecution(key, workflows[key].canonical_json()),
        StartExecution(key, workflows[key].canonical_json(), inputs=f'{{"{A}.a": 2}}'),
        StartExecution(key, layered_dag(3, seed=1).canonical_json()),
        StartExecution(key, "{"),
        ReportNodeStarted(key, A, 1), ReportNodeCompleted(key, B, 9, '{"out": 1}'),
        ReportNodeFailed(key, "zz", 1, "Boom"), ReportNodeFailed(key, A, 1, ""),
        TimerFired(key, f"{key}/timeout"), TimerFired(key, f"{key}/{A}/retry/1"),
        TimerFired(key, f"{key}/nonsense"), TimerFired(key, "other/timeout"),
        CancelExecution(key), TakeCheckpoint(key), CancelExecution("other"),
    ]
    for command in commands:
        assert outcome(held, command) == outcome(whole, command), command
    assert outcome(held, commands[0]) == []  # the same start again changes nothing
    assert "already ended" in outcome(held, CancelExecution(key))


def test_records_that_do_not_fit_a_log_that_lost_its_tail_give_a_full_restore() -> None:
    run = ProcessorRun(CODEC, "live")
    history(run, 3)
    kept = {topic: len(run.of(topic)) for topic in (DAG_EVENTS, RESULTS)}
    run.send(StartExecution("lost", WORKFLOW.canonical_json()))
    run.complete(30, "lost")  # ends: its marker is written
    run.complete(4, "live")
    # the event and results tails are gone (an archive that was behind), the records stay
    for topic, end in kept.items():
        del run.records[topic][end:]
    assert "lost" in points(run)
    with mock.patch.object(recovery.log if hasattr(recovery, "log") else mock.Mock(), "x",
                           create=True):
        restore = run.crash_and_restore()
    full = run.restored()
    assert restore.events_from == 0  # read in full
    assert restore.processor.entities == full.entities
    assert restore.processor.positions == full.positions
    assert "lost" not in restore.processor.entities
    assert "lost" not in points(run)  # deleted: a tombstone
    again = run.checkpoint_restore()  # the repaired records are trusted, and fit
    assert again.events_from > 0 and again.written == []
    assert again.processor.entities == full.entities


def test_an_execution_whose_checkpoint_lags_far_behind_is_asked_for_one() -> None:
    with mock.patch.object(recovery, "CHECKPOINT_LAG", 200):
        run = ProcessorRun(CODEC, "idle")
        run.send(StartExecution("idle", PAIR.canonical_json()))
        start = points(run)["idle"]["events_offset"]
        for n in range(4):  # others run past it on the same partition
            run.send(StartExecution(f"busy-{n}", WORKFLOW.canonical_json()))
            run.complete(30, f"busy-{n}")
        requests = [c for c in run.commands if b"checkpoint-at" in c.value]
        assert len(requests) == 1
        meta = CODEC.decode(requests[0].value).record["meta"]
        assert meta["command_id"] == f"idle/checkpoint-at/{start}"
        moved = points(run)["idle"]["events_offset"]
        assert moved > start + 200
        taken = [r for r in run.events()[moved:] if CODEC.decode(r.value).name ==
                 CheckpointTaken.avro_name]
        assert json.loads(json.dumps(len(taken))) >= 1
        assert run.checkpoint_restore().events_from == moved


def test_a_record_that_points_past_its_execution_s_start_gives_a_full_restore() -> None:
    run = ProcessorRun(CODEC, "live")
    history(run, 2)
    wrong = dict(points(run)["live"], events_offset=points(run)["live"]["events_offset"] + 1)
    run.append([run.live.book._point_output(0, recovery.Point(**wrong), T0)])
    restore = run.checkpoint_restore()
    full = run.restored()
    assert restore.events_from == 0
    assert restore.processor.entities == full.entities
    assert points(run)["live"]["events_offset"] == wrong["events_offset"]  # not written yet
    run.write(restore.written)
    assert run.checkpoint_restore().events_from == wrong["events_offset"] - 1
