"""Records as they sit in the log, whether read from Kafka or from the audit archive."""

from __future__ import annotations

from dataclasses import dataclass


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
    def from_kafka(cls, message) -> LogRecord:
        """From an aiokafka ConsumerRecord."""
        return cls(message.topic, message.partition, message.offset, message.timestamp,
                   message.key, message.value, tuple(message.headers or ()))
