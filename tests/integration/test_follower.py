"""The log follower (streams/follower.py) through the embedded broker: every record once
across the archive, Kafka and live, records trimmed from Kafka before it read them included
(and the history it restores from, trimmed while it reads); live reading starts where the
history ended (or at a fresh partition's beginning), never at the end, even when records
arrive during start-up; at the end when asked; it stops when told, without being cancelled;
and a topic missing or a broker not answering at start is said in one line."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable

import pytest
from sqlalchemy import Engine

from projections.runtime import Projector
from streams import follower as follower_module
from streams.broker import EmbeddedBroker, catalog_broker
from streams.config import Settings
from streams.errors import BrokerUnavailableError, PitError
from streams.follower import Follower
from streams.history import LogTrimmed, history_source, kafka_log_reader, read_topic
from streams.kafka import make_producer, produce_all
from streams.log import LogRecord
from streams.pool.topics import POOL_EVENTS
from streams.processor import Output
from streams.topics import TopicSpec

TOPIC = "test.follow"
PARTITIONS = 4
LIST_OFFSETS = 2  # Kafka API key


@pytest.fixture
def broker():
    with catalog_broker() as broker:
        broker.create_topic(TopicSpec(TOPIC, PARTITIONS, "key"))
        yield broker


@pytest.fixture
def settings(broker, tmp_path) -> Settings:
    return Settings(data_dir=tmp_path, bootstrap_servers=broker.bootstrap_servers)


async def produce(settings: Settings, values: list[bytes], partitions: int = PARTITIONS
                  ) -> None:
    """Value n on partition n mod `partitions`, acknowledged before returning."""
    await produce_all(make_producer(settings), [
        Output(TOPIC, n % partitions, b"k", value, 1_700_000_000_000 + n)
        for n, value in enumerate(values)])


async def read_until(follower: Follower, seen: list[LogRecord],
                     done: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Append the live batches to `seen` until `done()`; fails after `timeout_s`."""
    stop = asyncio.Event()

    async def read() -> None:
        async for records in follower.batches(stop, wait_ms=50):
            seen.extend(records)
            if done():
                stop.set()

    await asyncio.wait_for(read(), timeout_s)


def where(records: list[LogRecord]) -> list[tuple[int, int]]:
    return sorted((r.partition, r.offset) for r in records)


def pool_event_values(log, count: int) -> list[bytes]:
    """Real pool events (the projector archives them): model m<n> Cold -> Warming."""
    return [log.transitioned(f"m{n}", "Cold", "Warming", 1_700_000_000_000 + n).value
            for n in range(count)]


async def publish_pool_events(settings: Settings, values: list[bytes], numbers: range) -> None:
    """Pool event n, keyed m<n>, on partition n mod 8, acknowledged before returning."""
    await produce_all(make_producer(settings), [
        Output(POOL_EVENTS, n % 8, f"m{n}".encode(), values[n], 1_700_000_000_000 + n)
        for n in numbers])


async def follow_while_publishing(follower: Follower, settings: Settings, values: list[bytes],
                                  numbers: range, until: int) -> list[LogRecord]:
    """Start `follower`, publish pool events `numbers`, and read live until `until` records
    came; the follower is stopped after."""
    await follower.start()
    try:
        await publish_pool_events(settings, values, numbers)
        live: list[LogRecord] = []
        await read_until(follower, live, lambda: len(live) >= until)
    finally:
        await follower.stop()
    return live


async def test_every_record_once_across_the_archive_kafka_and_live(
        settings: Settings, engine: Engine, log) -> None:
    # real pool events, so the projector archives them; 8 partitions by model id
    values = pool_event_values(log, 40)
    await publish_pool_events(settings, values, range(30))
    in_kafka = await read_topic(settings, POOL_EVENTS)
    # the archive holds part; Kafka holds all
    Projector(engine, views=[]).apply_batch(in_kafka[:18])

    follower = Follower(settings, [POOL_EVENTS], engine)
    restored: list[LogRecord] = []
    await follower.restore(restored.append, asyncio.Event())
    assert where(restored) == where(in_kafka)  # each once: the overlap is not repeated
    live = await follow_while_publishing(follower, settings, values, range(30, 40), 10)
    everything = await read_topic(settings, POOL_EVENTS)
    assert len(everything) == 40
    assert where(restored + live) == where(everything)  # nothing twice, nothing missed


async def trim_to_end(settings: Settings, broker: EmbeddedBroker) -> None:
    """Delete every record Kafka holds of pit.pool.events, as the Pit trims what is archived."""
    ends: dict[int, int] = {}
    for record in await read_topic(settings, POOL_EVENTS):
        ends[record.partition] = record.offset + 1
    for partition, end in ends.items():
        await asyncio.to_thread(broker.delete_records, POOL_EVENTS, partition, end)


