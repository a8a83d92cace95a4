"""Issue 4, checkpoints through the embedded broker: the whole Pit crashed mid-run, after its
execution took periodic checkpoints, starts again on its data directory; the DAG processor
restores the execution from its last CheckpointTaken plus the events after it
(tests/unit/test_processor_checkpoints.py counts that work), and the execution completes with
the sequential evaluation's outputs, every node completed once."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import replace

import pytest

from streams.app import Stack
from streams.client import PitClient
from streams.config import Settings
from streams.dag.bench import ExecutionWatch, Runners, crash_stack, sequential_outputs
from streams.dag.definition import OPERATORS, WILDCARD, layered_dag
from streams.dag.execution import CheckpointTaken, NodeCompleted
from streams.topics import DAG_TASKS, load_catalog

pytestmark = pytest.mark.slow


async def _slow_sum(params: dict, **values: float) -> float:
    await asyncio.sleep(0.03)  # slow enough for the crash to come mid-run
    return sum(values.values())


OPERATORS.register("checkpoint_slow_sum", _slow_sum, inputs={WILDCARD: "float"},
                   output="float", replace=True)


def _stack(data_dir) -> Stack:
    return Stack(Settings(data_dir=data_dir), progress=False, monitor_hosts=False)


async def _runners(stack: Stack) -> Runners:
    runners = Runners(stack.settings, stack.codec, concurrency=32)
    for n in range(2):
        runners.start(f"runner-{n}")
    await runners.balanced(load_catalog()[DAG_TASKS].partitions)
    return runners


async def test_a_crashed_pit_resumes_a_checkpointed_execution(tmp_path) -> None:
    base = layered_dag(300, seed=21, layers=10)
    workflow = replace(base, checkpoint_every=20, nodes=tuple(
        replace(node, operator="checkpoint_slow_sum") for node in base.nodes))
    expected = sequential_outputs(base)  # the same sums, without the sleep
    stack = await _stack(tmp_path).start()
    runners = None
    try:
        runners = await _runners(stack)
        async with PitClient(stack.settings, codec=stack.codec) as client, ExecutionWatch(
                stack.settings, stack.codec, "checkpointed") as watch:
            await client.execute_workflow(workflow, execution_id="checkpointed")
            await watch.until(lambda w: len(w.of(CheckpointTaken)) >= 3, 60,
                              "three checkpoints")
    finally:
        if runners is not None:
            await runners.close(crash=True)
        await crash_stack(stack)
    assert len(watch.completed) < len(expected)

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
