"""Node runners through the embedded broker: tasks on pit.dag.tasks are run by in-process
`Runner`s of one consumer group and reported on pit.dag.commands exactly once per attempt;
a crashed runner's task runs again elsewhere; large outputs go through the blob store; the
task dispatcher relays NodeScheduled from pit.dag.events and resumes where it left off."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from aiokafka import TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Consumer
from confluent_kafka import TopicPartition as KafkaPartition
from prometheus_client import REGISTRY

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.blobs import FileBlobStore
from streams.config import Settings
from streams.dag import runner as runner_module
from streams.dag.bench import Runners
from streams.dag.definition import OPERATORS
from streams.dag.dispatch import TaskDispatcher, restore_runner_positions
from streams.dag.execution import (
    ExecutionCancelled,
    NodeCompleted,
    NodeFailed,
    NodeScheduled,
    NodeStarted,
)
from streams.dag.topics import DAG_COMMANDS, DAG_EVENTS, DAG_TASKS
from streams.decider import to_record
from streams.errors import BrokerUnavailableError
from streams.history import read_topic
from streams.kafka import make_producer, produce_all, start_consumer
from streams.log import SOURCE_OFFSET, SOURCE_PARTITION, source_headers, source_of
from streams.processor import Output
from streams.topics import load_catalog
from streams.waiting import until

STARTED, COMPLETED, FAILED = ("pit.dag.ReportNodeStarted", "pit.dag.ReportNodeCompleted",
                              "pit.dag.ReportNodeFailed")
LONG_MS = 600_000  # a node that outlasts any test: its runner is stopped mid-node


async def _never_ends(value, ms: int = 0):
    await asyncio.Event().wait()


async def _at_once(value, ms: int = 0):
    return value


# A runner that must be caught mid-node never ends its sleeps; the runner that takes its
# task over ends them at once: neither waits on the clock.
STUCK, QUICK = OPERATORS.copy(), OPERATORS.copy()
for _registry, _fn in ((STUCK, _never_ends), (QUICK, _at_once)):
    _registry.register("sleep_then_return", _fn, inputs={"value": "any", "ms": "int"},
                       output="any", replace=True)


@pytest.fixture
def settings(broker, tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, bootstrap_servers=broker.bootstrap_servers)


@pytest.fixture
def codec() -> Codec:
    return Codec(EmbeddedRegistry())


def scheduled(execution: str, node: str, operator: str, inputs: dict, *, attempt: int = 1,
              kind: str = "operator", input_refs: dict | None = None) -> NodeScheduled:
    return NodeScheduled(execution, node, attempt, f"{execution}/{node}/{attempt}", kind,
                         json.dumps({"operator": operator}), json.dumps(inputs),
                         json.dumps(input_refs or {}), "operator", 1.0, 0, 0, 0.0, 0)


def encoded(codec: Codec, event: NodeScheduled | NodeStarted, sequence: int = 1) -> bytes:
    envelope = {"event_id": f"{event.execution_id}/{sequence}", "event_type": event.type_name,
                "entity_key": event.execution_id, "sequence": sequence,
                "correlation_id": event.execution_id, "causation_id": "cmd",
                "occurred_at": 1_700_000_000_000, "producer": "test"}
    return codec.encode(event.avro_name, {"envelope": envelope, **to_record(event)})


async def publish_tasks(settings: Settings, codec: Codec, tasks: list[NodeScheduled]) -> None:
    producer = make_producer(settings, partitioner="murmur2_random")
    await produce_all(producer, [Output(DAG_TASKS, -1, t.task_id.encode(), encoded(codec, t),
                                        int(time.time() * 1000)) for t in tasks])


async def reports(settings: Settings, codec: Codec) -> list[tuple[str, dict, dict]]:
    """Every report on pit.dag.commands: (record name, record, headers)."""
    found = []
    for record in await read_topic(settings, DAG_COMMANDS):
        decoded = codec.decode(record.value)
        found.append((decoded.name, decoded.record, dict(record.headers)))
    return found


TASK_PARTITIONS = load_catalog()[DAG_TASKS].partitions


@pytest.fixture
async def runners(settings, codec):
    # No decider runs here (the tasks are published by hand), so nothing would answer a
    # fenced start: these tests hold the group's own hand-overs to "exactly once". Every run
    # reports its start, so that each is seen once (`test_a_run_reports_its_start_...`).
    running = Runners(settings, codec, fence=False, start_report_after_s=0)
    yield running
    await running.close()


async def test_two_runners_in_one_group_report_each_task_exactly_once(settings, codec, runners):
    first, second = runners.start("r1"), runners.start("r2")
    await runners.balanced(TASK_PARTITIONS)
    tasks = [scheduled(f"ex{i % 7}", f"n{i}", "add", {"a": i, "b": 0.5}) for i in range(150)]
    tasks += [scheduled("ex-slow", f"s{i}", "sleep_then_return", {"value": i, "ms": 50})
              for i in range(50)]
    await publish_tasks(settings, codec, tasks)

    async def all_completed() -> bool:
        return sum(name == COMPLETED for name, _, _ in await reports(settings, codec)) >= 200
    await until(all_completed, what="200 completed reports")
    assert await runners.stop("r1") and await runners.stop("r2")

    found = await reports(settings, codec)
    ids = Counter(record["meta"]["command_id"] for _, record, _ in found)
    assert len(found) == 400 and set(ids.values()) == {1}
    expected = {t.task_id: {"out": i + 0.5} for i, t in enumerate(tasks[:150])}
    expected |= {t.task_id: {"out": i} for i, t in enumerate(tasks[150:])}
    completed = {f"{r['execution_id']}/{r['node_id']}/{r['attempt']}": r
                 for name, r, _ in found if name == COMPLETED}
    assert {task_id: json.loads(r["output"]) for task_id, r in completed.items()} == expected
    # both runners took a share, each completed report names who ran it
    assert first.counts["completed"] > 0 and second.counts["completed"] > 0
    assert first.counts["completed"] + second.counts["completed"] == 200
    # acknowledged by the broker but answered by no decider (none runs here): still owed,
    # so a runner would send them again after a reconnect
    assert len(first.owed) + len(second.owed) == 200
    assert Counter(r["runner"] for r in completed.values()) == {
        "r1": first.counts["completed"], "r2": second.counts["completed"]}
    # the final report carries the task's position; the commands are keyed by execution
    assert all({"pit.task.partition", "pit.task.offset"} <= set(headers)
               for name, _, headers in found if name == COMPLETED)

    # everything was committed: a runner joining the group later runs nothing again
    third = runners.start("r3")
    await runners.balanced(TASK_PARTITIONS)
    await asyncio.sleep(0.5)
    assert await runners.stop("r3") and third.counts == {"completed": 0, "failed": 0,
                                                           "skipped": 0, "over_elsewhere": 0}
    assert len(await reports(settings, codec)) == 400


async def test_a_run_reports_its_start_only_once_it_has_lasted_a_while(settings, codec,
                                                                         runners):
    """A run that ends within `start_report_after_s` sends only its final report; a longer
    one reports its start once, before its end in the log."""
    runners.start("r1", start_report_after_s=0.2)
    await runners.balanced(TASK_PARTITIONS)
    quick = [scheduled("ex-quick", f"q{i}", "add", {"a": i, "b": 1}) for i in range(20)]
    slow = [scheduled("ex-slow", f"s{i}", "sleep_then_return", {"value": i, "ms": 600})
            for i in range(5)]
    await publish_tasks(settings, codec, quick + slow)

    async def all_final() -> bool:
        return sum(name == COMPLETED for name, _, _ in await reports(settings, codec)) == 25
    await until(all_final, what="25 completed reports")
    reported = await reports(settings, codec)  # each partition in offset order
    starts = {r["node_id"]: i for i, (name, r, _) in enumerate(reported) if name == STARTED}
    ends = {r["node_id"]: i for i, (name, r, _) in enumerate(reported) if name == COMPLETED}
    assert set(starts) == {f"s{i}" for i in range(5)}  # none for the quick ones
    assert all(starts[node] < ends[node] for node in starts)  # one partition: the execution's
    assert all(r["runner"] == "r1" and r["duration_ms"] >= 0
               for name, r, _ in reported if name == COMPLETED)


class SideEffects:
    """`sleep_then_return` nodes whose every run appends a line to a file: what a user would
    see of a node run twice."""

    def __init__(self, path) -> None:
        self.path = path
        self.operators = OPERATORS.copy()
        self.operators.register("sleep_then_return", self._run,
                                inputs={"value": "any", "ms": "int"}, output="any",
                                replace=True)

    async def _run(self, value, ms: int = 0):
        with self.path.open("a") as out:
            out.write(f"{value}\n")
        await asyncio.sleep(ms / 1000)
        return value

    def runs(self) -> Counter:
        return Counter(self.path.read_text().split()) if self.path.exists() else Counter()

    async def ran(self, count: int) -> bool:
        return sum(self.runs().values()) >= count

    @staticmethod
    async def publish(settings: Settings, codec: Codec, execution: str, count: int) -> None:
        await publish_tasks(settings, codec, [
            scheduled(execution, f"n{i:03d}", "sleep_then_return", {"value": f"n{i:03d}",
                                                                     "ms": 40})
            for i in range(count)])

    @staticmethod
    def once_each(count: int) -> Counter:
        return Counter({f"n{i:03d}": 1 for i in range(count)})


async def test_a_runner_joining_then_one_leaving_runs_no_task_twice(settings, codec, runners,
                                                                    tmp_path):
    """200 short nodes with one runner; a second joins partway, then the first leaves as on
    SIGTERM (drain, commit, leave): every side effect happens exactly once."""
    effects = SideEffects(tmp_path / "effects.txt")
    first = runners.start("first", operators=effects.operators, concurrency=4)
    await runners.balanced(TASK_PARTITIONS)
    await effects.publish(settings, codec, "ex-members", 200)
    await until(lambda: effects.ran(20), what="the first runner to be under way")
    second = runners.start("second", operators=effects.operators, concurrency=4)
    await runners.balanced(TASK_PARTITIONS)
    await until(lambda: effects.ran(100), timeout_s=60, what="half the nodes run")
    assert await runners.stop("first")  # drained: nothing abandoned
    await until(lambda: effects.ran(200), timeout_s=60, what="every node run")
    assert await runners.stop("second")

    assert effects.runs() == effects.once_each(200)  # none twice, none lost
    assert first.counts["completed"] > 0 and second.counts["completed"] > 0
    assert first.counts["completed"] + second.counts["completed"] == 200
    found = await reports(settings, codec)
    assert Counter(name for name, _, _ in found) == {STARTED: 200, COMPLETED: 200}


async def test_a_runner_given_partitions_waits_for_their_late_release(settings, codec, runners,
                                                                      tmp_path, monkeypatch):
    """The group refuses every commit of the first runner from when it holds its partitions
    until the second runner is given some (as while a group rebalances: none of its
    positions is committed), and its release fails in the revoke callback, then lands 0.4 s
    after the second runner was given partitions (as on a loaded machine): the second
    starts them only then, so nothing the first finished runs again."""
    effects = SideEffects(tmp_path / "effects.txt")
    first = runners.start("first", operators=effects.operators, concurrency=4)
    refusing = threading.Event()  # the first runner holds its partitions
    settled = threading.Event()  # the second runner was given partitions
    late_releases = []
    commit = runner_module._committed

    def released_late(consumer, offsets):
        if refusing.is_set() and not settled.is_set() and consumer is first._consumer:
            return set()
        if any(p.metadata == first.released for p in offsets):
            if not settled.is_set():
                return set()
            late_releases.append(len(offsets))
            time.sleep(0.4)
        return commit(consumer, offsets)

    monkeypatch.setattr(runner_module, "_committed", released_late)
    await runners.balanced(TASK_PARTITIONS)
    refusing.set()
    await effects.publish(settings, codec, "ex-late", 200)
    await until(lambda: effects.ran(20), what="the first runner to be under way")
    lines: list[str] = []
    second = runners.start("second", operators=effects.operators, concurrency=4,
                           say=lines.append)
    given = second._assigned

    def assigned(consumer, partitions):
        if partitions:
            settled.set()
        given(consumer, partitions)

    second._assigned = assigned  # type: ignore[method-assign]
    await runners.balanced(TASK_PARTITIONS)
    await until(lambda: effects.ran(200), timeout_s=60, what="every node run")
    await runners.close()

    assert late_releases  # the release did come late
    assert effects.runs() == effects.once_each(200)  # none twice, none lost
    assert not [line for line in lines if "did not release" in line]


async def test_a_runner_whose_group_refused_every_commit_hands_over_what_it_ran(
        settings, codec, runners, tmp_path):
    """The group refuses every commit of the first runner, from its start to its leave:
    its partitions have no position in the group at all. It runs 100 nodes; a second
    runner joins and 100 more come; then the first leaves. The second starts each partition
    where the first released it in the hand-over group, and no node runs twice (this test
    holds the group's hand-over alone: no decider fences a start)."""
    effects = SideEffects(tmp_path / "effects.txt")
    first = runners.start("first", operators=effects.operators, concurrency=4)
    commit = runner_module._committed

    def refused_by_the_group(consumer, offsets):
        return set() if consumer is first._consumer else commit(consumer, offsets)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner_module, "_committed", refused_by_the_group)
        await runners.balanced(TASK_PARTITIONS)
        await effects.publish(settings, codec, "ex-refused", 100)
        await until(lambda: effects.ran(100), timeout_s=60, what="the first 100 nodes run")
        second = runners.start("second", operators=effects.operators, concurrency=4)
        await runners.balanced(TASK_PARTITIONS)
        await publish_tasks(settings, codec, [
            scheduled("ex-refused", f"n{i:03d}", "sleep_then_return", {"value": f"n{i:03d}",
                                                                       "ms": 40})
            for i in range(100, 200)])
        await until(lambda: effects.ran(150), timeout_s=60, what="150 nodes run")
        assert await runners.stop("first")
    await until(lambda: effects.ran(200), timeout_s=60, what="every node run")
    assert await runners.stop("second")
    assert effects.runs() == effects.once_each(200)  # none twice, none lost
    assert second.counts["completed"] > 0


