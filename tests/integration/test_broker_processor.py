"""The processor runtime through the embedded broker: commands in, events/outcomes/dead
letters out, duplicates and redeliveries without a second effect, restart and broker faults.

Every test uses its own model ids. A `Tap` reads pit.pool.events, pit.results and
pit.deadletters from the beginning in the background, so tests wait on conditions instead
of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import struct
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer, TopicPartition

from schemas.catalog import current_schemas
from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams import kafka, metrics
from streams.broker import EmbeddedBroker, catalog_broker
from streams.client import PitClient, SyncPitClient
from streams.commands import Outcome
from streams.config import Settings
from streams.decider import to_record
from streams.errors import BrokerUnavailableError, CommandTimeoutError, UnknownSchemaError
from streams.kafka import assign_at, getmany_ready, start_consumer, take_ready
from streams.log import LogRecord
from streams.pool.lifecycle import (
    LIFECYCLE,
    ModelState,
    ModelTransitioned,
    RecordModelUsage,
    TransitionModel,
    TransitionReason,
)
from streams.pool.topics import POOL_COMMANDS, POOL_EVENTS
from streams.processor import OUTCOME, Processor, run_processor
from streams.topics import DEAD_LETTERS, RESULTS, load_catalog
from streams.waiting import until

COLD, WARMING, HOT, COOLING, FAILED = ModelState
USER = TransitionReason.USER_REQUEST

# A command schema no component handles: it has `meta`, so it is a command, but not the pool's.
UNHANDLED = {
    "type": "record", "name": "Unhandled", "namespace": "pit.test",
    "fields": [
        {"name": "meta", "type": {
            "type": "record", "name": "TestMeta", "namespace": "pit.test",
            "fields": [
                {"name": "command_id", "type": "string"},
                {"name": "issued_at", "type": "long"},
                {"name": "issued_by", "type": "string"},
                {"name": "correlation_id", "type": ["null", "string"], "default": None},
            ]}},
        {"name": "thing_id", "type": "string"},
    ],
}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class Tap:
    """Everything on the output topics, decoded where possible, as it arrives."""

    settings: Settings
    codec: Codec
    records: dict[str, list[LogRecord]] = field(default_factory=lambda: defaultdict(list))

    async def start(self) -> Tap:
        consumer = await start_consumer(self.settings, fetch_max_wait_ms=5)
        await assign_at(consumer, (POOL_EVENTS, RESULTS, DEAD_LETTERS))
        self._task = asyncio.create_task(self._run(consumer))
        return self

    async def _run(self, consumer) -> None:
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=20)
                for messages in batch.values():
                    for message in messages:
                        self.records[message.topic].append(LogRecord.from_kafka(message))
        finally:
            await consumer.stop()

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def events(self, model_id: str) -> list[tuple[dict, ModelTransitioned | dict]]:
        """(envelope, record) of every event of a model, in log order."""
        found = []
        for record in self.records[POOL_EVENTS]:
            if record.key == model_id.encode():
                decoded = self.codec.decode(record.value)
                found.append((decoded.record["envelope"], decoded.record))
        return found

    def outcomes(self, command_id: str) -> list[dict]:
        found = []
        for record in self.records[RESULTS]:
            if record.key == command_id.encode():
                decoded = self.codec.decode(record.value)
                assert decoded.name == OUTCOME
                found.append(decoded.record)
        return found

    def dead_letters(self, value: bytes) -> list[LogRecord]:
        return [r for r in self.records[DEAD_LETTERS] if r.value == value]


@dataclass
class RunningProcessor:
    """One `run_processor` task with a fresh `Processor`, as `pit up` starts it."""

    settings: Settings
    codec: Codec

    async def start(self) -> RunningProcessor:
        self.processor = Processor(LIFECYCLE, self.codec)
        self.stop_event, ready = asyncio.Event(), asyncio.Event()
        self.task = asyncio.create_task(
            run_processor(self.processor, self.settings, None, self.stop_event, ready))
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait([waiter, self.task], timeout=15,
                                     return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            if self.task in done:
                self.task.result()
            raise AssertionError("the processor did not become ready")
        return self

    async def stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait_for(self.task, 15)


@dataclass
class Pit:
    broker: EmbeddedBroker
    settings: Settings
    registry: EmbeddedRegistry
    codec: Codec
    processor: RunningProcessor
    tap: Tap
    client: PitClient
    producer: AIOKafkaProducer  # raw producer, for bytes the client would never send

    async def produce_raw(self, value: bytes, key: bytes | None = None,
                          headers: list[tuple[str, bytes]] | None = None):
        return await self.producer.send_and_wait(POOL_COMMANDS, value, key=key,
                                                 headers=headers)


@contextlib.asynccontextmanager
async def pit_on(broker: EmbeddedBroker) -> AsyncIterator[Pit]:
    broker.apply(load_catalog())
    settings = Settings(bootstrap_servers=broker.bootstrap_servers)
    registry = EmbeddedRegistry()
    registry.register("pit.test.Unhandled", UNHANDLED)
    codec = Codec(registry)
    async with contextlib.AsyncExitStack() as stack:
        tap = await Tap(settings, codec).start()
        stack.push_async_callback(tap.stop)
        processor = await RunningProcessor(settings, codec).start()
        stack.push_async_callback(lambda: processor.stop() if not processor.task.done()
                                  else asyncio.sleep(0))
        client = await PitClient(settings, issued_by="integration-test").start()
        stack.push_async_callback(client.close)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=0)
        await producer.start()
        stack.push_async_callback(producer.stop)
        yield Pit(broker, settings, registry, codec, processor, tap, client, producer)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pit() -> AsyncIterator[Pit]:
    with EmbeddedBroker(1) as broker:
        async with pit_on(broker) as running:
            yield running


# --- a command becomes an event and an outcome -----------------------------------------------

async def test_command_becomes_event_and_accepted_outcome(pit: Pit) -> None:
    model = unique("warm")
    command_id = unique("cmd")
    before = int(time.time() * 1000)
    outcome = await pit.client.pool.transition(model, WARMING, USER, {"why": "test"},
                                          command_id=command_id, correlation_id="corr-1")
    assert outcome.accepted and not outcome.duplicate and outcome.reason is None
    assert (outcome.command_id, outcome.command_type, outcome.entity_key) == (
        command_id, "TransitionModel", model)
    assert outcome.event_ids == (f"{command_id}/0",)

    (envelope, event), = await until(lambda: pit.tap.events(model), what="the event")
    assert envelope["event_id"] == outcome.event_ids[0]
    assert envelope["event_type"] == "ModelTransitioned"
    assert envelope["entity_key"] == model
    assert envelope["sequence"] == 1
    assert envelope["causation_id"] == command_id
    assert envelope["correlation_id"] == "corr-1"
    assert envelope["producer"] == pit.processor.processor.name
    assert before <= envelope["occurred_at"] == outcome.decided_at <= int(time.time() * 1000)
    assert (event["model_id"], event["from_state"], event["to_state"], event["reason"],
            event["time_in_previous_ms"], event["metadata"]) == (
        model, "Cold", "Warming", "UserRequest", 0, {"why": "test"})
    assert pit.processor.processor.state(model).state == WARMING

    # The next transition's time in state comes from the two event timestamps.
    hot = await pit.client.pool.transition(model, HOT)
    assert hot.accepted
    events = await until(lambda: len(pit.tap.events(model)) == 2 and pit.tap.events(model))
    (first, _), (second, second_event) = events
    assert second["sequence"] == 2
    assert second_event["time_in_previous_ms"] == second["occurred_at"] - first["occurred_at"]


async def test_invalid_transition_is_rejected_with_reason_and_no_event(pit: Pit) -> None:
    model = unique("reject")
    outcome = await pit.client.pool.transition(model, HOT)  # Cold -> Hot is not allowed
    assert outcome.status == "REJECTED" and not outcome.accepted
    assert outcome.event_ids == ()
    assert "Cold" in outcome.reason and "Hot" in outcome.reason
    usage = await pit.client.pool.record_usage(model, 0)
    assert usage.status == "REJECTED" and "positive" in usage.reason
    empty = await pit.client.pool.transition("", WARMING)
    assert empty.status == "REJECTED" and "empty" in empty.reason
    # An accepted command afterwards proves everything before it was decided: still no event.
    assert (await pit.client.pool.warm_model(model)).accepted
    await until(lambda: pit.tap.events(model))
    assert [env["sequence"] for env, _ in pit.tap.events(model)] == [1]
    assert pit.tap.events(model)[0][1]["to_state"] == "Warming"


async def test_same_command_id_twice_has_one_effect(pit: Pit) -> None:
    model = unique("dup")
    command_id = unique("cmd")
    first = await pit.client.pool.warm_model(model, command_id=command_id)
    second = await pit.client.pool.warm_model(model, command_id=command_id)
    assert first.accepted and not first.duplicate
    assert second.accepted and second.duplicate
    assert second.event_ids == first.event_ids == (f"{command_id}/0",)
    # The second outcome was produced after the first batch's events were acknowledged (the
    # test's tap may read them after the client read the outcomes: wait for it).
    await until(lambda: pit.tap.events(model), what="the event")
    assert len(pit.tap.events(model)) == 1
    assert pit.processor.processor.state(model).transition_count == 1
    # Even a different command under an old id is only acknowledged.
    third = await pit.client.pool.transition(model, HOT, command_id=command_id)
    assert third.duplicate and third.command_type == "TransitionModel"
    assert third.event_ids == first.event_ids
    assert pit.processor.processor.state(model).state == WARMING


async def test_redelivered_command_record_has_no_second_effect(pit: Pit) -> None:
    model = unique("redeliver")
    command_id = unique("cmd")
    value = pit.client.encode_command(TransitionModel(model, WARMING, USER), command_id)
    for _ in range(2):  # the identical record twice, as a redelivery after a crash would be
        await pit.produce_raw(value, key=model.encode())
    outcomes = await until(lambda: len(pit.tap.outcomes(command_id)) == 2
                           and pit.tap.outcomes(command_id), what="two outcomes")
    assert [o["duplicate"] for o in outcomes] == [False, True]
    assert outcomes[0]["event_ids"] == outcomes[1]["event_ids"] == [f"{command_id}/0"]
    assert [env["causation_id"] for env, _ in pit.tap.events(model)] == [command_id]
    assert pit.processor.processor.state(model).transition_count == 1


# --- dead letters ---------------------------------------------------------------------------

def header_map(record: LogRecord) -> dict[str, bytes]:
    return dict(record.headers)


async def test_garbage_and_unknown_schema_go_to_dead_letters_and_processing_goes_on(
        pit: Pit) -> None:
    with pytest.raises(UnknownSchemaError):
        pit.registry.schema_by_id(999)
    garbage = b"\x17not avro at all " + uuid.uuid4().bytes
    unknown = b"\x00" + struct.pack(">I", 999) + b"junk" + uuid.uuid4().bytes
    sent = {}
    for value, key in ((garbage, b"garbage-key"), (unknown, None)):
        sent[value] = await pit.produce_raw(value, key=key,
                                            headers=[("origin", b"integration-test")])

    for value, error_type, key in ((garbage, b"MalformedMessageError", b"garbage-key"),
                                   (unknown, b"UnknownSchemaError", None)):
        (letter,) = await until(lambda v=value: pit.tap.dead_letters(v),
                                what=f"dead letter {error_type}")
        headers = header_map(letter)
        assert letter.value == value and letter.key == key  # the original bytes, untouched
        assert headers["origin"] == b"integration-test"  # original headers kept
        assert headers["pit.error.type"] == error_type
        assert headers["pit.error"]
        metadata = sent[value]
        assert headers["pit.source.topic"] == POOL_COMMANDS.encode()
        assert headers["pit.source.partition"] == str(metadata.partition).encode()
        assert headers["pit.source.offset"] == str(metadata.offset).encode()
    assert b"999" in header_map(pit.tap.dead_letters(unknown)[0])["pit.error"]

    # The processor kept going: a valid command afterwards is decided.
    model = unique("after-garbage")
    assert (await pit.client.pool.warm_model(model)).accepted
    assert not pit.processor.task.done()


async def test_event_on_the_command_topic_is_dead_lettered(pit: Pit) -> None:
    model = unique("event-as-command")
    envelope = {"event_id": "x/0", "event_type": "ModelTransitioned", "entity_key": model,
                "sequence": 1, "correlation_id": "x", "causation_id": "x", "occurred_at": 1,
                "producer": "test"}
    event = ModelTransitioned(model, COLD, WARMING, USER, 0)
    value = pit.codec.encode(event.avro_name, {"envelope": envelope, **to_record(event)})
    await pit.produce_raw(value, key=model.encode())
    (letter,) = await until(lambda: pit.tap.dead_letters(value), what="dead letter")
    headers = header_map(letter)
    assert headers["pit.error.type"] == b"SchemaError"
    assert b"not a command" in headers["pit.error"]
    assert pit.tap.events(model) == []
    assert model not in pit.processor.processor.entities


async def test_command_of_no_component_is_rejected_not_dead_lettered(pit: Pit) -> None:
    command_id = unique("cmd")
    meta = {"command_id": command_id, "issued_at": 1, "issued_by": "test",
            "correlation_id": None}
    writer = Codec(pit.registry, {**current_schemas(), "pit.test.Unhandled": UNHANDLED})
    value = writer.encode("pit.test.Unhandled", {"meta": meta, "thing_id": "t-1"})
    await pit.produce_raw(value, key=b"t-1")
    (outcome,) = await until(lambda: pit.tap.outcomes(command_id), what="the outcome")
    assert outcome["status"] == "REJECTED"
    assert "pit.test.Unhandled" in outcome["reason"] and "pool" in outcome["reason"]
    assert outcome["event_ids"] == []
    assert pit.tap.dead_letters(value) == []


async def test_sync_client_from_blocking_code(pit: Pit) -> None:
    threads_before = {thread.ident for thread in threading.enumerate()}
    model = unique("sync")

    def blocking() -> list[Outcome]:
        with SyncPitClient(pit.settings, issued_by="sync-test") as client:
            return [client.pool.warm_model(model), client.pool.transition(model, HOT),
                    client.pool.record_usage(model, 5), client.pool.cool_model(model)]

    outcomes = await asyncio.to_thread(blocking)
    assert [o.accepted for o in outcomes] == [True, True, True, True]
    state = pit.processor.processor.state(model)
    assert (state.state, state.usage_count, state.transition_count) == (COOLING, 5, 3)
    assert not [thread for thread in threading.enumerate()  # its loop's thread is gone
                if thread.name == "pit-client" and thread.ident not in threads_before]


def test_a_sync_client_that_cannot_connect_leaves_no_loop_behind(free_port) -> None:
    """No broker: the one-line error, and the client's event loop stopped and closed (it
    used to be left running on its thread, unclosed)."""
    loops: list[asyncio.AbstractEventLoop] = []
    new_event_loop = asyncio.new_event_loop

    def recorded() -> asyncio.AbstractEventLoop:
        loops.append(new_event_loop())
        return loops[-1]

    settings = Settings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(asyncio, "new_event_loop", recorded)
        with pytest.raises(BrokerUnavailableError):
            SyncPitClient(settings)
    [loop] = loops
    assert loop.is_closed()


# --- restart --------------------------------------------------------------------------------

@pytest.fixture
def fast_rebalance(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shorten the processor's group session timeout, for test speed only.

    The mock cluster lets a rebalance of a non-empty group run for session.timeout.ms - 1 s
    (librdkafka rdkafka_mock_cgrp.c), and run_processor keeps aiokafka's 10 s default, so a
    processor joining after another left would wait 9 s before it gets any partition. Not
    below 4 s: the mock's first join waits its 3 s initial rebalance delay, and a member
    whose session runs out during that wait is dropped from the group.
    """
    import streams.processor

    original = streams.processor.start_consumer

    async def start_consumer(settings: Settings, *topics: str, **options):
        if "group_id" in options:
            options = {**options, "session_timeout_ms": 4000, "heartbeat_interval_ms": 500}
        return await original(settings, *topics, **options)

    monkeypatch.setattr(streams.processor, "start_consumer", start_consumer)


