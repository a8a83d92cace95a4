"""`stop_consumer` and `stop_clients` (streams/kafka.py): a consumer whose stop raises
CancelledError on its own (aiokafka's fetcher awaiting the fetch requests it cancelled, one
of them in its retry backoff while a broker is down) does not end the service's stop; a
cancellation of the stopping task itself still does."""

from __future__ import annotations

import asyncio

import pytest

from streams import kafka
from streams.config import Settings
from streams.kafka import make_producer, stop_clients, stop_consumer


class _ConsumerCancelledInside:
    def __init__(self) -> None:
        self.stopped = asyncio.Event()

    async def stop(self) -> None:
        self.stopped.set()
        await asyncio.sleep(0.2)  # where a cancellation of the caller lands
        raise asyncio.CancelledError  # aiokafka 0.14's Fetcher.close, as seen in CI


async def test_a_cancelled_error_from_inside_the_consumers_stop_is_not_the_services() -> None:
    producer = make_producer(Settings(bootstrap_servers="127.0.0.1:9"))
    await stop_clients(_ConsumerCancelledInside(), producer, failed=True)  # no exception


async def test_a_cancellation_of_the_stopping_task_still_cancels_it() -> None:
    producer = make_producer(Settings(bootstrap_servers="127.0.0.1:9"))
    consumer = _ConsumerCancelledInside()
    stopping = asyncio.ensure_future(stop_clients(consumer, producer, failed=True))
    await consumer.stopped.wait()
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping


@pytest.mark.parametrize("failed", [True, False])
async def test_the_producer_is_closed_even_with_records_its_broker_never_took(
        failed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stopped service's producer calls no broker any more; what it still held is
    dropped first (`close` alone would wait for it as long as librdkafka retries)."""
    monkeypatch.setattr(kafka, "STOP_FLUSH_S", 0.2)
    producer = make_producer(Settings(bootstrap_servers="127.0.0.1:9"))
    producer.produce("pit.nowhere", b"never delivered")
    await asyncio.wait_for(stop_clients(_ConsumerCancelledInside(), producer, failed), 10)
    with pytest.raises(RuntimeError, match="closed"):
        producer.produce("pit.nowhere", b"after the stop")


async def test_stop_consumer_swallows_a_cancelled_error_from_inside_the_consumers_stop() -> None:
    consumer = _ConsumerCancelledInside()
    await stop_consumer(consumer)  # no exception
    assert consumer.stopped.is_set()


async def test_stop_consumer_passes_on_a_cancellation_of_the_stopping_task() -> None:
    consumer = _ConsumerCancelledInside()
    stopping = asyncio.ensure_future(stop_consumer(consumer))
    await consumer.stopped.wait()
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