def test_a_partition_given_back_starts_where_its_owed_release_says(settings, codec):
    """A runner gave a partition up, its release is not committed yet (the group refused
    every commit of its meanwhile, so the hand-over group still says it holds the partition
    where it started), and the partition comes back to it: it starts where its release
    says, not at its older hold, and owes that release no more (it holds the partition
    again). Seen once in six loaded runs of this file: tasks run twice."""
    runner = runner_module.Runner(settings, runner_id="back", codec=codec, fence=False)
    config = {"bootstrap.servers": settings.bootstrap_servers, "enable.auto.commit": False}
    group = Consumer({**config, "group.id": runner.group})
    runner._holds = Consumer({**config, "group.id": runner_module.handover_group(runner.group)})
    try:
        runner._holds.commit(offsets=[KafkaPartition(DAG_TASKS, 0, 0, metadata=runner.held)],
                             asynchronous=False)
        runner.handover[(DAG_TASKS, 0)] = 7
        [start] = runner._handed_over(group, [KafkaPartition(DAG_TASKS, 0)])
        assert (start.offset, runner.handover) == (7, {})
    finally:
        group.close()
        runner._holds.close()
        runner._threads.shutdown()


def committed_positions(settings: Settings, group: str) -> dict[int, tuple[int, str]]:
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": group})
    try:
        found = consumer.committed([KafkaPartition(DAG_TASKS, p)
                                    for p in range(TASK_PARTITIONS)], timeout=10)
    finally:
        consumer.close()
    return {p.partition: (p.offset, p.metadata) for p in found}