async def test_processor_restart_restores_state_from_the_topics(fast_rebalance) -> None:
    with EmbeddedBroker(1) as broker:
        async with pit_on(broker) as pit:
            model = unique("restart")
            ids = [unique("cmd") for _ in range(4)]
            assert (await pit.client.pool.warm_model(model, command_id=ids[0])).accepted
            assert (await pit.client.pool.transition(model, HOT, command_id=ids[1])).accepted
            assert (await pit.client.pool.record_usage(model, 7, command_id=ids[2])).accepted
            rejected = await pit.client.pool.transition(model, WARMING, command_id=ids[3])
            assert rejected.status == "REJECTED"
            old = pit.processor.processor
            await pit.processor.stop()

            restarted = await RunningProcessor(pit.settings, pit.codec).start()
            try:
                new = restarted.processor
                assert new is not old
                assert new.entities[model] == old.entities[model]
                assert new.state(model).state == HOT
                assert new.state(model).usage_count == 7
                assert new.entities[model].sequence == 3
                for command_id in ids:  # every old command id: acknowledged, not re-decided
                    again = await pit.client.pool.warm_model(model, command_id=command_id)
                    assert again.duplicate
                    original = pit.tap.outcomes(command_id)[0]
                    assert (again.status, list(again.event_ids), again.reason) == (
                        original["status"], original["event_ids"], original["reason"])
                cooled = await pit.client.pool.cool_model(model)
                assert cooled.accepted
                envelopes = [env for env, _ in await until(
                    lambda: len(pit.tap.events(model)) == 4 and pit.tap.events(model))]
                assert [env["sequence"] for env in envelopes] == [1, 2, 3, 4]
                assert envelopes[-1]["causation_id"] == cooled.command_id
                assert new.state(model).state == COOLING
            finally:
                await restarted.stop()


