"""The prewarmer in `pit up` (streams/pool/prewarmer.py) through the embedded broker: it
learns a recurring workflow A -> B -> C from pit.pool.events and prewarms B when A is
allocated; restarted, it relearns from the log and sends nothing again for history.

The test plays the model host: it answers each LoadRequested with ReportModelLoaded and each
UnloadRequested with ReportModelUnloaded, and cools the models after every run, so each run
starts Cold. Allocations carry a Kafka timestamp from a test clock an hour ahead and runs
are 40-80 minutes apart on it, as a workflow runs in production (the pool takes time from
command timestamps, never the wall clock): at that pace the workflow pattern is the only
one strong enough to act on, so a prewarm of B can only come from A's allocation.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY

from streams.app import Stack
from streams.client import PitClient
from streams.config import Settings
from streams.decider import Message, from_record
from streams.history import read_topic
from streams.kafka import assign_at, start_consumer
from streams.pool.lifecycle import ModelState, ModelTransitioned
from streams.pool.lifecycle import TransitionReason as R
from streams.pool.pool import (
    POOL,
    AllocateModel,
    CoolModel,
    LoadRequested,
    ModelAllocated,
    ModelPlaced,
    ReportModelLoaded,
    ReportModelUnloaded,
    UnloadRequested,
    WarmModel,
)
from streams.pool.topics import POOL_COMMANDS, POOL_EVENTS
from streams.waiting import until

Cold, Warming, Hot, Cooling, Failed = ModelState
HOST = "prewarm-host"
MINUTE_MS = 60_000
GAPS_MIN = [41, 67, 53, 78, 47, 62]  # irregular, so no timer pattern
STEP_MS = 30_000
LEARNING_RUNS = 5


class Host:
    """Follows pit.pool.events from the beginning: keeps every event and each model's
    state, and answers load and unload instructions for HOST as a model host does."""

    def __init__(self, stack: Stack, client: PitClient) -> None:
        self.stack, self.client = stack, client
        self.events: list[Message] = []
        self.states: dict[str, ModelState] = {}
        self._replies: set[asyncio.Task] = set()

    async def start(self) -> Host:
        consumer = await start_consumer(self.stack.settings, fetch_max_wait_ms=5)
        await assign_at(consumer, [POOL_EVENTS])
        self._task = asyncio.create_task(self._run(consumer))
        return self

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await asyncio.gather(*self._replies, return_exceptions=True)

    async def _run(self, consumer) -> None:
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=20)
                for records in batch.values():
                    for record in records:
                        self._on(record.value)
        finally:
            await consumer.stop()

    def _on(self, value: bytes | None) -> None:
        if value is None:
            return
        decoded = self.stack.codec.decode(value)
        event_type = POOL.event_type(decoded.name)
        if event_type is None:
            return
        event = from_record(event_type, decoded.record)
        self.events.append(event)
        match event:
            case ModelTransitioned(model_id=m, to_state=state):
                self.states[m] = state
            case LoadRequested(model_id=m, host_id=h) if h == HOST:
                self._reply(ReportModelLoaded(HOST, m, 5, 100))
            case UnloadRequested(model_id=m, host_id=h) if h == HOST:
                self._reply(ReportModelUnloaded(HOST, m))

    def _reply(self, command: Message) -> None:
        task = asyncio.create_task(self.client.send(command))
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)

    def prewarm_loads(self, since: int = 0) -> list[str]:
        return [e.model_id for e in self.events[since:]
                if isinstance(e, LoadRequested) and e.reason is R.PREDICTIVE_PREWARM]


class Workflow:
    """Runs A -> B -> C with timestamped allocations; cools everything between runs."""

    def __init__(self, stack: Stack, client: PitClient, host: Host,
                 producer: AIOKafkaProducer, models: list[str]) -> None:
        self.stack, self.client, self.host, self.producer = stack, client, host, producer
        self.models = models

    async def allocate(self, model_id: str, at_ms: int, run: str) -> ModelAllocated:
        request_id = str(uuid.uuid4())
        command = AllocateModel(request_id, model_id, "workflow-test", workflow_id=run)
        value = self.client.encode_command(command, str(uuid.uuid4()))
        await self.producer.send_and_wait(POOL_COMMANDS, value, key=b"default",
                                          timestamp_ms=at_ms)
        return await until(lambda: next(
            (e for e in self.host.events
             if isinstance(e, ModelAllocated) and e.request_id == request_id), None),
            what=f"the allocation of {model_id}")

    async def settle(self) -> None:
        """Cool every model until all stay Cold (a late prewarm may load one again)."""
        quiet = 0
        deadline = time.monotonic() + 15
        while quiet < 3:
            assert time.monotonic() < deadline, f"models did not settle: {self.host.states}"
            states = [self.host.states.get(m, Cold) for m in self.models]
            quiet = quiet + 1 if all(s is Cold for s in states) else 0
            for model_id, state in zip(self.models, states, strict=True):
                if state is Hot:
                    await self.client.send(CoolModel(model_id))
            await asyncio.sleep(0.1)

    async def run(self, run: str, at_ms: int) -> list[ModelAllocated]:
        allocations = [await self.allocate(m, at_ms + i * STEP_MS, run)
                       for i, m in enumerate(self.models)]
        for allocation in allocations:
            await self.client.pool.release_model(allocation.request_id)
        await self.settle()
        return allocations


async def warm_models_sent(stack: Stack) -> list[WarmModel]:
    found = []
    for record in await read_topic(stack.settings, POOL_COMMANDS, stack.engine):
        if record.value is None:
            continue
        decoded = stack.codec.decode(record.value)
        if decoded.name == WarmModel.avro_name:
            found.append(from_record(WarmModel, decoded.record))
    return found


@contextlib.asynccontextmanager
async def running(settings: Settings):
    async with Stack(settings, progress=False) as stack:
        await asyncio.wait_for(stack.services["prewarmer"].caught_up.wait(), 30)
        client = await PitClient(stack.settings, issued_by="prewarm-test",
                                 codec=stack.codec).start()
        host = await Host(stack, client).start()
        try:
            yield stack, client, host
        finally:
            await host.stop()
            await client.close()


async def test_prewarms_the_next_workflow_step_and_relearns_from_the_log(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path / "pit")
    models = [f"wf-{name}-{uuid.uuid4().hex[:6]}" for name in "ABC"]
    a, b, _ = models
    async with running(settings) as (stack, client, host):
        assert (await client.pool.register_host(HOST, 10_000, 10)).accepted
        for model_id in models:
            assert (await client.pool.register_model(model_id, "python:x:y", 100, 1_000)).accepted
        producer = AIOKafkaProducer(**stack.settings.kafka_client_options(), linger_ms=0)
        await producer.start()
        try:
            workflow = Workflow(stack, client, host, producer, models)
            at = int(time.time() * 1000) + 60 * MINUTE_MS
            for number in range(LEARNING_RUNS):
                await workflow.run(f"wf/r{number}", at)
                at += GAPS_MIN[number] * MINUTE_MS

            # B is Cold; allocating A makes the prewarmer warm B before B is requested.
            assert host.states[b] is Cold
            mark = len(host.events)
            first = await workflow.allocate(a, at, "wf/last")
            assert not first.cache_hit
            await until(lambda: b in host.prewarm_loads(mark),
                        what="a predictive prewarm of B after A's allocation")
            await until(lambda: host.states[b] is Hot, what="B loaded")
            second = await workflow.allocate(b, at + STEP_MS, "wf/last")
            assert second.cache_hit
            third = await workflow.allocate(models[2], at + 2 * STEP_MS, "wf/last")
            for allocation in (first, second, third):
                await client.pool.release_model(allocation.request_id)
            await workflow.settle()
        finally:
            await producer.stop()

        sent = await warm_models_sent(stack)
        assert [w.reason for w in sent if w.model_id == b][-1] == "workflow"
        stats = await until(lambda: (s := stack.services["prewarmer"].stats())[
            "cold_starts_avoided"] >= 1 and s, what="the prewarmer counting B's hit")
        assert stats["predictions_made"] >= len(sent) >= 1
        assert stats["correct_predictions"] >= 1
        assert stats["models_prewarmed"] >= 1
        assert stats["accuracy"] == stats["correct_predictions"] / stats["predictions_made"]
        await until(lambda: REGISTRY.get_sample_value("pit_pool_prewarm_accuracy")
                    == stats["accuracy"], what="the accuracy gauge")
        assert REGISTRY.get_sample_value("pit_pool_prewarm_predictions_total") >= stats[
            "predictions_made"]
        await asyncio.sleep(0.5)
        before = stack.services["prewarmer"].stats()
        placed_before = [e for e in host.events if isinstance(e, ModelPlaced)]

    async with running(settings) as (stack, client, host):
        assert stack.services["prewarmer"].stats() == before  # relearnt from the log alone
        await asyncio.sleep(2.0)  # wall-clock ticks: nothing from history is sent again
        assert len(await warm_models_sent(stack)) == len(sent)
        assert [e for e in host.events if isinstance(e, ModelPlaced)] == placed_before
        assert all(host.states[m] is Cold for m in models)
