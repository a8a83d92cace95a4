"""Stress through the embedded broker (issue 4, "Tests"): `pit up`'s Stack in process, node
runners of one consumer group (in process, or `pit runner` subprocesses where one is
killed), workflows started with `PitClient.execute_workflow` and followed on pit.dag.events.

* a 10,000-node workflow completes with the results of a sequential evaluation;
* 1,000+ slow nodes run at once (the peak of started-not-ended nodes in the events);
* failure injection: random node failures retried, a runner SIGKILLed mid-node, the whole
  Pit (DAG processor, broker, timers, dispatcher) crashed and started again on its data
  directory, the broker down and up through the mock API.
In every case the workflow completes, every node has exactly one NodeCompleted, and its
output is what the sequential evaluation gives. The nodes of the failure tests run the
`stress_sum` operator, which records each successful run in a ledger file: a run repeated
(a redelivered task) is allowed there, its result must be ignored.

Run as a script (`python tests/integration/test_dag_stress.py runner ...`) this file is
`pit runner` with `stress_sum` registered: the subprocess runners of the kill test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from streams.app import Stack
from streams.client import PitClient
from streams.config import Settings
from streams.dag.bench import (
    ExecutionWatch,
    RunnerProcesses,
    Runners,
    crash_stack,
    sequential_outputs,
)
from streams.dag.definition import (
    OPERATORS,
    WILDCARD,
    Backoff,
    BackoffKind,
    Edge,
    Node,
    NodeKind,
    Recovery,
    Strategy,
    Workflow,
    layered_dag,
)
from streams.dag.execution import (
    CheckpointTaken,
    NodeCompleted,
    NodeFailed,
    NodeStarted,
    TakeCheckpoint,
)
from streams.dag.topics import DAG_EVENTS, DAG_TASKS
from streams.kafka import partitions_of, start_consumer
from streams.topics import load_catalog

pytestmark = pytest.mark.slow

TASK_PARTITIONS = load_catalog()[DAG_TASKS].partitions


# --- an operator with an effect ---------------------------------------------------------------

class InjectedFailure(Exception):
    """What `stress_sum` raises when its seeded coin says so (retryable)."""


CALLS: Counter = Counter()  # (ledger, node) -> runs in this process, for the seeded coin


async def _stress_sum(params: dict, **values: float) -> float:
    """sum_inputs with an effect: after `ms` of sleep, fails with probability `fail` (seeded
    by node and run), else appends {node, pid, value} to the ledger file and returns the
    sum. One write per line with O_APPEND: processes share the ledger safely."""
    await asyncio.sleep(params.get("ms", 0) / 1000)
    node, ledger = params["node"], params["ledger"]
    CALLS[(ledger, node)] += 1
    coin = random.Random(f"{params.get('seed', 0)}/{node}/{CALLS[(ledger, node)]}").random()
    if coin < params.get("fail", 0.0):
        raise InjectedFailure(f"{node}: injected failure")
    total = sum(values.values())
    line = json.dumps({"node": node, "pid": os.getpid(), "value": total}) + "\n"
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return total


OPERATORS.register("stress_sum", _stress_sum, inputs={WILDCARD: "float"}, output="float",
                   replace=True)


def ledgered(workflow: Workflow, ledger: Path, *, recovery: Recovery | None = None,
             **params) -> Workflow:
    """`workflow` (identity/sum_inputs nodes: layered_dag) with every node a stress_sum
    writing to `ledger`: the same outputs, each run recorded."""
    nodes = tuple(replace(node, operator="stress_sum",
                          params={"ledger": str(ledger), "node": node.id, **params})
                  for node in workflow.nodes)
    return replace(workflow, nodes=nodes,
                   default_recovery=recovery or workflow.default_recovery)


def ledger_runs(ledger: Path) -> Counter:
    """Successful runs per node, as the ledger recorded them."""
    if not ledger.exists():
        return Counter()
    return Counter(json.loads(line)["node"] for line in ledger.read_text().splitlines())


RETRIES = Recovery(Strategy.RETRY, max_attempts=10,
                   backoff=Backoff(BackoffKind.CONSTANT, initial_ms=20, max_ms=20))


# --- the Pit ----------------------------------------------------------------------------------

class Pit:
    """A Stack on a data directory, a client, in-process runners."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    async def start(self, runners: int = 2, **runner_options) -> Pit:
        # The projector in a process of its own, as `pit up` runs it: beside this
        # process's processors and runners it would take the GIL they need.
        self.stack = await Stack(Settings(data_dir=self.data_dir), progress=False,
                                 without={"host-monitor"}, projector_process=True).start()
        self.client = await PitClient(self.stack.settings, codec=self.stack.codec).start()
        self.runners = Runners(self.stack.settings, self.stack.codec, **runner_options)
        for n in range(runners):
            self.runners.start(f"runner-{n}")
        if runners:
            await self.runners.balanced(TASK_PARTITIONS)
        return self

    def watch(self, execution_id: str) -> ExecutionWatch:
        return ExecutionWatch(self.stack.settings, self.stack.codec, execution_id)

    async def close(self) -> None:
        await self.runners.close()
        await self.client.close()
        await self.stack.close()

    async def crash(self) -> None:
        """`pit up` killed: runners lose their broker (they are crashed too), nothing
        drains."""
        await self.runners.close(crash=True)
        with contextlib.suppress(Exception):
            await self.client.close()
        await crash_stack(self.stack)


