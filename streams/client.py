"""`PitClient`: publish commands, await their outcomes (correlated by command id on
`pit.results`), follow results; allocate models from the pool and call them on their host.
Async, with `SyncPitClient` for blocking code."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from projections.search import SearchPage
from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry, SchemaRegistry
from streams.artifacts.client import ArtifactOps, StoredArtifact
from streams.components import decider_for
from streams.config import Settings
from streams.dag import workflows
from streams.dag.execution import Progress
from streams.dag.workflows import WorkflowResult
from streams.decider import Message, from_record, to_record
from streams.errors import (
    AllocationError,
    BrokerUnavailableError,
    CommandTimeoutError,
    InferenceError,
    SchemaError,
)
from streams.kafka import partitions_of, start_consumer
from streams.pool.lifecycle import (
    DEFAULT_POOL,
    ModelState,
    RecordModelUsage,
    TransitionModel,
    TransitionReason,
)
from streams.pool.pool import (
    AllocateModel,
    AllocationFailed,
    ModelAllocated,
    RegisterHost,
    RegisterModel,
    ReleaseModel,
)
from streams.topics import POOL_EVENTS, RESULTS


@dataclass(frozen=True)
class Outcome:
    command_id: str
    command_type: str
    entity_key: str
    status: str
    reason: str | None
    event_ids: tuple[str, ...]
    decided_at: int
    processor: str
    duplicate: bool = False

    @property
    def accepted(self) -> bool:
        return self.status == "ACCEPTED"

    @classmethod
    def from_record(cls, record: dict) -> Outcome:
        return cls(record["command_id"], record["command_type"], record["entity_key"],
                   record["status"], record["reason"], tuple(record["event_ids"]),
                   record["decided_at"], record["processor"], record["duplicate"])

    def line(self) -> str:
        verdict = "accepted" if self.accepted else f"rejected: {self.reason}"
        again = " (duplicate: already handled)" if self.duplicate else ""
        return f"{self.command_type} {self.entity_key} {self.command_id}: {verdict}{again}"


@dataclass(frozen=True)
class Allocation:
    """A granted model allocation: call the model at `endpoint` until you release it."""

    request_id: str
    model_id: str
    host_id: str
    endpoint: str
    cache_hit: bool


def registry_for(settings: Settings) -> SchemaRegistry:
    if settings.schema_registry_url:
        from schemas.registry import ConfluentRegistry

        return ConfluentRegistry(settings.schema_registry_url,
                                 options=settings.schema_registry_options)
    return EmbeddedRegistry()


@dataclass
class PitClient:
    settings: Settings = field(default_factory=Settings.from_env)
    issued_by: str = "pit-client"
    codec: Codec | None = None

    def __post_init__(self) -> None:
        self.codec = self.codec or Codec(registry_for(self.settings))
        self._pending: dict[str, asyncio.Future] = {}  # command id -> its outcome
        self._allocations: dict[str, asyncio.Future] = {}  # request id -> its answer event
        self._producer: AIOKafkaProducer | None = None
        self._tasks: list[asyncio.Task] = []
        self._pool_events: asyncio.Future | None = None  # following pit.pool.events
        self._http: aiohttp.ClientSession | None = None
        self._artifacts: ArtifactOps | None = None

    async def start(self) -> PitClient:
        options = self.settings.kafka_client_options()
        self._producer = AIOKafkaProducer(**options, linger_ms=0, enable_idempotence=True)
        try:
            await self._producer.start()
        except KafkaError as exc:
            await self._producer.stop()
            raise BrokerUnavailableError(
                f"Kafka unreachable at {options['bootstrap_servers']}: {exc}") from None
        await self._tail(RESULTS, self._on_outcome)
        return self

    async def _tail(self, topic: str, handle) -> None:
        """Follow `topic` from its current end, calling `handle(message)` for each record."""
        consumer = await start_consumer(self.settings, fetch_max_wait_ms=5)
        tps = [TopicPartition(topic, p) for p in await partitions_of(consumer, topic)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:  # pin the end now, so no answer to us can slip past
            await consumer.position(tp)
        self._tasks.append(asyncio.create_task(self._dispatch(consumer, handle)))

    async def close(self) -> None:
        if self._artifacts is not None and self._producer is not None:
            with contextlib.suppress(KafkaError, BrokerUnavailableError):
                await self._artifacts.flush_access()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._producer:
            await self._producer.stop()
        if self._http is not None:
            await self._http.close()

    async def __aenter__(self) -> PitClient:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    @staticmethod
    async def _dispatch(consumer, handle) -> None:
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                for messages in batch.values():
                    for message in messages:
                        handle(message)
        finally:
            await consumer.stop()

    def _on_outcome(self, message) -> None:
        try:
            outcome = Outcome.from_record(self.codec.decode(message.value).record)
        except (SchemaError, KeyError):
            return
        waiter = self._pending.pop(outcome.command_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(outcome)

    def _on_pool_event(self, message) -> None:
        # Answers to allocations are keyed by request id: only those are decoded.
        request_id = message.key.decode() if message.key else ""
        waiter = self._allocations.get(request_id)
        if waiter is None or waiter.done():
            return
        try:
            decoded = self.codec.decode(message.value)
        except SchemaError:
            return
        for answer in (ModelAllocated, AllocationFailed):
            if decoded.name == answer.avro_name:
                waiter.set_result(from_record(answer, decoded.record))

    def encode_command(self, command: Message, command_id: str,
                       correlation_id: str | None = None) -> bytes:
        meta = {"command_id": command_id, "issued_at": int(time.time() * 1000),
                "issued_by": self.issued_by, "correlation_id": correlation_id}
        return self.codec.encode(command.avro_name, {"meta": meta, **to_record(command)})

    async def publish(self, command: Message, *, command_id: str | None = None,
                      correlation_id: str | None = None) -> str:
        """Publish without waiting for the outcome; returns the command id."""
        command_id = command_id or str(uuid.uuid4())
        value = self.encode_command(command, command_id, correlation_id)
        decider = decider_for(type(command))
        await self._producer.send_and_wait(decider.command_topic, value,
                                           key=decider.entity_of(command).encode())
        return command_id

    async def send(self, command: Message, *, command_id: str | None = None,
                   correlation_id: str | None = None, timeout: float = 10.0) -> Outcome:
        """Publish a command and wait for its outcome."""
        command_id = command_id or str(uuid.uuid4())
        waiter = self._pending[command_id] = asyncio.get_running_loop().create_future()
        try:
            await self.publish(command, command_id=command_id, correlation_id=correlation_id)
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise CommandTimeoutError(
                f"no outcome for {command.type_name} {command_id} within {timeout:g}s "
                "(is `pit up` running?)") from None
        finally:
            self._pending.pop(command_id, None)

    # --- the model lifecycle ---------------------------------------------------------------

    async def transition(self, model_id: str, to_state: ModelState,
                         reason: TransitionReason = TransitionReason.USER_REQUEST,
                         metadata: dict[str, str] | None = None, **options) -> Outcome:
        return await self.send(TransitionModel(model_id, ModelState(to_state),
                                               TransitionReason(reason), metadata or {}),
                               **options)

    async def warm_model(self, model_id: str, reason=TransitionReason.USER_REQUEST, **options):
        return await self.transition(model_id, ModelState.WARMING, reason, **options)

    async def cool_model(self, model_id: str, reason=TransitionReason.SCHEDULED_COOLDOWN,
                         **options):
        return await self.transition(model_id, ModelState.COOLING, reason, **options)

    async def fail_model(self, model_id: str, error: str,
                         reason=TransitionReason.HEALTH_CHECK_FAILURE, **options):
        return await self.transition(model_id, ModelState.FAILED, reason, {"error": error},
                                     **options)

    async def recover_model(self, model_id: str, **options):
        return await self.transition(model_id, ModelState.COLD, TransitionReason.ERROR_RECOVERY,
                                     **options)

    async def record_usage(self, model_id: str, invocations: int = 1, **options) -> Outcome:
        return await self.send(RecordModelUsage(model_id, invocations), **options)

    # --- the pool --------------------------------------------------------------------------

    async def register_model(self, model_id: str, uri: str, memory_mb: int,
                             expected_load_ms: int, *, pool_id: str = DEFAULT_POOL,
                             **options) -> Outcome:
        return await self.send(RegisterModel(model_id, uri, memory_mb, expected_load_ms,
                                             pool_id), **options)

    async def register_host(self, host_id: str, memory_budget_mb: int, capacity: int,
                            endpoint: str = "", *, pool_id: str = DEFAULT_POOL,
                            **options) -> Outcome:
        return await self.send(RegisterHost(host_id, memory_budget_mb, capacity, pool_id,
                                            endpoint), **options)

    async def allocate_model(self, model_id: str, requester: str, *,
                             request_id: str | None = None, workflow_id: str = "",
                             pool_id: str = DEFAULT_POOL, timeout: float = 30.0) -> Allocation:
        """Allocate a model, waiting while the pool loads it (a cache miss) if it must.
        Raises AllocationError with the pool's reason when it is rejected or fails."""
        request_id = request_id or str(uuid.uuid4())
        await self._follow_pool()
        deadline = asyncio.get_running_loop().time() + timeout
        answer = self._allocations[request_id] = asyncio.get_running_loop().create_future()
        try:
            outcome = await self.send(AllocateModel(request_id, model_id, requester, pool_id,
                                                    workflow_id), timeout=timeout)
            if not outcome.accepted:
                raise AllocationError(f"allocation of {model_id} rejected: {outcome.reason}")
            remaining = max(0.0, deadline - asyncio.get_running_loop().time())
            try:
                event = await asyncio.wait_for(answer, remaining)
            except TimeoutError:
                raise AllocationError(
                    f"allocation {request_id} of {model_id} still waiting for the model after"
                    f" {timeout:g}s (is a `pit host` with room for it running?); it stays"
                    " queued until released") from None
        finally:
            self._allocations.pop(request_id, None)
        if isinstance(event, AllocationFailed):
            raise AllocationError(f"allocation {request_id} of {model_id} failed"
                                  f" ({event.code}): {event.reason}")
        return Allocation(request_id, model_id, event.host_id, event.endpoint, event.cache_hit)

    async def _follow_pool(self) -> None:
        """Start following the pool's events once; every caller waits until it is pinned."""
        if self._pool_events is None:
            self._pool_events = asyncio.ensure_future(self._tail(POOL_EVENTS,
                                                                 self._on_pool_event))
        await asyncio.shield(self._pool_events)

    async def release_model(self, request_id: str, *, pool_id: str = DEFAULT_POOL,
                            **options) -> Outcome:
        return await self.send(ReleaseModel(request_id, pool_id), **options)

    async def infer(self, allocation: Allocation, inputs, *, params: dict | None = None,
                    timeout: float = 30.0):
        """Call the allocated model on its host; returns its outputs (JSON values). `params`
        (a DAG node's) travel beside the inputs; hosts that take none ignore them."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        url = f"{allocation.endpoint}/models/{allocation.model_id}/infer"
        body = {"inputs": inputs, **({"params": params} if params else {})}
        try:
            async with self._http.post(url, json=body,
                                       timeout=aiohttp.ClientTimeout(total=timeout)) as reply:
                body = await reply.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise InferenceError(f"{allocation.model_id} on host {allocation.host_id}"
                                 f" ({url}): {exc or type(exc).__name__}") from None
        if reply.status != 200 or not isinstance(body, dict) or "outputs" not in body:
            detail = body.get("error") if isinstance(body, dict) else body
            raise InferenceError(f"{allocation.model_id} on host {allocation.host_id}:"
                                 f" HTTP {reply.status}: {detail}")
        return body["outputs"]

    # --- workflows (streams/dag/workflows.py) -----------------------------------------------

    async def execute_workflow(self, definition, inputs: dict | None = None, *,
                               execution_id: str | None = None,
                               max_concurrency: int | None = None,
                               capacity: dict[str, dict[str, float]] | None = None,
                               timeout_ms: int | None = None, timeout: float = 30.0) -> str:
        """Start a workflow (a Workflow, its dict form or a .yaml/.json path) with `inputs`
        {"node.input": value}; returns the execution id once the start is accepted.
        `capacity`: {runner pool: {"cpu": c, "memory_mb": m}}. An invalid definition raises
        InvalidWorkflowError listing every problem (nothing is published); a rejected start
        raises WorkflowError with the reason."""
        return await workflows.execute(self, definition, inputs, execution_id=execution_id,
                                       max_concurrency=max_concurrency, capacity=capacity,
                                       timeout_ms=timeout_ms, timeout=timeout)

    async def await_result(self, execution_id: str, timeout: float = 300.0) -> WorkflowResult:
        """How the execution ended (also one that ended before this call); WorkflowError when
        it is unknown or still running after `timeout` seconds. Reading an execution (this,
        workflow_status, follow_workflow) needs no start()."""
        return await workflows.await_result(self, execution_id, timeout)

    async def workflow_status(self, execution_id: str) -> Progress:
        """Its status now, folded from its events: node counts by state, progress, ETA."""
        return await workflows.workflow_status(self, execution_id)

    def follow_workflow(self, execution_id: str, interval: float = 0.5) -> AsyncIterator[Progress]:
        """Its status as it runs, at least every `interval` seconds, until it ends."""
        return workflows.follow(self, execution_id, interval)

    async def cancel_workflow(self, execution_id: str, reason: str = "") -> Outcome:
        """Cancel a running execution; WorkflowError when it is unknown or already ended."""
        return await workflows.cancel(self, execution_id, reason)

    # --- artifacts (streams/artifacts/client.py) -------------------------------------------

    @property
    def artifacts(self) -> ArtifactOps:
        """The Artifact Store operations, beyond the shortcuts below (link, remove, info,
        stats, flush_access)."""
        if self._artifacts is None:
            self._artifacts = ArtifactOps(self)
        return self._artifacts

    async def store_artifact(self, content: bytes | str | os.PathLike, **options: Any
                             ) -> StoredArtifact:
        """Store bytes or a file (streamed) with metadata: name (versions it), content_type,
        tags, creator, metadata, message, derived_from, schema (JSON schema to check JSON
        content against). Returns its address and whether the content was new."""
        return await self.artifacts.store(content, **options)

    async def retrieve_artifact(self, ref: str, *, to: str | os.PathLike | None = None
                                ) -> bytes | Path:
        """The content of an address, "name" (latest) or "name@N", verified on the way."""
        return await self.artifacts.retrieve(ref, to=to)

    async def search(self, text: str = "", **filters: Any) -> SearchPage:
        return await self.artifacts.search(text, **filters)

    async def versions(self, name: str) -> list[dict[str, Any]]:
        return await self.artifacts.versions(name)

    async def diff(self, old: str, new: str, *, metadata: bool = False) -> str:
        return await self.artifacts.diff(old, new, metadata=metadata)

    async def lineage(self, ref: str, direction: str = "both") -> dict[str, Any]:
        return await self.artifacts.lineage(ref, direction)

    # --- results ---------------------------------------------------------------------------

    async def results(self, from_beginning: bool = False) -> AsyncIterator[Outcome]:
        """Every outcome from now on (or from the start of the log), as they arrive."""
        consumer = await start_consumer(self.settings, fetch_max_wait_ms=100)
        try:
            tps = [TopicPartition(RESULTS, p) for p in await partitions_of(consumer, RESULTS)]
            consumer.assign(tps)
            await (consumer.seek_to_beginning if from_beginning else consumer.seek_to_end)(*tps)
            while True:
                batch = await consumer.getmany(timeout_ms=500)
                for message in sorted((m for ms in batch.values() for m in ms),
                                      key=lambda m: m.timestamp):
                    yield Outcome.from_record(self.codec.decode(message.value).record)
        finally:
            await consumer.stop()


class SyncPitClient:
    """Blocking facade: runs a `PitClient` on an event loop in a background thread."""

    def __init__(self, settings: Settings | None = None, **options) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="pit-client")
        self._thread.start()
        self._client = PitClient(settings or Settings.from_env(), **options)
        self._call(self._client.start())

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __getattr__(self, name: str):
        method = getattr(self._client, name)
        if not asyncio.iscoroutinefunction(method):
            return method
        return lambda *args, **kwargs: self._call(method(*args, **kwargs))

    def close(self) -> None:
        self._call(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> SyncPitClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