# --- broker faults --------------------------------------------------------------------------

async def send_until_decided(client: PitClient, command, command_id: str) -> Outcome:
    """Publish, and on a timeout publish again under the same id, as a real client would."""
    for _ in range(6):
        try:
            return await client.send(command, command_id=command_id, timeout=4)
        except CommandTimeoutError:
            continue
    raise AssertionError(f"{command_id} was never decided")


async def test_broker_down_and_up_while_commands_flow(fast_rebalance) -> None:
    with EmbeddedBroker(3) as broker:
        async with pit_on(broker) as pit:
            models = [unique("fault") for _ in range(12)]
            plan = {model: [TransitionModel(model, WARMING, USER),
                            TransitionModel(model, HOT, USER),
                            RecordModelUsage(model, 2),
                            TransitionModel(model, COOLING, USER)] for model in models}
            outcomes: dict[str, list[Outcome]] = defaultdict(list)

            async def drive(model: str) -> None:
                for step, command in enumerate(plan[model]):
                    command_id = f"{model}/{step}"
                    outcomes[model].append(await send_until_decided(pit.client, command,
                                                                    command_id))
                    await asyncio.sleep(0.05)

            async def faults() -> None:
                await asyncio.sleep(0.1)
                for broker_id in (2, 3):
                    broker.broker_down(broker_id)
                    await asyncio.sleep(0.4)
                    broker.broker_up(broker_id)
                    await asyncio.sleep(0.1)

            await asyncio.gather(faults(), *(drive(model) for model in models))

            for model in models:
                assert [o.status for o in outcomes[model]] == ["ACCEPTED"] * 4, outcomes[model]
                envelopes = [env for env, _ in await until(
                    lambda m=model: len(pit.tap.events(m)) >= 4 and pit.tap.events(m))]
                # exactly one effect per command: one event each, gapless sequence
                assert Counter(env["causation_id"] for env in envelopes) == {
                    f"{model}/{step}": 1 for step in range(4)}
                assert [env["sequence"] for env in envelopes] == [1, 2, 3, 4]
                state = pit.processor.processor.state(model)
                assert (state.state, state.usage_count, state.transition_count) == (
                    COOLING, 2, 3)


