"""Thin Kafka plumbing shared by the runtime: clients, reading partitions, producing outputs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError
from confluent_kafka import KafkaException, Producer

from streams.config import Settings
from streams.errors import BrokerUnavailableError, PitError
from streams.log import LogRecord


async def start_consumer(settings: Settings, *topics: str, **options) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(*topics, **settings.kafka_client_options(),
                                enable_auto_commit=False, **options)
    try:
        await consumer.start()
    except KafkaConnectionError as exc:
        await consumer.stop()
        raise BrokerUnavailableError(
            f"Kafka unreachable at {settings.bootstrap()}: {exc}") from None
    return consumer


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> list[int]:
    """The topic's partitions, fetching metadata first (a fresh consumer has none; aiokafka's
    public `topics()` does not fill the cache that `partitions_for_topic` reads)."""
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        await consumer._client._wait_on_metadata(topic)
        partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise PitError(f"topic {topic} does not exist (apply infra/topics.yaml)")
    return sorted(partitions)


def make_producer(settings: Settings, **overrides: str | int) -> Producer:
    """A librdkafka producer: idempotent, so retries never duplicate or reorder a partition."""
    config = {"enable.idempotence": True, "linger.ms": 2, "log_level": 3,
              **settings.librdkafka_config(), **overrides}
    return Producer(config)


class DeliveryTracker:
    """Collects delivery failures of a producer so a batch is committed only when all landed."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def __call__(self, error, message) -> None:
        if error is not None:
            self.errors.append(f"{message.topic()}[{message.partition()}]: {error}")


async def produce_all(producer: Producer, outputs: Iterable, timeout_s: float = 30.0) -> int:
    """Produce `Output`s and wait until the broker acknowledged every one of them."""
    tracker = DeliveryTracker()
    count = 0
    for out in outputs:
        while True:
            try:
                producer.produce(out.topic, out.value, out.key, partition=out.partition,
                                 timestamp=out.timestamp_ms, headers=list(out.headers) or None,
                                 on_delivery=tracker)
                break
            except BufferError:  # local queue full: let deliveries drain
                await asyncio.to_thread(producer.poll, 0.05)
        count += 1
    remaining = await asyncio.to_thread(producer.flush, timeout_s)
    if remaining or tracker.errors:
        problem = tracker.errors[0] if tracker.errors else f"{remaining} records unacknowledged"
        raise BrokerUnavailableError(f"produce failed: {problem}")
    return count


async def read_partitions(settings: Settings, topic: str, partitions: Iterable[int],
                          start: dict[int, int] | None = None,
                          ) -> AsyncIterator[list[LogRecord]]:
    """Batches of records of `topic` from `start` (default: the log start) to the end offsets
    as they were when the read began."""
    consumer = await start_consumer(settings)
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        begin = await consumer.beginning_offsets(tps)
        pending = set()
        for tp in tps:
            offset = max(begin[tp], (start or {}).get(tp.partition, 0))
            if offset < end[tp]:
                consumer.seek(tp, offset)
                pending.add(tp)
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=500, max_records=5000)
            records = []
            for tp, messages in batch.items():
                records.extend(LogRecord.from_kafka(m) for m in messages if m.offset < end[tp])
                if await consumer.position(tp) >= end[tp]:
                    pending.discard(tp)
            if records:
                yield records
    except KafkaError as exc:
        raise PitError(f"reading {topic}: {exc}") from None
    finally:
        await consumer.stop()


__all__ = ["KafkaException", "produce_all", "read_partitions", "start_consumer"]
