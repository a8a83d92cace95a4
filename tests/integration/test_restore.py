"""Restoring the embedded broker from the archive: original offsets, compacted topics
compacted, and a gap the archive never saw kept as a placeholder."""

from __future__ import annotations

from projections.runtime import Projector
from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.app import RESTORE_PLACEHOLDER_KEY, restore_broker
from streams.broker import EmbeddedBroker
from streams.config import Settings
from streams.history import read_topic
from streams.log import LogRecord
from streams.pool.topics import POOL_EVENTS
from streams.topics import SCHEMAS, load_catalog

CODEC = Codec(EmbeddedRegistry())


def event(model: str, sequence: int) -> bytes:
    envelope = {"event_id": f"e{sequence}", "event_type": "ModelUsageRecorded",
                "entity_key": model, "sequence": sequence, "correlation_id": "c",
                "causation_id": "c", "occurred_at": 1000 + sequence, "producer": "test"}
    return CODEC.encode("pit.pool.ModelUsageRecorded",
                        {"envelope": envelope, "model_id": model, "invocations": 1})


async def test_restore_keeps_offsets_compacts_and_fills_gaps(engine) -> None:
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

    with EmbeddedBroker(1) as broker:
        broker.apply(load_catalog())
        settings = Settings(bootstrap_servers=broker.bootstrap_servers)
        assert await restore_broker(engine, settings, load_catalog()) == 7

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