@contextlib.asynccontextmanager
async def running_pit(data_dir: Path, **options):
    running = await Pit(data_dir).start(**options)
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
async def pit(tmp_path):
    async with running_pit(tmp_path / "pit", concurrency=600) as running:
        yield running


def assert_completed_once_with(watch: ExecutionWatch, expected: dict) -> None:
    """Completed; one NodeCompleted per node, each with the sequential evaluation's output;
    the sinks' outputs in ExecutionCompleted."""
    assert watch.result is not None and watch.result.ok, watch.result
    assert watch.completed == Counter(dict.fromkeys(expected, 1))
    outputs = {e.node_id: json.loads(e.output)["out"] for e in watch.of(NodeCompleted)}
    assert outputs == expected
    for sink, output in watch.result.outputs.items():
        assert output == {"out": expected[sink]}


# --- size -------------------------------------------------------------------------------------

async def test_a_10000_node_workflow_completes_with_the_sequential_results(tmp_path) -> None:
    workflow = layered_dag(10_000, seed=11, layers=40)
    expected = sequential_outputs(workflow)
    assert workflow.is_large  # started by hash from the definition store
    # every run reports its start, as a run of 50 ms or more does
    async with running_pit(tmp_path / "pit", concurrency=600, start_report_after_s=0) as pit:
        async with pit.watch("ten-thousand") as watch:
            await pit.client.dag.execute_workflow(workflow, execution_id="ten-thousand")
            await watch.end(timeout_s=150)
        assert_completed_once_with(watch, expected)
        assert Counter(event.node_id for event in watch.of(NodeStarted)) == Counter(
            dict.fromkeys(expected, 1))
        # Its ~7 MiB of events outgrew what the broker keeps of a partition: a client
        # reading it afterwards gets the beginning from the archive
        assert await first_kept_offset(pit.stack.settings, "ten-thousand") > 0
        assert await pit.client.dag.await_result("ten-thousand", timeout=60) == watch.result


async def first_kept_offset(settings: Settings, execution_id: str) -> int:
    """Where Kafka's copy of the execution's partition of pit.dag.events begins."""
    consumer = await start_consumer(settings)
    try:
        partitions = await partitions_of(consumer, DAG_EVENTS)
        tp = TopicPartition(DAG_EVENTS, DefaultPartitioner()(execution_id.encode(), partitions,
                                                             partitions))
        return (await consumer.beginning_offsets([tp]))[tp]
    finally:
        await consumer.stop()


def sleepy(width: int, ms: int) -> Workflow:
    """`width` nodes that sleep `ms` then return their number; a sink sums them."""
    nodes = [Node(f"s{i:04d}", NodeKind.OPERATOR, operator="sleep_then_return",
                  constants={"value": i, "ms": ms}) for i in range(width)]
    edges = [Edge("sink", node.id, node.id) for node in nodes]
    nodes.append(Node("sink", NodeKind.OPERATOR, operator="sum_inputs"))
    return Workflow("sleepy", tuple(nodes), tuple(edges), max_concurrency=width)


async def test_a_thousand_nodes_run_at_once(pit) -> None:
    width = 1_100
    async with pit.watch("at-once") as watch:
        await pit.client.dag.execute_workflow(sleepy(width, 2_000), execution_id="at-once")
        await watch.end(timeout_s=60)
    assert watch.peak >= 1_000  # started and not yet ended, all at one point of the log
    assert_completed_once_with(watch, {f"s{i:04d}": i for i in range(width)}
                               | {"sink": sum(range(width))})


# --- failure injection --------------------------------------------------------------------------

