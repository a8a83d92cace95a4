"""`PitClient`: publish commands, await their outcomes (correlated by command id on
`pit.results`), follow results. Async, with `SyncPitClient` for blocking code."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry, SchemaRegistry
from streams.components import decider_for
from streams.config import Settings
from streams.decider import Message, to_record
from streams.errors import BrokerUnavailableError, CommandTimeoutError, SchemaError
from streams.kafka import partitions_of, start_consumer
from streams.pool.lifecycle import ModelState, RecordModelUsage, TransitionModel, TransitionReason
from streams.topics import RESULTS


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


def registry_for(settings: Settings) -> SchemaRegistry:
    if settings.schema_registry_url:
        from schemas.registry import ConfluentRegistry

        return ConfluentRegistry(settings.schema_registry_url)
    return EmbeddedRegistry()


@dataclass
class PitClient:
    settings: Settings = field(default_factory=Settings.from_env)
    issued_by: str = "pit-client"
    codec: Codec | None = None

    def __post_init__(self) -> None:
        self.codec = self.codec or Codec(registry_for(self.settings))
        self._pending: dict[str, asyncio.Future] = {}
        self._producer: AIOKafkaProducer | None = None
        self._results_task: asyncio.Task | None = None

    async def start(self) -> PitClient:
        options = self.settings.kafka_client_options()
        self._producer = AIOKafkaProducer(**options, linger_ms=0, enable_idempotence=True)
        try:
            await self._producer.start()
        except KafkaError as exc:
            await self._producer.stop()
            raise BrokerUnavailableError(
                f"Kafka unreachable at {options['bootstrap_servers']}: {exc}") from None
        consumer = await start_consumer(self.settings, fetch_max_wait_ms=5)
        tps = [TopicPartition(RESULTS, p) for p in await partitions_of(consumer, RESULTS)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:  # pin the end now, so no outcome of ours can slip past us
            await consumer.position(tp)
        self._results_task = asyncio.create_task(self._dispatch(consumer))
        return self

    async def close(self) -> None:
        if self._results_task:
            self._results_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._results_task
        if self._producer:
            await self._producer.stop()

    async def __aenter__(self) -> PitClient:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def _dispatch(self, consumer) -> None:
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=200)
                for messages in batch.values():
                    for message in messages:
                        try:
                            outcome = Outcome.from_record(self.codec.decode(message.value).record)
                        except (SchemaError, KeyError):
                            continue
                        waiter = self._pending.pop(outcome.command_id, None)
                        if waiter is not None and not waiter.done():
                            waiter.set_result(outcome)
        finally:
            await consumer.stop()

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

    async def mark_hot(self, model_id: str, reason=TransitionReason.USER_REQUEST, **options):
        return await self.transition(model_id, ModelState.HOT, reason, **options)

    async def cool_model(self, model_id: str, reason=TransitionReason.SCHEDULED_COOLDOWN,
                         **options):
        return await self.transition(model_id, ModelState.COOLING, reason, **options)

    async def unload_model(self, model_id: str, reason=TransitionReason.SCHEDULED_COOLDOWN,
                           **options):
        return await self.transition(model_id, ModelState.COLD, reason, **options)

    async def fail_model(self, model_id: str, error: str,
                         reason=TransitionReason.HEALTH_CHECK_FAILURE, **options):
        return await self.transition(model_id, ModelState.FAILED, reason, {"error": error},
                                     **options)

    async def recover_model(self, model_id: str, **options):
        return await self.transition(model_id, ModelState.COLD, TransitionReason.ERROR_RECOVERY,
                                     **options)

    async def record_usage(self, model_id: str, invocations: int = 1, **options) -> Outcome:
        return await self.send(RecordModelUsage(model_id, invocations), **options)

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
