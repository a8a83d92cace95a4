"""Records as they sit in the log, whether read from Kafka or from the audit archive."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from aiokafka import ConsumerRecord
    from confluent_kafka import Message

# Headers naming the record a derived record was made from (a task from its NodeScheduled, a
# dead letter from its command): a restore brings a derived record back only with its cause.
SOURCE_TOPIC = "pit.source.topic"
SOURCE_PARTITION = "pit.source.partition"
SOURCE_OFFSET = "pit.source.offset"


@dataclass(frozen=True)
class LogRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()

    @classmethod
    def from_kafka(cls, message: ConsumerRecord) -> LogRecord:
        """From an aiokafka ConsumerRecord."""
        return cls(message.topic, message.partition, message.offset, message.timestamp,
                   message.key, message.value, tuple(message.headers or ()))

    @classmethod
    def from_librdkafka(cls, message: Message) -> LogRecord:
        """From a record a confluent-kafka consumer read (not an error event, so its
        position is set); it gives headers as (name, bytes) pairs."""
        topic, partition, offset = message.topic(), message.partition(), message.offset()
        assert topic is not None and partition is not None and offset is not None
        headers = cast("list[tuple[str, bytes]]", message.headers() or [])
        return cls(topic, partition, offset, message.timestamp()[1], message.key(),
                   message.value(), tuple(headers))


def source_headers(topic: str, partition: int, offset: int) -> tuple[tuple[str, bytes], ...]:
    """The headers of a record derived from the record at topic/partition/offset."""
    return ((SOURCE_TOPIC, topic.encode()), (SOURCE_PARTITION, str(partition).encode()),
            (SOURCE_OFFSET, str(offset).encode()))


def source_of(headers: Iterable[tuple[str, bytes | None]]) -> tuple[str, int, int] | None:
    """(topic, partition, offset) of the record this one was derived from, if it says."""
    found = {name: value for name, value in headers
             if value is not None and name in (SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET)}
    try:
        return (found[SOURCE_TOPIC].decode(), int(found[SOURCE_PARTITION]),
                int(found[SOURCE_OFFSET]))
    except (KeyError, ValueError):  # not derived, or headers it did not write
        return None
