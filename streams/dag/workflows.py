"""The client's workflow API (issue 4, "Client, CLI, views"): start an execution, await its
result, fold its status, follow it, cancel it: `WorkflowOps`, reachable as `PitClient.dag`.

Starting. A definition (a `Workflow`, a .yaml/.json path, or the dict form) is validated
here first: an invalid one raises `InvalidWorkflowError` listing every problem and nothing
is published. A definition larger than one event carries (256 KiB canonical) is put in the
definition store (`definition_store(settings)`: `definitions/` in the data directory) and
started by hash; `pit up`'s DAG processor reads the same store, so a client and `pit up` on
one machine share it through PIT_DATA_DIR, and a deployment across machines needs a shared
store (the Artifact Store's job once it exists). The start's command id is derived from the
execution id: starting the same execution again is a duplicate, never a second run.

Reading. An execution's events sit on one partition of pit.dag.events (its commands are
keyed by execution id and partitioned by murmur2, like every client's; the processor writes
events on the command's partition), with the execution id as Kafka key. `ExecutionLog`
reads them: first the archive (the audit log in the projection database) when Kafka no
longer holds the partition's beginning (the embedded broker keeps ~5 MiB of it), then Kafka
up to the end pinned when it opened, then - when following - whatever comes next. So an
execution that ended before the call is found as well as one still running. A status is the
decider's own `evolve` folded over those events, then its `status()`: the numbers the
processor has.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from streams.config import Settings
from streams.dag.definition import Workflow, check, workflow_from_dict
from streams.dag.definition_store import definition_store, read_workflow_file
from streams.dag.errors import WorkflowError
from streams.dag.execution import (
    DAG,
    ENDINGS,
    CancelExecution,
    Definitions,
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionStarted,
    ExecutionState,
    ExecutionStatus,
    ExecutionTimedOut,
    Progress,
    StartExecution,
    evolve,
    initial_state,
    status,
)
from streams.dag.topics import DAG_EVENTS
from streams.decider import Message, from_record
from streams.errors import DatabaseUnavailableError, PitError, SchemaError
from streams.kafka import partitions_of, start_consumer, stop_consumer

if TYPE_CHECKING:
    from schemas.codec import Codec
    from streams.commands import CommandClient, Outcome

ENDS = ENDINGS
RESOURCES = ("cpu", "memory_mb")


def wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class WorkflowResult:
    """How an execution ended. `outputs` ({sink node: {output: value}}, a blob-held value as
    {"hash", "path"}) when it completed; None when they were too large for one event."""

    execution_id: str
    status: str                 # completed | failed | cancelled | timed_out
    outputs: dict[str, Any] | None
    error: str                  # why it did not complete
    ended_at_ms: int
    duration_ms: int = 0        # from start to completion (completed only)

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    @classmethod
    def of(cls, event: Message, at_ms: int) -> WorkflowResult:
        outputs, error, duration = None, "", 0
        if isinstance(event, ExecutionCompleted):
            outputs = json.loads(event.outputs) if event.outputs else None
            duration = event.duration_ms
        elif isinstance(event, ExecutionFailed):
            error = f"node {event.node_id}: {event.error_type}: {event.message}"
        elif isinstance(event, ExecutionCancelled):
            error = event.reason or "cancelled"
        else:
            assert isinstance(event, ExecutionTimedOut), event  # ENDS: these four
            error = f"timed out after {event.timeout_ms} ms"
        return cls(event.execution_id, ENDS[type(event)], outputs, error, at_ms, duration)


# --- starting -------------------------------------------------------------------------------

def load_workflow(definition: Workflow | Mapping | str | os.PathLike) -> Workflow:
    """A definition as given: a `Workflow`, the dict form, or a .yaml/.yml/.json path."""
    if isinstance(definition, Workflow):
        return definition
    if isinstance(definition, Mapping):
        return workflow_from_dict(definition)
    if isinstance(definition, str | os.PathLike):
        return read_workflow_file(Path(definition))
    raise TypeError(f"a workflow definition is a Workflow, a dict or a file path, not"
                    f" {type(definition).__name__}")


def _capacity(capacity: Mapping[str, Mapping[str, float]] | None
              ) -> tuple[dict[str, float], dict[str, int]]:
    """{pool: {"cpu": c, "memory_mb": m}} as StartExecution's two maps."""
    cpu, memory = {}, {}
    for pool, amounts in (capacity or {}).items():
        unknown = set(amounts) - set(RESOURCES)
        if unknown:
            raise PitError(f"capacity of pool {pool}: unknown resource {sorted(unknown)[0]!r}"
                           f" (known: {', '.join(RESOURCES)})")
        if "cpu" in amounts:
            cpu[pool] = float(amounts["cpu"])
        if "memory_mb" in amounts:
            memory[pool] = int(amounts["memory_mb"])
    return cpu, memory


