"""Issue 4, checkpoints through the embedded broker: the whole Pit crashed mid-run, after its
execution took periodic checkpoints, starts again on its data directory; the DAG processor
restores the execution from its last CheckpointTaken plus the events after it
(tests/unit/test_processor_checkpoints.py counts that work), and the execution completes with
the sequential evaluation's outputs, every node completed once.

With the checkpoint topic (pit.dag.checkpoints, streams/recovery.py): a Pit with a long
history of finished executions and one running is stopped and started again. The broker
comes back from the archive, the checkpoint topic compacted: one record per execution, an
ended marker for each finished one. The DAG processor's restore reads the events after the
running execution's last checkpoint, not the history; the execution completes with every node
completed once; a start of a finished execution sent again changes nothing."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import Counter
from dataclasses import replace

import pytest

from schemas.codec import Codec
from streams.app import Stack
from streams.client import PitClient
from streams.config import Settings
from streams.dag.bench import ExecutionWatch, Runners, crash_stack, sequential_outputs
from streams.dag.definition import OPERATORS, WILDCARD, Workflow, layered_dag
from streams.dag.execution import CheckpointTaken, NodeCompleted, StartExecution
from streams.dag.topics import DAG_CHECKPOINTS, DAG_EVENTS, DAG_TASKS
from streams.dag.workflows import start_command
from streams.history import kafka_log_reader, latest_history, read_topic
from streams.recovery import MARKS, MARKS_KEY, POINT
from streams.topics import load_catalog

pytestmark = pytest.mark.slow


HOLDING = {"held": False}  # while True, a node with the param "held" does not end


async def _held_sum(params: dict, **values: float) -> float:
    """The sum of the inputs; a node marked "held" waits while HOLDING is on: the crash
    comes before it ends, so mid-run, however fast or slow the machine is."""
    while params.get("held") and HOLDING["held"]:
        await asyncio.sleep(0.01)
    return sum(values.values())


OPERATORS.register("checkpoint_held_sum", _held_sum, inputs={WILDCARD: "float"},
                   output="float", replace=True)


def _held(base: Workflow) -> tuple[Workflow, set[str]]:
    """`base`, checkpointed every 20 events, every node summing its inputs; its sinks (the
    nodes nothing reads) held while HOLDING is on. Returns the sinks too."""
    sinks = {node.id for node in base.nodes} - {edge.from_node for edge in base.edges}
    return replace(base, checkpoint_every=20, nodes=tuple(
        replace(node, operator="checkpoint_held_sum", params={"held": node.id in sinks})
        for node in base.nodes)), sinks


def _stack(data_dir) -> Stack:
    return Stack(Settings(data_dir=data_dir), progress=False, without={"host-monitor"})


async def _runners(stack: Stack) -> Runners:
    runners = Runners(stack.settings, stack.codec, concurrency=32)
    for n in range(2):
        runners.start(f"runner-{n}")
    await runners.balanced(load_catalog()[DAG_TASKS].partitions)
    return runners


async def test_a_crashed_pit_resumes_a_checkpointed_execution(tmp_path, monkeypatch) -> None:
    base = layered_dag(300, seed=21, layers=10)
    workflow, sinks = _held(base)
    expected = sequential_outputs(base)  # the same sums
    monkeypatch.setitem(HOLDING, "held", True)  # no sink ends before the crash
    stack = await _stack(tmp_path).start()
    runners = None
    try:
        runners = await _runners(stack)
        async with PitClient(stack.settings, codec=stack.codec) as client, ExecutionWatch(
                stack.settings, stack.codec, "checkpointed") as watch:
            await client.dag.execute_workflow(workflow, execution_id="checkpointed")
            await watch.until(lambda w: len(w.of(CheckpointTaken)) >= 3, 60,
                              "three checkpoints")
    finally:
        if runners is not None:
            await runners.close(crash=True)
        await crash_stack(stack)
    assert sinks and not sinks & set(watch.completed)
    assert len(watch.completed) < len(expected)

    HOLDING["held"] = False  # the sinks end after the restart
    async with _stack(tmp_path) as stack:
        runners = await _runners(stack)
        try:
            async with ExecutionWatch(stack.settings, stack.codec, "checkpointed") as watch:
                result = await watch.end(90)
        finally:
            await runners.close()
    assert result.ok, result
    assert watch.completed == Counter(dict.fromkeys(expected, 1))
    assert {e.node_id: json.loads(e.output)["out"] for e in watch.of(NodeCompleted)} == expected
    assert len(watch.of(CheckpointTaken)) > 3  # checkpoints before and after the crash


HISTORY = 8  # finished executions before the running one


def _checkpoint_records(codec: Codec, records) -> dict[str, list[dict]]:
    """The live (non-tombstone) records of pit.dag.checkpoints, decoded, by key."""
    found: dict[str, list[dict]] = {}
    for record in records:
        if record.value is not None:
            decoded = codec.decode(record.value)
            assert decoded.name in (POINT, MARKS)
            found.setdefault(record.key.decode(), []).append(decoded.record)
    return found


async def test_a_restarted_pit_restores_from_the_checkpoint_topic(tmp_path, caplog,
                                                                   monkeypatch) -> None:
    caplog.set_level(logging.INFO, logger="streams.processor")
    history = layered_dag(40, seed=5, layers=5)
    base = layered_dag(300, seed=21, layers=10)
    running, sinks = _held(base)
    expected = sequential_outputs(base)
    monkeypatch.setitem(HOLDING, "held", True)  # "running" is still running at the stop
    stack = await _stack(tmp_path).start()
    try:
        runners = await _runners(stack)
        async with PitClient(stack.settings, codec=stack.codec) as client:
            for n in range(HISTORY):
                async with ExecutionWatch(stack.settings, stack.codec, f"done-{n}") as watch:
                    await client.dag.execute_workflow(history, execution_id=f"done-{n}")
                    assert (await watch.end(60)).ok
            async with ExecutionWatch(stack.settings, stack.codec, "running") as watch:
                await client.dag.execute_workflow(running, execution_id="running")
                await watch.until(lambda w: len(w.of(CheckpointTaken)) >= 3, 60,
                                  "three checkpoints")
        await runners.close(crash=True)
        before = {e.node_id for e in watch.of(NodeCompleted)}
        logged = await read_topic(stack.settings, DAG_EVENTS, stack.engine)
        done_events = [r.value for r in logged if r.key == b"done-0"]
    finally:
        await stack.close()  # the processors finish their batch, the archive catches up
    assert sinks and not sinks & before
    assert len(before) < len(expected)

    HOLDING["held"] = False
    caplog.clear()
    async with _stack(tmp_path) as stack:
        restored = sum(int(n) for n in re.findall(r"dag-processor restored (\d+) events",
                                                  caplog.text))
        # the history is on pit.dag.events (every node of it scheduled and completed, a longer
        # run started too); the restore read the tail after the last checkpoint
        history_events = sum(1 for record in logged if record.key != b"running")
        assert history_events >= HISTORY * 2 * len(history.nodes)
        assert 0 < restored < 300, (restored, history_events, len(logged))
        # compacted: one record per execution, the finished ones' ended markers (read as a
        # restore reads it, archive first: the running Pit trims what the archive holds)
        records = _checkpoint_records(stack.codec, await asyncio.to_thread(
            latest_history, stack.engine, DAG_CHECKPOINTS,
            kafka_log_reader(stack.settings, [DAG_CHECKPOINTS]),
            range(load_catalog()[DAG_CHECKPOINTS].partitions)))
        executions = {key: values for key, values in records.items()
                      if key != MARKS_KEY.decode()}
        assert set(executions) == {f"done-{n}" for n in range(HISTORY)} | {"running"}
        assert all(len(values) == 1 for values in executions.values())
        assert all(executions[f"done-{n}"][0]["events_offset"] == -1 for n in range(HISTORY))
        assert json.loads(executions["done-0"][0]["final"])["status"] == 2  # completed
        assert executions["running"][0]["events_offset"] >= 0

        runners = await _runners(stack)
        try:
            async with PitClient(stack.settings, codec=stack.codec) as client, \
                    ExecutionWatch(stack.settings, stack.codec, "running") as watch:
                result = await watch.end(90)
                # the same start again, and a start with a new command id: nothing changes
                again = await client.send(start_command(history, stack.settings, "done-0"),
                                          command_id="done-0/start")
                anew = await client.send(StartExecution("done-0", history.canonical_json()),
                                         command_id="done-0/start-again")
                other = await client.send(StartExecution("done-0", base.canonical_json()))
        finally:
            await runners.close()
        logged = await read_topic(stack.settings, DAG_EVENTS, stack.engine)
    assert result.ok, result
    assert watch.completed == Counter(dict.fromkeys(expected, 1))  # no node ran twice
    assert {e.node_id: json.loads(e.output)["out"] for e in watch.of(NodeCompleted)} == expected
    assert again.accepted and anew.accepted and not anew.event_ids
    assert other.status == "REJECTED" and "other arguments" in other.reason
    assert [r.value for r in logged if r.key == b"done-0"] == done_events
