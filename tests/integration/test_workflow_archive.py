"""The client reads an execution whose first events have left the embedded broker (it keeps
~5 MiB per partition): `await_result` and `workflow_status` take them from the archive."""

from __future__ import annotations

import time

from aiokafka import TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from streams.app import Stack
from streams.client import PitClient
from streams.config import Settings
from streams.dag.definition import WorkflowBuilder
from streams.dag.execution import ReportNodeCompleted, ReportNodeStarted
from streams.dag.topics import DAG_EVENTS
from streams.kafka import make_producer, partitions_of, produce_all, start_consumer
from streams.processor import Output

FILLER = 100 * 1024  # bytes per record that pushes the execution's events out of Kafka


async def low_watermark(settings: Settings, partition: int) -> int:
    consumer = await start_consumer(settings)
    try:
        tp = TopicPartition(DAG_EVENTS, partition)
        return (await consumer.beginning_offsets([tp]))[tp]
    finally:
        await consumer.stop()


async def test_an_execution_that_left_kafka_is_read_from_the_archive(tmp_path):
    workflow = WorkflowBuilder("tiny").operator("only", "identity",
                                                constants={"value": 7}).build()
    async with Stack(Settings(data_dir=tmp_path), progress=False,
                     without={"host-monitor"}) as stack:
        settings = stack.settings
        async with PitClient(settings, issued_by="archive-test") as client:
            execution_id = await client.dag.execute_workflow(workflow, execution_id="tiny-1")
            # what a runner reports (no runner in this test)
            for report in (ReportNodeStarted(execution_id, "only", 1, "r"),
                           ReportNodeCompleted(execution_id, "only", 1, '{"out": 7}',
                                               runner="r")):
                assert (await client.send(report)).accepted
            before = await client.dag.await_result(execution_id, timeout=10)
            assert (before.status, before.outputs) == ("completed", {"only": {"out": 7}})

            consumer = await start_consumer(settings)
            partitions = await partitions_of(consumer, DAG_EVENTS)
            await consumer.stop()
            partition = DefaultPartitioner()(execution_id.encode(), partitions, partitions)
            producer = make_producer(settings)
            deadline = time.monotonic() + 30
            while await low_watermark(settings, partition) == 0:  # archived as it goes
                assert time.monotonic() < deadline, "the broker kept the partition's start"
                filler = Output(DAG_EVENTS, partition, b"filler", bytes(FILLER),
                                int(time.time() * 1000))
                await produce_all(producer, [filler] * 10)
                await stack.drain_projector()

            assert await client.dag.await_result(execution_id, timeout=10) == before
            status = await client.dag.workflow_status(execution_id)
            assert (status.status, status.done, status.counts) == ("completed", 1,
                                                                   {"completed": 1})