async def test_records_trimmed_before_it_read_them_come_from_the_archive_in_order(
        settings: Settings, broker: EmbeddedBroker, engine: Engine, log) -> None:
    values = pool_event_values(log, 30)
    await publish_pool_events(settings, values, range(10))
    follower = Follower(settings, [POOL_EVENTS], engine)
    restored: list[LogRecord] = []
    await follower.restore(restored.append, asyncio.Event())
    assert len(restored) == 10
    # The follower lags: ten more records are written, archived and trimmed from Kafka
    # before it reads them (its position is now below every partition's beginning).
    await publish_pool_events(settings, values, range(10, 20))
    held = await read_topic(settings, POOL_EVENTS)
    Projector(engine, views=[]).apply_batch(held)
    await trim_to_end(settings, broker)
    live = await follow_while_publishing(follower, settings, values, range(20, 30), 20)
    assert len(live) == 20  # the ten trimmed ones and the ten after, each once
    assert sorted(r.value for r in live) == sorted(values[10:])
    by_partition: dict[int, list[int]] = {}
    for record in live:
        by_partition.setdefault(record.partition, []).append(record.offset)
    assert all(offsets == sorted(offsets) for offsets in by_partition.values())  # in order
    after = [r for r in live if r.value in values[20:]]
    assert where(restored + live) == sorted(where(held) + where(after))  # nothing twice


async def test_records_trimmed_and_not_archived_are_skipped_and_said(
        settings: Settings, broker: EmbeddedBroker, log, caplog: pytest.LogCaptureFixture
        ) -> None:
    values = pool_event_values(log, 30)
    await publish_pool_events(settings, values, range(10))
    follower = Follower(settings, [POOL_EVENTS])  # no archive
    await follower.restore(lambda record: None, asyncio.Event())
    await publish_pool_events(settings, values, range(10, 20))
    await trim_to_end(settings, broker)  # records 10..19: in neither, once trimmed
    live = await follow_while_publishing(follower, settings, values, range(20, 30), 10)
    assert sorted(r.value for r in live) == sorted(values[20:])
    assert any("are in neither the archive nor Kafka" in m for m in caplog.messages)


async def test_a_position_past_the_end_reads_the_partition_again_and_says_so(
        settings: Settings, log, caplog: pytest.LogCaptureFixture) -> None:
    values = pool_event_values(log, 16)
    await publish_pool_events(settings, values, range(8))  # one record on each partition
    follower = Follower(settings, [POOL_EVENTS])
    await follower.restore(lambda record: None, asyncio.Event())
    # As if it had read 40 records of partition 0 from a broker that lost them since.
    follower.positions[(POOL_EVENTS, 0)] = 40
    live = await follow_while_publishing(follower, settings, values, range(8, 16), 9)
    # partition 0 again from its beginning: nothing new missed (its old record again)
    assert sorted(r.value for r in live) == sorted([values[0], *values[8:]])
    assert follower.positions[(POOL_EVENTS, 0)] == 2
    assert any("the log ends before this follower's position 40" in m and
               "reading it again from offset 0" in m for m in caplog.messages)


async def test_the_history_reads_on_from_the_archive_what_was_trimmed_while_it_read(
        settings: Settings, broker: EmbeddedBroker, engine: Engine, log) -> None:
    values = pool_event_values(log, 24)
    await publish_pool_events(settings, values, range(16))
    held = await read_topic(settings, POOL_EVENTS)
    Projector(engine, views=[]).apply_batch(held[:8])
    history = history_source(engine, [POOL_EVENTS], kafka_log_reader(settings, [POOL_EVENTS]))
    first = [next(history) for _ in range(8)]  # the archive's part
    # Meanwhile the Pit archives the rest and trims Kafka below it; more records follow.
    Projector(engine, views=[]).apply_batch(held[8:])
    await trim_to_end(settings, broker)
    await publish_pool_events(settings, values, range(16, 24))
    rest = await asyncio.to_thread(list, history)
    everything = first + rest
    assert sorted(r.value for r in everything) == sorted(values)  # each once
    assert len(everything) == 24


async def test_a_history_with_a_hole_in_both_is_a_clear_error(
        settings: Settings, broker: EmbeddedBroker, log) -> None:
    values = pool_event_values(log, 8)
    await publish_pool_events(settings, values, range(8))
    await trim_to_end(settings, broker)
    history = history_source(None, [POOL_EVENTS], kafka_log_reader(settings, [POOL_EVENTS]),
                             starts={0: 0})
    with pytest.raises(LogTrimmed, match=r"pit\.pool\.events\[0\]: the archive holds none of it"
                       r" and Kafka starts at 1; offsets 0\.\.0 are in neither"):
        await asyncio.to_thread(list, history)


