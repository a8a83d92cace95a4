"""Restoring the embedded broker from the archive: original offsets, compacted topics
compacted, a gap the archive never saw kept as a placeholder, the pending records after the
archived ones, and no derived record without its source."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, select

from projections.runtime import Projector
from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.app import RESTORE_PLACEHOLDER_KEY, restore_broker
from streams.archive import (
    durable_ends,
    durable_records,
    keep_pending,
    pending,
    pending_engine,
    prune_pending,
)
from streams.broker import catalog_broker
from streams.config import Settings
from streams.dag.topics import DAG_EVENTS, DAG_TASKS
from streams.history import read_topic
from streams.log import LogRecord, source_headers
from streams.pool.topics import POOL_EVENTS
from streams.topics import SCHEMAS, load_catalog

CODEC = Codec(EmbeddedRegistry())


def event(model: str, sequence: int) -> bytes:
    envelope = {"event_id": f"e{sequence}", "event_type": "ModelUsageRecorded",
                "entity_key": model, "sequence": sequence, "correlation_id": "c",
                "causation_id": "c", "occurred_at": 1000 + sequence, "producer": "test"}
    return CODEC.encode("pit.pool.ModelUsageRecorded",
                        {"envelope": envelope, "model_id": model, "invocations": 1})


@pytest.fixture
def pending_db(engine: Engine) -> Iterator[Engine]:
    side = pending_engine(engine)
    yield side
    if side is not engine:
        side.dispose()


async def test_restore_keeps_offsets_compacts_and_fills_gaps(engine, pending_db) -> None:
    archived = [
        LogRecord(POOL_EVENTS, 0, 0, 1000, b"m", event("m", 1)),
        LogRecord(POOL_EVENTS, 0, 1, 1001, b"m", event("m", 2)),
        # offset 2 was dropped by the broker before the projector read it
        LogRecord(POOL_EVENTS, 0, 3, 1003, b"m", event("m", 3), (("h", b"v"),)),
        LogRecord(SCHEMAS, 0, 0, 1000, b"a/1", b'{"v": "a-old"}'),
        LogRecord(SCHEMAS, 0, 1, 1001, b"b/1", b'{"v": "b"}'),
        LogRecord(SCHEMAS, 0, 2, 1002, b"a/1", b'{"v": "a-new"}'),
    ]
    Projector(engine, views=[], codec=CODEC).apply_batch(archived)

    with catalog_broker() as broker:
        settings = Settings(bootstrap_servers=broker.bootstrap_servers)
        assert await restore_broker(engine, pending_db, settings, load_catalog()) == 7

        events = await read_topic(settings, POOL_EVENTS)
        assert [r.offset for r in events] == [0, 1, 2, 3]
        assert [r.value for r in events] == [archived[0].value, archived[1].value, None,
                                              archived[2].value]
        assert events[2].key == RESTORE_PLACEHOLDER_KEY
        assert events[3].headers == (("h", b"v"),) and events[3].timestamp_ms == 1003

        schemas = await read_topic(settings, SCHEMAS)
        assert [r.offset for r in schemas] == [0, 1, 2]
        live = {r.key: r.value for r in schemas if r.value is not None}
        assert live == {b"b/1": b'{"v": "b"}', b"a/1": b'{"v": "a-new"}'}  # latest per key
        assert schemas[0].key == RESTORE_PLACEHOLDER_KEY and schemas[0].value is None


async def test_restore_brings_back_pending_records_and_no_effect_without_its_cause(
        engine, pending_db) -> None:
    """Events a processor made durable before the projector archived them come back after
    the archived ones; a derived record (a task relayed from its NodeScheduled) whose source
    is not durable comes back as a placeholder, one whose source is, as itself."""
    task_of = {2: b"task-a", 3: b"task-b", 9: b"task-lost"}  # source offset -> task id
    Projector(engine, views=[], codec=CODEC).apply_batch([
        LogRecord(DAG_EVENTS, 4, 0, 1000, b"x", event("x", 1)),
        LogRecord(DAG_EVENTS, 4, 1, 1001, b"x", event("x", 2)),
        *[LogRecord(DAG_TASKS, n, 0, 1005, task, event("x", source),
                    source_headers(DAG_EVENTS, 4, source))
          for n, (source, task) in enumerate(task_of.items())],
    ])
    keep_pending(pending_db, [LogRecord(DAG_EVENTS, 4, offset, 1000 + offset, b"x",
                                    event("x", offset + 1)) for offset in (1, 2, 3)])
    assert durable_ends(engine, pending_db)[(DAG_EVENTS, 4)] == 3

    with catalog_broker() as broker:
        settings = Settings(bootstrap_servers=broker.bootstrap_servers)
        await restore_broker(engine, pending_db, settings, load_catalog())

        events = await read_topic(settings, DAG_EVENTS)
        assert [(r.partition, r.offset, r.value) for r in events] == [
            (4, offset, event("x", offset + 1)) for offset in range(4)]
        tasks = {r.partition: r for r in await read_topic(settings, DAG_TASKS)}
        assert [tasks[n].key for n in range(3)] == [b"task-a", b"task-b",
                                                     RESTORE_PLACEHOLDER_KEY]
        assert tasks[2].value is None and tasks[0].value == event("x", 2)

    # once the projector archives the pending records' offsets, they can go
    Projector(engine, views=[], codec=CODEC).apply_batch(
        [LogRecord(DAG_EVENTS, 4, offset, 1000 + offset, b"x", event("x", offset + 1))
         for offset in (1, 2)])
    assert prune_pending(engine, pending_db) == 2
    assert [r.offset for r in durable_records(engine, pending_db) if r.topic == DAG_EVENTS] == [
        0, 1, 2, 3]
    with pending_db.connect() as conn:
        assert conn.execute(select(pending.c.offset)).scalars().all() == [3]
