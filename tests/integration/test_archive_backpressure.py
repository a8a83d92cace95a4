"""The embedded broker keeps the newest ~5 MiB of a partition and drops older records whether
or not the archive holds them. A processor therefore waits for the archive before it writes
more than ARCHIVE_AHEAD_BYTES of events ahead of it on a partition (`Unarchived`,
streams/processor.py), rather than let the broker drop what the projector has not read.

Here `pit up`'s Stack runs with its projector in a process of its own, as `pit up` does; the
projector is stopped (SIGSTOP, as a starved machine stops it) while three workflows schedule
about 7 MiB of events on one partition of pit.dag.events. Before this rule the broker dropped
the oldest of them, and the projector, resumed, found its position gone and the archive kept
a hole. Other writers are not held back: a client's flood of commands is still dropped
unarchived past the window, and the Pit says so (`trim_broker`, streams/memory.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time

from aiokafka.partitioner import DefaultPartitioner
from prometheus_client import REGISTRY
from sqlalchemy import select

from streams.app import Stack
from streams.archive import AUDIT, audit_log
from streams.client import PitClient
from streams.config import Settings
from streams.dag.definition import Node, NodeKind, Workflow
from streams.dag.execution import CancelExecution
from streams.dag.topics import DAG_COMMANDS, DAG_EVENTS
from streams.kafka import make_producer, produce_all
from streams.memory import BrokerPositions
from streams.processor import Output
from streams.sql import connection, read_positions
from streams.topics import load_catalog
from streams.waiting import until

NODES = 2_000  # independent nodes: all scheduled by the start, each NodeScheduled ~1.1 KB


def flood(name: str) -> Workflow:
    """`NODES` nodes with no edges, each carrying a 1,000-character constant in its task."""
    nodes = tuple(Node(f"n{i:04d}", NodeKind.OPERATOR, operator="identity",
                       constants={"value": f"{i:04d}" + "x" * 996}) for i in range(NODES))
    return Workflow(name, nodes, (), max_concurrency=NODES)


def ids_on_one_partition(count: int) -> tuple[int, list[str]]:
    partitions = list(range(load_catalog()[DAG_EVENTS].partitions))
    by_partition: dict[int, list[str]] = {}
    n = 0
    while True:
        execution_id = f"flood-{n}"
        partition = DefaultPartitioner()(execution_id.encode(), partitions, partitions)
        found = by_partition.setdefault(partition, [])
        found.append(execution_id)
        if len(found) == count:
            return partition, found
        n += 1


def archive_waits() -> float:
    return REGISTRY.get_sample_value("pit_processor_archive_waits_total",
                                     {"component": "dag"}) or 0.0


def dropped(topic: str) -> float:
    return REGISTRY.get_sample_value("pit_broker_dropped_unarchived_total",
                                     {"topic": topic}) or 0.0


async def test_a_processor_waits_for_a_stopped_archive_rather_than_outrun_the_broker(
        tmp_path) -> None:
    partition, execution_ids = ids_on_one_partition(3)
    where = (DAG_EVENTS, partition)
    waits_before = archive_waits()
    async with Stack(Settings(data_dir=tmp_path), progress=False, without={"host-monitor"},
                     projector_process=True) as stack, PitClient(
            stack.settings, codec=stack.codec) as client:
        broker = BrokerPositions(stack.settings)
        pid = stack.projector_child.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            starts = [asyncio.create_task(client.dag.execute_workflow(
                flood(execution_id), execution_id=execution_id)) for execution_id in execution_ids]

            def waiting_or_dropped() -> bool:
                # this rule: the processor waits; without it, the broker drops the oldest
                if archive_waits() > waits_before:
                    return True
                return broker.beginnings([where])[where] > 0
            await until(waiting_or_dropped, 120, "the DAG processor to wait for the archive")
            # the broker still holds every event written: nothing was dropped unarchived
            assert broker.beginnings([where])[where] == 0
        finally:
            os.kill(pid, signal.SIGCONT)
        for start in starts:
            await start
        end = broker.ends([where])[where]
        assert end > 3 * NODES  # every node of the three was scheduled, on this partition

        def archived_to_the_end() -> bool:
            return read_positions(stack.engine, AUDIT).get(where, -1) >= end - 1
        await until(archived_to_the_end, 120, f"the archive to hold {DAG_EVENTS}[{partition}]")
        with connection(stack.engine) as conn:
            offsets = conn.execute(select(audit_log.c.offset).where(
                audit_log.c.topic == DAG_EVENTS, audit_log.c.partition == partition)
                .order_by(audit_log.c.offset)).scalars().all()
        assert offsets == list(range(end))  # no hole


async def test_commands_the_broker_dropped_before_the_archive_held_them_are_reported(
        tmp_path, caplog) -> None:
    """6,000 cancels of 1 KB for one unknown execution (rejected: no events to wait for),
    published while the projector is stopped: the broker drops the oldest of them, the Pit
    counts each and says which offsets are lost."""
    partition, (execution_id,) = ids_on_one_partition(1)
    dropped_before = dropped(DAG_COMMANDS)
    caplog.set_level(logging.ERROR, logger="streams.memory")
    async with Stack(Settings(data_dir=tmp_path), progress=False, without={"host-monitor"},
                     projector_process=True) as stack, PitClient(
            stack.settings, codec=stack.codec) as client:
        cancel = CancelExecution(execution_id, "x" * 1_000)
        now = int(time.time() * 1000)
        flood = [Output(DAG_COMMANDS, partition, execution_id.encode(),
                        client.encode_command(cancel, f"flood-{n}"), now) for n in range(6_000)]
        pid = stack.projector_child.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            await produce_all(make_producer(stack.settings), flood)
            where = (DAG_COMMANDS, partition)
            beginning = BrokerPositions(stack.settings).beginnings([where])[where]
            assert beginning > 0  # the window overflowed

            def all_counted() -> bool:
                return dropped(DAG_COMMANDS) - dropped_before == beginning
            await until(all_counted, 60, f"the {beginning} dropped commands to be reported")
        finally:
            os.kill(pid, signal.SIGCONT)
    said = [r.getMessage() for r in caplog.records
            if "before the archive held them" in r.getMessage()]
    assert said and said[0].startswith(
        f"the embedded broker dropped {DAG_COMMANDS}[{partition}] offsets 0..")
