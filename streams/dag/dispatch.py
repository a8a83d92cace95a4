"""The task dispatcher (issue 4, "Node runners"): relays every `NodeScheduled` on
pit.dag.events to pit.dag.tasks, keyed by its task id, for the runners' consumer group.

Why a relay and not the processor writing tasks: the processor writes a decision's events to
the decider's event topic, on the command's partition, so one execution's events sit on one
partition - one runner would get all of an execution's work. Re-keyed by task id, tasks
spread over every partition of pit.dag.tasks and so over every runner. Writing the task
topic from the processor as well would split one decision over two topics (a crash between
them loses tasks or duplicates decisions); relaying from the event log keeps a task exactly
as durable as the decision that made it.

The relay copies the event's bytes (envelope included: the task is the event) and adds
headers naming its source partition and offset. It follows pit.dag.events in the consumer
group "pit.dag.dispatcher" from its committed position - it never replays history - and
commits only after the broker acknowledged the batch's tasks. A crash in between relays
those events again: a task id twice, which runners recognise (they skip a task id they have
reported, and the decider ignores a repeated report). When the group has no position (the
embedded broker restarts empty and is restored from the archive), the source headers on
pit.dag.tasks say how far the relay got.

`restore_runner_positions` does the same for the runners' group after such a restore: each
runner's final report carries its task's position in headers, so the group resumes at the
first task not reported instead of running every restored task again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from aiokafka import ConsumerRebalanceListener, TopicPartition
from sqlalchemy import Engine

from schemas.catalog import fullname
from schemas.codec import Codec
from streams.config import Settings
from streams.errors import SchemaError
from streams.history import HistoryError, history_source, kafka_log_reader
from streams.kafka import (
    keep_running,
    make_producer,
    partitions_of,
    produce_all,
    start_consumer,
    stop_clients,
)
from streams.log import LogRecord
from streams.processor import Output
from streams.topics import DAG_COMMANDS, DAG_EVENTS, DAG_TASKS

log = logging.getLogger(__name__)

GROUP = "pit.dag.dispatcher"
NODE_SCHEDULED = "pit.dag.NodeScheduled"
SOURCE_PARTITION, SOURCE_OFFSET = "pit.source.partition", "pit.source.offset"
TASK_PARTITION, TASK_OFFSET = "pit.task.partition", "pit.task.offset"  # on runner reports
ANY_PARTITION = -1  # librdkafka: by key


def _header(headers: Iterable[tuple[str, bytes]], name: str) -> int | None:
    for key, value in headers:
        if key == name:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None


def relayed_positions(records: Iterable[LogRecord]) -> dict[int, int]:
    """From task records: the last pit.dag.events offset relayed, per events partition."""
    relayed: dict[int, int] = {}
    for record in records:
        partition = _header(record.headers, SOURCE_PARTITION)
        offset = _header(record.headers, SOURCE_OFFSET)
        if partition is not None and offset is not None and offset > relayed.get(partition, -1):
            relayed[partition] = offset
    return relayed


def reported_offsets(records: Iterable[LogRecord]) -> dict[int, set[int]]:
    """From pit.dag.commands records: the task offsets with a final report, per partition."""
    done: dict[int, set[int]] = {}
    for record in records:
        partition = _header(record.headers, TASK_PARTITION)
        offset = _header(record.headers, TASK_OFFSET)
        if partition is not None and offset is not None:
            done.setdefault(partition, set()).add(offset)
    return done


class TaskDispatcher:
    """Relays NodeScheduled events to pit.dag.tasks until stopped (run by `pit up`)."""

    def __init__(self, settings: Settings, codec: Codec, db: Engine | None = None, *,
                 group: str = GROUP, max_batch: int = 5_000, produce_timeout_s: float = 30.0,
                 retry_s: float = 1.0, session_timeout_ms: int = 10_000) -> None:
        self.settings, self.codec, self.db, self.group = settings, codec, db, group
        self.session_timeout_ms = session_timeout_ms
        self.max_batch, self.produce_timeout_s, self.retry_s = (max_batch, produce_timeout_s,
                                                                retry_s)
        self.names: dict[bytes, str | None] = {}  # schema id header -> record name
        self.relayed = 0
        self.ready = asyncio.Event()  # partitions assigned and positioned

    async def run(self, stop: asyncio.Event) -> None:
        await keep_running("task dispatcher", lambda: self._run(stop), stop, self.retry_s,
                           retry_on=(HistoryError,), on_restart=self.ready.clear)

    async def _run(self, stop: asyncio.Event) -> None:
        assigned: list[set[TopicPartition]] = []

        class Positions(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked) -> None:
                pass

            async def on_partitions_assigned(self, partitions) -> None:
                assigned.append(set(partitions))

        consumer = await start_consumer(
            self.settings, group_id=self.group, auto_offset_reset="earliest",
            fetch_max_wait_ms=20, session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=max(100, self.session_timeout_ms // 5))
        consumer.subscribe([DAG_EVENTS], listener=Positions())
        producer = make_producer(self.settings, partitioner="murmur2_random")
        failed = True
        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=100, max_records=self.max_batch)
                if assigned:
                    # Fetched before positioning: drop it, the seek reads it again.
                    await self._position(consumer, set().union(*assigned))
                    assigned.clear()
                    self.ready.set()
                    continue
                outputs = [out for messages in batch.values() for message in messages
                           if (out := self.task_of(message)) is not None]
                if outputs:
                    await produce_all(producer, outputs, self.produce_timeout_s)
                    self.relayed += len(outputs)
                if batch:
                    await consumer.commit()
            failed = False
        finally:
            await stop_clients(consumer, producer, failed)

    async def _position(self, consumer, partitions: set[TopicPartition]) -> None:
        """Each partition at its committed offset; without one, past what pit.dag.tasks
        shows relayed; with neither, at its beginning (nothing was relayed yet)."""
        committed = {tp: await consumer.committed(tp) for tp in partitions}
        missing = {tp.partition for tp, offset in committed.items() if offset is None}
        relayed = await asyncio.to_thread(self._relayed, missing) if missing else {}
        for tp, offset in committed.items():
            if offset is None and tp.partition in relayed:
                offset = relayed[tp.partition] + 1
            if offset is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, offset)
        log.info("task dispatcher follows %s from %s", DAG_EVENTS,
                 {tp.partition: committed[tp] for tp in sorted(partitions)})

    def _relayed(self, partitions: set[int]) -> dict[int, int]:
        reader = kafka_log_reader(self.settings, [DAG_TASKS])
        relayed = relayed_positions(history_source(self.db, [DAG_TASKS], reader))
        return {p: offset for p, offset in relayed.items() if p in partitions}

    def _name(self, value: bytes) -> str | None:
        """The record name from the schema id in the framing, without decoding the body."""
        header = value[:5]
        if header not in self.names:
            try:
                self.names[header] = fullname(self.codec.registry.schema_by_id(
                    int.from_bytes(header[1:5], "big")))
            except (SchemaError, KeyError, ValueError):
                self.names[header] = None
        return self.names[header]

    def task_of(self, message) -> Output | None:
        """The task record relaying a NodeScheduled message (None for any other record)."""
        value = message.value
        if not value or value[0] != 0 or len(value) < 5 or self._name(value) != NODE_SCHEDULED:
            return None
        try:
            task_id = self.codec.decode(value).record["task_id"]
        except SchemaError:
            return None
        headers = ((SOURCE_PARTITION, str(message.partition).encode()),
                   (SOURCE_OFFSET, str(message.offset).encode()))
        return Output(DAG_TASKS, ANY_PARTITION, task_id.encode(), value, message.timestamp,
                      headers)


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
        await consumer.stop()