async def test_a_hold_that_failed_is_made_by_the_next_commit(
        settings, codec, runners, tmp_path, monkeypatch):
    """The runner's holds on its partitions fail (the broker failed the request): the
    runner works meanwhile, and its next commit holds every partition where it is, the
    untouched ones included."""
    effects = SideEffects(tmp_path / "effects.txt")
    refused, holding = [], threading.Event()
    commit = runner_module._committed

    def holds_refused(consumer, offsets):
        if not holding.is_set() and any(p.metadata.startswith(runner_module.HELD)
                                        for p in offsets):
            refused.append(len(offsets))
            return set()
        return commit(consumer, offsets)

    monkeypatch.setattr(runner_module, "_committed", holds_refused)
    await effects.publish(settings, codec, "ex-held", 20)
    only = runners.start("only", operators=effects.operators)
    await until(lambda: effects.ran(20), what="every task run while unheld")
    assert len(only.unheld) == TASK_PARTITIONS and refused
    holding.set()
    await until(lambda: asyncio.sleep(0, not only.unheld), what="every partition held")
    held = committed_positions(settings, runner_module.handover_group(only.group))
    assert {note for _, note in held.values()} == {only.held}
    await runners.close()
    assert effects.runs() == effects.once_each(20)
    # released as the runner left, at the end of what it ran, where the group's are
    released = committed_positions(settings, runner_module.handover_group(only.group))
    assert {note for _, note in released.values()} == {only.released}
    assert sum(offset for offset, _ in released.values()) == 20
    assert {p: offset for p, (offset, _) in released.items()} == {
        p: offset for p, (offset, _) in committed_positions(settings, only.group).items()}


