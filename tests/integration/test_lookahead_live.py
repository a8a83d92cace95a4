"""Lookahead prewarming in `pit up` through the embedded broker: a workflow of two operators
(the second slow) and then an instrument node. While the slow operator runs, the prewarmer,
following pit.dag.events, warms the instrument's model: it is placed with reason
PredictivePrewarm before the instrument node is scheduled, and the instrument's allocation
is a cache hit. The operators run in a real `Runner` (operator pool); the test plays the
model host (it reports loads) and the instrument runner (it allocates and reports)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid

from streams.app import Stack
from streams.client import PitClient
from streams.config import Settings
from streams.dag.definition import Edge, Node, NodeKind, Workflow
from streams.dag.execution import (
    DAG,
    ExecutionCompleted,
    NodeScheduled,
    ReportNodeCompleted,
    StartExecution,
)
from streams.dag.runner import Runner
from streams.dag.topics import DAG_EVENTS
from streams.decider import Message, from_record
from streams.history import read_topic
from streams.kafka import assign_at, start_consumer
from streams.pool.lifecycle import TransitionReason as R
from streams.pool.pool import POOL, LoadRequested, ModelPlaced, ReportModelLoaded, WarmModel
from streams.pool.topics import POOL_COMMANDS, POOL_EVENTS

HOST = "lookahead-host"
SLOW_MS = 3_000


class Log:
    """Follows pit.pool.events and pit.dag.events: every event with its occurred_at, in
    arrival order; answers LoadRequested for HOST as a model host does."""

    def __init__(self, stack: Stack, client: PitClient) -> None:
        self.stack, self.client = stack, client
        self.events: list[tuple[Message, int]] = []
        self._replies: set[asyncio.Task] = set()

    async def follow(self, stop: asyncio.Event) -> None:
        """Both topics from their beginning, until `stop`; then the replies in flight."""
        consumer = await start_consumer(self.stack.settings, fetch_max_wait_ms=5)
        try:
            await assign_at(consumer, (POOL_EVENTS, DAG_EVENTS))
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=20)
                for record in itertools.chain.from_iterable(batch.values()):
                    self._on(record.value)
        finally:
            await consumer.stop()
            await asyncio.gather(*self._replies, return_exceptions=True)

    def _on(self, value: bytes | None) -> None:
        if value is None:
            return
        decoded = self.stack.codec.decode(value)
        event_type = POOL.event_type(decoded.name) or DAG.event_type(decoded.name)
        if event_type is None:
            return
        event = from_record(event_type, decoded.record)
        self.events.append((event, decoded.record["envelope"]["occurred_at"]))
        if isinstance(event, LoadRequested) and event.host_id == HOST:
            task = asyncio.create_task(self.client.send(
                ReportModelLoaded(HOST, event.model_id, 20, 100)))
            self._replies.add(task)
            task.add_done_callback(self._replies.discard)

    def first(self, match) -> tuple[int, Message, int] | None:
        return next(((i, e, at) for i, (e, at) in enumerate(self.events) if match(e)), None)

    async def wait(self, match, what: str, timeout_s: float = 30.0) -> tuple[int, Message, int]:
        deadline = time.monotonic() + timeout_s
        while (found := self.first(match)) is None:
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)
        return found


def workflow(model: str) -> Workflow:
    """fetch (identity) -> slow (sleeps SLOW_MS) -> summarize (instrument on `model`)."""
    nodes = (Node("fetch", NodeKind.OPERATOR, operator="identity", constants={"value": "text"}),
             Node("slow", NodeKind.OPERATOR, operator="sleep_then_return",
                  constants={"ms": SLOW_MS}),
             Node("summarize", NodeKind.INSTRUMENT, model=model))
    edges = (Edge.parse("fetch", "slow.value"), Edge.parse("slow", "summarize.text"))
    return Workflow("lookahead-live", nodes, edges)


async def test_the_instruments_model_is_prewarmed_while_the_slow_operator_runs(tmp_path):
    model = f"summarizer-{uuid.uuid4().hex[:6]}"
    execution = f"wf-{uuid.uuid4().hex[:8]}"
    async with Stack(Settings(data_dir=tmp_path / "pit"), progress=False) as stack:
        await asyncio.wait_for(stack.services["prewarmer"].caught_up.wait(), 30)
        client = await PitClient(stack.settings, issued_by="lookahead-test",
                                 codec=stack.codec).start()
        log = Log(stack, client)
        runner = Runner(stack.settings, runner_id="ops", codec=stack.codec,
                        pools=("operator",), session_timeout_ms=3000, say=lambda _: None)
        stop = asyncio.Event()
        running = asyncio.gather(log.follow(stop), runner.run(stop))
        try:
            assert (await client.pool.register_host(HOST, 10_000, 10)).accepted
            assert (await client.pool.register_model(model, "python:x:y", 100, 1_000)).accepted
            outcome = await client.send(StartExecution(execution,
                                                       workflow(model).canonical_json()))
            assert outcome.accepted, outcome.line()

            _, _, slow_at = await log.wait(
                lambda e: isinstance(e, NodeScheduled) and e.node_id == "slow",
                "the slow operator to be scheduled")
            order, placed, placed_at = await log.wait(
                lambda e: isinstance(e, ModelPlaced) and e.model_id == model,
                "the model to be placed")
            assert placed.reason is R.PREDICTIVE_PREWARM
            scheduled_order, task, scheduled_at = await log.wait(
                lambda e: isinstance(e, NodeScheduled) and e.node_id == "summarize",
                "the instrument node to be scheduled", timeout_s=SLOW_MS / 1000 + 30)
            # Placed once the slow operator was dispatched, before the node was even ready.
            assert slow_at <= placed_at < scheduled_at
            assert scheduled_at - placed_at >= SLOW_MS // 2
            assert order < scheduled_order

            # The instrument runner's allocation finds the model loaded.
            allocation = await client.pool.allocate_model(model, task.task_id,
                                                     workflow_id=execution)
            assert allocation.cache_hit
            await client.pool.release_model(allocation.request_id)
            assert (await client.send(ReportNodeCompleted(
                execution, "summarize", task.attempt, json.dumps({"out": "summary"})))).accepted
            await log.wait(lambda e: isinstance(e, ExecutionCompleted), "the execution's end")

            warms = [from_record(WarmModel, stack.codec.decode(r.value).record)
                     for r in await read_topic(stack.settings, POOL_COMMANDS, stack.engine)
                     if r.value and stack.codec.decode(r.value).name == WarmModel.avro_name]
            assert [(w.model_id, w.reason) for w in warms] == [
                (model, f"lookahead {execution}/summarize")]
            assert stack.services["prewarmer"].lookahead.made == 1
            deadline = time.monotonic() + 10
            while stack.services["prewarmer"].lookahead.wants(execution):  # ended: forgotten
                assert time.monotonic() < deadline, "the ended execution is still followed"
                await asyncio.sleep(0.02)
        finally:
            stop.set()
            await running
            await client.close()
