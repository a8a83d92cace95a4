"""A runner's task execution (streams/dag/runner.py `NodeExecutor`, `Task`, `Offsets`): real
operators from the registry, a real blob store on disk, real threads and event loop."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from confluent_kafka import TopicPartition

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.blobs import FileBlobStore
from streams.config import Settings
from streams.dag.definition import OPERATORS
from streams.dag.runner import Completed, Failed, NodeExecutor, Offsets, Runner, Task, wall_ms
from streams.dag.topics import DAG_TASKS


def task(kind: str = "operator", *, spec: dict | None = None, inputs: dict | None = None,
         input_refs: dict | None = None, deadline_at: int = 0, node: str = "n") -> Task:
    return Task(f"ex/{node}/1", "ex", node, 1, kind, spec or {}, inputs or {},
                input_refs or {}, deadline_at)


def out(result) -> dict:
    assert isinstance(result, Completed), result
    return json.loads(result.output)


@pytest.fixture
def registry():
    registry = OPERATORS.copy()
    registry.register("scale", lambda x, params: x * params.get("factor", 1),
                      inputs={"x": "float"}, output="float")

    async def fetch(url: str) -> str:
        await asyncio.sleep(0.01)
        return f"fetched {url}"

    registry.register("fetch", fetch, output="str")
    registry.register("block", lambda seconds: time.sleep(seconds) or "woke",
                      inputs={"seconds": "float"}, output="str")
    registry.register("a_set", lambda: {1, 2}, inputs={}, output="any")
    return registry


@pytest.fixture
def executor(tmp_path, registry):
    threads = ThreadPoolExecutor(4)
    yield NodeExecutor(FileBlobStore(tmp_path / "blobs"), registry, threads=threads,
                       inline_limit=1024)
    threads.shutdown(wait=False)


async def test_an_operator_runs_with_its_inputs_and_params(executor):
    result = await executor.execute(task(spec={"operator": "add"}, inputs={"a": 1, "b": 2.5}))
    assert out(result) == {"out": 3.5} and result.branch_taken == "" and result.duration_ms >= 0
    scaled = await executor.execute(task(spec={"operator": "scale", "params": {"factor": 3}},
                                         inputs={"x": 2}))
    assert out(scaled) == {"out": 6}


async def test_an_async_operator_is_awaited(executor):
    assert out(await executor.execute(task(spec={"operator": "fetch"},
                                           inputs={"url": "u1"}))) == {"out": "fetched u1"}


async def test_a_thousand_sleeping_nodes_run_at_once_without_a_thread_each(executor):
    threads_before = threading.active_count()
    started = time.monotonic()
    results = await asyncio.gather(*(
        executor.execute(task(spec={"operator": "sleep_then_return"},
                              inputs={"value": i, "ms": 300}, node=f"n{i}"))
        for i in range(1000)))
    elapsed = time.monotonic() - started
    assert [out(r)["out"] for r in results] == list(range(1000))
    assert elapsed < 30.0  # one after another would take 300 s; 4 threads, 75 s
    assert threading.active_count() <= threads_before + 4


@pytest.mark.parametrize(("condition", "value", "taken"), [
    ({"op": "gt", "value": 3, "path": "chunks"}, {"chunks": 5, "text": "t"}, "true"),
    ({"op": "gt", "value": 3, "path": "chunks"}, {"chunks": 2, "text": "t"}, "false"),
    ({"op": "truthy", "value": None, "path": "missing"}, {"chunks": 2}, "false"),
    ({"op": "contains", "value": "x", "path": ""}, ["x", "y"], "true"),
])
async def test_a_branch_sends_its_value_to_the_output_it_takes(executor, condition, value, taken):
    result = await executor.execute(task("branch", spec={"condition": condition},
                                         inputs={"value": value}))
    assert out(result) == {taken: value} and result.branch_taken == taken


async def test_a_map_calls_its_operator_per_item_in_item_order(executor):
    result = await executor.execute(task("map", spec={"operator": "add", "item_input": "a"},
                                         inputs={"items": [1, 2, 3], "b": 10}))
    assert out(result) == {"out": [11, 12, 13]}
    # the item input defaults to the operator's only input
    lengths = await executor.execute(task("map", spec={"operator": "length"},
                                          inputs={"items": [[1], [1, 2], []]}))
    assert out(lengths) == {"out": [1, 2, 0]}


async def test_a_map_over_something_else_than_a_list_fails_for_good(executor):
    result = await executor.execute(task("map", spec={"operator": "identity"},
                                         inputs={"items": "abc"}))
    assert isinstance(result, Failed)
    assert (result.error_type, result.retryable) == ("InvalidInput", False)
    assert "not a list" in result.message


async def test_a_large_output_goes_to_the_blob_store_and_a_small_one_inline(executor):
    small = await executor.execute(task(spec={"operator": "identity"}, inputs={"value": "hi"}))
    assert small.output == '{"out":"hi"}' and small.output_hash == ""
    text = "x" * 5000
    large = await executor.execute(task(spec={"operator": "identity"}, inputs={"value": text}))
    assert isinstance(large, Completed) and large.output == ""
    assert json.loads(executor.blobs.get(large.output_hash)) == {"out": text}
    # a branch stored by hash still says which way it went
    branch = await executor.execute(task("branch", spec={"condition": {"op": "truthy"}},
                                         inputs={"value": text}))
    assert branch.output_hash and branch.branch_taken == "true"
    assert json.loads(executor.blobs.get(branch.output_hash)) == {"true": text}


async def test_inputs_held_in_the_blob_store_are_read_at_their_path(executor):
    address = executor.blobs.put(json.dumps({"out": {"parts": [5, 7]}}).encode())
    result = await executor.execute(task(
        spec={"operator": "add"}, inputs={"b": 1},
        input_refs={"a": {"hash": address, "path": ["out", "parts", 1]}}))
    assert out(result) == {"out": 8}
    missing = await executor.execute(task(
        spec={"operator": "add"}, inputs={"b": 1},
        input_refs={"a": {"hash": address, "path": ["out", "nope"]}}))
    assert isinstance(missing, Failed) and missing.error_type == "InvalidTask"


async def test_a_corrupt_input_blob_fails_the_node_for_good_naming_it(executor):
    address = executor.blobs.put(b'{"out": 1}')
    executor.blobs.path_of(address).write_bytes(b'{"out": 2}')
    result = await executor.execute(task(spec={"operator": "identity"},
                                         input_refs={"value": {"hash": address, "path": []}}))
    assert isinstance(result, Failed)
    assert (result.error_type, result.retryable) == ("BlobIntegrityError", False)
    assert address in result.message


async def test_an_operator_error_is_reported_by_its_type_name(executor):
    result = await executor.execute(task(spec={"operator": "raise_error"}, inputs={
        "message": "bad\ninput", "error": "InvalidInput"}))
    assert isinstance(result, Failed)
    assert (result.error_type, result.message, result.retryable) == ("InvalidInput",
                                                                     "bad input", True)


async def test_what_cannot_run_fails_for_good(executor):
    unknown = await executor.execute(task(spec={"operator": "nope"}))
    assert (unknown.error_type, unknown.retryable) == ("UnknownOperator", False)
    not_json = await executor.execute(task(spec={"operator": "a_set"}))
    assert (not_json.error_type, not_json.retryable) == ("InvalidOutput", False)
    kind = await executor.execute(task("teleport"))
    assert (kind.error_type, kind.retryable) == ("InvalidTask", False)
    no_models = await executor.execute(task("instrument", spec={"model": "m"}))
    assert (no_models.error_type, no_models.retryable) == ("NoModels", False)


async def test_a_node_past_its_deadline_is_abandoned_and_reported_as_a_timeout(executor):
    started = time.monotonic()
    result = await executor.execute(task(spec={"operator": "block"}, inputs={"seconds": 2},
                                         deadline_at=wall_ms() + 200))
    assert isinstance(result, Failed)
    assert (result.error_type, result.retryable) == ("Timeout", True)
    assert time.monotonic() - started < 1.5 and 150 <= result.duration_ms < 1500
    slept = await executor.execute(task(spec={"operator": "sleep_then_return"},
                                        inputs={"value": 1, "ms": 5000},
                                        deadline_at=wall_ms() + 100))
    assert slept.error_type == "Timeout"


async def test_a_task_whose_deadline_already_passed_does_not_run(executor, registry):
    calls = []
    registry.register("count", lambda: calls.append(1) or len(calls), inputs={}, output="int")
    result = await executor.execute(task(spec={"operator": "count"},
                                         deadline_at=wall_ms() - 1000))
    assert isinstance(result, Failed) and result.error_type == "Timeout"
    assert "before the task started" in result.message and calls == []
    assert out(await executor.execute(task(spec={"operator": "count"},
                                           deadline_at=wall_ms() + 5000))) == {"out": 1}


def test_a_task_from_its_record_and_a_malformed_one():
    record = {"envelope": {"correlation_id": "corr"}, "execution_id": "ex", "node_id": "n",
              "attempt": 2, "task_id": "ex/n/2", "kind": "operator",
              "spec": '{"operator":"add"}', "inputs": '{"a":1,"b":2}', "input_refs": "{}",
              "deadline_at": 123}
    parsed = Task.from_record(record)
    assert parsed == Task("ex/n/2", "ex", "n", 2, "operator", {"operator": "add"},
                          {"a": 1, "b": 2}, {}, 123, "corr")
    broken = Task.from_record({**record, "inputs": "[1", "spec": "[]"})
    assert "inputs is not JSON" in broken.problem and "spec is not a JSON object" in broken.problem


async def test_a_malformed_task_is_reported_failed_for_good(executor):
    broken = Task("ex/n/1", "ex", "n", 1, "operator", problem="inputs is not JSON")
    result = await executor.execute(broken)
    assert (result.error_type, result.message, result.retryable) == (
        "InvalidTask", "inputs is not JSON", False)


def test_offsets_commit_up_to_the_lowest_task_still_running():
    tp, other = ("t", 0), ("t", 1)
    offsets = Offsets()
    for offset in (10, 11, 12):
        offsets.take(tp, offset)
    offsets.take(other, 3)
    assert offsets.committable() == {tp: 10, other: 3}
    offsets.done(tp, 11)
    offsets.done(tp, 12)
    assert offsets.committable([tp]) == {tp: 10}  # 10 still runs: 11 and 12 wait for it
    offsets.done(tp, 10)
    offsets.committed.update(offsets.committable())
    assert offsets.committed == {tp: 13, other: 3} and offsets.committable() == {}
    assert offsets.running == {tp: set(), other: {3}}
    offsets.forget([other])
    assert offsets.committable() == {} and other not in offsets.running


def test_a_task_of_a_partition_handed_over_does_not_count_once_it_is_back():
    tp = ("t", 0)
    offsets = Offsets()
    before = offsets.take(tp, 5)
    offsets.forget([tp])  # revoked while offset 5 still ran
    again = offsets.take(tp, 5)  # assigned back: redelivered and running again
    offsets.done(tp, 5, before)  # the first run finishes late
    assert offsets.running[tp] == {5} and offsets.committable() == {tp: 5}
    offsets.done(tp, 5, again)
    assert offsets.committable() == {tp: 6}


def test_a_partition_is_released_where_its_tasks_are_done_or_where_it_started():
    worked, untouched, never_committed = ("t", 0), ("t", 1), ("t", 2)
    offsets = Offsets()
    offsets.started(worked, 4)
    offsets.started(untouched, 7)
    for offset in (4, 5):
        offsets.take(worked, offset)
    offsets.done(worked, 4)
    assert offsets.committable() == {worked: 5}  # 5 still runs
    assert offsets.releasable([worked, untouched, never_committed]) == {worked: 5, untouched: 7}


class _Record:
    """A task record as librdkafka's consumer returns it."""

    def __init__(self, partition: int, offset: int) -> None:
        self._partition, self._offset = partition, offset

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return DAG_TASKS

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return b"not a task"