async def test_a_runner_stopped_mid_rebalance_holds_no_partition_when_it_closes(
        settings, codec, runners, monkeypatch):
    """librdkafka aborts the process (`!rd_kafka_assignment_in_progress`) or hangs when a
    consumer closes while a rebalance is moving its partitions: a stopping runner leaves
    the group and waits until it holds nothing before it closes its consumer."""
    held_at_close: list[int] = []

    class Recording(Consumer):
        subscribed = False  # the group's consumer (the hand-over group's never subscribes)

        def subscribe(self, *args, **kwargs) -> None:
            self.subscribed = True
            super().subscribe(*args, **kwargs)

        def close(self) -> None:
            if self.subscribed:
                held_at_close.append(len(self.assignment()))
            super().close()

    monkeypatch.setattr(runner_module, "Consumer", Recording)
    first = runners.start("first")
    await until(lambda: asyncio.sleep(0, bool(first.assignment)), what="the first's partitions")
    runners.start("second")  # the group rebalances to take it in...
    assert await runners.stop("first")  # ...while the first stops
    await runners.balanced(TASK_PARTITIONS)  # the second holds every partition
    await runners.close()
    assert held_at_close == [0, 0]


async def test_reports_made_together_go_in_one_produce_each_on_its_executions_partition(
        settings, codec, monkeypatch) -> None:
    """Reports made while an earlier one is on its way go out together: forty at once take
    at most two produce rounds (the first report's, then the rest), not forty. Each lands
    on the partition aiokafka's partitioner gives its execution id, where the execution's
    other commands go (a client's StartExecution, say): the decider holding the execution
    reads it there."""
    rounds: list[int] = []
    produce_all = runner_module.produce_all

    async def counted(producer, outputs, *args, **kwargs):
        outputs = list(outputs)
        rounds.append(len(outputs))
        return await produce_all(producer, outputs, *args, **kwargs)

    monkeypatch.setattr(runner_module, "produce_all", counted)
    tasks = [runner_module.Task(f"e{n}/n/1", f"e{n}", "n", 1, "operator") for n in range(40)]
    reporter = await runner_module.KafkaReporter(settings, codec, "r1").start()
    try:
        await asyncio.gather(*(reporter.finished(task, runner_module.Completed('{"x": 1}'))
                               for task in tasks))
    finally:
        await reporter.close()
    assert sum(rounds) == 40 and len(rounds) <= 2, rounds
    partitions = list(range(load_catalog()[DAG_COMMANDS].partitions))
    landed = {record.key: record.partition for record in await read_topic(settings,
                                                                           DAG_COMMANDS)}
    assert landed == {task.execution_id.encode(): DefaultPartitioner()(
        task.execution_id.encode(), partitions, partitions) for task in tasks}