async def test_it_follows_from_where_the_history_ended_never_from_the_end(
        settings: Settings) -> None:
    await produce(settings, [f"old-{n}".encode() for n in range(6)], partitions=2)
    follower = Follower(settings, [TOPIC])
    restored: list[LogRecord] = []
    await follower.restore(restored.append, asyncio.Event())
    assert len(restored) == 6
    assert follower.positions == {(TOPIC, 0): 3, (TOPIC, 1): 3}  # 2 and 3: never seen
    # Records that arrive after the history was read and while the consumer starts: on
    # partitions the history reached and on ones it never saw (the reset race's victims).
    during = [f"during-{n}".encode() for n in range(40)]
    producing = asyncio.create_task(produce(settings, during))
    await follower.start()
    try:
        await producing
        live: list[LogRecord] = []
        await read_until(follower, live, lambda: len(live) >= len(during))
    finally:
        await follower.stop()
    assert sorted(r.value for r in live) == sorted(during)
    assert where(restored + live) == where(await read_topic(settings, TOPIC))


async def test_a_fresh_partition_starts_at_its_beginning_even_with_a_reset_in_flight(
        settings: Settings, broker: EmbeddedBroker) -> None:
    follower = Follower(settings, [TOPIC])
    await follower.restore(lambda record: None, asyncio.Event())  # nothing yet
    assert follower.positions == {}
    early = [f"early-{n}".encode() for n in range(8)]
    await produce(settings, early)  # after the history, before the consumer: never skipped
    # The race: a fresh assignment sends an offset reset ("latest"); answered late, it lands
    # after the consumer was positioned. A seek_to_beginning then took the end, and missed
    # `early`; an explicit seek cannot be overridden.
    broker.push_broker_request_errors(1, LIST_OFFSETS, [0] * 4, rtt_ms=500)
    await follower.start()
    try:
        assert follower.positions == {(TOPIC, p): 0 for p in range(PARTITIONS)}
        live: list[LogRecord] = []
        await read_until(follower, live, lambda: len(live) >= len(early))
    finally:
        await follower.stop()
    assert sorted(r.value for r in live) == sorted(early)


async def test_at_end_skips_the_history_and_misses_nothing_after_start(
        settings: Settings) -> None:
    await produce(settings, [b"before"] * 4)
    follower = Follower(settings, [TOPIC])
    await follower.start(at_end=True)
    try:
        assert follower.positions == {(TOPIC, p): 1 for p in range(PARTITIONS)}
        await produce(settings, [b"after"] * 4)
        live: list[LogRecord] = []
        await read_until(follower, live, lambda: len(live) >= 4)
    finally:
        await follower.stop()
    assert [r.value for r in live] == [b"after"] * 4
    assert where(live) == [(p, 1) for p in range(PARTITIONS)]


async def test_it_stops_when_told(settings: Settings) -> None:
    await produce(settings, [b"x"] * 4)
    stop = asyncio.Event()
    follower = Follower(settings, [TOPIC])
    stop.set()
    taken: list[LogRecord] = []
    await follower.restore(taken.append, stop)  # shutting down: the history is not read
    assert taken == []

    stop.clear()
    await follower.start()
    asked = 0

    def wait_ms() -> int:
        nonlocal asked
        asked += 1
        return 5_000  # a long wait: stopping must not depend on it running out

    batches: list[list[LogRecord]] = []
    all_read = asyncio.Event()

    async def follow() -> None:
        async for records in follower.batches(stop, wait_ms):
            batches.append(records)
            if sum(len(b) for b in batches) >= 4:
                all_read.set()

    following = asyncio.create_task(follow())
    try:
        await asyncio.wait_for(all_read.wait(), 20)
        assert asked == len(batches) + 1  # asked before every read, the one now waiting too
        stop.set()
        await produce(settings, [b"while stopping"])
        await asyncio.wait_for(following, 10)  # returns by itself, not cancelled
    finally:
        following.cancel()
        await follower.stop()
    assert all(r.value == b"x" for b in batches for r in b)
    await follower.stop()  # stopping twice is harmless


async def test_a_topic_that_does_not_exist_is_named(settings: Settings) -> None:
    follower = Follower(settings, [TOPIC, "test.missing"])
    with pytest.raises(PitError, match=r"topic test\.missing does not exist"):
        await follower.start()
    await follower.stop()  # nothing was started: harmless


async def test_no_broker_at_start_is_a_broker_unavailable_error(
        tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(follower_module, "START_TIMEOUT_S", 0.5)
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"
    follower = Follower(Settings(data_dir=tmp_path, bootstrap_servers=address), [TOPIC])
    with pytest.raises(BrokerUnavailableError, match=re.escape(f"Kafka unavailable at {address}")):
        await follower.start()
