"""`CommandClient`: publish commands and await their outcomes (correlated by command id on
`pit.results`), follow results and tail topics. It knows no component: the deciders it is
given route each command to its topic and key, and components build their operations on
it (`streams/<component>/client.py`; `streams/client.py` assembles them into `PitClient`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypedDict
from weakref import WeakKeyDictionary

from streams.config import Settings
from streams.decider import Decider, Message, to_record
from streams.errors import BrokerUnavailableError, CommandTimeoutError, PitError, SchemaError
from streams.topics import RESULTS

log = logging.getLogger(__name__)

# Kafka and Avro are imported when used: a client that only reads the views (`pit artifact
# info`) needs neither.
if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

    from schemas.codec import Codec
    from schemas.registry import SchemaRegistry


class SendOptions(TypedDict, total=False):
    """The options of `CommandClient.send`, for operations that pass them through
    (`**options: Unpack[SendOptions]`)."""

    command_id: str | None
    correlation_id: str | None
    timeout: float


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
    from schemas.registry import ConfluentRegistry, EmbeddedRegistry

    if settings.schema_registry_url:
        return ConfluentRegistry(settings.schema_registry_url,
                                 options=settings.schema_registry_options)
    return EmbeddedRegistry()


async def _from_the_end(settings: Settings, topic: str) -> AIOKafkaConsumer:
    """A consumer of every partition of `topic` from its end now: nothing published after
    this returns slips past it."""
    from streams.kafka import BUSY_FETCH_WAIT_MS, assign_at, start_consumer, stop_consumer

    # Trimmed below its position (a reader lagging the Pit's BROKER_RETAIN_S), it reads on
    # from the partition's new beginning rather than jumping to its end.
    consumer = await start_consumer(settings, fetch_max_wait_ms=BUSY_FETCH_WAIT_MS,
                                    auto_offset_reset="earliest")
    try:
        await assign_at(consumer, [topic], at_end=True)
    except BaseException:
        await stop_consumer(consumer)
        raise
    return consumer


async def _hand_each(consumer: AIOKafkaConsumer, handle: Callable[[ConsumerRecord], None],
                     waited_on: Callable[[], bool]) -> None:
    """Hand `handle` each record the consumer reads, until cancelled; then stop it. Its
    fetches keep their short wait while `waited_on()` (`pace_fetches`)."""
    from streams.kafka import getmany_ready, stop_consumer

    try:
        while True:
            batch = await getmany_ready(consumer, 200, 10_000,
                                        busy=lambda _batch: waited_on())
            for messages in batch.values():
                for message in messages:
                    handle(message)
    finally:
        await stop_consumer(consumer)


class OutcomeReader:
    """The one reader of `pit.results` that the started `CommandClient`s of an event loop
    made with the same `Settings` share (per broker): `pit up`'s services, and clients given
    its settings. Every outcome of every client's command streams past every reader: with a
    reader per client, `pit up`'s four (five with `pit bench`'s) fetched and parsed each
    outcome that many times (a sixteenth of its CPU in a 10,000-node workflow). Keyed by the
    settings object, not by the broker's address alone: a client that was never closed
    keeps its reader, and another broker may later listen at that address.

    It reads from the end as of when its first client started; a client started later waits
    only for commands it sends afterwards, whose outcomes come after that. Its fetches keep
    their short wait while some client waits for an outcome in a hurry (and IDLE_AFTER_S
    after: `pace_fetches`); a patient wait (a runner's, for the answer to a report it only
    keeps owed until then) is met at the idle pace. If it stops reading (its consumer
    failed), every wait fails at once and the next client to start gets a new reader."""

    _shared: ClassVar[WeakKeyDictionary[asyncio.AbstractEventLoop,
                                        dict[tuple[int, str], OutcomeReader]]] = (
        WeakKeyDictionary())

    def __init__(self, settings: Settings, codec: Codec, key: tuple[int, str]) -> None:
        self.settings, self.codec = settings, codec
        self.key = key  # (id of the settings object, which lives as long; the broker)
        self.clients: set[CommandClient] = set()
        # command id -> the clients waiting for its outcome, each with its own future (one
        # that gives up cancels only its own)
        self.waiting: dict[str, dict[CommandClient, asyncio.Future[Outcome]]] = {}
        # per client, how many command ids it waits on in a hurry: `waits`, asked on every
        # read of its tails, without a pass over every wait (a runner waits on thousands)
        self.pending: Counter[CommandClient] = Counter()
        self.patient: set[asyncio.Future[Outcome]] = set()  # the waits `pending` leaves out
        self.consumer: AIOKafkaConsumer | None = None
        self._started: asyncio.Future[None] | None = None
        self._reading: asyncio.Task[None] | None = None

    @classmethod
    async def join(cls, client: CommandClient) -> OutcomeReader:
        """The reader of `client`'s loop and broker, started by its first client."""
        readers = cls._shared.setdefault(asyncio.get_running_loop(), {})
        key = (id(client.settings), client.settings.bootstrap())
        reader = readers.get(key)
        if reader is None or (reader._reading is not None and reader._reading.done()):
            reader = readers[key] = cls(client.settings, client.codec, key)
            reader._started = asyncio.ensure_future(reader._start())
        assert reader._started is not None
        reader.clients.add(client)
        try:
            await asyncio.shield(reader._started)
        except BaseException:
            await reader.leave(client)
            raise
        return reader

    async def _start(self) -> None:
        self.consumer = await _from_the_end(self.settings, RESULTS)
        self._reading = asyncio.create_task(self._read(self.consumer))

    async def leave(self, client: CommandClient) -> None:
        """`client` closes: the reader stops with its last client."""
        self.clients.discard(client)
        for command_id in [c for c, waiters in self.waiting.items() if client in waiters]:
            self.forget(client, command_id)
        if self.clients:
            return
        self._unshare()
        if self._reading is not None:
            self._reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reading

    def expect(self, client: CommandClient, command_id: str, *, patient: bool = False
               ) -> asyncio.Future[Outcome]:
        waiters = self.waiting.setdefault(command_id, {})
        future = waiters.get(client)
        if future is None:
            future = waiters[client] = asyncio.get_running_loop().create_future()
            if patient:
                self.patient.add(future)
                return future
        elif patient or future not in self.patient:
            return future
        else:
            self.patient.discard(future)  # waited for in a hurry after all
        self.pending[client] += 1
        if len(self.pending) == 1 and self.pending[client] == 1 and self.consumer is not None:
            from streams.kafka import pace_fetches

            pace_fetches(self.consumer, True)  # waited for again: fetch at the short wait
        return future

    def waits(self, client: CommandClient) -> bool:
        """Whether `client` waits for some outcome in a hurry."""
        return self.pending[client] > 0

    def forget(self, client: CommandClient, command_id: str) -> None:
        waiters = self.waiting.get(command_id)
        if waiters is not None:
            future = waiters.pop(client, None)
            if future is not None:
                self._answered(client, future)
            if not waiters:
                del self.waiting[command_id]

    def _answered(self, client: CommandClient, future: asyncio.Future[Outcome]) -> None:
        if future in self.patient:
            self.patient.discard(future)
            return
        self.pending[client] -= 1
        if not self.pending[client]:
            del self.pending[client]

    def _unshare(self) -> None:
        readers = self._shared.get(asyncio.get_running_loop(), {})
        if readers.get(self.key) is self:
            del readers[self.key]

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        try:
            await _hand_each(consumer, self._on_outcome, lambda: bool(self.pending))
        except Exception as exc:  # no outcome will come: every wait fails now, not at its timeout
            self._unshare()
            failure = BrokerUnavailableError(f"reading {RESULTS} failed: {exc!r}")
            for waiters in self.waiting.values():
                for future in waiters.values():
                    if not future.done():
                        future.set_exception(failure)
            self.waiting.clear()
            self.pending.clear()
            self.patient.clear()
            log.warning("%s", failure)

    def _on_outcome(self, message: ConsumerRecord) -> None:
        key = message.key  # the command id: most outcomes answer commands nobody here sent
        if key is not None and key.decode("utf-8", "replace") not in self.waiting:
            return
        try:
            outcome = Outcome.from_record(self.codec.decode(message.value).record)
        except (SchemaError, KeyError):
            return
        for client, future in self.waiting.pop(outcome.command_id, {}).items():
            self._answered(client, future)
            if not future.done():
                future.set_result(outcome)