NOT_LEADER_OR_FOLLOWER = 6  # retriable: the client refreshes metadata and retries
PRODUCE, FETCH = 0, 1  # Kafka API keys


async def test_request_errors_and_a_leader_change_have_no_double_effect() -> None:
    """Fault injection through the mock API: failing Produce and Fetch requests, then the
    command partition's leader moving to another broker, while commands flow."""
    with EmbeddedBroker(3) as broker:
        async with pit_on(broker) as pit:
            model = unique("leader")
            broker.push_request_errors(PRODUCE, [NOT_LEADER_OR_FOLLOWER] * 3)
            broker.push_request_errors(FETCH, [NOT_LEADER_OR_FOLLOWER] * 3)
            first = await send_until_decided(pit.client, TransitionModel(model, WARMING, USER),
                                             "leader/0")
            await until(lambda: pit.tap.events(model))
            partition = next(r.partition for r in pit.tap.records[POOL_EVENTS]
                             if r.key == model.encode())
            broker.set_leader(POOL_COMMANDS, partition, 2)
            broker.set_leader(POOL_EVENTS, partition, 3)
            second = await send_until_decided(pit.client, TransitionModel(model, HOT, USER),
                                              "leader/1")
            assert (first.status, second.status) == ("ACCEPTED", "ACCEPTED")
            envelopes = [env for env, _ in await until(
                lambda: len(pit.tap.events(model)) >= 2 and pit.tap.events(model))]
            assert [(env["causation_id"], env["sequence"]) for env in envelopes] == [
                ("leader/0", 1), ("leader/1", 2)]
            assert pit.processor.processor.state(model).state == HOT


