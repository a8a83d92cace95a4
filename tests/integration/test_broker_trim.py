"""The Pit's trim of the embedded broker (`trim_broker`, streams/memory.py) on a running
broker and a real archive: each partition starts where its records are archived, were in the
log a while ago (`retain_s` for a topic someone reads from Kafka alone, `archived_retain_s`
for the rest) and are committed by every consumer group that reads it - the ends and
the committed offsets asked of the broker itself (`BrokerPositions`)."""

from __future__ import annotations

import asyncio
import time

from confluent_kafka import Consumer, TopicPartition
from sqlalchemy import Engine

from projections.runtime import Projector
from schemas.codec import Codec
from streams.broker import catalog_broker
from streams.config import Settings
from streams.dag.topics import DAG_CHECKPOINTS, DAG_EVENTS
from streams.history import kafka_log_reader, latest_history, read_topic
from streams.kafka import make_producer, produce_all
from streams.memory import BrokerPositions, trim_broker
from streams.pool.topics import POOL_EVENTS
from streams.processor import Output
from streams.recovery import POINT
from streams.topics import SCHEMAS, load_catalog

GROUP = "test.trim.readers"


def commit(settings: Settings, offsets: dict[int, int]) -> None:
    """Commit GROUP's offsets on pit.pool.events partitions, as a reader of it would."""
    consumer = Consumer({**settings.librdkafka_config(), "group.id": GROUP,
                         "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(POOL_EVENTS, p, offset)
                                 for p, offset in offsets.items()], asynchronous=False)
    finally:
        consumer.close()


async def beginnings_become(settings: Settings, expected: dict[int, int],
                            timeout_s: float = 20.0, topic: str = POOL_EVENTS
                            ) -> dict[int, int]:
    """Wait until the low watermarks of these partitions of `topic` are `expected`; the last
    seen."""
    consumer = Consumer({**settings.librdkafka_config(), "group.id": "test.trim.watch"})
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            seen = {p: (await asyncio.to_thread(consumer.get_watermark_offsets,
                                                TopicPartition(topic, p), 10))[0]
                    for p in expected}
            if seen == expected or time.monotonic() > deadline:
                return seen
            await asyncio.sleep(0.05)
    finally:
        consumer.close()


async def test_it_trims_what_is_archived_old_enough_and_committed_by_every_group(
        tmp_path, engine: Engine, log) -> None:
    with catalog_broker() as broker:
        settings = Settings(data_dir=tmp_path, bootstrap_servers=broker.bootstrap_servers)
        # ten records on each of partitions 0, 1 and 2
        records = [Output(POOL_EVENTS, n % 3, f"m{n}".encode(),
                          log.transitioned(f"m{n}", "Cold", "Warming", 1_700_000_000_000 + n
                                           ).value, 1_700_000_000_000 + n) for n in range(30)]
        await produce_all(make_producer(settings), records)
        positions = BrokerPositions(settings)
        assert positions.ends([(POOL_EVENTS, p) for p in range(4)]) == {
            (POOL_EVENTS, 0): 10, (POOL_EVENTS, 1): 10, (POOL_EVENTS, 2): 10,
            (POOL_EVENTS, 3): 0}
        assert positions.committed(GROUP, [(POOL_EVENTS, 0)]) == {(POOL_EVENTS, 0): -1}

        # The archive holds all of partitions 0 and 1, and the first four of partition 2.
        held = await read_topic(settings, POOL_EVENTS)
        Projector(engine, views=[]).apply_batch(
            [r for r in held if r.partition in (0, 1) or r.offset < 4])
        commit(settings, {0: 6, 2: 10})  # the group read 6 of partition 0, none of 1
        assert positions.committed(GROUP, [(POOL_EVENTS, 0), (POOL_EVENTS, 1)]) == {
            (POOL_EVENTS, 0): 6, (POOL_EVENTS, 1): -1}

        stop = asyncio.Event()
        catalog = {POOL_EVENTS: load_catalog()[POOL_EVENTS]}
        trimming = asyncio.create_task(trim_broker(
            broker, settings, engine, catalog, {GROUP: (POOL_EVENTS,)}, stop,
            every_s=0.05, retain_s=0.2))
        try:
            # 0: committed to 6; 1: committed nowhere, so kept; 2: archived up to 4
            assert await beginnings_become(settings, {0: 6, 1: 0, 2: 4}) == {0: 6, 1: 0, 2: 4}
            commit(settings, {0: 10, 1: 3})
            assert await beginnings_become(settings, {0: 10, 1: 3, 2: 4}) == {0: 10, 1: 3, 2: 4}
        finally:
            stop.set()
            await trimming
        assert positions.ends([(POOL_EVENTS, 0)]) == {(POOL_EVENTS, 0): 10}  # ends stay


