"""A topic's whole history: the audit archive first, then whatever Kafka holds beyond it.

Kafka may no longer hold the beginning (retention, or the embedded broker's 5 MiB window);
the archive does. Reading both, in offset order per partition, gives every record once.
Processors restore their state from it; `pit replay` rebuilds views from it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaPartition
from sqlalchemy import Engine

from streams.archive import archived_records, latest_records
from streams.config import Settings
from streams.errors import BrokerUnavailableError, PitError, SchemaError
from streams.log import LogRecord
from streams.topics import SCHEMAS

if TYPE_CHECKING:
    from schemas.registry import EmbeddedRegistry

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]
# kafka_reader(after, archived): the records beyond `after` (see `history_source`); with
# `archived`, a partition missing from `after` had nothing read before Kafka's part, so
# Kafka must hold it from offset 0 (else it was trimmed meanwhile: `LogTrimmed`).
KafkaReader = Callable[[dict[TopicPartition, int], bool], Iterable[LogRecord]]


class HistoryError(PitError):
    """The history cannot be read whole: a gap between archive and log, or no broker."""


class LogTrimmed(HistoryError):
    """Kafka no longer holds the records after those already read: trimmed meanwhile (the
    Pit trims the embedded broker below what the archive holds), or never archived."""


def history_source(engine: Engine | None, topics: Sequence[str],
                   kafka_reader: KafkaReader | None = None, *,
                   partitions: Collection[int] | None = None,
                   starts: Mapping[int, int] | None = None) -> Iterator[LogRecord]:
    """The whole history of `topics` (of `partitions`, or from offset `starts[p]` of each
    partition p in `starts`): the archive first, then whatever `kafka_reader` returns beyond
    it. `kafka_reader(after, archived)` gets the last offset per partition already given (or
    the one before its start) and yields newer records (see `kafka_log_reader`); records at
    or below what the archive already gave are dropped. Records trimmed from Kafka while
    this reads (`LogTrimmed`: the Pit trims only what the archive holds) are read on from
    the archive, then Kafka again beyond them."""
    if starts is not None:
        partitions = set(starts)
    last: dict[TopicPartition, int] = {
        (topic, p): first - 1 for topic in topics for p, first in (starts or {}).items()}

    def beyond_last(records: Iterable[LogRecord]) -> Iterator[LogRecord]:
        """The records past what was already given, each moving `last` on."""
        for record in records:
            tp = (record.topic, record.partition)
            if record.offset > last.get(tp, -1):
                last[tp] = record.offset
                yield record

    def archive() -> Iterable[LogRecord]:
        return () if engine is None else archived_records(engine, list(topics), dict(last),
                                                          partitions=partitions)

    yield from beyond_last(archive())
    while kafka_reader is not None:
        try:
            yield from beyond_last(kafka_reader(dict(last), engine is not None))
            return
        except LogTrimmed:
            # Trimmed while this read: the archive holds what Kafka no longer does, unless
            # it never did (no archive, or a gap in both) - then the history has a hole.
            given = dict(last)
            yield from beyond_last(archive())
            if last == given:
                raise


def latest_history(engine: Engine | None, topic: str, kafka_reader: KafkaReader | None,
                   partitions: Collection[int]) -> list[LogRecord]:
    """A compacted topic as compaction leaves it: the latest record of each key per
    partition (tombstones included), from the archive's latest rows and what Kafka holds
    beyond the archive."""
    archived = [] if engine is None else latest_records(engine, topic, partitions)
    last: dict[TopicPartition, int] = {}
    for record in archived:
        last[(topic, record.partition)] = max(last.get((topic, record.partition), -1),
                                              record.offset)
    latest = {(r.partition, r.key): r for r in archived}
    for record in kafka_reader(dict(last), engine is not None) if kafka_reader else ():
        if record.offset > last.get((topic, record.partition), -1):
            latest[(record.partition, record.key)] = record
    return sorted(latest.values(), key=lambda r: (r.partition, r.offset))


def end_offsets(settings: Settings, topic_partitions: Iterable[TopicPartition],
                timeout_s: float = 10.0) -> dict[TopicPartition, int]:
    """Each partition's end (the offset its next record gets), as Kafka says now."""
    config = settings.librdkafka_config()
    consumer = Consumer({**config, "group.id": "pit-history", "enable.auto.commit": False})
    try:
        ends = {}
        for topic, partition in topic_partitions:
            try:
                _, high = consumer.get_watermark_offsets(KafkaPartition(topic, partition),
                                                         timeout=timeout_s)
            except KafkaException as exc:
                raise HistoryError(f"Kafka unavailable at {config['bootstrap.servers']}:"
                                   f" {exc}") from None
            ends[(topic, partition)] = high
        return ends
    finally:
        consumer.close()