async def test_a_report_to_a_closed_reporter_fails_at_once(settings, codec) -> None:
    """A reporter closed (its broker gone, say) fails a report at once with a clear error,
    which the runner answers by sending it again on its next connection."""
    reporter = await runner_module.KafkaReporter(settings, codec, "r1").start()
    await reporter.close()
    task = runner_module.Task("e/n/1", "e", "n", 1, "operator")
    with pytest.raises(BrokerUnavailableError, match="reporter is closed"):
        await reporter.finished(task, runner_module.Completed("{}"))


async def test_a_crashed_runners_task_is_run_again_by_the_other(settings, codec, runners):
    runners.start("victim", operators=STUCK)
    await runners.balanced(TASK_PARTITIONS)
    await publish_tasks(settings, codec, [
        scheduled("ex-crash", "slow", "sleep_then_return", {"value": "done", "ms": LONG_MS})])

    async def started() -> bool:
        return any(name == STARTED for name, _, _ in await reports(settings, codec))
    await until(started, what="the victim to start the task")
    await runners.crash("victim")
    survivor = runners.start("survivor", operators=QUICK)

    async def completed() -> bool:
        return any(name == COMPLETED for name, _, _ in await reports(settings, codec))
    await until(completed, timeout_s=30, what="the survivor to complete the task")
    assert await runners.stop("survivor")
    found = await reports(settings, codec)
    assert [(name, r["runner"]) for name, r, _ in found] == [
        (STARTED, "victim"), (STARTED, "survivor"), (COMPLETED, "survivor")]
    # the same attempt run again: a start of its own (a second NodeStarted, so the
    # node-runs view shows the run), while a report sent again keeps its command id
    first_start, second_start = (r["meta"]["command_id"] for _, r, _ in found[:2])
    assert first_start.startswith("ex-crash/slow/1/started/victim/")
    assert second_start.startswith("ex-crash/slow/1/started/survivor/")
    assert found[2][1]["meta"]["command_id"] == "ex-crash/slow/1/completed"
    assert json.loads(found[2][1]["output"]) == {"out": "done"}
    assert survivor.counts["completed"] == 1