TOPIC_AUTHORIZATION_FAILED = 29  # not retriable: the processor's produce of a batch fails


async def test_a_failed_produce_restarts_the_processor_from_the_log(monkeypatch,
                                                                 fast_rebalance) -> None:
    """The broker refuses the processor's writes: it forgets what it held, starts over from
    the log, and every command still ends with exactly one effect and an outcome."""
    import streams.processor

    original = streams.processor.run_processor

    def quick(*args, **kwargs):
        return original(*args, **kwargs, produce_timeout_s=2.0, retry_s=0.2)

    monkeypatch.setattr(streams.processor, "run_processor", quick)
    monkeypatch.setattr(sys.modules[__name__], "run_processor", quick)
    restarts = metrics.PROCESSOR_RESTARTS.labels("pool")
    before = restarts._value.get()
    with EmbeddedBroker(3) as broker:
        async with pit_on(broker) as pit:
            # Commands live on broker 2, events and outcomes on broker 3, and only broker 3
            # refuses writes: the client can publish, the processor cannot answer.
            for partition in range(load_catalog()[POOL_COMMANDS].partitions):
                broker.set_leader(POOL_COMMANDS, partition, 2)
                broker.set_leader(POOL_EVENTS, partition, 3)
                broker.set_leader(RESULTS, partition, 3)
            model = unique("refused")
            assert (await pit.client.pool.warm_model(model, command_id="r/0")).accepted
            broker.push_broker_request_errors(3, PRODUCE, [TOPIC_AUTHORIZATION_FAILED] * 2)
            hot = await send_until_decided(pit.client, TransitionModel(model, HOT, USER), "r/1")
            assert hot.accepted
            assert restarts._value.get() > before
            envelopes = [env for env, _ in await until(
                lambda: len(pit.tap.events(model)) >= 2 and pit.tap.events(model))]
            assert [(env["causation_id"], env["sequence"]) for env in envelopes] == [
                ("r/0", 1), ("r/1", 2)]
            assert pit.processor.processor.state(model).state == HOT


