"""`pit runner`: node runners (issue 4, "Node runners"). The execution decider decides which
node runs; a runner runs it and reports back.

Tasks. Every `NodeScheduled` event is a node task; the task dispatcher in `pit up`
(streams/dag/dispatch.py) relays it to pit.dag.tasks keyed by its task id
"<execution>/<node>/<attempt>", so the tasks of one execution spread over the partitions
and every runner process of the consumer group "pit.dag.runners" takes a share: scale out
by starting more runners. A runner serves runner pools (NodeScheduled.pool; by default
"instrument" and "operator"); runners of other pools form other groups (`group_of`) and
skip these tasks.

Running a task (`NodeExecutor`, no Kafka in it):
* operator: the registered function (streams/dag/definition.py) with the resolved inputs and
  the node's params, in a thread pool; an `async def` operator is awaited, and the built-in
  `sleep_then_return` sleeps on the event loop, so a thousand slow nodes need no thousand
  threads;
* instrument: `allocate_model(model, requester=task id, workflow_id=execution id)`, infer on
  the host it was placed on, release - always released, also when inference fails or the
  allocation is still queued when the deadline passes; the
  inference inputs are the node's inputs object, or the bare value of a node's only input
  (a text model gets its text); the node's params travel with the call;
* map: the operator (or model, under one allocation) once per item of input "items", the
  item bound to its item input, at most `map_concurrency` at a time; the output is the list;
* branch: the condition over input "value"; the value leaves on output "true" or "false".
Inputs arrive inline (`inputs`) or as blob references (`input_refs`: {"hash", "path"}: the
value at `path` inside the JSON object stored at `hash`). The output object ({output name:
value}) travels inline when its JSON is at most `inline_limit` bytes, else it is put in the
blob store (streams/blobs.py) and only its address is reported.

Reports are commands to the execution decider on pit.dag.commands, keyed by execution id:
ReportNodeStarted once a run has lasted `START_REPORT_AFTER_S` (50 ms; before running when
the task is fenced, below), then ReportNodeCompleted or ReportNodeFailed (error type name,
one-line message, retryable; "Timeout" when the task's deadline passed - an operator thread
cannot be stopped, so its late result is dropped). A shorter run's start goes with its end:
the decider takes a final report of a node it has not seen start. Command ids are derived from the
task id ("<task id>/completed" ...), so a report sent again is a duplicate to the decider, and
every report carries the attempt, so the decider ignores a result for an attempt that is
already over. A start report also names the runner process ("<task id>/started/<runner
id>/<token>"): a task run again by another runner (its first runner was lost mid-node) is a
second NodeStarted of that attempt, so every run that reported its start shows in the
node-runs view.

Delivery is at least once: a task's offset is committed only once its final report is
acknowledged by the broker, in offset order per partition (the lowest offset still running
holds the commit back), at the latest 0.1 s after it. A runner killed mid-node leaves its
task uncommitted; the group rebalances and another runner runs it again. Fencing: a task
that was already on its partition when this runner was given it (handed over, or in a log
restored after `pit up` restarted, whose group positions are only as good as the archived
reports) may have run to its end elsewhere. Its start report waits for the decider's
outcome, and the task runs only if the decider accepted that start (a first run, or a
takeover from a runner lost mid-node); it refuses a start whose attempt or execution is over.
Tasks that arrive after the assignment need no such round trip: nobody ran them yet.

Runners joining and leaving move partitions by cooperative rebalancing: a runner first lets
the tasks of the partitions it gives up finish (up to `revoke_wait_s`) and releases them.
Who holds a partition is recorded in a consumer group of its own that no consumer joins
(`handover_group`), because the runners' group refuses every commit while it rebalances: a
runner holds a partition there before it takes its tasks, releases it there at the position
its tasks are done to, and starts a partition another runner holds once that one released
it (`Runner._handed_over`), so a join or a graceful leave runs nothing twice.

SIGTERM/SIGINT: stop taking tasks, let running ones finish (up to `--drain-timeout`),
commit, leave the group, exit 0 (1 when tasks had to be abandoned: they are redelivered; a
second signal abandons them at once). It exits within the drain timeout and a few seconds
whatever `pit up` does meanwhile (streams/process.py). A runner whose `pit up` is gone says
so in one line and waits for it, then carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import socket
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, TypeVarTuple

from aiokafka.errors import KafkaError
from confluent_kafka import Consumer, KafkaException
from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka import Message as KafkaMessage
from confluent_kafka import TopicPartition as KafkaPartition

from schemas.codec import Codec
from streams.arbitration.arbiter import ARBITER
from streams.arbitration.client import allocation_ops
from streams.arbitration.utilisation import report_every_s, report_utilisation
from streams.blobs import FileBlobStore, blob_store
from streams.commands import CommandClient, registry_for
from streams.config import Settings
from streams.dag.definition import (
    FALSE,
    ITEMS,
    OPERATORS,
    OUT,
    TRUE,
    VALUE,
    Condition,
    Node,
    NodeKind,
    OperatorRegistry,
    evaluate_condition,
    item_input_of,
)
from streams.dag.dispatch import NODE_SCHEDULED, TASK_OFFSET, TASK_PARTITION
from streams.dag.execution import (
    DAG,
    TIMEOUT,
    ReportNodeCompleted,
    ReportNodeFailed,
    ReportNodeStarted,
)
from streams.dag.topics import DAG_COMMANDS, DAG_TASKS
from streams.decider import Message, to_record
from streams.errors import (
    BlobIntegrityError,
    BrokerUnavailableError,
    CommandTimeoutError,
    PitError,
    SchemaError,
)
from streams.kafka import (
    ANY_PARTITION,
    PitProducer,
    close_producer,
    consume_ready,
    keyed_producer,
    produce_all,
)
from streams.pool.pool import POOL
from streams.process import (
    BROKER_POLL_S,
    Stopping,
    broker_address,
    close_all,
    gone_line,
    wait_for_broker,
)
from streams.processor import Output

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

GROUP = "pit.dag.runners"
POOLS = ("instrument", "operator")  # the runner pools a runner serves unless told otherwise
INLINE_OUTPUT_BYTES = 32 * 1024  # a larger output JSON goes to the blob store
CONCURRENCY = 256
THREADS = 32
MAP_CONCURRENCY = 16
MODEL_TIMEOUT_S = 30.0  # allocation and inference, when the task has no deadline
DRAIN_TIMEOUT_S = 30.0
REVOKE_WAIT_S = 5.0
# A run reports its start once it has lasted this long; one that ends sooner reports its start
# with its end (its NodeCompleted names the runner and the duration). Every start report is a
# command the decider decodes, decides, logs and answers: a third of a short node's cost.
START_REPORT_AFTER_S = 0.05
COMMIT_WAIT_S = 2.0  # a commit the group refuses while it rebalances is tried this long
REPORTER_CLOSE_S = 0.5  # a closing reporter waits this long for the broker to take the rest
# How long the embedded broker holds a runner's empty fetch: a task waits half of it on average.
# librdkafka's consumer cannot be paced while idle the way `streams.kafka.pace_fetches` paces
# the processors', so an idle runner pays it: with 3 ms, 2.4% of a core in the runner and 1.7%
# in `pit up` (was 2.1% and 0 with 10 ms), for a hop's runner stage of 2.4-3.0 ms (5.5-7.8).
RUNNER_FETCH_WAIT_MS = 3
# A runner given partitions waits at most this long for their previous owner's release
# (see `Runner._handed_over`): well above the few milliseconds a live owner takes, and what a
# crashed owner's partitions cost on top of its session.
HANDOVER_WAIT_S = 2.0
# Commit metadata in the hand-over group (`handover_group`): who holds a partition, at the
# position it started from, or who gave it up, at the position its tasks were done to.
HELD, RELEASED = "held by ", "released by "
BROKER_CALL_S = 5.0  # a runner's call for committed positions or watermarks
LEAVE_S = 3.0        # a stopping runner waits this long for the group to take its partitions
# A dead runner's tasks move after this. Give every runner of a group the same: the embedded
# broker drops a member waiting to join when its session is shorter than another's.
SESSION_TIMEOUT_MS = 10_000
REMEMBERED_TASKS = 100_000  # results of tasks this runner ran, reported again if redelivered


def wall_ms() -> int:
    return int(time.time() * 1000)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


class TaskError(PitError):
    """A task that cannot run as given (not retryable: running it again changes nothing)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type