async def test_large_outputs_and_inputs_go_through_the_blob_store(settings, codec, runners):
    blobs = FileBlobStore(settings.data_dir / "blobs")
    text = "lorem ipsum " * 20_000  # 240 KB: far above the inline limit
    source = blobs.put(json.dumps({"out": {"text": text}}).encode())
    runners.start("r1", inline_limit=4096)
    await runners.balanced(TASK_PARTITIONS)
    await publish_tasks(settings, codec, [
        scheduled("ex-big", "big", "identity", {}, input_refs={
            "value": {"hash": source, "path": ["out", "text"]}}),
        scheduled("ex-big", "small", "length", {"items": [1, 2, 3]})])

    async def completed() -> bool:
        return sum(name == COMPLETED for name, _, _ in await reports(settings, codec)) == 2
    await until(completed, what="both tasks to complete")
    done = {r["node_id"]: r for name, r, _ in await reports(settings, codec)
            if name == COMPLETED}
    big, small = done["big"], done["small"]
    assert big["output"] == "" and big["output_hash"].startswith("sha256:")
    assert json.loads(blobs.get(big["output_hash"])) == {"out": text}
    assert json.loads(small["output"]) == {"out": 3} and small["output_hash"] == ""


async def test_a_failing_task_is_reported_failed_with_its_error(settings, codec, runners):
    runners.start("r1")
    await runners.balanced(TASK_PARTITIONS)
    await publish_tasks(settings, codec, [scheduled("ex-f", "boom", "raise_error", {
        "message": "no such document", "error": "InvalidInput"})])

    async def failed() -> bool:
        return any(name == FAILED for name, _, _ in await reports(settings, codec))
    await until(failed, what="the failure report")
    (report,) = [r for name, r, _ in await reports(settings, codec) if name == FAILED]
    assert (report["error_type"], report["message"], report["retryable"], report["attempt"]) \
        == ("InvalidInput", "no such document", True, 1)
    assert report["meta"]["command_id"] == "ex-f/boom/1/failed"


# --- the task dispatcher ----------------------------------------------------------------------

async def produce_events(settings: Settings, codec: Codec, events, partition: int) -> None:
    producer = make_producer(settings)
    await produce_all(producer, [
        Output(DAG_EVENTS, partition, e.execution_id.encode(), encoded(codec, e, n),
               1_700_000_000_000) for n, e in enumerate(events, 1)])


async def relay(settings, codec, stop_after: int, **options) -> TaskDispatcher:
    """Run a dispatcher until pit.dag.tasks holds `stop_after` records."""
    dispatcher = TaskDispatcher(settings, codec, **options)
    stop = asyncio.Event()
    running = asyncio.create_task(dispatcher.run(stop))

    async def relayed() -> bool:
        return len(await read_topic(settings, DAG_TASKS)) >= stop_after
    try:
        await until(relayed, what=f"{stop_after} task records")
        await asyncio.sleep(0.3)  # time to relay anything it should not
    finally:
        stop.set()
        await running
    return dispatcher


async def relayed_ids(settings) -> list[str]:
    return sorted(r.key.decode() for r in await read_topic(settings, DAG_TASKS))


async def test_the_dispatcher_relays_node_scheduled_by_task_id_and_resumes(settings, codec):
    first = [scheduled("ex-a", f"n{i}", "add", {"a": i, "b": 1}) for i in range(3)]
    await produce_events(settings, codec, [first[0], NodeStarted("ex-a", "n0", 1, "r"),
                                           first[1], first[2]], partition=5)
    await relay(settings, codec, 3)
    tasks = await read_topic(settings, DAG_TASKS)
    assert sorted(r.key.decode() for r in tasks) == ["ex-a/n0/1", "ex-a/n1/1", "ex-a/n2/1"]
    events = {r.offset: r for r in await read_topic(settings, DAG_EVENTS)}
    for record in tasks:  # the task is the event: same bytes, with where it came from
        headers = dict(record.headers)
        source = events[int(headers[SOURCE_OFFSET])]
        assert int(headers[SOURCE_PARTITION]) == 5 and record.value == source.value
    assert len({r.partition for r in tasks}) > 1  # spread by task id, not by execution

    # started again it rebuilds from the log: only the new events are relayed
    await produce_events(settings, codec, [scheduled("ex-a", "n3", "add", {})], partition=5)
    await produce_events(settings, codec, [scheduled("ex-b", "m0", "add", {})], partition=2)
    assert (await relay(settings, codec, 5)).relayed == 2
    assert (await relayed_ids(settings))[-1] == "ex-b/m0/1"


