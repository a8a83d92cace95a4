"""The task dispatcher (issue 4, "Node runners" and "Scheduling bounds"): relays
`NodeScheduled` on pit.dag.events to pit.dag.tasks, keyed by its task id, for the runners'
consumer group - within an overall limit on the nodes running across all executions.

Why a relay and not the processor writing tasks: the processor writes a decision's events to
the decider's event topic, on the command's partition, so one execution's events sit on one
partition - one runner would get all of an execution's work. Re-keyed by task id, tasks
spread over every partition of pit.dag.tasks and so over every runner. Writing the task
topic from the processor as well would split one decision over two topics (a crash between
them loses tasks or duplicates decisions); relaying from the event log keeps a task exactly
as durable as the decision that made it.

Why the overall limit lives here: each execution is its own entity, decided on its own
partition, so no decider sees the others' running nodes (the per-execution limit and
runner-pool capacity are the decider's). The dispatcher sees every execution's events, so it
is where the work of all of them is admitted. Its bookkeeping (`Gate`) is a fold of the log:
a task runs from its relay until its attempt's `NodeCompleted`/`NodeFailed`, or until its
execution ends or restarts (whose stale attempts report to no effect). Beyond the limit,
tasks wait, released by priority, then to the tenant (or tenant-less execution) running the
fewest for its weight in the arbitration policy (it follows pit.arbitration.events for the
policy, decoding nothing else there), then by critical-path rank, then order of scheduling. A
node's timeout counts from its scheduling, so it includes that wait (like Temporal's
schedule-to-close timeout).

Restarts: like the timer service, the dispatcher rebuilds the gate from the whole history on
every start (archive, then Kafka): the task ids on pit.dag.tasks say what was relayed, the
events say what was scheduled and what ended. It then follows pit.dag.events from there, so
a crash relays nothing twice and loses nothing; it needs no consumer group and there is
one dispatcher per cluster (`pit up` runs it). The relay copies the event's bytes (envelope
included: the task is the event) and adds headers naming its source partition and offset.

`restore_runner_positions` does the same for the runners' group after such a restore: each
runner's final report carries its task's position in headers, so the group resumes at the
first task not reported instead of offering every restored task again. Those reports are
only as recent as the archive's last pass (pit.dag.commands has no pending records), so the
position can fall back a little; the tasks behind it that had ended are not run again
because a runner fences the tasks it was given with its partition (streams/dag/runner.py).
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiokafka import TopicPartition
from sqlalchemy import Engine

from schemas.codec import Codec
from streams import metrics
from streams.arbitration.arbiter import ArbitrationPolicySet
from streams.arbitration.policy import policy_from
from streams.arbitration.topics import ARBITRATION_EVENTS
from streams.config import Settings
from streams.dag.execution import (
    ENDINGS,
    ExecutionRestarted,
    NodeCompleted,
    NodeFailed,
    NodeScheduled,
    task_id,
)
from streams.dag.settings import DagSettings
from streams.dag.topics import DAG_COMMANDS, DAG_EVENTS, DAG_TASKS
from streams.errors import SchemaError
from streams.follower import Follower
from streams.history import HistoryError, history_source, kafka_log_reader
from streams.kafka import (
    ANY_PARTITION,
    BUSY_FETCH_WAIT_MS,
    keep_running,
    keyed_producer,
    partitions_of,
    produce_all,
    start_consumer,
    stop_clients,
    stop_consumer,
)
from streams.log import LogRecord, source_headers, source_of
from streams.pool.lifecycle import DEFAULT_POOL
from streams.processor import Output

if TYPE_CHECKING:
    from confluent_kafka import Producer

log = logging.getLogger(__name__)

NODE_SCHEDULED = NodeScheduled.avro_name
ATTEMPT_ENDED = frozenset({NodeCompleted.avro_name, NodeFailed.avro_name})
# After these an execution's attempts so far report to no effect: their slots are free.
EXECUTION_MOVED_ON = frozenset(
    {event.avro_name for event in ENDINGS} | {ExecutionRestarted.avro_name})
POLICY_SET = ArbitrationPolicySet.avro_name  # the tenants' weights share the limit
WATCHED = frozenset({NODE_SCHEDULED, *ATTEMPT_ENDED, *EXECUTION_MOVED_ON, POLICY_SET})
TASK_PARTITION, TASK_OFFSET = "pit.task.partition", "pit.task.offset"  # on runner reports


def _header(headers: Iterable[tuple[str, bytes]], name: str) -> int | None:
    for key, value in headers:
        if key == name:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None


def reported_offsets(records: Iterable[LogRecord]) -> dict[int, set[int]]:
    """From pit.dag.commands records: the task offsets with a final report, per partition."""
    done: dict[int, set[int]] = {}
    for record in records:
        partition = _header(record.headers, TASK_PARTITION)
        offset = _header(record.headers, TASK_OFFSET)
        if partition is not None and offset is not None:
            done.setdefault(partition, set()).add(offset)
    return done


# --- the gate: pure bookkeeping ---------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    task_id: str
    execution_id: str
    priority: int = 0
    rank: int = 0
    record: LogRecord | None = None  # the NodeScheduled record to relay
    tenant: str = ""  # the execution's (StartExecution.tenant); "": the execution alone

    @property
    def share(self) -> str:
        """Whom the limit is shared between: its tenant, or, without one, its execution."""
        return f"tenant:{self.tenant}" if self.tenant else f"execution:{self.execution_id}"


@dataclass
class Gate:
    """Which tasks run and which wait, under `max_running` (0: no limit). Feed it the log in
    order (`scheduled`, `attempt_ended`, `execution_moved_on`); `admit` says what to relay now.
    Every task is admitted at most once.

    The limit is shared: between tasks of equal priority, the next slot goes to the tenant
    (or, for an execution without one, the execution) running the fewest tasks for its
    weight now, so one tenant's 10,000-node workflow cannot lock out another's 10-node one.
    `weights` are the arbitration policy's tenant weights (`default_weight` for the others
    and for executions without a tenant): backlogged tenants of weights 1 and 3 run 1:3.
    The next slot goes to the lowest (running + 1/2) / weight (Sainte-Lague's divisor, which
    neither starves a light share nor over-serves a heavy one). Higher priority still goes
    first; within one share, critical-path rank, then order of scheduling."""

    max_running: int
    weights: Mapping[str, float] = field(default_factory=dict)  # tenant -> weight
    default_weight: float = 1.0
    running: dict[str, str] = field(default_factory=dict)   # task id -> execution id
    waiting: dict[str, Task] = field(default_factory=dict)
    _queues: dict[str, list[tuple[int, int, int, str]]] = field(default_factory=dict)
    _share_of: dict[str, str] = field(default_factory=dict)  # running task id -> its share
    _running_in: dict[str, int] = field(default_factory=dict)  # share -> tasks running
    _order: int = 0

    def scheduled(self, task: Task, relayed: bool = False) -> None:
        """A NodeScheduled seen; `relayed` when pit.dag.tasks already holds it (a rebuild)."""
        if task.task_id in self.running or task.task_id in self.waiting:
            return  # the same event read twice
        if relayed:
            self._run(task)
            return
        self.waiting[task.task_id] = task
        self._order += 1
        heapq.heappush(self._queues.setdefault(task.share, []),
                       (-task.priority, -task.rank, self._order, task.task_id))

    def _run(self, task: Task) -> None:
        self.running[task.task_id] = task.execution_id
        self._share_of[task.task_id] = task.share
        self._running_in[task.share] = self._running_in.get(task.share, 0) + 1

    def _stop(self, task_id: str) -> None:
        self.running.pop(task_id, None)
        share = self._share_of.pop(task_id, None)
        if share is not None:
            left = self._running_in[share] - 1
            if left:
                self._running_in[share] = left
            else:
                del self._running_in[share]

    def attempt_ended(self, task_id: str) -> None:
        self._stop(task_id)
        self.waiting.pop(task_id, None)  # ended before it was relayed (a timeout): never run

    def execution_moved_on(self, execution_id: str) -> None:
        for running in [t for t, e in self.running.items() if e == execution_id]:
            self._stop(running)
        for waiting in [t for t, task in self.waiting.items() if task.execution_id ==
                        execution_id]:
            del self.waiting[waiting]

    def weight(self, share: str) -> float:
        kind, _, name = share.partition(":")
        return self.weights.get(name, self.default_weight) if kind == "tenant" \
            else self.default_weight

    def has_room(self) -> bool:
        return self.max_running <= 0 or len(self.running) < self.max_running

    def _head(self, share: str) -> tuple[int, int, int, str] | None:
        """The share's best waiting task, dropping the ones that ended while waiting."""
        queue = self._queues[share]
        while queue and queue[0][3] not in self.waiting:
            heapq.heappop(queue)
        if not queue:
            del self._queues[share]
            return None
        return queue[0]

    def admit(self) -> list[Task]:
        """The waiting tasks that fit now, best first; they count as running from here."""
        admitted = []
        while self.waiting and self.has_room():
            best: tuple[tuple[int, float, int, int], str] | None = None
            for share in list(self._queues):
                head = self._head(share)
                if head is None:
                    continue
                priority, rank, order, _ = head
                load = (self._running_in.get(share, 0) + 0.5) / self.weight(share)
                key = (priority, load, rank, order)
                if best is None or key < best[0]:
                    best = (key, share)
            if best is None:
                break
            *_, task_id = heapq.heappop(self._queues[best[1]])
            task = self.waiting.pop(task_id)
            self._run(task)
            admitted.append(task)
        if not self.waiting:
            self._queues.clear()
        return admitted