# --- tasks and results ------------------------------------------------------------------------

def _json_object(record: Mapping[str, Any], name: str) -> dict:
    try:
        value = json.loads(record.get(name) or "{}")
    except ValueError as exc:
        raise TaskError("InvalidTask", f"{name} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise TaskError("InvalidTask", f"{name} is not a JSON object")
    return value


@dataclass(frozen=True)
class Task:
    """A node task: the fields of a NodeScheduled event a runner needs."""

    task_id: str
    execution_id: str
    node_id: str
    attempt: int
    kind: str
    spec: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    input_refs: dict = field(default_factory=dict)
    deadline_at: int = 0  # epoch ms; 0: none
    correlation_id: str = ""
    problem: str = ""  # why it cannot run (its JSON fields are malformed); reported failed
    tenant: str = ""   # the execution's; with one, model allocations are arbitrated
    priority: int = 0  # the node's, for arbitration

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Task:
        """From a decoded NodeScheduled (the schema guarantees the identity fields)."""
        values, problems = {}, []
        for name in ("spec", "inputs", "input_refs"):
            try:
                values[name] = _json_object(record, name)
            except TaskError as exc:
                problems.append(str(exc))
        return cls(record["task_id"], record["execution_id"], record["node_id"],
                   record["attempt"], record["kind"], **values,
                   deadline_at=record.get("deadline_at") or 0,
                   correlation_id=(record.get("envelope") or {}).get("correlation_id", ""),
                   problem="; ".join(problems), tenant=record.get("tenant") or "",
                   priority=record.get("priority") or 0)

    @property
    def params(self) -> dict:
        return self.spec.get("params") or {}


@dataclass(frozen=True)
class Completed:
    output: str = ""  # the output object as JSON, when inline
    output_hash: str = ""  # else the blob holding it
    branch_taken: str = ""
    duration_ms: int = 0


@dataclass(frozen=True)
class Failed:
    error_type: str
    message: str = ""
    retryable: bool = True
    duration_ms: int = 0


Result = Completed | Failed


# --- running a node ---------------------------------------------------------------------------

class Models(Protocol):
    """What an instrument needs of the Pool Manager (`PoolOps` is one)."""

    async def allocate_model(self, model_id: str, requester: str, *, request_id: str,
                             workflow_id: str = "", timeout: float = 30.0,
                             tenant: str | None = None, priority: int | None = None) -> Any: ...

    async def infer(self, allocation: Any, inputs: Any, *, params: dict | None = None,
                    timeout: float = 30.0) -> Any: ...

    async def release_model(self, request_id: str) -> Any: ...


async def _sleep_then_return(value: Any, ms: int = 0) -> Any:
    await asyncio.sleep(ms / 1000)
    return value


# Built-ins that only wait: run on the event loop instead of holding a thread.
_ASYNC_TWINS = {OPERATORS["sleep_then_return"].fn: _sleep_then_return}
_NOT_RETRYABLE = (TaskError, BlobIntegrityError)


@dataclass
class NodeExecutor:
    """Runs tasks: resolves inputs, runs the node, shapes the result. A node's failure is a
    `Failed`, never an exception."""

    blobs: FileBlobStore
    operators: OperatorRegistry = OPERATORS
    models: Models | None = None
    threads: ThreadPoolExecutor | None = None
    inline_limit: int = INLINE_OUTPUT_BYTES
    map_concurrency: int = MAP_CONCURRENCY
    clock: Callable[[], int] = wall_ms

    async def execute(self, task: Task) -> Result:
        if task.problem:
            return Failed("InvalidTask", task.problem, False)
        remaining_s = None
        if task.deadline_at:
            remaining_s = (task.deadline_at - self.clock()) / 1000
            if remaining_s <= 0:
                return Failed(TIMEOUT, f"the deadline passed {-remaining_s:.3f} s before"
                                       " the task started")
        started = time.monotonic()

        def took() -> int:
            return int((time.monotonic() - started) * 1000)

        deadline = asyncio.timeout(remaining_s)
        try:
            async with deadline:
                output, branch_taken = await self._run(task, remaining_s)
            result = await self._completed(output, branch_taken)
        except TimeoutError as exc:
            if deadline.expired():
                return Failed(TIMEOUT, f"{task.kind} node {task.node_id} ran past its deadline"
                                       f" ({took()} ms)", True, took())
            return Failed(type(exc).__name__, _one_line(exc) or "timed out", True, took())
        except Exception as exc:  # the node's failure is its report, not a runner crash
            error_type = getattr(exc, "error_type", type(exc).__name__)
            return Failed(error_type, _one_line(exc) or error_type,
                          not isinstance(exc, _NOT_RETRYABLE), took())
        return Completed(result.output, result.output_hash, result.branch_taken, took())

    async def _completed(self, output: dict, branch_taken: str) -> Completed:
        try:
            text = json.dumps(output, sort_keys=True, separators=(",", ":"), allow_nan=False,
                              ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise TaskError("InvalidOutput", f"the output is not JSON: {exc}") from None
        data = text.encode()
        if len(data) <= self.inline_limit:
            return Completed(text, branch_taken=branch_taken)
        address = await asyncio.to_thread(self.blobs.put, data)
        return Completed(output_hash=address, branch_taken=branch_taken)

    async def _inputs(self, task: Task) -> dict:
        inputs = dict(task.inputs)
        blobs: dict[str, Any] = {}
        for name, ref in task.input_refs.items():
            if not isinstance(ref, dict) or "hash" not in ref:
                raise TaskError("InvalidTask", f"input {name}: bad blob reference {ref!r}")
            address = ref["hash"]
            if address not in blobs:
                blobs[address] = json.loads(await asyncio.to_thread(self.blobs.get, address))
            value = blobs[address]
            for step in ref.get("path") or ():
                try:
                    value = value[step]
                except (KeyError, IndexError, TypeError):
                    raise TaskError("InvalidTask", f"input {name}: no {step!r} in blob "
                                                   f"{address}") from None
            inputs[name] = value
        return inputs

    async def _run(self, task: Task, remaining_s: float | None) -> tuple[dict, str]:
        inputs = await self._inputs(task)
        spec = task.spec
        if task.kind == NodeKind.OPERATOR:
            return {OUT: await self._call(spec.get("operator", ""), inputs, task.params)}, ""
        if task.kind == NodeKind.INSTRUMENT:
            async with self._allocated(task, spec.get("model", ""), remaining_s) as allocation:
                return {OUT: await self._infer(allocation, inputs, task.params,
                                               remaining_s)}, ""
        if task.kind == NodeKind.BRANCH:
            condition = Condition(**(spec.get("condition") or {}))
            taken = TRUE if evaluate_condition(condition, inputs.get(VALUE)) else FALSE
            return {taken: inputs.get(VALUE)}, taken
        if task.kind == NodeKind.MAP:
            return {OUT: await self._map(task, inputs, remaining_s)}, ""
        raise TaskError("InvalidTask", f"unknown node kind {task.kind!r}")

    async def _call(self, name: str, inputs: dict, params: dict) -> Any:
        operator = self.operators.get(name)
        if operator is None:
            raise TaskError("UnknownOperator", f"no operator {name!r} is registered in this "
                                               "runner")
        twin = _ASYNC_TWINS.get(operator.fn)
        if twin is not None:
            return await twin(**inputs)
        if inspect.iscoroutinefunction(operator.fn):
            return await operator(inputs, params)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.threads, operator, inputs, params)

    @contextlib.asynccontextmanager
    async def _allocated(self, task: Task, model: str, remaining_s: float | None
                         ) -> AsyncIterator[Any]:
        """The model allocated for the node's calls; released after them whatever happened,
        also when the allocation itself failed or the deadline cut it short (a request still
        queued would otherwise pin the model)."""
        models = self.models
        if models is None:
            raise TaskError("NoModels", "this runner has no Pool Manager client")
        request_id = f"{task.task_id}/{uuid.uuid4().hex[:8]}"
        try:
            # An execution with a tenant has its allocations arbitrated, at the node's priority.
            yield await models.allocate_model(
                model, task.task_id, request_id=request_id, workflow_id=task.execution_id,
                timeout=remaining_s or MODEL_TIMEOUT_S, tenant=task.tenant or None,
                priority=task.priority if task.tenant else None)
        finally:
            await asyncio.shield(self._release(models, request_id))  # a cancelled node releases too

    async def _release(self, models: Models, request_id: str) -> None:
        try:
            await models.release_model(request_id)  # refused if it never began: fine
        except PitError as exc:
            log.warning("could not release allocation %s: %s", request_id, exc)

    async def _infer(self, allocation: Any, inputs: dict, params: dict,
                     remaining_s: float | None) -> Any:
        models = self.models
        assert models is not None  # `allocation` came from it (_allocated)
        payload = next(iter(inputs.values())) if len(inputs) == 1 else inputs
        return await models.infer(allocation, payload, params=params or None,
                                  timeout=remaining_s or MODEL_TIMEOUT_S)

    async def _map(self, task: Task, inputs: dict, remaining_s: float | None) -> list:
        items = inputs.pop(ITEMS, None)
        if not isinstance(items, list):
            raise TaskError("InvalidInput", f"map node {task.node_id}: input {ITEMS!r} is "
                                            f"{type(items).__name__}, not a list")
        spec = task.spec
        operator = spec.get("operator", "")
        item_input = spec.get("item_input") or item_input_of(
            Node(task.node_id, NodeKind.MAP, operator=operator), self.operators)
        gate = asyncio.Semaphore(self.map_concurrency)

        async def each(call: Callable[[dict], Awaitable[Any]]) -> list:
            async def one(item: Any) -> Any:
                async with gate:
                    return await call({**inputs, item_input: item})
            return list(await asyncio.gather(*(one(item) for item in items)))

        if operator:
            return await each(lambda item_inputs: self._call(operator, item_inputs,
                                                             task.params))
        async with self._allocated(task, spec.get("model", ""), remaining_s) as allocation:
            return await each(lambda item_inputs: self._infer(allocation, item_inputs,
                                                              task.params, remaining_s))


# --- reports ----------------------------------------------------------------------------------

class Reporter(Protocol):
    async def started(self, task: Task) -> None: ...

    async def close(self) -> None: ...

    async def finished(self, task: Task, result: Result,
                       headers: Sequence[tuple[str, bytes]] = ()) -> None: ...


def started_report(task: Task, runner_id: str) -> ReportNodeStarted:
    return ReportNodeStarted(task.execution_id, task.node_id, task.attempt, runner_id)


def final_suffix(result: Result) -> str:
    """The end of a final report's command id ("<task id>/completed" or ".../failed")."""
    return "completed" if isinstance(result, Completed) else "failed"


class KafkaReporter:
    """Reports as commands on pit.dag.commands, keyed by execution id (the decider's entity,
    partitioned by murmur2 as every client partitions it); each call returns once the broker
    has acknowledged the report.

    Reports made while earlier ones are on their way go out together, in one produce and
    one wait for the broker's acknowledgement (`produce_all`): a wide DAG's reports do not
    each wait in turn, and a lone report (a chain's hop) goes at once. The producer is
    librdkafka's, which builds and sends its requests in C, where aiokafka's did so in
    Python on the runner's event loop (README, "The runner's reports in C")."""

    def __init__(self, settings: Settings, codec: Codec, runner_id: str,
                 run_id: str = "") -> None:
        self.settings, self.codec, self.runner_id = settings, codec, runner_id
        self.run_id = run_id or runner_id
        self.producer: PitProducer | None = None
        self._queued: list[tuple[Output, asyncio.Future[None]]] = []
        self._sending: asyncio.Task[None] | None = None

    async def start(self) -> KafkaReporter:
        # quiet, as the runner's consumers: a broker gone is the runner's to say, in one line
        self.producer = keyed_producer(self.settings, log_level=0)
        return self

    async def close(self) -> None:
        """Close, after the broker has taken what is in flight or REPORTER_CLOSE_S has
        passed (a drain closes once every report is acknowledged; a report lost here, with a
        broker gone, leaves its task owed, to be reported again after a reconnect)."""
        producer, self.producer = self.producer, None
        if self._sending is not None:
            self._sending.cancel()
        closed = BrokerUnavailableError("the runner's reporter is closed")
        for _, acknowledged in self._queued:
            if not acknowledged.done():
                acknowledged.set_exception(closed)
        self._queued = []
        if producer is not None:
            await close_producer(producer, REPORTER_CLOSE_S)

    async def _send(self, command: Message, task: Task, suffix: str,
                    headers: Sequence[tuple[str, bytes]] = ()) -> None:
        meta = {"command_id": f"{task.task_id}/{suffix}", "issued_at": wall_ms(),
                "issued_by": f"pit-runner/{self.runner_id}",
                "correlation_id": task.correlation_id or None}
        value = self.codec.encode(command.avro_name, {"meta": meta, **to_record(command)})
        if self.producer is None:
            raise BrokerUnavailableError("the runner's reporter is closed")
        acknowledged = asyncio.get_running_loop().create_future()
        self._queued.append((Output(DAG_COMMANDS, ANY_PARTITION, task.execution_id.encode(),
                                    value, wall_ms(), tuple(headers)), acknowledged))
        if self._sending is None or self._sending.done():
            self._sending = asyncio.ensure_future(self._send_queued())
        await acknowledged

    async def _send_queued(self) -> None:
        """Produce what is queued, and again what was queued meanwhile, until nothing is."""
        while self._queued and self.producer is not None:
            batch, self._queued = self._queued, []
            failure: BrokerUnavailableError | None = BrokerUnavailableError(
                "the runner's reporter closed while sending")
            try:
                await produce_all(self.producer, [output for output, _ in batch])
                failure = None
            except BrokerUnavailableError as exc:
                failure = exc
            finally:
                for _, acknowledged in batch:
                    if acknowledged.done():  # its caller gave up
                        continue
                    if failure is None:
                        acknowledged.set_result(None)
                    else:
                        acknowledged.set_exception(failure)

    async def started(self, task: Task) -> None:
        await self._send(started_report(task, self.runner_id), task,
                         f"started/{self.run_id}")

    async def finished(self, task: Task, result: Result,
                       headers: Sequence[tuple[str, bytes]] = ()) -> None:
        ids = (task.execution_id, task.node_id, task.attempt)
        report: ReportNodeCompleted | ReportNodeFailed
        if isinstance(result, Completed):
            report = ReportNodeCompleted(*ids, result.output, result.output_hash,
                                         result.branch_taken, result.duration_ms,
                                         self.runner_id)
            await self._send(report, task, final_suffix(result), headers)
        else:
            report = ReportNodeFailed(*ids, result.error_type, result.message, result.retryable,
                                      result.duration_ms, self.runner_id)
            await self._send(report, task, final_suffix(result), headers)


# --- offsets ----------------------------------------------------------------------------------

Partition = tuple[str, int]  # (topic, partition)


class Offsets:
    """Per partition, the offsets taken and not yet done. What may be committed is the
    lowest offset still running, or one past the highest taken when none runs. A partition
    forgotten (handed over) and assigned again starts a new epoch: a task of the earlier
    one that finishes late does not count for the same offset taken again."""

    def __init__(self) -> None:
        self.running: dict[Partition, set[int]] = {}
        self.next: dict[Partition, int] = {}
        self.committed: dict[Partition, int] = {}
        self.epochs: dict[Partition, int] = {}

    def take(self, tp: Partition, offset: int) -> int:
        """Track `offset`; returns the epoch to pass to `done`."""
        self.running.setdefault(tp, set()).add(offset)
        self.next[tp] = max(self.next.get(tp, 0), offset + 1)
        return self.epochs.get(tp, 0)

    def done(self, tp: Partition, offset: int, epoch: int = 0) -> None:
        if tp in self.running and epoch == self.epochs.get(tp, 0):
            self.running[tp].discard(offset)

    def committable(self, partitions: Iterable[Partition] | None = None) -> dict[Partition, int]:
        """The positions moved since their last commit."""
        positions = {}
        for tp in list(self.next) if partitions is None else partitions:
            if tp in self.next and (position := self._position(tp)) != self.committed.get(tp):
                positions[tp] = position
        return positions

    def releasable(self, partitions: Iterable[Partition]) -> dict[Partition, int]:
        """The positions to hand over: what is done, or where the partition started."""
        return {tp: self._position(tp) if tp in self.next else self.committed[tp]
                for tp in partitions if tp in self.next or tp in self.committed}

    def _position(self, tp: Partition) -> int:
        running = self.running.get(tp)
        return min(running) if running else self.next[tp]

    def started(self, tp: Partition, committed: int) -> None:
        """A partition given to this runner starts at its committed position."""
        self.committed[tp] = committed

    def forget(self, partitions: Iterable[Partition]) -> None:
        for tp in partitions:
            for table in (self.running, self.next, self.committed):
                table.pop(tp, None)
            self.epochs[tp] = self.epochs.get(tp, 0) + 1


# --- the runner -------------------------------------------------------------------------------

def default_runner_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def handover_group(group: str) -> str:
    """The consumer group in which the runners of `group` record who holds which partition.
    No consumer ever joins it, so no rebalance refuses its commits: the runners' own group
    refuses every commit while it is joining, which is when partitions change hands."""
    return f"{group}.handover"


def group_of(pools: Iterable[str]) -> str:
    """The consumer group of runners serving `pools`: runners of the same pools share the
    work; runners of other pools read the same tasks and leave these to them. So pools are
    split between sets of runners, never shared by two sets (each would run the task)."""
    pools = sorted(set(pools))
    return GROUP if tuple(pools) == POOLS else f"{GROUP}.{'+'.join(pools)}"


class Runner:
    """One runner process's worth: consumes pit.dag.tasks in the group, runs up to
    `concurrency` tasks at once, reports, commits.

    The group consumer is librdkafka's (confluent-kafka), driven from one thread of its own:
    the embedded broker's group coordinator answers a follower's SyncGroup only when it
    comes before the leader's, which aiokafka's leader usually beats (its group of two never
    settles there), while librdkafka's leader fetches metadata first. Its rebalance
    callbacks run on that thread and wait for the event loop to let tasks finish.

    Partitions move by cooperative rebalancing: a runner keeps its partitions while the
    group rebalances and gives up only those that move, once the tasks it runs on them have
    finished and their offsets are committed. (With the eager protocol every runner revokes
    everything first; the embedded broker's coordinator refuses commits while the group is
    joining, so what a runner had done since its last commit ran again on its new owner.)

    Connections: the Kafka clients belong to one connection to the broker. Once the `pit up`
    of an embedded broker is gone, the runner says so in one line, abandons its running
    tasks (their reports could not land; they run again from the restored log) and waits for
    a `pit up` to come back, then connects to it and carries on."""

    def __init__(self, settings: Settings, *, runner_id: str | None = None,
                 concurrency: int = CONCURRENCY, threads: int = THREADS,
                 operators: OperatorRegistry = OPERATORS, codec: Codec | None = None,
                 blobs: FileBlobStore | None = None, inline_limit: int = INLINE_OUTPUT_BYTES,
                 drain_timeout_s: float = DRAIN_TIMEOUT_S, revoke_wait_s: float = REVOKE_WAIT_S,
                 session_timeout_ms: int = SESSION_TIMEOUT_MS, pools: Iterable[str] = POOLS,
                 group: str | None = None, say: Callable[[str], None] | None = None,
                 fence: bool = True, start_report_after_s: float = START_REPORT_AFTER_S
                 ) -> None:
        if concurrency <= 0 or threads <= 0:
            raise PitError(f"--concurrency and --threads must be positive (got {concurrency},"
                           f" {threads})")
        self.settings = settings
        self.runner_id = runner_id or default_runner_id()
        # Names this process's runs in its start reports: a task run again elsewhere (its
        # runner was lost) is a new run to the decider, not a repeat of the first report.
        self.run_id = f"{self.runner_id}/{uuid.uuid4().hex[:8]}"
        self.pools = tuple(sorted(set(pools)))
        self.concurrency, self.group = concurrency, group or group_of(self.pools)
        self.drain_timeout_s, self.revoke_wait_s = drain_timeout_s, revoke_wait_s
        self.session_timeout_ms = session_timeout_ms
        self.fence = fence  # off only where no decider answers: the group's own tests
        self.start_report_after_s = start_report_after_s
        self.held, self.released = HELD + self.run_id, RELEASED + self.run_id
        self.codec = codec or Codec(registry_for(settings))
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="pit-runner")
        self.executor = NodeExecutor(blobs or blob_store(settings), operators, None,
                                     self._threads, inline_limit)
        self.client: CommandClient | None = None
        self.reporter: Reporter | None = None
        self._say = say or (lambda line: print(f"pit runner {self.runner_id}: {line}",
                                               file=sys.stderr, flush=True))
        self.offsets = Offsets()
        # positions of partitions given up whose release could not be committed yet
        self.handover: dict[Partition, int] = {}
        self.handover_until = 0.0
        # partitions given whose hold could not be committed: held by the next `_commit`
        self.unheld: set[Partition] = set()
        self.assignment: set[Partition] = set()
        # per partition, its end when it was assigned: the tasks below it are fenced
        self.backlog: dict[Partition, int] = {}
        self.running: dict[asyncio.Task, Partition] = {}
        self.results: OrderedDict[str, Result] = OrderedDict()  # by task id, bounded
        self.runs: dict[str, asyncio.Future[Result]] = {}  # tasks running, by task id
        # tasks taken whose final report the decider has not answered, with the headers it
        # carries: reported first thing after a reconnect (`_report_owed`)
        self.owed: dict[str, tuple[Task, tuple[tuple[str, bytes], ...]]] = {}
        self._owed_jobs: set[asyncio.Task] = set()
        self.counts = {"completed": 0, "failed": 0, "skipped": 0, "over_elsewhere": 0}
        self._slot = asyncio.Event()
        self._forced = asyncio.Event()
        self._consumer: Consumer | None = None
        self._holds: Consumer | None = None  # commits to the hand-over group, never joins it
        self._utilisation: asyncio.Future[None] | None = None
        self._kafka: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, stop: asyncio.Event) -> bool:
        """Take and run tasks until `stop`, then drain. True when every task taken was
        finished and committed, False when some had to be abandoned (they run again)."""
        self._loop = asyncio.get_running_loop()
        gone = False
        try:
            while True:
                address = await wait_for_broker(self.settings, stop, self._say, said=gone)
                if address is None:  # stopped while the broker was gone
                    return not self.runs
                drained = await self._connected(stop, address)
                if drained is not None:
                    return drained
                gone = True
        finally:
            self._threads.shutdown(wait=False, cancel_futures=True)

    async def _connected(self, stop: asyncio.Event, address: str) -> bool | None:
        """One connection: take tasks until `stop` (then drain: True when nothing was
        abandoned) or until the broker is gone (None)."""
        self._kafka = ThreadPoolExecutor(1, thread_name_prefix="pit-runner-kafka")
        try:
            self.client = CommandClient(self.settings, f"pit-runner/{self.runner_id}",
                                        self.codec, deciders=(POOL, DAG, ARBITER))
            # the pool's operations, arbitrated for an execution with a tenant
            self.executor.models, _ = allocation_ops(self.client)
            self.reporter = KafkaReporter(self.settings, self.codec, self.runner_id,
                                          self.run_id)
            await self.client.start()
            await self.reporter.start()
            if every_s := report_every_s(self.settings):  # CPU saturation, for arbitration
                self._utilisation = asyncio.ensure_future(
                    report_utilisation(self.client.send, self.runner_id, every_s))
            await self._report_owed()
            await self._on_kafka(self._subscribe, address)
        except BrokerUnavailableError as exc:
            self._say(f"cannot connect to the broker at {address}: {_one_line(exc)}")
            await self._disconnect()
            await asyncio.sleep(BROKER_POLL_S)
            return None
        self._say(f"taking tasks of pools {', '.join(self.pools)} from {DAG_TASKS} in group"
                  f" {self.group} at {address} (concurrency {self.concurrency})")
        # Watched beside the loop, not in it: a call to a broker that died (a commit, say)
        # can block its Kafka thread for a minute.
        gone = asyncio.ensure_future(self._until_gone(address))
        try:
            while not stop.is_set():
                step = asyncio.ensure_future(self._take_and_commit())
                await asyncio.wait([step, gone], return_when=asyncio.FIRST_COMPLETED)
                if gone.done():
                    step.cancel()
                    self._say(gone_line(address))
                    self._abandon()
                    return None
                step.result()
            drained = await self._drain()
            if self._consumer is not None:
                await self._on_kafka(_leave, self._consumer, LEAVE_S)
            return drained
        finally:
            gone.cancel()
            await self._disconnect()

    async def _take_and_commit(self) -> None:
        await self._take()
        await self._commit()

    async def _until_gone(self, address: str) -> None:
        """Return once the broker at `address` is no longer where `pit up` is."""
        while broker_address(self.settings) == address:
            await asyncio.sleep(BROKER_POLL_S)

    def _abandon(self) -> None:
        """The broker is gone: the positions go (a new broker restores the group's own), and
        running tasks go on unreported; their results are reported once a broker is back."""
        for job in [*self.running, *self._owed_jobs]:
            job.cancel()
        self.offsets.forget(set(self.offsets.next))
        self.assignment.clear()
        self.unheld.clear()

    async def _disconnect(self) -> None:
        """Close the connection's clients, in bounded time."""
        if self._utilisation is not None:  # reports 0 on its way out, while the client is up
            self._utilisation.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._utilisation
            self._utilisation = None
        clients = [client for client in (self._consumer, self._holds) if client is not None]
        self._consumer = self._holds = None
        closers = [lambda client=client: self._on_kafka(client.close) for client in clients]
        await close_all([*closers, *(part.close for part in (self.reporter, self.client)
                                     if part is not None)])
        self.reporter = self.client = None
        if self._kafka is not None:
            self._kafka.shutdown(wait=False)

    def force(self) -> None:
        """Stop draining now (a second signal): running tasks are abandoned."""
        self._forced.set()

    @property
    def _event_loop(self) -> asyncio.AbstractEventLoop:
        """The loop `run` runs on: the Kafka thread's callbacks hand their work to it."""
        assert self._loop is not None, "the runner is not running"
        return self._loop

    def _on_kafka(self, call: Callable[[*_Ts], _T], *args: *_Ts) -> asyncio.Future[_T]:
        """Every consumer call runs on the one Kafka thread, so none overlaps another."""
        return self._event_loop.run_in_executor(self._kafka, call, *args)

    # --- the group (on the Kafka thread) ----------------------------------------------------

    def _subscribe(self, address: str) -> None:
        self._holds = Consumer({
            **self.settings.librdkafka_config(), "bootstrap.servers": address,
            "group.id": handover_group(self.group), "enable.auto.commit": False,
            "log_level": 0, "error_cb": self._kafka_error})
        self._consumer = Consumer({
            **self.settings.librdkafka_config(), "bootstrap.servers": address,
            "group.id": self.group,
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": self.session_timeout_ms,
            "heartbeat.interval.ms": max(100, self.session_timeout_ms // 5),
            # the default (500 ms) is what every scheduled node waited before it started
            "fetch.wait.max.ms": RUNNER_FETCH_WAIT_MS,
            # librdkafka reconnects on its own; its connection errors would flood stderr
            "log_level": 0, "error_cb": self._kafka_error})
        self._consumer.subscribe([DAG_TASKS], on_assign=self._assigned,
                                 on_revoke=self._revoked, on_lost=self._lost)

    def _kafka_error(self, error: RdKafkaError) -> None:
        log.debug("runner %s: kafka: %s", self.runner_id, error)

    def _assigned(self, consumer: Consumer, partitions: list[KafkaPartition]) -> None:
        """New partitions: each starts at its committed position once its previous owner
        has released it (`_handed_over`), and this runner holds it (`_hold`). A release of
        this runner's own that could not be committed goes first: its new owner may be
        waiting for it."""
        self._release_owed(consumer)
        partitions = self._handed_over(consumer, partitions)
        starts, waiting = {}, 0
        for p in partitions:
            tp = (p.topic, p.partition)
            try:
                low, high = consumer.get_watermark_offsets(p, timeout=BROKER_CALL_S)
                starts[tp] = max(low, p.offset)
                waiting += max(0, high - starts[tp])
            except KafkaException:
                high = 2**63 - 1  # unknown: fence every task of it
                if p.offset >= 0:
                    starts[tp] = p.offset
            self.backlog[tp] = high
            if tp in starts:
                self._event_loop.call_soon_threadsafe(self.offsets.started, tp, starts[tp])
        consumer.incremental_assign(partitions)
        self._hold(starts)
        self.assignment |= {(p.topic, p.partition) for p in partitions}
        if partitions:
            self._say(f"given {len(partitions)} partition(s) of {DAG_TASKS}, {waiting} task(s)"
                      " already on them: each runs once the decider takes its start")

    def _hold(self, starts: dict[Partition, int]) -> None:
        """Commit "held by" this runner in the hand-over group at the partitions' start, so
        that whoever is given them next waits for this runner's release. A hold that cannot
        be committed (the broker failed the request) is tried again by `_commit`, and the
        runner takes the partition's tasks meanwhile: pausing it until held cost a start of
        two runners a whole rebalance when the holds were the group's own commits (the
        resume after a crash: 3.5-6.1 s in three of four runs, against a median of 1.7 s)."""
        if not starts or self._holds is None:
            return
        held = _committed(self._holds, _offsets(starts, self.held))
        self.unheld |= set(starts) - held
        self.unheld -= held

    def _handed_over(self, consumer: Consumer, partitions: list[KafkaPartition]
                     ) -> list[KafkaPartition]:
        """`partitions` at their positions, once no other runner holds them. A runner
        records "held by" it in the hand-over group while it runs a partition's tasks and
        "released by" it, at the position its tasks are done to, when it gives the partition
        up; this runner's group may have refused every commit of that runner meanwhile (it
        refuses them while it is joining), so a partition starts at the later of the two
        groups' positions. A partition this runner gave up and gets back before its own
        release was committed starts where that release says (its hold is older), and the
        release is no longer owed: the partition is held again. A crashed owner never
        releases: its partitions start where it last committed, after `HANDOVER_WAIT_S`."""
        if not partitions:
            return partitions
        assert self._holds is not None  # created with the consumer
        deadline = time.monotonic() + HANDOVER_WAIT_S
        holds: list[KafkaPartition] = []
        while True:
            try:
                holds = self._holds.committed(partitions, timeout=BROKER_CALL_S)
            except KafkaException:
                break  # unknown: the group's own positions
            holders = {note.removeprefix(HELD) for note in (p.metadata or "" for p in holds)
                       if note.startswith(HELD) and note != self.held}
            if not holders:
                break
            if time.monotonic() > deadline:
                self._say(f"{', '.join(sorted(holders))} did not release partitions of"
                          f" {DAG_TASKS} within {HANDOVER_WAIT_S:g} s (crashed?): tasks"
                          " finished there since the last commit may run again")
                break
            time.sleep(0.02)
        try:
            read = consumer.committed(partitions, timeout=BROKER_CALL_S)
        except KafkaException:
            read = partitions  # unknown: librdkafka reads the committed positions itself
        released = {p.partition: p.offset for p in holds}
        for p in read:
            p.offset = max(p.offset, released.get(p.partition, p.offset),
                           self.handover.pop((p.topic, p.partition), p.offset))
        return read

    def _revoked(self, consumer: Consumer, partitions: list[KafkaPartition]) -> None:
        """Partitions go to another runner: let their tasks finish (up to `revoke_wait_s`)
        and release their positions (`_release`). A task still running then goes on and
        reports, but its offset is the new owner's, who runs it again."""
        revoked = {(p.topic, p.partition) for p in partitions}
        self.assignment -= revoked
        for tp in revoked:
            self.unheld.discard(tp)
        handover = asyncio.run_coroutine_threadsafe(self._let_go(revoked), self._event_loop)
        try:
            positions = handover.result(self.revoke_wait_s + 5)
        except TimeoutError:
            return
        self._release(consumer, positions)
        # owed until the group has settled with the new owner, never past (a late commit
        # would move its position back)
        self.handover_until = (time.monotonic() + self.session_timeout_ms / 1000
                               + HANDOVER_WAIT_S)

    def _release_owed(self, consumer: Consumer | None) -> None:
        if consumer is not None and self.handover:
            self._release(consumer, dict(self.handover))  # a copy: released ones go

    def _release(self, consumer: Consumer, positions: dict[Partition, int]) -> None:
        """Commit `positions` as released in the hand-over group (what fails stays owed:
        `handover`), and as the group's own positions, which it refuses while it rebalances
        (for those who read its lag; the next owner starts from the later of the two)."""
        released = set() if self._holds is None else _committed(
            self._holds, _offsets(positions, self.released))
        for tp, offset in positions.items():
            if tp in released:
                self.handover.pop(tp, None)
            else:
                self.handover[tp] = offset
        _committed(consumer, _offsets(positions, ""))

    def _lost(self, _consumer: Consumer, partitions: list[KafkaPartition]) -> None:
        lost = {(p.topic, p.partition) for p in partitions}
        self.assignment -= lost
        for tp in lost:
            self.unheld.discard(tp)
        self._event_loop.call_soon_threadsafe(self.offsets.forget, lost)

    def _commit_now(self, offsets: list[KafkaPartition]) -> set[Partition]:
        consumer = self._consumer
        return set() if consumer is None else _committed(consumer, offsets)

    # --- taking tasks -----------------------------------------------------------------------

    async def _take(self) -> None:
        free = self.concurrency - len(self.running)
        if free <= 0:
            self._slot.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._slot.wait(), 0.1)
            return
        consumer = self._consumer
        assert consumer is not None  # taking tasks only while subscribed
        # Tasks as they come: the first within 100 ms, with what is fetched beside it, so a
        # chain's next node starts at once. (consume(n, 0.1) waited for n tasks or 100 ms,
        # two thirds of every hop; the batching it gave the processor is now the readers'
        # own, streams/kafka.py take_ready.)
        for message in await self._on_kafka(consume_ready, consumer, free, 0.1):
            if message.error() is not None:
                self._say(f"consumer: {message.error()}")
                continue
            tp = (message.topic(), message.partition())
            if tp not in self.assignment:
                # Revoked while in hand: the group rebalanced inside the second consume of
                # `consume_ready`, after the first had returned this task. Its offset is the new
                # owner's, who runs it; running it here too would run it twice.
                continue
            offset = message.offset()
            assert offset is not None  # a record, not an error event: it has its position
            epoch = self.offsets.take(tp, offset)
            fenced = self.fence and offset < self.backlog.get(tp, 0)
            job = asyncio.create_task(self._handle(tp, epoch, message, fenced))
            self.running[job] = tp
            job.add_done_callback(self._finished)

    def _finished(self, job: asyncio.Task) -> None:
        self.running.pop(job, None)
        self._slot.set()
        if not job.cancelled() and job.exception() is not None:
            self._say(f"a task could not be run (it will run again): "
                      f"{_one_line(job.exception())}")

    async def _handle(self, tp: Partition, epoch: int, message: KafkaMessage,
                      fenced: bool = False) -> None:
        """Run one task record. Its offset is done once its last report is acknowledged,
        or once it proves not to be a task, or (`fenced`) to be over elsewhere.

        A task this runner already ran (or is running) is not run again when it comes back -
        after `pit up` restarted, say, whose restored log lost the report: its kept result is
        reported again, under the same command id, so the operator's side effects happen
        once."""
        offset = message.offset()
        assert offset is not None  # a record, not an error event (`_take`): its offset is set
        task = self._task(message)
        if task is None:
            self.counts["skipped"] += 1
            self.offsets.done(tp, offset, epoch)
            return
        # The task's position rides on its last report, so a restored broker can tell
        # which tasks were done (streams/dag/dispatch.py restore_runner_positions).
        position = ((TASK_PARTITION, str(message.partition()).encode()),
                    (TASK_OFFSET, str(offset).encode()))
        kept = self.results.get(task.task_id)
        if kept is None:
            run = self.runs.get(task.task_id)
            if run is None:
                if fenced and not await self._claim(task):
                    self.counts["over_elsewhere"] += 1
                    self.offsets.done(tp, offset, epoch)
                    return
                run = self.runs[task.task_id] = asyncio.ensure_future(
                    self._run(task, reported=fenced))
            self.owed[task.task_id] = (task, position)
            # shielded: a lost broker cancels this job, not the run, whose result is kept
            result = await asyncio.shield(run)
            self.counts["completed" if isinstance(result, Completed) else "failed"] += 1
        else:
            result = kept
            self.counts["skipped"] += 1
        if self.reporter is None:  # disconnected meanwhile: reported once a broker is back
            return
        await self._report_final(task, result, position)
        self.offsets.done(tp, offset, epoch)

    async def _report_final(self, task: Task, result: Result, position: tuple[
            tuple[str, bytes], ...], reporter: Reporter | None = None) -> None:
        """Send a task's final report until the broker acknowledges it. The task stays owed
        until the decider has answered the report: one acknowledged by the broker but not yet
        decided when `pit up` died is gone from the restored log, so it is sent again."""
        sender, client = reporter or self.reporter, self.client
        if sender is None or client is None:
            return
        # patient: nothing waits on the answer but this bookkeeping, so the runner's outcome
        # reader keeps its idle pace for it (README, "Patient waits")
        decided = client.expect(f"{task.task_id}/{final_suffix(result)}", patient=True)
        await self._report(lambda: sender.finished(task, result, position), task, reporter)
        decided.add_done_callback(lambda _answer: self.owed.pop(task.task_id, None))

    async def _report_owed(self) -> None:
        """After a reconnect, before taking tasks: report what this runner finished while
        `pit up` was away, and what it still runs as each run ends. The restored log offers
        such a task again, maybe to another runner, whose fenced start is then refused
        because the attempt is already over - so the side effect happens once. (A runner
        that starts it first still runs it again: the takeover of a runner that looked lost.)"""
        reporter = self.reporter
        assert reporter is not None

        async def when_done(task: Task, run: asyncio.Future[Result],
                            position: tuple[tuple[str, bytes], ...]) -> None:
            try:
                result = await asyncio.shield(run)
            except Exception:  # its run failed (and said so): the task runs again
                self.owed.pop(task.task_id, None)
                return
            await self._report_final(task, result, position, reporter)

        if self.owed:
            self._say(f"reporting {len(self.owed)} task(s) taken before pit up went away, each"
                      " as soon as its run has ended")
        finished = []
        for task, position in list(self.owed.values()):
            run = self.runs.get(task.task_id)
            if run is not None:
                job = asyncio.ensure_future(when_done(task, run, position))
                self._owed_jobs.add(job)
                job.add_done_callback(self._owed_jobs.discard)
            elif (result := self.results.get(task.task_id)) is not None:
                finished.append(self._report_final(task, result, position, reporter))
            else:
                self.owed.pop(task.task_id, None)  # its run failed: it runs again
        await asyncio.gather(*finished)

    async def _claim(self, task: Task) -> bool:
        """Report the start of a fenced task and wait for the decider: True when it accepted
        the start (a first start, a takeover from a runner lost mid-node, or a restarted
        runner of the same name starting its own attempt again), so this runner runs it. It
        refuses a start whose attempt or execution is over, or that was never dispatched as
        such (its NodeScheduled was lost; the task is relayed again). Asked again until it
        is answered; a lost broker cancels it (the task comes again from the restored log)."""
        while (client := self.client) is not None:
            try:
                outcome = await client.send(
                    started_report(task, self.runner_id),
                    command_id=f"{task.task_id}/started/{self.run_id}",
                    correlation_id=task.correlation_id or None)
            except (CommandTimeoutError, KafkaError) as exc:
                self._say(f"the start of {task.task_id} was not answered"
                          f" ({_one_line(exc) or type(exc).__name__}); asking again")
                await asyncio.sleep(1.0)
                continue
            if not outcome.accepted:
                log.info("runner %s: not running %s: %s", self.runner_id, task.task_id,
                         outcome.reason)
            return outcome.accepted
        raise asyncio.CancelledError  # disconnected: the task comes again

    async def _run(self, task: Task, reported: bool = False) -> Result:
        """Execute, keep the result. The start is reported (while connected, unless
        `reported`) once the run has lasted `start_report_after_s`, and acknowledged before
        the run counts as ended, so that the log has it before the end; a run that ends
        sooner leaves its start to its final report, as Temporal writes an activity's
        ActivityTaskStarted only with its result. Measured on the DAG bench (medians of
        six runs each): wide DAG 1,285 -> 1,667 nodes/s, hop 15.5 -> 11.8 ms, 20-node
        chains 26.6 -> 35.5 workflows/s (README, "Short runs report their start...")."""
        reporter = None if reported else self.reporter
        starting: asyncio.Future[None] | None = None

        def report_start() -> None:
            nonlocal starting
            assert reporter is not None  # scheduled only with one
            starting = asyncio.ensure_future(
                self._report(lambda: reporter.started(task), task, reporter))

        timer = None
        if reporter is not None and self.start_report_after_s > 0:
            timer = self._event_loop.call_later(self.start_report_after_s, report_start)
        elif reporter is not None:  # 0: every run reports its start
            report_start()
        try:
            result = await self.executor.execute(task)
            if starting is not None:
                with contextlib.suppress(asyncio.CancelledError):  # the broker went away
                    await starting
        finally:
            if timer is not None:
                timer.cancel()
            self.runs.pop(task.task_id, None)
        self.results[task.task_id] = result
        if len(self.results) > REMEMBERED_TASKS:
            self.results.popitem(last=False)
        return result

    async def _report(self, send: Callable[[], Awaitable[None]], task: Task,
                      reporter: Reporter | None = None) -> None:
        """Until the broker acknowledges it: a report sent again has the same command id.
        With `reporter`, only while it is this connection's (else the report is dropped):
        a send to a broker that died can wait for good, and a run (which outlives its job)
        must not hang on its start report."""
        while reporter is None or self.reporter is reporter:
            try:
                if reporter is None:
                    return await send()
                sending = asyncio.ensure_future(send())
                while not sending.done():
                    await asyncio.wait([sending], timeout=BROKER_POLL_S)
                    if self.reporter is not reporter:
                        sending.cancel()
                        return
                return sending.result()
            except (KafkaError, BrokerUnavailableError) as exc:
                self._say(f"a report on {task.task_id} was not acknowledged "
                          f"({_one_line(exc) or type(exc).__name__}); sending it again")
                await asyncio.sleep(1.0)

    def _task(self, message: KafkaMessage) -> Task | None:
        value = message.value()
        if value is None:
            return None
        try:
            decoded = self.codec.decode(value)
        except SchemaError as exc:
            self._say(f"skipping an undecodable record at {message.topic()}"
                      f"[{message.partition()}]@{message.offset()}: {exc}")
            return None
        if decoded.name != NODE_SCHEDULED or decoded.record["pool"] not in self.pools:
            return None  # another group's runners serve that pool
        return Task.from_record(decoded.record)

    # --- committing -------------------------------------------------------------------------

    async def _commit(self) -> bool:
        """Commit what is done, the holds and the releases still owed; True when all of it
        was. What the group refuses now (it is rebalancing) is tried again next round."""
        positions = self.offsets.committable(self.assignment)
        if self.handover and time.monotonic() > self.handover_until:
            self._say(f"could not commit {len(self.handover)} handed-over position(s) in"
                      " time; their finished tasks may run again")
            self.handover.clear()
        if self.handover:
            await self._on_kafka(self._release_owed, self._consumer)
        if unheld := self.unheld & self.assignment:  # held where it is now
            await self._on_kafka(self._hold, self.offsets.releasable(unheld))
        if not positions:
            return not self.handover and not self.unheld
        committed = await self._on_kafka(self._commit_now, _offsets(positions, ""))
        self.offsets.committed.update({tp: positions[tp] for tp in committed})
        return not self.handover and not self.unheld and committed >= set(positions)

    async def _let_go(self, revoked: set[Partition]) -> dict[Partition, int]:
        deadline = time.monotonic() + self.revoke_wait_s
        while (any(tp in revoked for tp in self.running.values())
               and time.monotonic() < deadline):
            await asyncio.sleep(0.02)
        positions = self.offsets.releasable(revoked)
        self.offsets.forget(revoked)
        return positions

    async def _drain(self) -> bool:
        """Stop taking tasks; finish the running ones (bounded), commit."""
        if self.running:
            self._say(f"stopping: waiting up to {self.drain_timeout_s:g} s for "
                      f"{len(self.running)} running task(s)")
            forced = asyncio.ensure_future(self._forced.wait())
            everything = asyncio.gather(*self.running, return_exceptions=True)
            # a tuple: a list of the two would type them as their join, `object`
            await asyncio.wait((forced, everything), timeout=self.drain_timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
            forced.cancel()
        abandoned = list(self.running)
        for job in abandoned:
            job.cancel()
        await asyncio.gather(*abandoned, return_exceptions=True)
        # Before leaving the group: a commit refused while it rebalances is taken once it
        # has settled, and the runner that gets these partitions starts after them.
        deadline = time.monotonic() + COMMIT_WAIT_S
        with contextlib.suppress(TimeoutError):  # a broker that is gone never answers
            while not self._forced.is_set() and not await asyncio.wait_for(
                    self._commit(), max(0.05, deadline - time.monotonic())):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
        if abandoned:
            self._say(f"abandoned {len(abandoned)} running task(s); they will run again")
        return not abandoned


def _leave(consumer: Consumer, within_s: float) -> None:
    """Unsubscribe, and serve the group until this consumer holds no partition (or for
    `within_s`), before it is closed. librdkafka aborts (`!rd_kafka_assignment_in_progress`,
    its open issues 4027 and 4792) or hangs when a consumer closes while a rebalance is giving
    it partitions or taking them; its maintainers' workaround (issue 4527) is this. A task
    fetched meanwhile is not run: its offset is not committed, so its next owner runs it."""
    deadline = time.monotonic() + within_s
    with contextlib.suppress(KafkaException, RuntimeError):
        consumer.unsubscribe()
        while time.monotonic() < deadline:
            consumer.consume(1, 0.05)  # serves the revoke (`Runner._revoked`)
            if not consumer.assignment():
                return


def _committed(consumer: Consumer, offsets: list[KafkaPartition]) -> set[Partition]:
    """Commit `offsets`; the partitions the group accepted (it refuses them all while it
    rebalances, and a partition can fail alone)."""
    try:
        answer = consumer.commit(offsets=offsets, asynchronous=False)
    except KafkaException as exc:
        log.debug("commit refused: %s", exc)
        return set()
    return {(p.topic, p.partition) for p in answer or () if p.error is None}


def _offsets(positions: dict[Partition, int], metadata: str) -> list[KafkaPartition]:
    return [KafkaPartition(topic, partition, offset, metadata=metadata)
            for (topic, partition), offset in positions.items()]


async def run_runner(settings: Settings, runner_id: str | None, concurrency: int,
                     threads: int, drain_timeout_s: float, pools: Iterable[str] = POOLS,
                     session_timeout_ms: int = SESSION_TIMEOUT_MS) -> int:
    """`pit runner`: run tasks until SIGTERM/SIGINT, then drain. 0 when it drained in time.
    It exits within its drain timeout and a few seconds whatever the broker does, at once on
    a second signal (streams/process.py `Stopping`)."""
    runner = Runner(settings, runner_id=runner_id, concurrency=concurrency, threads=threads,
                    drain_timeout_s=drain_timeout_s, pools=pools,
                    session_timeout_ms=session_timeout_ms)
    stopping = Stopping(drain_timeout_s, runner.force, runner._say).install()
    drained = await runner.run(stopping.stop)
    counts = runner.counts
    runner._say(f"stopped: {counts['completed']} completed, {counts['failed']} failed,"
                f" {counts['over_elsewhere']} not run again (over elsewhere)")
    return 0 if drained else 1