async def test_a_task_relayed_from_a_lost_node_scheduled_is_dispatched_again(
        settings, codec, caplog):
    """pit.dag.tasks holds a task relayed from a NodeScheduled the log no longer holds (its
    source offset holds another record): on start the dispatcher relays the task again from
    the NodeScheduled that is there, says so in one line and counts it; a task whose source
    is there is not relayed again."""
    lost, kept = scheduled("ex-r", "n0", "add", {}), scheduled("ex-r", "n1", "add", {})
    await produce_events(settings, codec, [NodeStarted("ex-r", "n9", 1, "r"), kept, lost],
                         partition=3)  # offsets 0, 1, 2
    await produce_all(make_producer(settings), [
        Output(DAG_TASKS, 0, lost.task_id.encode(), encoded(codec, lost), 0,
               source_headers(DAG_EVENTS, 3, 0)),  # offset 0 is not its NodeScheduled
        Output(DAG_TASKS, 1, kept.task_id.encode(), encoded(codec, kept), 0,
               source_headers(DAG_EVENTS, 3, 1))])
    before = REGISTRY.get_sample_value("pit_dag_tasks_redispatched_total") or 0
    await relay(settings, codec, 3)
    assert await relayed_ids(settings) == [lost.task_id, lost.task_id, kept.task_id]
    tasks = [r for r in await read_topic(settings, DAG_TASKS) if r.key == lost.task_id.encode()]
    # relayed again from its NodeScheduled (the two may sit on different partitions, which
    # a reader gives in no fixed order)
    assert sorted(source_of(t.headers) for t in tasks) == [(DAG_EVENTS, 3, 0),
                                                          (DAG_EVENTS, 3, 2)]
    assert REGISTRY.get_sample_value("pit_dag_tasks_redispatched_total") == before + 1
    assert "re-dispatching 1 task(s)" in caplog.text and lost.task_id in caplog.text


async def test_the_overall_limit_holds_tasks_back_until_running_ones_end(settings, codec):
    """Two executions, a limit of 3: the best three run; an ended attempt, a failure and a
    cancelled execution free slots; a restarted dispatcher still counts what runs."""
    a = [scheduled("ex-a", f"a{i}", "add", {}) for i in range(4)]
    b = [dataclasses.replace(scheduled("ex-b", f"b{i}", "add", {}), priority=-1)
         for i in range(3)]
    b[0] = dataclasses.replace(b[0], priority=5)   # best first, whichever execution
    await produce_events(settings, codec, a, partition=1)
    await produce_events(settings, codec, b, partition=2)
    dispatcher = await relay(settings, codec, 3, max_running=3)
    assert await relayed_ids(settings) == ["ex-a/a0/1", "ex-a/a1/1", "ex-b/b0/1"]
    assert (len(dispatcher.gate.running), len(dispatcher.gate.waiting)) == (3, 4)

    # a restarted dispatcher rebuilds the count from the log: nothing more to relay
    assert (await relay(settings, codec, 3, max_running=3)).relayed == 0

    await produce_events(settings, codec, [NodeCompleted("ex-a", "a0", 1),
                                           NodeFailed("ex-a", "a1", 1, "Boom")], partition=1)
    await relay(settings, codec, 5, max_running=3)
    assert await relayed_ids(settings) == ["ex-a/a0/1", "ex-a/a1/1", "ex-a/a2/1",
                                           "ex-a/a3/1", "ex-b/b0/1"]

    # cancelling ex-a frees its two slots and ex-b's waiting tasks take them
    await produce_events(settings, codec, [ExecutionCancelled("ex-a", "no")], partition=1)
    dispatcher = await relay(settings, codec, 7, max_running=3)
    assert set(await relayed_ids(settings)) >= {"ex-b/b1/1", "ex-b/b2/1"}
    assert (len(dispatcher.gate.running), len(dispatcher.gate.waiting)) == (3, 0)


async def test_a_restored_runner_group_resumes_at_the_first_unreported_task(settings, codec,
                                                                             runners):
    await publish_tasks(settings, codec, [scheduled("ex-r", f"n{i}", "identity", {"value": i})
                                          for i in range(40)])
    runners.start("r1")
    await runners.balanced(TASK_PARTITIONS)

    async def all_done() -> bool:
        return sum(name == COMPLETED for name, _, _ in await reports(settings, codec)) == 40
    await until(all_done, what="40 completed reports")
    await runners.stop("r1")
    # as after a restore from the archive: the same records, a group without positions
    group = "pit.dag.runners.restored"
    positions = await restore_runner_positions(settings, None, group)
    consumer = await start_consumer(settings)
    try:
        tps = [TopicPartition(DAG_TASKS, p) for p in range(16)]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    assert positions == {tp.partition: end for tp, end in ends.items()}
    assert await restore_runner_positions(settings, None, group) == {}  # has positions now
    restarted = runners.start("r2", group=group)
    await runners.balanced(TASK_PARTITIONS)
    await asyncio.sleep(0.5)
    assert await runners.stop("r2") and restarted.counts["completed"] == 0