async def test_a_compacted_topic_is_trimmed_as_the_others_and_the_schemas_never(
        tmp_path, engine: Engine, codec: Codec) -> None:
    """pit.dag.checkpoints is compacted, and the mock does not compact: untrimmed, it kept
    every record written. A restore reads it archive first (`latest_history`), and reads the
    same after the trim. _pit.schemas, which clients read from Kafka alone, keeps all."""
    with catalog_broker() as broker:
        settings = Settings(data_dir=tmp_path, bootstrap_servers=broker.bootstrap_servers)
        # three executions on partition 0, each recorded twice: its start, then its end
        points = [Output(DAG_CHECKPOINTS, 0, f"e{n % 3}".encode(), codec.encode(POINT, {
            "entity_key": f"e{n % 3}", "events_offset": -1 if n >= 3 else n,
            "results_offset": n, "sequence": n, "last_at": n, "final": b""}),
            1_700_000_000_000 + n) for n in range(6)]
        schemas = [Output(SCHEMAS, 0, f"s{n}".encode(), b'{"schema": "x"}',
                          1_700_000_000_000 + n) for n in range(3)]
        await produce_all(make_producer(settings), points + schemas)

        def restore_read() -> list[tuple[bytes | None, int]]:
            reader = kafka_log_reader(settings, [DAG_CHECKPOINTS], partitions={0})
            return [(r.key, r.offset) for r in latest_history(engine, DAG_CHECKPOINTS,
                                                              reader, {0})]

        # the archive holds the schemas and the first four checkpoint records
        held = await read_topic(settings, DAG_CHECKPOINTS) + await read_topic(settings, SCHEMAS)
        Projector(engine, views=[]).apply_batch(
            [r for r in held if r.topic == SCHEMAS or r.offset < 4])
        before = restore_read()
        assert before == [(b"e0", 3), (b"e1", 4), (b"e2", 5)]

        stop = asyncio.Event()
        catalog = {name: load_catalog()[name] for name in (DAG_CHECKPOINTS, SCHEMAS)}
        assert all(spec.compacted for spec in catalog.values())
        trimming = asyncio.create_task(trim_broker(
            broker, settings, engine, catalog, {}, stop, every_s=0.05, retain_s=0.2,
            archived_retain_s=0.2))
        try:
            assert await beginnings_become(settings, {0: 4}, topic=DAG_CHECKPOINTS) == {0: 4}
        finally:
            stop.set()
            await trimming
        # the schemas' one partition was looked at in the same passes, and kept
        assert await beginnings_become(settings, {0: 0}, topic=SCHEMAS) == {0: 0}
        assert restore_read() == before


async def test_a_topic_read_from_kafka_alone_is_held_longer_than_one_read_with_the_archive(
        tmp_path, engine: Engine, log) -> None:
    """pit.pool.events is read from Kafka alone by `pit host` (no archive to fall back on):
    its archived records stay for `retain_s`, while pit.dag.events, whose readers read the
    trimmed part from the archive, is trimmed once they are `archived_retain_s` old."""
    catalog = {name: load_catalog()[name] for name in (POOL_EVENTS, DAG_EVENTS)}
    assert catalog[POOL_EVENTS].read_from_kafka_alone
    assert not catalog[DAG_EVENTS].read_from_kafka_alone
    with catalog_broker() as broker:
        settings = Settings(data_dir=tmp_path, bootstrap_servers=broker.bootstrap_servers)
        records = [Output(topic, 0, f"m{n}".encode(), log.transitioned(
            f"m{n}", "Cold", "Warming", 1_700_000_000_000 + n).value, 1_700_000_000_000 + n)
            for topic in catalog for n in range(5)]
        await produce_all(make_producer(settings), records)
        Projector(engine, views=[]).apply_batch(await read_topic(settings, POOL_EVENTS)
                                                + await read_topic(settings, DAG_EVENTS))
        stop = asyncio.Event()
        trimming = asyncio.create_task(trim_broker(
            broker, settings, engine, catalog, {}, stop, every_s=0.05, retain_s=3600,
            archived_retain_s=0.2))
        try:
            assert await beginnings_become(settings, {0: 5}, topic=DAG_EVENTS) == {0: 5}
            # no look of the trim is an hour old: it cannot know what to drop there yet
            assert BrokerPositions(settings).beginnings([(POOL_EVENTS, 0)]) == {
                (POOL_EVENTS, 0): 0}
        finally:
            stop.set()
            await trimming