# --- batches: what the broker already holds is decided together --------------------------------

async def test_take_ready_gathers_many_small_producer_batches_in_one_take(monkeypatch) -> None:
    """The embedded broker answers a fetch with one producer batch per partition, so 40
    reports sent one by one come back one per fetch; `take_ready` adds what is already on
    the broker, and the decider gets them in one batch. With nothing more there it returns
    at once. (Its 20 ms budget is lifted here: a loaded CI machine took only 37 of the 40
    within it.)"""
    monkeypatch.setattr(kafka, "DRAIN_BUDGET_S", 10.0)
    with catalog_broker() as broker:
        settings = Settings(bootstrap_servers=broker.bootstrap_servers)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=0)
        await producer.start()
        consumer = await start_consumer(settings)
        try:
            tp = TopicPartition(POOL_COMMANDS, 0)
            for n in range(40):  # one producer batch each
                await producer.send_and_wait(POOL_COMMANDS, b"%d" % n, partition=0)
            consumer.assign([tp])
            consumer.seek(tp, 0)
            first = await consumer.getmany(timeout_ms=5_000)
            assert 0 < len(first[tp]) < 40  # the broker's answer: not all of it
            await take_ready(consumer, first, max_records=5000)
            assert [m.value for m in first[tp]] == [b"%d" % n for n in range(40)]

            await producer.send_and_wait(POOL_COMMANDS, b"lone", partition=0)
            lone = await consumer.getmany(timeout_ms=5_000)
            fetches: list[int] = []
            fetch = consumer.getmany

            def counted(*args, **kwargs):
                fetches.append(1)
                return fetch(*args, **kwargs)

            consumer.getmany = counted  # type: ignore[method-assign]
            await take_ready(consumer, lone, max_records=5000)
            assert [m.value for m in lone[tp]] == [b"lone"]
            assert not fetches  # nothing waiting on the broker: no fetch, no wait
        finally:
            await consumer.stop()
            await producer.stop()