# --- `pit runner` processes -------------------------------------------------------------------

async def spawn_runner(settings: Settings, runner_id: str, *args: str) -> subprocess.Popen:
    """A `pit runner` process, once the group has given it its partitions: a task published
    before that would be fenced (checked with a decider, and none runs here)."""
    env = {**os.environ, "PIT_KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "PIT_DATA_DIR": str(settings.data_dir)}
    path = settings.data_dir / f"{runner_id}.log"
    process = subprocess.Popen([sys.executable, "-m", "streams.cli", "runner", "--id",
                                runner_id, "--session-timeout", "3", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=path.open("w"))
    await until(lambda: asyncio.sleep(0, "partition(s) of" in path.read_text()), 30,
                f"{runner_id} to be given its partitions")
    return process


async def started_by(settings: Settings, codec: Codec, runner_id: str) -> None:
    async def started() -> bool:
        return any(name == STARTED and r["runner"] == runner_id
                   for name, r, _ in await reports(settings, codec))
    await until(started, timeout_s=30, what=f"{runner_id} to start the task")


async def exited(process: subprocess.Popen, timeout_s: float = 15.0) -> int:
    await until(lambda: asyncio.sleep(0, process.poll() is not None), timeout_s,
                "the runner process to exit")
    return process.returncode


@pytest.mark.slow
async def test_a_killed_runner_process_has_its_task_run_by_another(settings, codec, runners):
    victim = await spawn_runner(settings, "victim")
    try:
        await publish_tasks(settings, codec, [
            scheduled("ex-kill", "slow", "sleep_then_return", {"value": 42, "ms": LONG_MS})])
        await started_by(settings, codec, "victim")
        victim.kill()  # SIGKILL mid-node: no report, no commit, no goodbye to the group
        assert await exited(victim) == -signal.SIGKILL
    finally:
        victim.kill()
    lines: list[str] = []
    survivor = runners.start("survivor", operators=QUICK, say=lines.append)

    async def completed() -> bool:
        return any(name == COMPLETED for name, _, _ in await reports(settings, codec))
    await until(completed, timeout_s=40, what="the survivor to run the task again")
    found = [(name, r["runner"]) for name, r, _ in await reports(settings, codec)]
    assert found == [(STARTED, "victim"), (STARTED, "survivor"), (COMPLETED, "survivor")]
    assert survivor.counts["completed"] == 1
    # the victim held its partitions when it died: the survivor waited for a release that
    # never came, then started them where the victim had last committed, and said so
    [unreleased] = [line for line in lines if "did not release" in line]
    assert unreleased.startswith("victim/") and "within 2 s (crashed?)" in unreleased


@pytest.mark.slow
async def test_sigterm_lets_running_tasks_finish_and_commits(settings, codec, runners):
    graceful = await spawn_runner(settings, "graceful")
    try:
        await publish_tasks(settings, codec, [
            # long enough for the SIGTERM to come mid-node on a loaded machine
            scheduled("ex-term", "slow", "sleep_then_return", {"value": "kept", "ms": 5000})])
        await started_by(settings, codec, "graceful")
        graceful.send_signal(signal.SIGTERM)
        assert await exited(graceful) == 0
    finally:
        graceful.kill()
    (done,) = [r for name, r, _ in await reports(settings, codec) if name == COMPLETED]
    assert (done["runner"], json.loads(done["output"])) == ("graceful", {"out": "kept"})
    log = (settings.data_dir / "graceful.log").read_text()
    assert "waiting up to 30 s for 1 running task" in log and "1 completed" in log

    # committed: the group has nothing left for the next runner; a runner that cannot
    # finish in its drain time leaves with 1, and its task runs again
    impatient = await spawn_runner(settings, "impatient", "--drain-timeout", "0.2")
    try:
        await publish_tasks(settings, codec, [
            scheduled("ex-term", "slower", "sleep_then_return", {"value": 2, "ms": LONG_MS})])
        await started_by(settings, codec, "impatient")
        impatient.send_signal(signal.SIGTERM)
        assert await exited(impatient) == 1
    finally:
        impatient.kill()
    assert "abandoned 1 running task" in (settings.data_dir / "impatient.log").read_text()
    heir = runners.start("heir", operators=QUICK)

    async def rerun() -> bool:
        return heir.counts["completed"] == 1
    await until(rerun, timeout_s=30, what="the abandoned task to run again")
    assert [r["node_id"] for name, r, _ in await reports(settings, codec)
            if name == COMPLETED] == ["slow", "slower"]