def start_command(workflow: Workflow, settings: Settings, execution_id: str,
                  inputs: Mapping[str, Any] | None = None, *,
                  max_concurrency: int | None = None,
                  capacity: Mapping[str, Mapping[str, float]] | None = None,
                  timeout_ms: int | None = None, tenant: str = "") -> StartExecution:
    """The StartExecution of a valid workflow; a large definition goes to the store first."""
    try:
        inputs_json = json.dumps(dict(inputs or {}), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PitError(f"workflow inputs are not JSON: {exc}") from None
    if workflow.is_large:
        definition, definition_hash = "", definition_store(settings).put(workflow)
    else:
        definition, definition_hash = workflow.canonical_json(), ""
    cpu, memory = _capacity(capacity)
    return StartExecution(execution_id, definition, definition_hash, inputs_json,
                          max_concurrency or 0, cpu, memory, timeout_ms or 0, tenant=tenant)


# --- reading one execution's events ---------------------------------------------------------

def _unknown(execution_id: str) -> WorkflowError:
    return WorkflowError(f"unknown execution {execution_id!r} (no events on {DAG_EVENTS})")


def _archived(settings: Settings, partition: int, execution_id: str,
              begin: int, end: int) -> list[bytes]:
    """From the audit archive: the execution's event values on `partition` at offsets
    `begin` to `end` (excluded), which Kafka no longer holds; WorkflowError when the archive
    does not reach `end` (events in neither) or cannot be read."""
    from sqlalchemy import func, select

    from streams.archive import audit_log
    from streams.sql import connect

    where = f"{DAG_EVENTS}[{partition}]"
    try:
        engine = connect(settings.db_url)
    except DatabaseUnavailableError as exc:
        raise WorkflowError(f"Kafka keeps {where} only from offset {end} and the archive that"
                            f" holds the rest is unreachable: {exc}") from None
    at = (audit_log.c.topic == DAG_EVENTS, audit_log.c.partition == partition)
    try:
        with engine.connect() as conn:
            last = conn.execute(select(func.max(audit_log.c.offset)).where(*at)).scalar()
            if last is None or last + 1 < end:
                raise WorkflowError(f"{where}: Kafka starts at offset {end} and the archive"
                                    f" ends at {last}: events in between are in neither")
            values = conn.execute(select(audit_log.c.value)
                                  .where(*at, audit_log.c.key == execution_id,
                                         audit_log.c.offset >= begin, audit_log.c.offset < end)
                                  .order_by(audit_log.c.offset)).scalars().all()
    finally:
        engine.dispose()
    return list(values)


class ExecutionLog:
    """One execution's events in log order: `read()` returns the next ones as (event,
    occurred_at ms); `caught_up` once everything logged before it was entered is read.

    With `only`, just the events of those types: the others are passed over by their record
    name, undecoded (a 10,000-node execution logs 40,000 events; a reader that waits for its
    end, or catalogs its outputs, needs a quarter of them).

    What Kafka no longer holds comes from the audit archive: the partition's beginning, and
    whatever the Pit trims from the embedded broker while the log is read (it trims only
    what the archive holds, and a reader positioned below the new beginning starts again
    there: the gap is read from the archive, in order)."""

    def __init__(self, settings: Settings, codec: Codec, execution_id: str,
                 only: Iterable[type[Message]] = ()) -> None:
        self.settings, self.codec, self.execution_id = settings, codec, execution_id
        self.names = frozenset(event_type.avro_name for event_type in only)
        self.key = execution_id.encode()
        self._at_end = False  # Kafka was read up to `end`
        self._pending: list[bytes] = []
        self._next = 0  # the next offset of the partition this log reads
        self._consumer: AIOKafkaConsumer | None = None  # while entered

    async def __aenter__(self) -> ExecutionLog:
        # trimmed below its position, the consumer starts again at the new beginning
        self._consumer = consumer = await start_consumer(
            self.settings, fetch_max_wait_ms=100, auto_offset_reset="earliest")
        try:
            partitions = await partitions_of(consumer, DAG_EVENTS)
            self.tp = TopicPartition(DAG_EVENTS, DefaultPartitioner()(self.key, partitions,
                                                                      partitions))
            consumer.assign([self.tp])
            low = (await consumer.beginning_offsets([self.tp]))[self.tp]
            self.end = (await consumer.end_offsets([self.tp]))[self.tp]
            if low > 0:  # the partition's beginning left Kafka: the archive holds it
                self._pending = await asyncio.to_thread(
                    _archived, self.settings, self.tp.partition, self.execution_id, 0, low)
            consumer.seek(self.tp, low)
            self._next = low
            self._at_end = low >= self.end
        except BaseException:
            await stop_consumer(consumer)
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._consumer is not None  # entered
        await stop_consumer(self._consumer)

    @property
    def caught_up(self) -> bool:
        return self._at_end and not self._pending

    async def read(self, timeout_ms: int = 500) -> list[tuple[Message, int]]:
        values, self._pending = self._pending, []
        if not values:
            consumer = self._consumer
            assert consumer is not None, "an ExecutionLog is read inside `async with`"
            batch = await consumer.getmany(self.tp, timeout_ms=timeout_ms, max_records=5000)
            records = batch.get(self.tp, [])
            values = [m.value for m in records if m.key == self.key]
            position = await consumer.position(self.tp)
            reached = records[0].offset if records else position
            if reached > self._next:  # trimmed from Kafka meanwhile, so archived
                values = await asyncio.to_thread(
                    _archived, self.settings, self.tp.partition, self.execution_id,
                    self._next, reached) + values
            self._next = max(self._next, position)
            if not self._at_end:
                self._at_end = position >= self.end
        return [event for value in values if (event := self._decode(value)) is not None]

    def _decode(self, value: bytes | None) -> tuple[Message, int] | None:
        if value is None:
            return None
        try:
            if self.names and self.codec.name_of(value) not in self.names:
                return None
            decoded = self.codec.decode(value)
        except SchemaError:
            return None  # the processor never wrote it: not this execution's
        event_type = DAG.event_type(decoded.name)
        if event_type is None:
            return None
        return (from_record(event_type, decoded.record),
                decoded.record["envelope"]["occurred_at"])


class _Fold:
    """The decider's state of one execution, folded event by event, and how it ended."""

    def __init__(self, settings: Settings, execution_id: str) -> None:
        self.definitions = Definitions(definition_store(settings))
        self.state: ExecutionState = initial_state(execution_id)
        self.result: WorkflowResult | None = None

    def apply(self, events: list[tuple[Message, int]]) -> None:
        for event, at_ms in events:
            self.state = evolve(self.state, event, at_ms, self.definitions)
            if type(event) in ENDS:
                self.result = WorkflowResult.of(event, at_ms)

    def progress(self) -> Progress:
        if self.state.status is ExecutionStatus.NEW:
            raise _unknown(self.state.execution_id)
        return status(self.state, wall_ms())


class WorkflowOps:
    """Workflows as a client uses them (`PitClient.dag`). Reading an execution
    (await_result, workflow_status, follow_workflow, watch) needs no start()."""

    def __init__(self, client: CommandClient) -> None:
        self.client = client

    def _log(self, execution_id: str) -> ExecutionLog:
        return ExecutionLog(self.client.settings, self.client.codec, execution_id)

    async def execute_workflow(self, definition: Workflow | Mapping | str | os.PathLike,
                               inputs: Mapping[str, Any] | None = None, *,
                               execution_id: str | None = None,
                               max_concurrency: int | None = None,
                               capacity: Mapping[str, Mapping[str, float]] | None = None,
                               timeout_ms: int | None = None, timeout: float = 30.0,
                               tenant: str = "") -> str:
        """Start a workflow (a Workflow, its dict form or a .yaml/.json path) with `inputs`
        {"node.input": value}; returns the execution id once the start is accepted.
        `capacity`: {runner pool: {"cpu": c, "memory_mb": m}}. With a `tenant`, its
        instrument nodes' model allocations go through arbitration, each at its node's
        priority (streams/arbitration/). An invalid definition raises
        InvalidWorkflowError listing every problem (nothing is published); a rejected start
        raises WorkflowError with the reason."""
        workflow = check(load_workflow(definition))
        execution_id = execution_id or f"{workflow.name}-{uuid.uuid4().hex[:12]}"
        command = start_command(workflow, self.client.settings, execution_id, inputs,
                                max_concurrency=max_concurrency, capacity=capacity,
                                timeout_ms=timeout_ms, tenant=tenant)
        outcome = await self.client.send(command, command_id=f"{execution_id}/start",
                                         timeout=timeout)
        if not outcome.accepted:
            raise WorkflowError(f"workflow {workflow.name!r} was not started: {outcome.reason}")
        return execution_id

    async def cancel_workflow(self, execution_id: str, reason: str = "",
                              timeout: float = 30.0) -> Outcome:
        """Cancel a running execution; WorkflowError when it is unknown or already ended."""
        outcome = await self.client.send(
            CancelExecution(execution_id, reason or "cancelled by a client"), timeout=timeout)
        if not outcome.accepted:
            raise WorkflowError(f"cannot cancel {execution_id}: {outcome.reason}")
        return outcome

    async def await_result(self, execution_id: str, timeout: float = 300.0) -> WorkflowResult:
        """How the execution ended (also one that ended before this call); WorkflowError when
        it is unknown or still running after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        started = False
        async with self._log(execution_id) as log:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise WorkflowError(f"execution {execution_id} did not end within"
                                        f" {timeout:g}s")
                for event, at_ms in await log.read(round(min(remaining, 0.5) * 1000)):
                    started = started or isinstance(event, ExecutionStarted)
                    if type(event) in ENDS:
                        return WorkflowResult.of(event, at_ms)
                if log.caught_up and not started:
                    raise _unknown(execution_id)

    async def workflow_status(self, execution_id: str) -> Progress:
        """Its status now, folded from its events: node counts by state, progress, ETA."""
        fold = _Fold(self.client.settings, execution_id)
        async with self._log(execution_id) as log:
            while not log.caught_up:
                fold.apply(await log.read())
        return fold.progress()

    async def watch(self, execution_id: str, interval: float = 0.5,
                    ) -> AsyncGenerator[tuple[Progress, WorkflowResult | None], None]:
        """The execution's status once caught up, then at least every `interval` seconds
        while it runs, with how it ended (None while it runs); the last one is its end."""
        fold = _Fold(self.client.settings, execution_id)
        async with self._log(execution_id) as log:
            while not log.caught_up:
                fold.apply(await log.read())
            yield fold.progress(), fold.result
            while fold.state.running:
                fold.apply(await log.read(round(interval * 1000)))
                yield fold.progress(), fold.result

    async def follow_workflow(self, execution_id: str,
                              interval: float = 0.5) -> AsyncIterator[Progress]:
        """Its status as it runs, at least every `interval` seconds, until it ends."""
        async for progress, _ in self.watch(execution_id, interval):
            yield progress


def workflow_ops(settings: Settings, issued_by: str = "pit-client",
                 codec: Codec | None = None) -> WorkflowOps:
    """The DAG's operations on a command client of their own, which routes only the DAG's
    commands (a `PitClient`'s `dag` is the same on a client of every component): what the
    DAG's command line and benches use, since a component does not import the assembly.
    `async with ops.client:` connects it; reading an execution needs no connection."""
    from streams.commands import CommandClient

    return WorkflowOps(CommandClient(settings, issued_by, codec, deciders=(DAG,)))
