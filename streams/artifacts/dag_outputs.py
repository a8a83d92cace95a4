"""DAG node outputs as artifacts (issue 5, "Relationships and lineage"): `pit up` catalogs
every completed node's output, linked to its execution, its node and the outputs it was
computed from.

The cataloger follows pit.dag.events in the consumer group "pit.artifacts.dag-outputs".
For each `NodeCompleted` it stores the node's output object ({output: value} as JSON: the
inline output, or the blob the runner wrote for a large one) in the artifact store and sends
`StoreArtifact` with the execution and node as its producer, derived from the output
artifacts of the node's upstream nodes (the definition's edges), tagged "dag-output" and
the workflow's name. Its command id is "dag-output:<task id>", so a redelivered event is a
duplicate the catalog acknowledges without a second effect; the group's offsets are
committed once the batch's commands are acknowledged.

What it keeps per running execution (the upstream nodes of every node, and the address of
each output cataloged) is rebuilt for an execution it meets mid-way (after a restart) from
that execution's own events. An execution's entry is dropped when it ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field

from aiokafka import ConsumerRecord

from schemas.codec import Codec
from streams.artifacts.catalog import ARTIFACTS, StoreArtifact, canonical_json
from streams.artifacts.storage import BlobBackend, artifact_store
from streams.blobs import address_of, blob_store
from streams.commands import CommandClient
from streams.config import Settings
from streams.dag.definition_store import definition_store
from streams.dag.execution import (
    DAG,
    ENDINGS,
    Definitions,
    ExecutionStarted,
    NodeCompleted,
    task_id,
)
from streams.dag.topics import DAG_EVENTS
from streams.dag.workflows import ExecutionLog
from streams.decider import Message, from_record
from streams.errors import PitError, SchemaError
from streams.kafka import keep_running, start_consumer, stop_consumer

log = logging.getLogger(__name__)

GROUP = "pit.artifacts.dag-outputs"
TAG = "dag-output"
OUTPUT_TYPE = "application/json"
ENDED = frozenset(event.avro_name for event in ENDINGS)


@dataclass
class _Execution:
    workflow: str
    upstream: dict[str, tuple[str, ...]]          # node -> the nodes feeding it
    outputs: dict[str, str] = field(default_factory=dict)  # node -> its output artifact


class OutputCataloger:
    """Catalogs DAG node outputs until stopped (run by `pit up`)."""

    def __init__(self, settings: Settings, codec: Codec, *,
                 backend: BlobBackend | None = None, retry_s: float = 1.0) -> None:
        self.settings, self.codec, self.retry_s = settings, codec, retry_s
        self.backend = backend or artifact_store(settings)
        self.blobs = blob_store(settings)
        self.definitions = Definitions(definition_store(settings))
        self.client = CommandClient(settings, "dag-outputs", codec, deciders=(ARTIFACTS,))
        self.executions: dict[str, _Execution] = {}
        self.cataloged = 0

    async def run(self, stop: asyncio.Event) -> None:
        await keep_running("dag output cataloger", lambda: self._run(stop), stop,
                           self.retry_s, on_restart=self.executions.clear)

    async def _run(self, stop: asyncio.Event) -> None:
        await self.client.start()
        consumer = await start_consumer(self.settings, group_id=GROUP,
                                        auto_offset_reset="earliest", fetch_max_wait_ms=50)
        consumer.subscribe([DAG_EVENTS])
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200, max_records=1000)
                for messages in batch.values():
                    for message in messages:
                        await self.take(message)
                if batch:
                    await consumer.commit()
        finally:
            await stop_consumer(consumer)
            await self.client.close()

    def _event(self, value: bytes | None) -> tuple[str, Message | None]:
        try:
            decoded = self.codec.decode(value) if value else None
        except SchemaError:
            return "", None
        if decoded is None:
            return "", None
        event_type = DAG.event_type(decoded.name)
        if event_type is None or event_type not in (ExecutionStarted, NodeCompleted):
            return decoded.name, None
        return decoded.name, from_record(event_type, decoded.record)

    async def take(self, message: ConsumerRecord) -> None:
        name, event = self._event(message.value)
        if isinstance(event, ExecutionStarted):
            self.executions[event.execution_id] = self._plan(event)
        elif isinstance(event, NodeCompleted):
            await self.catalog(event)
        elif name in ENDED and message.key:
            self.executions.pop(message.key.decode(), None)

    def _plan(self, started: ExecutionStarted) -> _Execution:
        # The processor accepted this start, so its definition loads.
        plan = self.definitions.load(started.definition, started.definition_hash)
        upstream: dict[str, set[str]] = {}
        for edge in plan.workflow.edges:
            upstream.setdefault(edge.to_node, set()).add(edge.from_node)
        return _Execution(started.workflow, {n: tuple(sorted(u)) for n, u in upstream.items()})

    async def _execution(self, execution_id: str) -> _Execution | None:
        """The execution as far as its log goes (met mid-way, after a restart)."""
        found = None
        async with ExecutionLog(self.settings, self.codec, execution_id,
                                only=(ExecutionStarted, NodeCompleted)) as events:
            while not events.caught_up:
                for event, _ in await events.read():
                    if isinstance(event, ExecutionStarted):
                        found = self._plan(event)
                    elif isinstance(event, NodeCompleted) and found is not None:
                        content = await asyncio.to_thread(self._content, event)
                        found.outputs[event.node_id] = address_of(content)
        if found is not None:
            self.executions[execution_id] = found
        return found

    def _content(self, completed: NodeCompleted) -> bytes:
        if completed.output_hash:
            return self.blobs.get(completed.output_hash)
        return canonical_json(json.loads(completed.output or "{}")).encode()

    async def catalog(self, completed: NodeCompleted) -> None:
        execution = (self.executions.get(completed.execution_id)
                     or await self._execution(completed.execution_id))
        if execution is None:
            log.warning("dag outputs: no ExecutionStarted for %s; output of %s not cataloged",
                        completed.execution_id, completed.node_id)
            return
        try:
            content = await asyncio.to_thread(self._content, completed)
            stored = await asyncio.to_thread(self.backend.store, content)
        except PitError as exc:
            log.warning("dag outputs: %s/%s not cataloged: %s", completed.execution_id,
                        completed.node_id, exc)
            return
        parents = [execution.outputs[node] for node in
                   execution.upstream.get(completed.node_id, ()) if node in execution.outputs]
        metadata = {"execution_id": completed.execution_id, "node_id": completed.node_id,
                    "attempt": completed.attempt, "workflow": execution.workflow}
        command = StoreArtifact(
            stored.address, stored.size, OUTPUT_TYPE, tags=[TAG, execution.workflow],
            creator="dag", metadata=canonical_json(metadata),
            derived_from=sorted(set(parents) - {stored.address}),
            execution_id=completed.execution_id, node_id=completed.node_id)
        await self.client.publish(command, command_id="dag-output:" + task_id(
            completed.execution_id, completed.node_id, completed.attempt))
        execution.outputs[completed.node_id] = stored.address
        self.cataloged += 1
