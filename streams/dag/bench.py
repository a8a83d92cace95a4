"""Micro-benchmarks of the execution decider, pure and in process (`bench_schedule`).

A 10,000-node layered DAG (each node fed by 1-3 nodes of earlier layers) runs to completion
with simulated runners that start and complete every task in dispatch order. Measured:
* dag_schedule_p99_ms: one runner report's decision as the processor makes it (decide, then
  evolve over its events), p99 over every ReportNodeCompleted: recording the result,
  settling the node's edges and dispatching what became ready;
* dag_checkpoint_ms: TakeCheckpoint with half the nodes done (the snapshot is built and
  compressed in decide), the median of 5;
* dag_snapshot_kb and dag_restore_ms: that snapshot's size, and restoring a state from it.

`bench_processor_restore`: the DAG processor restoring a partition with a long history of
finished executions and one running, from its checkpoint topic and from the whole log.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiokafka.errors import KafkaError

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.component import PitFactory, bench_note
from streams.config import Settings
from streams.dag.definition import (
    OPERATORS,
    Edge,
    OperatorRegistry,
    Workflow,
    deep_dag,
    layered_dag,
    wide_dag,
)
from streams.dag.execution import (
    DAG,
    CheckpointTaken,
    Definitions,
    ExecutionState,
    NodeCompleted,
    NodeFailed,
    NodeScheduled,
    NodeStarted,
    ReportNodeCompleted,
    ReportNodeStarted,
    StartExecution,
    TakeCheckpoint,
    decide,
    evolve,
    execution_decider,
    initial_state,
    restore,
)
from streams.dag.runner import RUNNER_FETCH_WAIT_MS, Runner
from streams.dag.topics import DAG_CHECKPOINTS, DAG_COMMANDS, DAG_EVENTS, DAG_TASKS
from streams.dag.workflows import ENDS, ExecutionLog, WorkflowResult, workflow_ops
from streams.decider import Decider, Message, from_record, to_record
from streams.errors import PitError
from streams.log import LogRecord
from streams.memory import BROKER_RETAIN_S
from streams.processor import Output, Processor
from streams.stats import percentile
from streams.topics import RESULTS, load_catalog

if TYPE_CHECKING:
    from streams.dag.workflows import WorkflowOps

T0 = 1_700_000_000_000


class MemoryDefinitionStore:
    """A `DefinitionStore` in a dict (the benchmark does no I/O)."""

    def __init__(self) -> None:
        self._workflows: dict[str, Workflow] = {}

    def put(self, workflow: Workflow) -> str:
        self._workflows[workflow.content_hash()] = workflow
        return workflow.content_hash()

    def get(self, definition_hash: str) -> Workflow:
        return self._workflows[definition_hash]

    def __contains__(self, definition_hash: object) -> bool:
        return definition_hash in self._workflows


class _Run:
    """One execution driven by simulated runners; `step` times each decision."""

    def __init__(self, definitions: Definitions, execution_id: str) -> None:
        self.definitions = definitions
        self.state: ExecutionState = initial_state(execution_id)
        self.now = T0
        self.tasks: list[NodeScheduled] = []

    def step(self, command: Message) -> tuple[float, list[Message]]:
        self.now += 1
        started = time.perf_counter()
        events = decide(self.state, command, self.now, self.definitions)
        state = events.state  # as a processor does: only what the decision had not applied
        for event in events[events.applied:]:
            state = evolve(state, event, self.now, self.definitions)
        elapsed = time.perf_counter() - started
        self.state = state
        self.tasks.extend(e for e in events if isinstance(e, NodeScheduled))
        return elapsed, events


def bench_schedule(n: int = 10_000) -> dict[str, Any]:
    store = MemoryDefinitionStore()
    definitions = Definitions(store)
    workflow = layered_dag(n, seed=1, layers=50)
    run = _Run(definitions, "bench")
    run.step(StartExecution("bench", definition_hash=store.put(workflow)))
    decisions: list[float] = []
    checkpoint_ms: list[float] = []
    snapshot = b""
    done = 0
    while run.tasks:
        task = run.tasks.pop(0)
        eid, node, attempt = task.execution_id, task.node_id, task.attempt
        run.step(ReportNodeStarted(eid, node, attempt))
        output = json.dumps({"out": sum(json.loads(task.inputs).values() or [1])})
        elapsed, _ = run.step(ReportNodeCompleted(eid, node, attempt, output, duration_ms=5))
        decisions.append(elapsed)
        done += 1
        if done == n // 2:
            for _ in range(5):
                elapsed, events = run.step(TakeCheckpoint(eid))
                checkpoint_ms.append(elapsed * 1000)
                snapshot = next(e for e in events if isinstance(e, CheckpointTaken)).snapshot
    started = time.perf_counter()
    restore(snapshot, (), definitions)
    restore_ms = (time.perf_counter() - started) * 1000
    return {
        "dag_schedule_p99_ms": round(percentile(decisions, 0.99) * 1000, 3),
        "dag_checkpoint_ms": round(statistics.median(checkpoint_ms), 2),
        "dag_snapshot_kb": round(len(snapshot) / 1024, 1),
        "dag_restore_ms": round(restore_ms, 1),
    }


class ProcessorRun:
    """Executions decided by a live DAG processor from encoded command records (one command
    partition), with simulated runners; `records` holds everything it produced - events,
    outcomes, checkpoint records - by topic, as its topics would (one partition each,
    numbered from 0). A checkpoint request it writes is decided next, as if read back from
    the command topic."""

    def __init__(self, codec: Codec, execution_id: str, decider: Decider = DAG) -> None:
        self.codec, self.execution_id, self.decider = codec, execution_id, decider
        self.live = Processor(decider, codec)
        self.commands: list[LogRecord] = []
        self.records: dict[str, list[LogRecord]] = {}  # topic -> its records, in offset order
        self.tasks: list[NodeScheduled] = []

    def encode(self, command: Message, command_id: str | None = None) -> LogRecord:
        """The command as the next record of the command partition (not decided yet)."""
        at = T0 + len(self.commands)
        value = self.codec.encode(command.avro_name, {
            "meta": {"command_id": command_id or f"c{len(self.commands)}", "issued_at": at},
            **to_record(command)})
        record = LogRecord(DAG_COMMANDS, 0, len(self.commands), at,
                           command.entity_key.encode(), value)
        self.commands.append(record)
        return record

    def send(self, command: Message, command_id: str | None = None) -> list[Output]:
        return self.decide(self.encode(command, command_id))

    def decide(self, record: LogRecord, *, landed: Callable[[Output], bool] | None = None
               ) -> list[Output]:
        """The live processor decides `record`; its outputs land (all of them, or those
        `landed` accepts: a crash before the rest was acknowledged, and then nothing more)."""
        outputs = self.live.handle([record])
        offsets = self.append(out for out in outputs if landed is None or landed(out))
        for out in outputs:
            assert out.value is not None  # a command's outputs are records, never tombstones
            decoded = self.codec.decode(out.value)
            if decoded.name == NodeScheduled.avro_name:
                self.tasks.append(from_record(NodeScheduled, decoded.record))
        if landed is None and self.live.book is not None:
            self.write(self.live.book.written(outputs, offsets, self.live.positions,
                                              record.timestamp_ms))
        return outputs

    def write(self, written: list[Output]) -> None:
        """The checkpoint records land; checkpoint requests are decided as commands."""
        self.append(out for out in written if out.topic != DAG_COMMANDS)
        for out in written:
            if out.topic == DAG_COMMANDS:
                self.commands.append(LogRecord(DAG_COMMANDS, 0, len(self.commands),
                                               out.timestamp_ms, out.key, out.value))
                self.decide(self.commands[-1])

    def append(self, outputs: Iterable[Output]) -> list[int]:
        offsets = []
        for out in outputs:
            log = self.records.setdefault(out.topic, [])
            offsets.append(len(log))
            log.append(LogRecord(out.topic, 0, len(log), out.timestamp_ms, out.key, out.value))
        return offsets

    @property
    def ends(self) -> dict[tuple[str, int], int]:
        """The end (next offset) of each topic's partition."""
        return {(topic, 0): len(log) for topic, log in self.records.items()}

    def complete(self, count: int, execution_id: str | None = None) -> None:
        """Start and complete the next `count` tasks (of `execution_id`) in dispatch order."""
        for _ in range(count):
            task = next(t for t in self.tasks if t.execution_id == (execution_id or
                                                                     self.execution_id))
            self.tasks.remove(task)
            self.send(ReportNodeStarted(task.execution_id, task.node_id, task.attempt))
            output = json.dumps({"out": sum(json.loads(task.inputs).values() or [1])})
            self.send(ReportNodeCompleted(task.execution_id, task.node_id, task.attempt,
                                          output, duration_ms=5))

    def of(self, topic: str) -> list[LogRecord]:
        return self.records.get(topic, [])

    def events(self) -> list[LogRecord]:
        return self.of(DAG.event_topic)

    def restored(self, decider: Decider | None = None) -> Processor:
        """A fresh processor (of `decider`, else the live one's) restored from every record,
        events first, then outcomes."""
        processor = Processor(decider or self.decider, self.codec, name=self.live.name)
        processor.restore(self.events())
        processor.restore(self.of(RESULTS))
        return processor

    def checkpoint_restore(self, decider: Decider | None = None) -> CheckpointRestore:
        """A fresh processor restored from the checkpoint records and the records after the
        floors they give (`Processor.restore_partitions`)."""
        processor = Processor(decider or self.decider, self.codec, name=self.live.name)
        floors: dict[str, int] = {}

        def read(topic: str, starts: dict[int, int]) -> list[LogRecord]:
            floors[topic] = starts[0]
            return self.of(topic)[starts[0]:]

        applied, written = processor.restore_partitions(
            {0}, read, self.of(DAG_CHECKPOINTS), self.ends, T0 + len(self.commands))
        return CheckpointRestore(processor, applied, written, floors[DAG.event_topic],
                                 floors[RESULTS])

    def crash_and_restore(self, check: Callable[[CheckpointRestore], Any] | None = None,
                          unanswered: LogRecord | None = None) -> CheckpointRestore:
        """The live processor is gone; a new one restores from the checkpoint records (which
        `check` may look at first), writes what they missed, and decides on from there (what
        `run_processor` does). The command it was deciding (`unanswered`) comes again first
        unless the restore counts it decided: it sits on the command topic before any
        checkpoint request the new processor writes there."""
        restore = self.checkpoint_restore()
        if check is not None:
            check(restore)
        self.live = restore.processor
        self.append(out for out in restore.written if out.topic != DAG_COMMANDS)
        if unanswered is not None and unanswered.offset > self.live.positions.get(0, -1):
            self.decide(unanswered)
        self.write([out for out in restore.written if out.topic == DAG_COMMANDS])
        return restore