async def test_a_quiet_reader_fetches_at_the_idle_pace_until_it_reads_again(monkeypatch) -> None:
    """A reader that read nothing for IDLE_AFTER_S fetches with IDLE_FETCH_WAIT_MS (the
    broker holds an empty fetch for its whole wait, so a 5 ms reader makes 150 fetches a
    second doing nothing); the first record it reads brings its own wait back."""
    monkeypatch.setattr(kafka, "IDLE_AFTER_S", 0.1)
    with catalog_broker() as broker:
        settings = Settings(bootstrap_servers=broker.bootstrap_servers)
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=0)
        await producer.start()
        consumer = await start_consumer(settings, fetch_max_wait_ms=5)
        try:
            await assign_at(consumer, [POOL_COMMANDS], at_end=True)

            def fetch_wait() -> int:
                return consumer._fetcher._fetch_max_wait_ms

            assert not await getmany_ready(consumer, 10, 100)
            assert fetch_wait() == 5  # quiet, but not yet for long
            deadline = time.monotonic() + 10
            while fetch_wait() != kafka.IDLE_FETCH_WAIT_MS and time.monotonic() < deadline:
                assert not await getmany_ready(consumer, 10, 100)
            assert fetch_wait() == kafka.IDLE_FETCH_WAIT_MS

            await producer.send_and_wait(POOL_COMMANDS, b"wake", partition=0)
            read: list[bytes] = []
            while not read and time.monotonic() < deadline:
                read = [m.value for ms in (await getmany_ready(consumer, 100, 100)).values()
                        for m in ms]
            assert read == [b"wake"] and fetch_wait() == 5
        finally:
            await consumer.stop()
            await producer.stop()


