"""Where `produce_all` waits for the broker's acknowledgement (`streams.kafka.acknowledged`):
on the event loop for a small batch on a broker that answers fast (a hop, a command's round
trip), in a thread for a large batch, and in a thread only for a while on a broker slower
than the inline wait every time (a cluster's acks=all)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from streams import kafka
from streams.broker import EmbeddedBroker
from streams.config import Settings
from streams.kafka import (
    INLINE_ACK_S,
    INLINE_MISSES,
    INLINE_RECORDS,
    PitProducer,
    make_producer,
    produce_all,
)
from streams.processor import Output
from streams.topics import TopicSpec

TOPIC = "pit.test.acks"
PRODUCE = 0  # the Produce request's API key


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(1) as broker:
        broker.create_topic(TopicSpec(TOPIC, 1, "none"))
        yield broker


@pytest.fixture
def producer(broker: EmbeddedBroker) -> PitProducer:
    return make_producer(Settings(bootstrap_servers=broker.bootstrap_servers))


class Flushes(list[tuple[float, bool]]):
    """Every flush of a producer: (its timeout, whether it ran on the event loop's thread)."""

    def __init__(self, producer: PitProducer) -> None:
        super().__init__()
        flush, loop_thread = producer.flush, threading.current_thread()

        def recording(timeout: float) -> int:
            self.append((timeout, threading.current_thread() is loop_thread))
            return flush(timeout)

        producer.flush = recording  # type: ignore[method-assign]


def records(count: int) -> list[Output]:
    return [Output(TOPIC, 0, None, b"%d" % i, int(time.time() * 1000)) for i in range(count)]


async def produced(producer: PitProducer, count: int) -> list[int]:
    """Produce `count` records; the offsets the broker acknowledged them at."""
    offsets: list[int] = []
    await produce_all(producer, records(count), timeout_s=30.0, offsets=offsets)
    return offsets


async def test_a_small_batch_on_a_fast_broker_is_acknowledged_on_the_event_loop(
        producer: PitProducer, monkeypatch: pytest.MonkeyPatch) -> None:
    # a generous inline wait: the test checks where the wait happens, not the machine's
    # speed (the embedded broker answers in about 0.3 ms, a loaded machine's now and then
    # later than INLINE_ACK_S)
    monkeypatch.setattr(kafka, "INLINE_ACK_S", 5.0)
    flushes = Flushes(producer)
    offsets: list[int] = []
    for _ in range(5):
        offsets += await produced(producer, INLINE_RECORDS)
    assert offsets == list(range(5 * INLINE_RECORDS))  # every record acknowledged
    assert flushes == [(5.0, True)] * 5
    assert producer.inline_from == 0.0 and producer.inline_misses == 0


async def test_a_large_batch_is_waited_for_in_a_thread(producer: PitProducer) -> None:
    flushes = Flushes(producer)
    assert await produced(producer, INLINE_RECORDS + 1) == list(range(INLINE_RECORDS + 1))
    assert flushes == [(30.0, False)]


async def test_a_broker_slower_every_time_is_waited_for_in_a_thread_only(
        broker: EmbeddedBroker, producer: PitProducer) -> None:
    await produced(producer, 1)  # connected
    producer.inline_misses = 0  # connecting may have taken longer than the inline wait
    flushes = Flushes(producer)
    broker.push_broker_request_errors(1, PRODUCE, [0] * (INLINE_MISSES + 1), rtt_ms=50)
    offsets: list[int] = []
    started = time.monotonic()
    for _ in range(INLINE_MISSES):
        offsets += await produced(producer, 1)
    # each waited inline, found it not enough, and waited for the rest in a thread
    assert flushes == [(INLINE_ACK_S, True), (30.0, False)] * INLINE_MISSES
    assert producer.inline_from > started and producer.inline_misses == 0
    flushes.clear()
    offsets += await produced(producer, 1)  # paused: in a thread only
    assert flushes == [(30.0, False)]
    assert offsets == [1, 2, 3, 4]