# --- the service ------------------------------------------------------------------------------

class TaskDispatcher:
    """Relays NodeScheduled events to pit.dag.tasks within the overall limit, until stopped
    (run by `pit up`). `max_running` defaults to PIT_DAG_MAX_RUNNING (`DagSettings`);
    `fetch_max_wait_ms` is its follower's (`pit up` gives the embedded broker's short one, or
    a cluster's long one: streams/dag/component.py)."""

    def __init__(self, settings: Settings, codec: Codec, db: Engine | None = None, *,
                 max_running: int | None = None, max_batch: int = 5_000,
                 produce_timeout_s: float = 30.0, retry_s: float = 1.0,
                 fetch_max_wait_ms: int = BUSY_FETCH_WAIT_MS) -> None:
        self.settings, self.codec, self.db = settings, codec, db
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.max_running = (DagSettings.of(settings).max_running if max_running is None
                            else max_running)
        self.max_batch, self.produce_timeout_s, self.retry_s = (max_batch, produce_timeout_s,
                                                                retry_s)
        self.gate = Gate(self.max_running)
        self.relayed = 0
        self.ready = asyncio.Event()  # the gate rebuilt and the log followed

    async def run(self, stop: asyncio.Event) -> None:
        def forget() -> None:
            self.gate = Gate(self.max_running)
            self.ready.clear()

        await keep_running("task dispatcher", lambda: self._run(stop), stop, self.retry_s,
                           retry_on=(HistoryError,), on_restart=forget)

    async def _run(self, stop: asyncio.Event) -> None:
        follower = Follower(self.settings, [DAG_EVENTS, ARBITRATION_EVENTS], self.db,
                            max_records=self.max_batch, fetch_max_wait_ms=self.fetch_max_wait_ms)
        await self._restore(follower, stop)
        if stop.is_set():
            return
        producer = keyed_producer(self.settings)
        failed = True
        try:
            await follower.start()
            log.info("task dispatcher: %d tasks running, %d waiting (limit %s)",
                     len(self.gate.running), len(self.gate.waiting), self.max_running or "none")
            self.ready.set()
            await self._relay(producer, self.gate.admit())
            async for records in follower.batches(stop, wait_ms=100):
                for record in records:
                    self.fold(record)
                await self._relay(producer, self.gate.admit())
            failed = False
        finally:
            await stop_clients(follower, producer, failed)

    def _relayed(self) -> dict[str, tuple[int, int] | None]:
        """The task ids pit.dag.tasks holds, with the NodeScheduled each was relayed from
        (partition, offset; None if its headers do not say): what was relayed before this
        start. Read before the events, so a rebuild relays none of them again."""
        tasks = history_source(self.db, [DAG_TASKS], kafka_log_reader(self.settings, [DAG_TASKS]))
        relayed: dict[str, tuple[int, int] | None] = {}
        for record in tasks:
            if record.key and record.value is not None:
                source = source_of(record.headers)
                relayed[record.key.decode()] = None if source is None else source[1:]
        return relayed

    async def _restore(self, follower: Follower, stop: asyncio.Event) -> None:
        """Rebuild the gate from the log. A task relayed from a NodeScheduled the log no
        longer holds (lost with the embedded broker before it was durable, while its task
        was kept) is relayed again from the NodeScheduled that is there: that node would
        otherwise wait for good. Says so in one line and counts it."""
        relayed = await asyncio.to_thread(self._relayed)
        again: list[str] = []
        await follower.restore(lambda record: self.fold(record, relayed, again), stop)
        if again:
            metrics.DAG_TASKS_REDISPATCHED.inc(len(again))
            log.warning("task dispatcher: re-dispatching %d task(s) whose earlier relay came"
                        " from a NodeScheduled the log no longer holds (%s%s)", len(again),
                        ", ".join(again[:5]), ", ..." if len(again) > 5 else "")

    def fold(self, record: LogRecord,
             relayed: Mapping[str, tuple[int, int] | None] | None = None,
             again: list[str] | None = None) -> None:
        """Take one pit.dag.events record, or the default pool's arbitration policy, into
        the gate (other records change nothing, and are not decoded);
        during a rebuild, `relayed` is what pit.dag.tasks holds, and `again` collects the
        tasks relayed from another NodeScheduled than this one (relayed again)."""
        value = record.value
        try:
            if not value or self.codec.name_of(value) not in WATCHED:
                return
            decoded = self.codec.decode(value)
        except SchemaError:
            return  # the processor never wrote it; nothing to relay
        event = decoded.record
        if decoded.name == POLICY_SET:
            if event["envelope"]["entity_key"] == DEFAULT_POOL:
                policy = policy_from(json.loads(event["policy_json"]))
                self.gate.weights, self.gate.default_weight = (policy.tenants,
                                                               policy.default_weight)
        elif decoded.name == NODE_SCHEDULED:
            task, done = event["task_id"], False
            if relayed is not None and task in relayed:
                source = relayed[task]
                done = source is None or source == (record.partition, record.offset)
                if not done and again is not None:
                    again.append(task)
            self.gate.scheduled(Task(task, event["execution_id"], event["priority"],
                                     event["rank"], record, event.get("tenant") or ""), done)
        elif decoded.name in ATTEMPT_ENDED:
            self.gate.attempt_ended(
                task_id(event["execution_id"], event["node_id"], event["attempt"]))
        else:
            self.gate.execution_moved_on(event["execution_id"])

    async def _relay(self, producer: Producer, tasks: list[Task]) -> None:
        if tasks:
            await produce_all(producer, [self.task_output(task) for task in tasks],
                              self.produce_timeout_s)
            self.relayed += len(tasks)
        metrics.DAG_TASKS_RUNNING.set(len(self.gate.running))
        metrics.DAG_TASKS_WAITING.set(len(self.gate.waiting))

    @staticmethod
    def task_output(task: Task) -> Output:
        """The task record: the NodeScheduled event's bytes, keyed by task id, with headers
        naming where it came from."""
        source = task.record
        assert source is not None  # a task admitted from the log carries its record
        return Output(DAG_TASKS, ANY_PARTITION, task.task_id.encode(), source.value,
                      source.timestamp_ms,
                      source_headers(source.topic, source.partition, source.offset))