async def test_random_node_failures_are_retried_and_every_node_completes_once(pit,
                                                                               tmp_path) -> None:
    base = layered_dag(400, seed=5, layers=8)
    expected = sequential_outputs(base)
    ledger = tmp_path / "ledger.jsonl"
    workflow = ledgered(base, ledger, recovery=RETRIES, fail=0.25, seed=3)
    async with pit.watch("flaky") as watch:
        await pit.client.dag.execute_workflow(workflow, execution_id="flaky")
        await watch.end(timeout_s=90)
    assert_completed_once_with(watch, expected)
    failures = watch.of(NodeFailed)
    assert len(failures) > 50 and {f.error_type for f in failures} == {"InjectedFailure"}
    # a failed run records nothing and no task ran twice: one ledger line per node
    assert ledger_runs(ledger) == Counter(dict.fromkeys(expected, 1))


@pytest.fixture
async def pit_without_runners(tmp_path):
    async with running_pit(tmp_path / "pit", runners=0) as running:
        yield running


async def test_a_runner_killed_mid_node_has_its_tasks_run_by_the_other(pit_without_runners,
                                                                        tmp_path) -> None:
    pit = pit_without_runners
    base = layered_dag(120, seed=7, layers=4)
    expected = sequential_outputs(base)
    ledger = tmp_path / "ledger.jsonl"
    # this file as a script is `pit runner` with stress_sum registered
    runners = RunnerProcesses(pit.data_dir, (sys.executable, __file__))
    try:
        await runners.start("victim", "survivor", concurrency=64)
        async with pit.watch("killed") as watch:
            await pit.client.dag.execute_workflow(ledgered(base, ledger, ms=1_000),
                                              execution_id="killed")
            await watch.until(lambda w: any(e.runner == "victim" for e in w.of(NodeStarted)),
                              60, "node started by the victim")
            victim = runners.kill("victim")  # its node sleeps a second: it dies mid-node
            await watch.end(timeout_s=90)
    finally:
        await runners.stop()
    assert victim.returncode == -signal.SIGKILL
    assert_completed_once_with(watch, expected)
    started_by_victim = {e.node_id for e in watch.of(NodeStarted) if e.runner == "victim"}
    completed_by = {e.node_id: e.runner for e in watch.of(NodeCompleted)}
    redelivered = {node for node in started_by_victim if completed_by[node] == "survivor"}
    assert redelivered  # the victim's tasks, run again by the survivor
    assert set(ledger_runs(ledger)) == set(expected)


async def test_the_pit_crashed_mid_run_resumes_and_counts_no_node_twice(tmp_path) -> None:
    base = layered_dag(300, seed=9, layers=6)
    expected = sequential_outputs(base)
    ledger = tmp_path / "ledger.jsonl"
    pit = await Pit(tmp_path / "pit").start()
    try:
        async with pit.watch("crashed") as watch:
            await pit.client.dag.execute_workflow(ledgered(base, ledger, ms=100),
                                              execution_id="crashed")
            await watch.until(lambda w: len(w.completed) >= 100, 60, "100 completed nodes")
    finally:
        await pit.crash()  # the DAG processor, timers, dispatcher and broker die at once
    before = len(ledger_runs(ledger))
    assert before < len(expected)

    # started again on the same data directory: the broker is restored from the archive
    async with running_pit(tmp_path / "pit") as pit, pit.watch("crashed") as watch:
        await watch.end(timeout_s=90)
    assert_completed_once_with(watch, expected)
    assert set(ledger_runs(ledger)) == set(expected)


async def test_the_broker_down_and_up_mid_run(pit, tmp_path) -> None:
    base = layered_dag(300, seed=13, layers=6)
    expected = sequential_outputs(base)
    ledger = tmp_path / "ledger.jsonl"
    async with pit.watch("outage") as watch:
        await pit.client.dag.execute_workflow(ledgered(base, ledger, ms=100),
                                          execution_id="outage")
        await watch.until(lambda w: len(w.completed) >= 100, 60, "100 completed nodes")
        pit.stack.broker.broker_down(1)  # the only broker: every client loses Kafka
        # longer than the runners' session: the group forgets them and rebalances
        checkpoint = asyncio.create_task(pit.client.send(TakeCheckpoint("outage"), timeout=60))
        answered: list[float] = []
        checkpoint.add_done_callback(lambda _: answered.append(time.monotonic()))
        await asyncio.sleep(4)
        up_at = time.monotonic()
        pit.stack.broker.broker_up(1)
        assert (await checkpoint).accepted and answered[0] > up_at  # decided once it was up
        await watch.end(timeout_s=90)
    assert_completed_once_with(watch, expected)
    assert len(watch.of(CheckpointTaken)) == 1
    assert set(ledger_runs(ledger)) == set(expected)


if __name__ == "__main__":  # `pit runner` that knows stress_sum
    from streams.cli import main

    sys.exit(main(sys.argv[1:]))
