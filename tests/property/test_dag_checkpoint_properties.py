"""Issue 4, checkpoints: restoring the DAG processor from its checkpoint topic
(pit.dag.checkpoints, streams/recovery.py) equals restoring it from the whole log.

Random runs of a live processor over up to nine executions sharing a partition: starts with
random checkpoint settings and recovery strategies (restart included), runners completing
and failing nodes, TakeCheckpoint, cancels, re-sent commands, checkpoint requests of the
processor itself (a small CHECKPOINT_LAG), and crashes - the processor gone with only its
events acknowledged, or events and outcomes but not its checkpoint records - after which a
processor restored from the checkpoint records takes over and the unanswered command is
delivered again. Checked, at every restart and at the end:
* the state, sequence and time of every execution, and the positions, equal a full restore
  (ended executions held as their `final` record either way; live ones equal the live
  processor's);
* the ledger is exactly the full restore's for the commands decided since where the restore
  started reading (outcomes after `results_from`, commands of the events after
  `events_from`);
* every command decided again after the restore gives the full restore's answer if it is in
  that window, and otherwise, if it was accepted, changes nothing (a TakeCheckpoint aside);
  a new command (a start again, a cancel, a new execution) is decided exactly as after the
  full restore.
"""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams import recovery
from streams.dag.bench import CheckpointRestore, ProcessorRun
from streams.dag.definition import Recovery, Strategy, layered_dag
from streams.dag.execution import (
    CancelExecution,
    ReportNodeCompleted,
    ReportNodeFailed,
    ReportNodeStarted,
    StartExecution,
    TakeCheckpoint,
)
from streams.dag.topics import DAG_EVENTS
from streams.processor import Processor
from streams.topics import RESULTS

CODEC = Codec(EmbeddedRegistry())
EXECUTIONS = tuple(f"{slot}{k}" for slot in "xyz" for k in range(3))
STRATEGIES = (Strategy.FAIL, Strategy.SKIP, Strategy.RESTART, Strategy.RETRY)

operations = st.lists(st.tuples(
    st.sampled_from(["start", "complete", "complete", "complete", "fail", "checkpoint",
                     "cancel", "resend", "crash_events", "crash_unwritten", "restart"]),
    st.integers(0, len(EXECUTIONS) - 1), st.integers(0, 10_000)), min_size=20, max_size=100)


def start(execution_id: str, seed: int) -> StartExecution:
    workflow = layered_dag(4 + seed % 9, seed=seed, layers=3)
    workflow = replace(workflow, default_recovery=Recovery(STRATEGIES[seed % 4], 2))
    return StartExecution(execution_id, workflow.canonical_json(),
                          checkpoint_every=(seed // 4) % 4)


def report(run: ProcessorRun, slot: int, seed: int):
    """A report a runner would send on a task of the slot-th execution that has tasks."""
    if not run.tasks:
        return None
    executions = sorted({t.execution_id for t in run.tasks})
    execution_id = executions[slot % len(executions)]
    tasks = [t for t in run.tasks if t.execution_id == execution_id]
    task = tasks[seed % len(tasks)]
    run.tasks.remove(task)
    output = json.dumps({"out": sum(v or 0 for v in json.loads(task.inputs).values()) or 1})
    if seed % 3 == 0:
        return ReportNodeStarted(execution_id, task.node_id, task.attempt)
    return ReportNodeCompleted(execution_id, task.node_id, task.attempt, output, duration_ms=5)


def crash(run: ProcessorRun, command, landed) -> None:
    """Decide `command` but crash before all of it is acknowledged; a processor restored from
    the checkpoint records takes over and gets the command again unless it was answered."""
    record = run.encode(command)
    run.decide(record, landed=landed)
    run.crash_and_restore(partial(check_restore, run), unanswered=record)


def window(run: ProcessorRun, restore: CheckpointRestore) -> set[str]:
    """The commands a restore that read from its floors knows as decided."""
    ids = set()
    for record in run.of(RESULTS):
        outcome = CODEC.decode(record.value).record
        if record.offset >= restore.results_from and not outcome["duplicate"]:
            ids.add(outcome["command_id"])
    for record in run.of(DAG_EVENTS):
        if record.offset >= restore.events_from:
            ids.add(CODEC.decode(record.value).record["envelope"]["causation_id"])
    return ids


def check_restore(run: ProcessorRun, restore: CheckpointRestore) -> Processor:
    full = run.restored()
    restored = restore.processor
    assert restored.entities == full.entities
    assert restored.positions == full.positions
    assert set(restored.ledger) == window(run, restore)
    assert all(full.ledger[command_id] == outcome
               for command_id, outcome in restored.ledger.items())
    return full


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_a_checkpoint_restore_equals_a_full_restore(ops) -> None:
    with mock.patch.object(recovery, "CHECKPOINT_LAG", 30), \
            mock.patch.object(recovery, "MARKS_EVERY", 7), \
            mock.patch.object(recovery, "LEDGER_TAIL", 4):
        run = ProcessorRun(CODEC, "x")
        for op, slot, seed in ops:
            execution_id = EXECUTIONS[slot]
            if op == "start":
                run.send(start(execution_id, seed))
            elif op == "complete":
                for k in range(1 + seed % 12):
                    command = report(run, slot, seed + k)
                    if command is not None:
                        run.send(command)
            elif op in ("crash_events", "crash_unwritten"):
                command = report(run, slot, seed)
                if command is not None:
                    crash(run, command, (lambda out: out.topic == DAG_EVENTS)
                          if op == "crash_events" else (lambda out: True))
            elif op == "fail":
                command = report(run, slot, seed)
                if command is not None:
                    run.send(ReportNodeFailed(command.execution_id, command.node_id,
                                              command.attempt, "Boom",
                                              retryable=seed % 2 == 0))
            elif op == "checkpoint":
                run.send(TakeCheckpoint(execution_id))
            elif op == "cancel":
                run.send(CancelExecution(execution_id))
            elif op == "resend" and run.commands:
                run.decide(run.commands[seed % len(run.commands)])
            elif op == "restart":
                run.crash_and_restore(partial(check_restore, run))
        live = run.live
        restore = run.checkpoint_restore()
        full = check_restore(run, restore)
        for key, entity in live.entities.items():  # the live processor holds ended ones whole
            assert (entity.sequence, entity.last_at_ms) == (
                full.entities[key].sequence, full.entities[key].last_at_ms)
            if entity.state.running:
                assert entity.state == full.state(key)
        decided_again(run, restore.processor, full, window(run, restore))


def decided_again(run: ProcessorRun, restored: Processor, full: Processor,
                  known: set[str]) -> None:
    """Every earlier command again: the full restore's answer in the window, else no
    effect if it was accepted; then new commands: decided alike."""
    for record in list(run.commands):
        decoded = CODEC.decode(record.value)
        command_id = decoded.record["meta"]["command_id"]
        if command_id in known:
            assert restored.handle([record]) == full.handle([record])
        elif decoded.name != TakeCheckpoint.avro_name and full.ledger[command_id][
                "status"] == "ACCEPTED":  # (recovery.py, rule 6)
            assert [out.topic for out in restored.handle([record])] == [RESULTS]
            full.handle([record])
    fresh = [start(execution_id, 5) for execution_id in (*EXECUTIONS, "new")]
    fresh += [CancelExecution(execution_id) for execution_id in EXECUTIONS]
    for command in fresh:
        record = run.encode(command, f"again-{len(run.commands)}")
        assert restored.handle([record]) == full.handle([record])