class CommandClient:
    """Commands to the deciders it routes (`deciders`), outcomes back. `start` connects;
    reading the log (`results`, `tail`) needs no producer."""

    def __init__(self, settings: Settings | None = None, issued_by: str = "pit-client",
                 codec: Codec | None = None, *, deciders: Iterable[Decider[Any]] = ()) -> None:
        self.settings = settings or Settings.from_env()
        self.issued_by = issued_by
        self._codec = codec
        self._deciders = tuple(deciders)
        self._outcomes: OutcomeReader | None = None  # while started
        self._producer: AIOKafkaProducer | None = None
        self._tasks: list[asyncio.Task] = []
        self._tails: list[AIOKafkaConsumer] = []  # the consumers of `tail`
        self._closers: list[Callable[[], Awaitable[None]]] = []

    @property
    def codec(self) -> Codec:
        """Made on first use: opening the registry (every schema's id, or a registry
        server's client) is work a client that only reads the views does without."""
        if self._codec is None:
            from schemas.codec import Codec

            self._codec = Codec(registry_for(self.settings))
        return self._codec

    def routed(self) -> Iterable[Decider[Any]]:
        """The deciders whose commands this client sends."""
        return self._deciders

    @cached_property
    def _routes(self) -> dict[type[Message], Decider[Any]]:
        # Made on the first command published: a client that only reads loads no decider.
        return {command: decider for decider in self.routed() for command in decider.commands}

    @property
    def connected(self) -> bool:
        return self._producer is not None

    def at_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Run `closer` first when the client closes (while it can still publish)."""
        self._closers.append(closer)

    async def start(self) -> Self:
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError

        options = self.settings.kafka_client_options()
        self._producer = AIOKafkaProducer(**options, linger_ms=0, enable_idempotence=True)
        try:
            await self._producer.start()
        except KafkaError as exc:
            await self._producer.stop()
            raise BrokerUnavailableError(
                f"Kafka unreachable at {options['bootstrap_servers']}: {exc}") from None
        try:
            self._outcomes = await OutcomeReader.join(self)
        except BaseException:
            await self._producer.stop()
            self._producer = None
            raise
        return self

    async def tail(self, topic: str, handle: Callable[[Any], None]) -> None:
        """Follow `topic` from its current end, calling `handle(message)` for each record
        until the client closes."""
        consumer = await _from_the_end(self.settings, topic)
        self._tails.append(consumer)
        self._tasks.append(asyncio.create_task(_hand_each(consumer, handle, self._waits)))

    async def close(self) -> None:
        for closer in self._closers:
            await closer()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._outcomes is not None:
            await self._outcomes.leave(self)
            self._outcomes = None
        if self._producer:
            await self._producer.stop()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def _waits(self) -> bool:
        """Whether the client waits for an outcome: its tails' fetches keep their short wait
        while it does (and IDLE_AFTER_S after), since a tail's answer (a model allocated)
        follows a command's outcome, and a tail nobody waits on has no reason to fetch every
        2 ms (`pace_fetches`)."""
        return self._outcomes is not None and self._outcomes.waits(self)

    def encode_command(self, command: Message, command_id: str,
                       correlation_id: str | None = None) -> bytes:
        meta = {"command_id": command_id, "issued_at": int(time.time() * 1000),
                "issued_by": self.issued_by, "correlation_id": correlation_id}
        return self.codec.encode(command.avro_name, {"meta": meta, **to_record(command)})

    async def publish(self, command: Message, *, command_id: str | None = None,
                      correlation_id: str | None = None) -> str:
        """Publish without waiting for the outcome; returns the command id."""
        decider = self._routes.get(type(command))
        if decider is None:
            raise PitError(f"no component of this client takes {command.type_name}")
        if self._producer is None:
            raise PitError("the client is not started: call start() or use `async with`")
        command_id = command_id or str(uuid.uuid4())
        value = self.encode_command(command, command_id, correlation_id)
        await self._producer.send_and_wait(decider.command_topic, value,
                                           key=decider.entity_of(command).encode())
        return command_id

    def expect(self, command_id: str, *, patient: bool = False) -> asyncio.Future[Outcome]:
        """The outcome of a command, once it comes (sent by this client or by a producer of
        the caller's own; the client must be started). A `patient` wait keeps no fetch
        short: its outcome may come IDLE_FETCH_WAIT_MS late, unless something else is
        waited for meanwhile."""
        if self._outcomes is None:
            raise PitError("the client is not started: call start() or use `async with`")
        if not patient and not self._outcomes.waits(self):  # the tails' fetches are short
            from streams.kafka import pace_fetches

            for tail in self._tails:
                pace_fetches(tail, True)
        return self._outcomes.expect(self, command_id, patient=patient)

    async def send(self, command: Message, *, command_id: str | None = None,
                   correlation_id: str | None = None, timeout: float = 10.0) -> Outcome:
        """Publish a command and wait for its outcome."""
        command_id = command_id or str(uuid.uuid4())
        waiter = self.expect(command_id)
        try:
            await self.publish(command, command_id=command_id, correlation_id=correlation_id)
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise CommandTimeoutError(
                f"no outcome for {command.type_name} {command_id} within {timeout:g}s "
                "(is `pit up` running?)") from None
        finally:
            if self._outcomes is not None:
                self._outcomes.forget(self, command_id)

    async def results(self, from_beginning: bool = False) -> AsyncIterator[Outcome]:
        """Every outcome from now on (or from the start of the log), as they arrive."""
        from streams.kafka import assign_at, start_consumer, stop_consumer

        consumer = await start_consumer(self.settings, fetch_max_wait_ms=100)
        try:
            await assign_at(consumer, [RESULTS], at_end=not from_beginning)
            while True:
                batch = await consumer.getmany(timeout_ms=500)
                for message in sorted((m for ms in batch.values() for m in ms),
                                      key=lambda m: m.timestamp):
                    yield Outcome.from_record(self.codec.decode(message.value).record)
        finally:
            await stop_consumer(consumer)