async def restore_runner_positions(settings: Settings, db: Engine | None,
                                   group: str) -> dict[int, int]:
    """After the embedded broker was restored from the archive (consumer groups start
    empty), commit the runners' group at the first task of each pit.dag.tasks partition
    that has no final report, so runners do not run every restored task again. A group
    that already has positions is left alone. Returns the offsets committed."""
    consumer = await start_consumer(settings, group_id=group)
    try:
        tps = [TopicPartition(DAG_TASKS, p) for p in await partitions_of(consumer, DAG_TASKS)]
        consumer.assign(tps)
        if any([await consumer.committed(tp) is not None for tp in tps]):
            return {}
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        if not any(ends[tp] > starts[tp] for tp in tps):
            return {}

        def reported() -> dict[int, set[int]]:
            reader = kafka_log_reader(settings, [DAG_COMMANDS])
            return reported_offsets(history_source(db, [DAG_COMMANDS], reader))

        done = await asyncio.to_thread(reported)
        positions = {}
        for tp in tps:
            offset, finished = starts[tp], done.get(tp.partition, set())
            while offset < ends[tp] and offset in finished:
                offset += 1
            positions[tp] = offset
        await consumer.commit(positions)
        return {tp.partition: offset for tp, offset in positions.items()}
    finally:
        await stop_consumer(consumer)