async def test_outcomes_nobody_here_waits_for_let_the_shared_reader_idle(pit: Pit,
                                                                        monkeypatch) -> None:
    """The clients of one event loop share one reader of the outcomes. The outcomes of
    commands nobody here waits for stream past it; it fetches at the idle pace all the
    same, and is back at its short wait the moment a client waits for an outcome again."""
    monkeypatch.setattr(kafka, "IDLE_AFTER_S", 0.1)
    async with PitClient(pit.settings, issued_by="bystander") as bystander:
        reader = bystander._outcomes
        assert reader is not None and reader is pit.client._outcomes

        def fetch_wait() -> int:
            return reader.consumer._fetcher._fetch_max_wait_ms

        deadline = time.monotonic() + 10
        while fetch_wait() != kafka.IDLE_FETCH_WAIT_MS:  # outcomes keep coming
            await pit.client.publish(TransitionModel(unique("busy"), WARMING, USER))
            await asyncio.sleep(0.01)
            assert time.monotonic() < deadline, "the shared reader never went idle"
        waiting = bystander.expect(unique("cmd"))
        assert fetch_wait() == kafka.BUSY_FETCH_WAIT_MS
        waiting.cancel()


async def test_a_patient_wait_is_answered_at_the_idle_pace(pit: Pit, monkeypatch) -> None:
    """A patient wait (a runner's, for the answer to a report it has sent) leaves the shared
    reader fetching at the idle pace, and is answered all the same."""
    monkeypatch.setattr(kafka, "IDLE_AFTER_S", 0.1)
    async with PitClient(pit.settings, issued_by="patient") as client:
        reader = client._outcomes
        assert reader is not None

        def fetch_wait() -> int:
            return reader.consumer._fetcher._fetch_max_wait_ms

        await until(lambda: fetch_wait() == kafka.IDLE_FETCH_WAIT_MS, 10,
                    "the shared reader idle")
        command_id = unique("cmd")
        answer = client.expect(command_id, patient=True)
        assert fetch_wait() == kafka.IDLE_FETCH_WAIT_MS and not reader.waits(client)
        await client.publish(TransitionModel(unique("patient"), WARMING, USER),
                             command_id=command_id)
        outcome = await asyncio.wait_for(answer, 10)
        assert outcome.accepted and outcome.command_id == command_id
        assert fetch_wait() == kafka.IDLE_FETCH_WAIT_MS and not reader.patient


async def test_clients_sharing_the_outcome_reader_each_get_their_own_answers(pit: Pit) -> None:
    """Each client's wait is its own: one that gives up on a command leaves another's wait
    for the same command alone, and a client that closes leaves the reader to the others."""
    async with PitClient(pit.settings, issued_by="first") as first, \
            PitClient(pit.settings, issued_by="second") as second:
        command_id = unique("cmd")
        mine, theirs = first.expect(command_id), second.expect(command_id)
        mine.cancel()  # the first gives up
        first._outcomes.forget(first, command_id)
        outcome = await second.pool.transition(unique("shared"), WARMING, USER,
                                               command_id=command_id)
        assert outcome.accepted and (await theirs) == outcome
        reader = first._outcomes
    assert reader is pit.client._outcomes and reader.clients == {pit.client}
    assert (await pit.client.pool.transition(unique("after"), WARMING, USER)).accepted


async def test_a_shared_outcome_reader_that_fails_fails_its_waits_and_is_replaced(
        pit: Pit) -> None:
    """Its consumer stopped under it: every wait fails at once (not at its timeout), and
    the next client to start reads with a new reader. (Settings of their own: clients made
    with other settings objects do not share the module's reader.)"""
    settings = dataclasses.replace(pit.settings)
    async with PitClient(settings, issued_by="doomed") as doomed:
        reader = doomed._outcomes
        assert reader is not None and reader.consumer is not None
        assert reader is not pit.client._outcomes
        waiting = doomed.expect(unique("cmd"))
        await reader.consumer.stop()
        with pytest.raises(BrokerUnavailableError, match=r"reading pit\.results failed"):
            await asyncio.wait_for(waiting, 10)
        async with PitClient(settings, issued_by="next") as fresh:
            assert fresh._outcomes is not reader
            assert (await fresh.pool.transition(unique("after"), WARMING, USER)).accepted