@dataclass(frozen=True)
class CheckpointRestore:
    processor: Processor
    applied: int            # records folded
    written: list[Output]   # checkpoint records it writes before deciding
    events_from: int        # where it read pit.dag.events and pit.results from
    results_from: int


def restore_history(codec: Codec, history: int, n: int = 3_000,
                    execution_nodes: int = 500) -> ProcessorRun:
    """One partition's log: `history` nodes completed in finished executions of
    `execution_nodes` nodes each, then one n-node execution with n - 40 nodes done, a
    checkpoint, and 20 more done."""
    store = MemoryDefinitionStore()
    decider = execution_decider(Definitions(store))
    run = ProcessorRun(codec, "bench-restore", decider)
    for k in range(history // execution_nodes):
        execution_id = f"bench-history-{k}"
        run.send(StartExecution(execution_id, definition_hash=store.put(
            layered_dag(execution_nodes, seed=k, layers=10)), checkpoint_every=0))
        run.complete(execution_nodes, execution_id)
    run.send(StartExecution("bench-restore", definition_hash=store.put(
        layered_dag(n, seed=4, layers=30)), checkpoint_every=0))
    run.complete(n - 40)
    run.send(TakeCheckpoint("bench-restore"))
    run.complete(20)
    return run


def _timed(restore: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    """What `restore` returns, and the fastest of its times in ms (the least disturbed by
    other work on the machine). Garbage is collected first: the benchmark holds the whole
    history in memory, a restarted process does not."""
    times = []
    for _ in range(repeats):
        gc.collect()
        started = time.perf_counter()
        result = restore()
        times.append((time.perf_counter() - started) * 1000)
    return result, min(times)


def bench_processor_restore(codec: Codec, histories: Sequence[int] = (1_000, 20_000),
                            n: int = 3_000) -> dict[str, float]:
    """The DAG processor's restore of one partition (`restore_history`) after `history`
    completed nodes of finished executions, for each history length: from its checkpoint
    topic (`Processor.restore_partitions`: the records, then the events and outcomes after
    the live execution's checkpoint), against reading the whole partition as a restore did
    before the topic (every event and outcome; each execution still folded from its last
    checkpoint). Keys end in the history length: dag_restore_ms_1k, dag_restore_ms_20k..."""
    figures: dict[str, float] = {}
    for history in histories:
        run = restore_history(codec, history, n)
        label = f"{history // 1000}k" if history >= 1000 else str(history)
        full, full_ms = _timed(run.restored, 1)
        restore, restore_ms = _timed(run.checkpoint_restore, 5)
        if not full.entities == restore.processor.entities or restore.processor.state(
                "bench-restore") != run.live.state("bench-restore"):
            raise AssertionError("the checkpoint restore differs from the full one")
        figures |= {f"dag_restore_ms_{label}": round(restore_ms, 1),
                    f"dag_restore_full_ms_{label}": round(full_ms, 1),
                    f"dag_restore_events_read_{label}": restore.applied,
                    f"dag_restore_history_events_{label}": len(run.events())}
    return figures


# --- end to end: a whole Pit, runners, the broker -------------------------------------------
#
# What `pit bench dag` measures through the embedded broker, and what the stress tests
# (tests/integration/test_dag_stress.py) drive: `pit up`'s Stack in process, runners of one
# consumer group, executions followed on pit.dag.events as they are logged.


class ExecutionWatch:
    """Follows one execution's events as they are logged (`ExecutionLog`: the archive for
    what Kafka dropped, then Kafka, live), keeping what runs look at: every event with its
    time, NodeCompleted per node, the most nodes running at once (started, not yet completed
    or failed) and how the execution ended; with `only`, of just those event types
    (`ExecutionLog`). Use as an async context manager."""

    def __init__(self, settings: Settings, codec: Codec, execution_id: str,
                 only: Iterable[type[Message]] = ()) -> None:
        self.settings, self.codec, self.execution_id = settings, codec, execution_id
        self.only = tuple(only)
        self.events: list[tuple[Message, int]] = []  # (event, occurred_at ms)
        self.completed: Counter[str] = Counter()
        self.running: set[str] = set()
        self.peak = 0
        self.result: WorkflowResult | None = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> ExecutionWatch:
        self._log = await ExecutionLog(self.settings, self.codec, self.execution_id,
                                       self.only).__aenter__()
        self._following = asyncio.create_task(self._follow())
        return self

    async def __aexit__(self, *_: object) -> None:
        self._following.cancel()
        with contextlib.suppress(asyncio.CancelledError, KafkaError, PitError):
            await self._following
        with contextlib.suppress(KafkaError):
            await self._log.__aexit__()

    async def _follow(self) -> None:
        while True:
            for event, at_ms in await self._log.read(100):
                self._apply(event, at_ms)
            self._changed.set()

    def _apply(self, event: Message, at_ms: int) -> None:
        self.events.append((event, at_ms))
        if isinstance(event, NodeStarted):
            self.running.add(event.node_id)
            self.peak = max(self.peak, len(self.running))
        elif isinstance(event, NodeCompleted | NodeFailed):
            self.running.discard(event.node_id)
            if isinstance(event, NodeCompleted):
                self.completed[event.node_id] += 1
        elif type(event) in ENDS:
            self.result = WorkflowResult.of(event, at_ms)

    def of(self, *types: type) -> list:
        return [event for event, _ in self.events if isinstance(event, types)]

    async def until(self, condition: Callable[[ExecutionWatch], bool], timeout_s: float,
                    what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition(self):
            if self._following.done():
                self._following.result()  # its failure, not a timeout
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PitError(f"execution {self.execution_id}: no {what} within"
                               f" {timeout_s:g} s ({len(self.completed)} nodes completed)")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 1.0))

    async def end(self, timeout_s: float) -> WorkflowResult:
        await self.until(lambda watch: watch.result is not None, timeout_s, "end")
        result = self.result
        assert result is not None  # what `until` waited for
        return result


class Runners:
    """In-process runners of one consumer group, as `pit runner` processes would be."""

    def __init__(self, settings: Settings, codec: Codec, **options: Any) -> None:
        self.settings, self.codec = settings, codec
        self.options = {"session_timeout_ms": 3000, "revoke_wait_s": 2.0,
                        "say": lambda _line: None, **options}
        self.runs: dict[str, tuple[Runner, asyncio.Event, asyncio.Task]] = {}

    def start(self, runner_id: str, **options: Any) -> Runner:
        runner = Runner(self.settings, runner_id=runner_id, codec=self.codec,
                        **{**self.options, **options})
        stop = asyncio.Event()
        self.runs[runner_id] = (runner, stop, asyncio.create_task(runner.run(stop)))
        return runner

    async def stop(self, runner_id: str) -> bool:
        """Drain and leave: True when every task taken was finished and committed."""
        _, stop, task = self.runs.pop(runner_id)
        stop.set()
        return await task

    async def crash(self, runner_id: str) -> None:
        """As a killed process: running tasks vanish unreported, nothing is committed."""
        runner, _, task = self.runs.pop(runner_id)
        for job in [*runner.running, *runner.runs.values()]:
            job.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def close(self, *, crash: bool = False) -> None:
        for runner_id in list(self.runs):
            await (self.crash(runner_id) if crash else self.stop(runner_id))

    async def balanced(self, partitions: int, timeout_s: float = 30.0) -> None:
        """Until every runner holds partitions of pit.dag.tasks and together all of them."""
        deadline = time.monotonic() + timeout_s
        while True:
            held = [runner.assignment for runner, _, _ in self.runs.values()]
            if all(held) and len(set().union(*held)) == partitions == sum(map(len, held)):
                return
            if time.monotonic() > deadline:
                raise PitError(f"runners not balanced within {timeout_s:g} s: {held}")
            await asyncio.sleep(0.05)


async def crash_stack(stack: Any) -> None:
    """Stop a Stack (streams/app.py) as a killed `pit up` stops: nothing drains or
    flushes, and what the projector had not archived yet is gone with the embedded
    broker."""
    running = [*stack.tasks, stack.projector_task]
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    if stack._runner is not None:
        await stack._runner.cleanup()
    stack.broker.close()
    stack.engine.dispose()


def sequential_outputs(workflow: Workflow,
                       operators: OperatorRegistry = OPERATORS) -> dict[str, Any]:
    """Every node's "out" as one thread evaluating an operator-only workflow in topological
    order computes it: the reference a distributed run must agree with."""
    nodes = workflow.nodes
    feeds: dict[str, list[Edge]] = {}
    for edge in workflow.edges:
        feeds.setdefault(edge.to_node, []).append(edge)
    outputs: dict[str, Any] = {}
    for i in workflow.graph.order:
        node = nodes[i]
        inputs = {**node.constants, **{e.to_input: outputs[e.from_node]
                                       for e in feeds.get(node.id, ())}}
        outputs[node.id] = operators[node.operator](inputs, node.params)
    return outputs


RUNNER_PROCESSES = 2
RUNNER_CONCURRENCY = 512


class RunnerProcesses:
    """`pit runner` processes on a Pit's data directory (a core of their own each, as
    deployed), their stderr in files beside it. `program` runs the CLI: another entry point
    can register operators first."""

    def __init__(self, data_dir: Path, program: Sequence[str] = (sys.executable, "-m",
                                                                 "streams.cli")) -> None:
        self.data_dir, self.program = data_dir, tuple(program)
        self.processes: dict[str, tuple[asyncio.subprocess.Process, Path]] = {}

    async def start(self, *runner_ids: str, concurrency: int = RUNNER_CONCURRENCY,
                    timeout_s: float = 60.0) -> RunnerProcesses:
        """Each runner, once it says it is taking tasks."""
        env = {**os.environ, "PIT_DATA_DIR": str(self.data_dir)}
        env.pop("PIT_KAFKA_BOOTSTRAP_SERVERS", None)
        for runner_id in runner_ids:
            path = self.data_dir / f"{runner_id}.log"
            with path.open("w") as stderr:
                process = await asyncio.create_subprocess_exec(
                    *self.program, "runner", "--id", runner_id, "--concurrency",
                    str(concurrency), "--session-timeout", "3", env=env, stderr=stderr)
            self.processes[runner_id] = (process, path)
            deadline = time.monotonic() + timeout_s
            while "taking tasks" not in path.read_text():
                if process.returncode is not None or time.monotonic() > deadline:
                    raise PitError(f"pit runner {runner_id} did not start:"
                                   f" {path.read_text()[-500:]}")
                await asyncio.sleep(0.1)
        return self

    def kill(self, runner_id: str) -> asyncio.subprocess.Process:
        """SIGKILL: the runner dies at once, mid-node."""
        process, _ = self.processes[runner_id]
        process.send_signal(signal.SIGKILL)
        return process

    async def stop(self) -> None:
        """SIGTERM, and each drains; one that does not within 40 s is killed."""
        for process, _ in self.processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        for process, _ in self.processes.values():
            try:
                await asyncio.wait_for(process.wait(), 40)
            except TimeoutError:
                process.kill()
                await process.wait()


async def run_to_end(stack: Any, dag: WorkflowOps, workflow: Workflow, execution_id: str,
                     timeout_s: float = 600.0) -> float:
    """Seconds from submitting `workflow` to seeing it completed (raises if it did not, or
    if a node did not complete). The watch runs in the Pit's process, so while the clock
    runs it reads only the execution's end, skipping the rest undecoded: decoding every
    NodeCompleted took 4% of the process's time during wide DAGs (py-spy, 2026-12-06).
    Every node's completion is checked from the log once the clock has stopped."""
    async with ExecutionWatch(stack.settings, stack.codec, execution_id, only=ENDS) as watch:
        started = time.perf_counter()
        await dag.execute_workflow(workflow, execution_id=execution_id)
        result = await watch.end(timeout_s)
        elapsed = time.perf_counter() - started
    if not result.ok:
        raise PitError(f"bench workflow {execution_id} did not complete: {result.error}")
    completed = (await dag.workflow_status(execution_id)).counts.get("completed", 0)
    if completed != len(workflow.nodes):
        raise PitError(f"bench workflow {execution_id} completed {completed} of its"
                       f" {len(workflow.nodes)} nodes")
    return elapsed


HOP_STAGES = ("processor", "dispatcher", "runner")


class Arrivals:
    """When each record of an execution reaches a reader (wall clock, ms), timed in a process
    of its own (`watch_arrivals`): the log's own timestamps cannot time the stages, since a
    decider's events carry their command's time and a task record its NodeScheduled's, so
    that replays are exact. The watch used to read in the Pit's process (aiokafka, on its
    busy event loop), which saw a NodeScheduled only when the loop got to it; by then the
    dispatcher, which fetches in C, had mostly relayed its task, and the dispatcher's stage
    read 0.0 ms (its p50 in ten of eleven `pit bench dag` runs of 2026-12-07)."""

    def __init__(self, settings: Settings, codec: Codec, execution_id: str) -> None:
        self.settings, self.codec, self.execution_id = settings, codec, execution_id
        self.seen: dict[tuple[str, str], float] = {}

    async def __aenter__(self) -> Arrivals:
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # not a fork of the Pit's threads
        self.pipe, theirs = context.Pipe()
        self.process = context.Process(
            target=watch_arrivals, daemon=True,
            args=(self.settings.librdkafka_config(), self.execution_id.encode(), theirs))
        self.process.start()
        # positioned at the topics' ends before anything of the execution is written
        if not await asyncio.to_thread(self.pipe.poll, 60) or self.pipe.recv() != "ready":
            raise PitError("the bench's arrivals watch did not start")
        return self

    async def __aexit__(self, *_exc: object) -> None:
        try:
            self.pipe.send("stop")
            arrivals = await asyncio.to_thread(self.pipe.recv)
        finally:
            await asyncio.to_thread(self.process.join, 10)
        for topic, value, at in arrivals:
            decoded = self.codec.decode(value)
            kind = "task" if topic == DAG_TASKS else decoded.name.rsplit(".", 1)[-1]
            self.seen.setdefault((kind, decoded.record.get("node_id", "")), at)

    def stages(self) -> dict[str, list[float]]:
        """The hops of a chain, node i reported done to node i+1 reported done (`hop`), by
        stage, each as the records arrive here:
        * processor: node i's ReportNodeCompleted -> NodeScheduled(i+1);
        * dispatcher: NodeScheduled(i+1) -> its task record;
        * runner: the task record -> its ReportNodeCompleted (the runner takes the task,
          runs it, reports it; a run this short reports its start with its end, so there is
          no start report to split the stage at: streams/dag/runner.py `START_REPORT_AFTER_S`).
        The three add up to the hop."""
        at = self.seen
        nodes = sorted({node for kind, node in at if kind == "NodeScheduled"})
        stages: dict[str, list[float]] = {stage: [] for stage in (*HOP_STAGES, "hop")}
        for done, following in itertools.pairwise(nodes):
            try:
                times = (at[("ReportNodeCompleted", done)], at[("NodeScheduled", following)],
                         at[("task", following)], at[("ReportNodeCompleted", following)])
            except KeyError:
                continue  # a retried node: not a plain hop
            for stage, start, end in zip(HOP_STAGES, times, times[1:], strict=False):
                stages[stage].append(end - start)
            stages["hop"].append(times[-1] - times[0])
        return stages


def watch_arrivals(config: dict[str, Any], prefix: bytes, pipe: Any) -> None:
    """`Arrivals`' process: every record keyed `prefix...` on the DAG's command, event and
    task topics from their ends now, with the wall-clock time (ms) it reached this reader,
    sent back as (topic, value, time) once told to stop. A librdkafka consumer fetching
    every millisecond, as the watch in the Pit's process did; nothing else runs here."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**config, "group.id": "pit-bench-arrivals", "log_level": 0,
                         "enable.auto.commit": False, "fetch.wait.max.ms": 1})
    catalog = load_catalog()

    def ends() -> dict[tuple[str, int], int]:
        return {(topic, p): consumer.get_watermark_offsets(TopicPartition(topic, p), 10)[1]
                for topic in (DAG_COMMANDS, DAG_EVENTS, DAG_TASKS)
                for p in range(catalog[topic].partitions)}

    reached = ends()  # per partition, the offset after the last record read
    consumer.assign([TopicPartition(topic, p, offset) for (topic, p), offset in reached.items()])
    pipe.send("ready")
    arrivals: list[tuple[str, bytes, float]] = []

    def read() -> None:
        messages = consumer.consume(1000, 0.001)
        at = time.time() * 1000
        for message in messages:
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if message.error() is not None or topic is None or partition is None \
                    or offset is None:
                continue  # an error event, not a record
            reached[(topic, partition)] = offset + 1
            value = message.value()
            if value is not None and (message.key() or b"").startswith(prefix):
                arrivals.append((topic, value, at))

    try:
        while not pipe.poll():
            read()
        # Told to stop, as soon as the execution ended: its last report may not be read yet.
        deadline, last = time.monotonic() + 30, ends()
        while any(reached[tp] < end for tp, end in last.items()) and time.monotonic() < deadline:
            read()
        pipe.send(arrivals)
    finally:
        consumer.close()


@dataclass
class Chains:
    per_s: float  # workflows a second, from the first start to the last end
    workflow_s: list[float]  # each workflow's seconds, from its start to its end


CHAINS_IN_FLIGHT = 25  # `dag_workflows_per_s_chain20`: how many chains run at a time


async def run_chains(stack: Any, dag: WorkflowOps, count: int, length: int = 20,
                     at_once: int = CHAINS_IN_FLIGHT, name: str = "bench-chain") -> Chains:
    """`count` chains of `length` nodes, `at_once` in flight, from the first start to the
    last ExecutionCompleted: what a workflow engine's users mean by throughput of short
    workflows, and how long each took. One consumer sees every end (a watch per execution
    would cost more than the executions). Execution ids are `name`, `length` and a number:
    a second call needs another `name`."""
    from streams.kafka import assign_at, start_consumer, stop_consumer

    consumer = await start_consumer(stack.settings, fetch_max_wait_ms=5)
    await assign_at(consumer, [DAG_EVENTS], at_end=True)
    ended: dict[str, asyncio.Event] = {f"{name}{length}-{n}": asyncio.Event()
                                       for n in range(count)}

    async def follow() -> None:
        while True:
            for records in (await consumer.getmany(timeout_ms=100)).values():
                for record in records:
                    done = ended.get((record.key or b"").decode())
                    if done is not None and stack.codec.name_of(record.value) in endings:
                        done.set()

    endings = {event.avro_name for event in ENDS}
    slots = asyncio.Semaphore(at_once)
    workflow = deep_dag(length, name=f"chain{length}")

    async def one(execution_id: str) -> float:
        async with slots:
            began = time.perf_counter()
            await dag.execute_workflow(workflow, execution_id=execution_id)
            await ended[execution_id].wait()
            return time.perf_counter() - began

    following = asyncio.create_task(follow())
    try:
        started = time.perf_counter()
        took = await asyncio.wait_for(asyncio.gather(*(one(e) for e in ended)), 600)
        return Chains(count / (time.perf_counter() - started), took)
    finally:
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
        await stop_consumer(consumer)


async def sustained_chains_per_s(stack: Any, dag: WorkflowOps, count: int,
                                 seconds: float = 3 * BROKER_RETAIN_S) -> float:
    """Workflows per second of the last of rounds of `count` 20-node chains run back to
    back for `seconds`: a Pit at work for longer than the embedded broker keeps its log
    (`BROKER_RETAIN_S`), whose fetches walk all it holds (README, "A fetch walks the
    partition's log"), rather than a fresh one."""
    started, rounds = time.monotonic(), 0
    while True:
        rate = (await run_chains(stack, dag, count, name=f"bench-sustained{rounds}-")).per_s
        rounds += 1
        if time.monotonic() - started >= seconds:
            return rate


async def broker_crossing_ms(stack: Any, samples: int = 200) -> dict[str, float]:
    """The floor under a hop, on the same broker in the same run: a record produced as the
    processor and the dispatcher produce (librdkafka, flushed) until a consumer fetching as
    they do (BUSY_FETCH_WAIT_MS) holds it (`crossing`), the same for a consumer fetching as
    a runner does (RUNNER_FETCH_WAIT_MS: `crossing_runner`), and a produce until its
    acknowledgement (`ack`), p50 each. A hop crosses the broker three times (report ->
    processor, event -> dispatcher, task -> runner) and waits for one ack (the start
    report) besides running the node, so `dag_hop_floor_ms` = 2 crossings + 1 runner
    crossing + 1 ack. Samples are spaced by random pauses, so they land anywhere in the
    consumer's fetch cycle."""
    from streams.kafka import BUSY_FETCH_WAIT_MS, make_producer
    from streams.topics import TopicSpec

    assert stack.broker is not None  # the bench runs on the embedded broker
    topic = "pit.bench.crossing"
    stack.broker.create_topic(TopicSpec(topic, 1, "none"))
    producer = make_producer(stack.settings)
    try:
        crossing, ack = await _crossing(stack, producer, topic, BUSY_FETCH_WAIT_MS, samples)
        runner, _ = await _crossing(stack, producer, topic, RUNNER_FETCH_WAIT_MS, samples)
    finally:  # not left to fetch metadata beside the workflows measured next
        await asyncio.to_thread(producer.close)
    return {"dag_broker_crossing_ms_p50": round(crossing, 1),
            "dag_broker_crossing_runner_ms_p50": round(runner, 1),
            "dag_hop_floor_ms": round(2 * crossing + runner + ack, 1)}


async def _crossing(stack: Any, producer: Any, topic: str, wait_ms: int, samples: int
                    ) -> tuple[float, float]:
    """(crossing p50, ack p50) in ms for a consumer fetching with `wait_ms`, from the end
    of `topic`."""
    import random

    from streams.kafka import assign_at, produce_all, start_consumer, stop_consumer

    consumer = await start_consumer(stack.settings, fetch_max_wait_ms=wait_ms)
    await assign_at(consumer, [topic], at_end=True)
    crossings, acks = [], []
    try:
        for n in range(samples):
            await asyncio.sleep(random.Random(n).uniform(0, 0.01))
            started = time.perf_counter()
            record = Output(topic, 0, None, b"%d" % n, int(time.time() * 1000))
            await produce_all(producer, [record])
            acks.append((time.perf_counter() - started) * 1000)
            while not await consumer.getmany(timeout_ms=1000):
                pass
            crossings.append((time.perf_counter() - started) * 1000)
    finally:
        await stop_consumer(consumer)
    return statistics.median(crossings), statistics.median(acks)


# The chains as a workflow engine's capacity is measured: enough in flight that more do not
# go faster (measured from 10 to 400 in flight: README, "The chains' capacity").
CAPACITY_CHAINS = 400
CAPACITY_IN_FLIGHT = 200


async def bench_throughput(scratch: Path, pit: PitFactory, wide: int = 2_000, deep: int = 100,
                           count: int = 10_000, chains: int = 100) -> dict[str, float]:
    """End to end through the embedded broker: `pit up`'s Stack in this process, two `pit
    runner` processes, cheap operators (add, identity, sum_inputs). Nodes per second of a
    wide DAG (fan-out/fan-in, `wide` nodes at once) and of a deep one (a chain: every node
    waits for the one before), the hops of a second such chain by stage (`Arrivals.stages`),
    `chains` 20-node chains `CHAINS_IN_FLIGHT` at a time, the wall time of a 10,000-node
    layered DAG (50 layers), each from submitting to seeing ExecutionCompleted, and the
    chains' capacity (`CAPACITY_CHAINS`, `CAPACITY_IN_FLIGHT` at a time); last, the chains
    again once the Pit has worked for three times `BROKER_RETAIN_S` more
    (`sustained_chains_per_s`)."""
    data_dir = scratch / "throughput"
    async with pit(data_dir) as stack:
        dag = workflow_ops(stack.settings, codec=stack.codec)
        async with dag.client:
            runners = await RunnerProcesses(data_dir).start(
                *(f"bench-{n}" for n in range(RUNNER_PROCESSES)))
            try:
                await asyncio.sleep(3)  # the group settles (a rebalance per runner joining)
                await run_to_end(stack, dag, wide_dag(50, name="warm-up"), "bench-warm-up")
                floor = await broker_crossing_ms(stack)
                wide_s = await run_to_end(stack, dag, wide_dag(wide), "bench-wide")
                deep_s = await run_to_end(stack, dag, deep_dag(deep), "bench-deep")
                # The hops are timed on a second chain: the watch that times them fetches 48
                # partitions every millisecond in the Pit's own process, and slowed the chain
                # it watched by about a sixth.
                async with Arrivals(stack.settings, stack.codec, "bench-hops") as arrivals:
                    await run_to_end(stack, dag, deep_dag(deep), "bench-hops")
                stages = arrivals.stages()
                chain20 = (await run_chains(stack, dag, chains)).per_s
                ten_s = await run_to_end(stack, dag, layered_dag(count, seed=1, layers=50),
                                         "bench-10k")
                capacity = await run_chains(stack, dag, CAPACITY_CHAINS,
                                            at_once=CAPACITY_IN_FLIGHT, name="bench-capacity")
                sustained = await sustained_chains_per_s(stack, dag, chains)
            finally:
                await runners.stop()
    hops = stages.pop("hop")
    return {"dag_nodes_per_s_wide": round((wide + 2) / wide_s),
            "dag_nodes_per_s_deep": round(deep / deep_s, 1),
            **({"dag_hop_ms_p50": round(statistics.median(hops), 1),
                "dag_hop_ms_p99": round(percentile(hops, 0.99), 1)} if hops else {}),
            **{f"dag_hop_{stage}_ms_p50": round(statistics.median(values), 1)
               for stage, values in stages.items() if values},
            **floor,
            **({"dag_hop_vs_floor": round(statistics.median(hops) / floor["dag_hop_floor_ms"], 1)}
               if hops else {}),
            "dag_workflows_per_s_chain20": round(chain20, 1),
            "dag_workflows_per_s_chain20_sustained": round(sustained, 1),
            "dag_workflows_per_s_chain20_capacity": round(capacity.per_s, 1),
            "dag_chain20_capacity_workflow_s_p50": round(statistics.median(capacity.workflow_s), 2),
            "dag_10k_wall_s": round(ten_s, 1)}


async def bench_resume(scratch: Path, pit: PitFactory, count: int = 3_000) -> dict[str, float]:
    """Seconds from a crash of the DAG processor - the whole in-process Pit stopped hard,
    its embedded broker with it - to the execution making progress again: `pit up` started
    on the same data directory (the broker restored from the archive, the processor's state
    from the events), runners started again, the first node completed after the crash.
    A 3,000-node layered DAG, crashed once a third of it completed."""
    data_dir = scratch / "resume"
    stack = await pit(data_dir).start()
    runners = Runners(stack.settings, stack.codec, concurrency=RUNNER_CONCURRENCY)
    try:
        for n in range(2):
            runners.start(f"resume-{n}")
        await runners.balanced(16)
        dag = workflow_ops(stack.settings, codec=stack.codec)
        async with dag.client, ExecutionWatch(stack.settings, stack.codec,
                                              "bench-resume") as watch:
            await dag.execute_workflow(layered_dag(count, seed=2, layers=30),
                                       execution_id="bench-resume")
            await watch.until(lambda w: len(w.completed) >= count // 3, 300,
                              f"{count // 3} completed nodes")
            history = len(watch.events)
    finally:
        await runners.close(crash=True)
        await crash_stack(stack)
        crashed_at = int(time.time() * 1000)  # nothing of the first Pit can report later
    async with pit(data_dir) as stack:
        runners = Runners(stack.settings, stack.codec, concurrency=RUNNER_CONCURRENCY)
        for n in range(2):
            runners.start(f"resume-{n}")
        try:
            async with ExecutionWatch(stack.settings, stack.codec, "bench-resume") as watch:
                await watch.until(lambda w: any(at >= crashed_at for event, at in w.events
                                                if isinstance(event, NodeCompleted)),
                                  300, "node completed after the crash")
                resumed_at = min(at for event, at in watch.events
                                 if isinstance(event, NodeCompleted) and at >= crashed_at)
        finally:
            await runners.close()
    return {"dag_resume_s": round((resumed_at - crashed_at) / 1000, 2),
            "dag_resume_history_events": history}


async def bench_dag(settings: Settings, pit: PitFactory) -> dict[str, float]:
    """The execution decider in process on a 10,000-node DAG, then workflows end to end
    through the embedded broker, in Pits made by `pit` (streams/dag/bench.py)."""
    figures = await asyncio.to_thread(bench_schedule)
    bench_note(f"dag scheduling: p99 {figures['dag_schedule_p99_ms']} ms, checkpoint"
               f" {figures['dag_checkpoint_ms']} ms at 10,000 nodes")
    figures |= await asyncio.to_thread(bench_processor_restore, Codec(EmbeddedRegistry()))
    for label in ("1k", "20k"):
        bench_note(f"dag processor restore after {label} finished nodes"
                   f" ({figures[f'dag_restore_history_events_{label}']} events):"
                   f" {figures[f'dag_restore_ms_{label}']} ms from the checkpoint topic,"
                   f" {figures[f'dag_restore_full_ms_{label}']} ms reading it all")
    # The parts above leave some 340,000 objects of cyclic garbage in this process (their
    # histories), which the collector would otherwise sweep in the middle of the wide DAG:
    # measured after them, it ran at two thirds of its speed in a fresh process.
    gc.collect()
    with tempfile.TemporaryDirectory() as scratch:
        figures |= await bench_throughput(Path(scratch), pit)
        bench_note(f"dag end to end: {figures['dag_nodes_per_s_wide']} nodes/s wide,"
                   f" {figures['dag_nodes_per_s_deep']} deep, 10,000 nodes in"
                   f" {figures['dag_10k_wall_s']} s; 20-node chains"
                   f" {figures['dag_workflows_per_s_chain20']} workflows/s {CHAINS_IN_FLIGHT}"
                   f" at a time,"
                   f" {figures['dag_workflows_per_s_chain20_capacity']}"
                   f" {CAPACITY_IN_FLIGHT} at a time")
        figures |= await bench_resume(Path(scratch), pit)
        bench_note(f"dag resume after a crash: {figures['dag_resume_s']} s")
    return figures