def kafka_log_reader(settings: Settings, topics: Sequence[str], *,
                     partitions: Collection[int] | None = None, timeout_s: float = 10.0,
                     optional: bool = False) -> KafkaReader | None:
    """A `kafka_reader` for `history_source`: reads each partition of `topics` (or only
    `partitions`) from just after `after` (or its low watermark) up to its high watermark
    at the time of the call, with a plain confluent-kafka consumer (no group, no commits).
    Raises `HistoryError` when Kafka starts after the archive ends (records in neither) or
    does not answer within `timeout_s`. With `optional`, no broker gives None: the archive
    alone is then the history (it holds everything the views have seen)."""
    try:
        config = settings.librdkafka_config()
    except BrokerUnavailableError:
        if optional:
            return None
        raise
    bootstrap_servers = config["bootstrap.servers"]
    if optional:
        probe = Consumer({**config, "group.id": "pit-history-probe"})
        try:
            probe.list_topics(timeout=timeout_s)
        except KafkaException as exc:
            log.warning("Kafka at %s does not answer (%s); reading the archive alone",
                        bootstrap_servers, exc)
            return None
        finally:
            probe.close()

    def read(after: dict[TopicPartition, int], archived: bool) -> Iterator[LogRecord]:
        consumer = Consumer({**config, "group.id": "pit-history",
                             "enable.auto.commit": False, "enable.partition.eof": False,
                             "auto.offset.reset": "error"})  # trimmed meanwhile: LogTrimmed
        try:
            try:
                metadata = consumer.list_topics(timeout=timeout_s)
            except KafkaException as exc:
                raise HistoryError(f"Kafka unavailable at {bootstrap_servers}: {exc}") from None
            assignment, highs = [], {}
            for topic in topics:
                topic_metadata = metadata.topics.get(topic)
                if topic_metadata is None or topic_metadata.error is not None:
                    continue
                for partition in sorted(topic_metadata.partitions):
                    if partitions is not None and partition not in partitions:
                        continue
                    try:  # a leader moving (a broker fault) answers this with an error
                        low, high = consumer.get_watermark_offsets(
                            KafkaPartition(topic, partition), timeout=timeout_s)
                    except KafkaException as exc:
                        raise HistoryError(f"{topic}[{partition}]: no watermarks from Kafka at"
                                           f" {bootstrap_servers}: {exc}") from None
                    last = after.get((topic, partition), -1 if archived else None)
                    if last is not None and low > last + 1:
                        held = f"ends at offset {last}" if last >= 0 else "holds none of it"
                        raise LogTrimmed(
                            f"{topic}[{partition}]: the archive {held} and Kafka starts at"
                            f" {low}; offsets {last + 1}..{low - 1} are in neither")
                    start = max(low, -1 if last is None else last + 1)
                    if start < high:
                        assignment.append(KafkaPartition(topic, partition, start))
                        highs[(topic, partition)] = high
            if not assignment:
                return
            consumer.assign(assignment)
            while highs:
                message = consumer.poll(timeout_s)
                if message is None:
                    raise HistoryError(f"Kafka at {bootstrap_servers} stopped answering while "
                                      f"replaying {', '.join(f'{t}[{p}]' for t, p in highs)}")
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    if error.code() == KafkaError._AUTO_OFFSET_RESET:
                        raise LogTrimmed(f"{message.topic()}[{message.partition()}]: trimmed"
                                         f" from Kafka at {bootstrap_servers} while replaying")
                    raise HistoryError(f"Kafka error while replaying: {error}")
                record = LogRecord.from_librdkafka(message)
                tp = (record.topic, record.partition)
                if tp not in highs:
                    continue
                yield record
                if record.offset >= highs[tp] - 1:
                    del highs[tp]
        finally:
            consumer.close()

    return read


async def read_topic(settings: Settings, topic: str, engine: Engine | None = None
                     ) -> list[LogRecord]:
    """Everything Kafka holds of a (small) topic right now, read off the event loop; with
    the archive's `engine`, everything the topic ever held: the archive, then Kafka beyond
    it (the Pit trims from its embedded broker what the archive holds: streams/memory.py)."""
    reader = kafka_log_reader(settings, [topic])
    assert reader is not None  # only an optional reader is ever missing
    return await asyncio.to_thread(lambda: list(history_source(engine, [topic], reader)))


async def load_schemas(settings: Settings, registry: EmbeddedRegistry
                       ) -> list[tuple[LogRecord, SchemaError]]:
    """Load the schemas every `pit up` published (the compacted schemas topic) into
    `registry`. Returns the records that are not a schema, each with its error: one corrupt
    record never stops a start (the repository's schemas are known anyway)."""
    corrupt = []
    for record in await read_topic(settings, SCHEMAS):
        try:
            registry.load_record(record.value)
        except SchemaError as exc:
            corrupt.append((record, exc))
    return corrupt