class _RebalancingConsumer:
    """Returns one record of partition 0, then, inside the next consume, the group takes
    partition 0 away (librdkafka serves a rebalance inside `consume`)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def consume(self, n: int, timeout: float) -> list:
        if timeout:  # `consume_ready`'s first call
            return [_Record(0, 7)]
        self.runner._revoked(self, [TopicPartition(DAG_TASKS, 0)])
        return []

    def commit(self, **_options: object) -> list:
        return []


async def test_a_task_in_hand_when_its_partition_is_revoked_is_left_to_the_new_owner(tmp_path):
    """The rebalance ran between the two consumes of one take: the record already returned
    belongs to the new owner, who runs it. Run here as well, it ran twice (the likely cause of
    a node run twice, once, by the join-then-leave test of tests/integration/test_dag_runners.py
    under load)."""
    runner = Runner(Settings(data_dir=tmp_path), codec=Codec(EmbeddedRegistry()),
                    blobs=FileBlobStore(tmp_path / "blobs"), revoke_wait_s=0.1)
    runner.assignment = {(DAG_TASKS, 0)}
    runner._consumer = _RebalancingConsumer(runner)
    runner._loop = asyncio.get_running_loop()
    runner._kafka = ThreadPoolExecutor(1)
    try:
        await runner._take()
    finally:
        runner._kafka.shutdown()
    assert runner.assignment == set()
    assert runner.running == {}  # not started here
    assert runner.offsets.committable({(DAG_TASKS, 0)}) == {}  # nor counted as taken
