"""Following the log: how a service rebuilds its state from history, then reads on live.

The dispatcher, the timer service, the prewarmer, the host monitor and the model host each
keep state that is a fold of some topics, held in memory and never stored: on every start
it is rebuilt from the log. A `Follower` does the reading for them, in three steps:

    follower = Follower(settings, topics, db)
    await follower.restore(take, stop)       # every record of the history, to `take`
    await follower.start()                   # a consumer where the history ended
    async for records in follower.batches(stop, wait_ms):
        ...                                  # each live batch; then act (relay, fire, send)
    await follower.stop()

Why the history is read apart from the consumer: Kafka may no longer hold the beginning
(retention, the embedded broker's 5 MiB window) and the archive does; `streams.history`
reads both, each record once. The consumer then starts exactly where that read ended.

Why explicit offsets: a consumer told to start at "the beginning" or "the end" resolves
that later, and the end it finds may be past a record produced meanwhile; every partition
is assigned at an offset asked for beforehand (its watermark), which cannot race.

Why the live reading is librdkafka's (confluent-kafka), on a thread of the follower's own:
a reader fetches every partition it holds 100-300 times a second while records flow (the
embedded broker answers a fetch with one producer batch per partition, and holds an empty
one for its whole wait). aiokafka encodes and decodes each of those fetches in Python on the
event loop; the dispatcher, the timer service and the prewarmer each read the 16 partitions
of pit.dag.events that way, and during a chain their fetches were 63% of the partitions the
Pit's process fetched, on the loop the DAG processor needs for the next hop. librdkafka
fetches in C on its own threads; Python sees only the records. The price: its fetch wait is
fixed when the consumer is made, so it does not slow down while idle as the aiokafka readers
do (`streams.kafka.pace_fetches`); the dispatcher's 2 ms costs an idle `pit up` about 7% of a
core (README, "The followers on librdkafka").

What the follower leaves to its service: what a record means (`take`, and the body of the
loop), what it does between reads (the dispatcher relays, the timer service fires, the
prewarmer sends; `wait_ms` may be a function, so a timer due soon shortens the wait), and
when it starts over (`keep_running`: a new follower, from the whole history again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaPartition
from sqlalchemy import Engine

from streams.archive import archived_records
from streams.config import Settings
from streams.decider import Decider, Message, from_record
from streams.errors import BrokerUnavailableError, PitError, SchemaError
from streams.history import history_source, kafka_log_reader
from streams.kafka import IDLE_FETCH_WAIT_MS, consume_ready
from streams.log import LogRecord

if TYPE_CHECKING:
    from schemas.codec import Codec


def entity_events(codec: Codec, decider: Decider | Sequence[Decider], records: Iterable[Any]
                  ) -> Iterator[tuple[str, Message]]:
    """(entity key, event) for each event of `decider` (or of any of several) among
    `records` (anything with a `.value`: aiokafka messages, log records), each decoded once;
    tombstones, undecodable records and other deciders' events are skipped."""
    deciders = (decider,) if isinstance(decider, Decider) else tuple(decider)
    for record in records:
        if record.value is None:
            continue
        try:
            decoded = codec.decode(record.value)
        except SchemaError:
            continue
        for one in deciders:
            event_type = one.event_type(decoded.name)
            if event_type is not None:
                yield decoded.record["envelope"]["entity_key"], from_record(event_type,
                                                                           decoded.record)
                break


log = logging.getLogger(__name__)

LIVE_BATCH = 10_000
START_TIMEOUT_S = 10.0  # for the metadata and watermarks a follower starts from
# What librdkafka may fetch ahead and hold per follower (its default is 64 MiB): a few
# seconds of the busiest topic, not the Pit's memory.
QUEUED_KBYTES = 4096


class Follower:
    """Reads `topics`: their history (the archive `db`, then Kafka), then live from where it
    ended. A live batch is what the broker holds, up to `max_records` (None: LIVE_BATCH).

    `fetch_max_wait_ms`: how long the broker may hold a fetch that finds nothing - on the
    embedded broker, how late a record arriving meanwhile can be. librdkafka fetches at that
    pace even while idle, in C but still a round trip through the broker each time: the
    followers keep the idle pace of the Pit's other readers (IDLE_FETCH_WAIT_MS), except the
    dispatcher, which is on every hop of a workflow."""

    def __init__(self, settings: Settings, topics: Sequence[str], db: Engine | None = None, *,
                 max_records: int | None = None,
                 fetch_max_wait_ms: int = IDLE_FETCH_WAIT_MS) -> None:
        self.settings, self.topics, self.db = settings, list(topics), db
        self.max_records, self.fetch_max_wait_ms = max_records, fetch_max_wait_ms
        # The next offset to read, per (topic, partition): past what was handed over.
        self.positions: dict[tuple[str, int], int] = {}
        self._consumer: Consumer | None = None
        self._kafka: ThreadPoolExecutor | None = None  # the consumer's one thread

    async def restore(self, take: Callable[[LogRecord], object], stop: asyncio.Event) -> None:
        """Hand `take` every record of the history, in offset order per partition, in a
        worker thread (a long history must not block the event loop; `take` must not touch
        it). Ends early once `stop` is set: a service shutting down does not wait for it.
        Raises `HistoryError` when the history cannot be read whole."""
        await asyncio.to_thread(self._restore, take, stop)

    def _restore(self, take: Callable[[LogRecord], object], stop: asyncio.Event) -> None:
        reader = kafka_log_reader(self.settings, self.topics)
        for record in history_source(self.db, self.topics, reader):
            if stop.is_set():
                return
            take(record)
            self.positions[(record.topic, record.partition)] = record.offset + 1

    async def start(self, *, at_end: bool = False) -> None:
        """Start the consumer at the positions reached. A partition the history did not
        reach starts at its beginning or, `at_end`, at its end as it is now: the history
        is skipped, and nothing produced after this returns is missed. Raises
        `BrokerUnavailableError` when Kafka does not answer, `PitError` for a topic that
        does not exist."""
        kafka = ThreadPoolExecutor(1, thread_name_prefix="pit-follower")
        try:
            self._consumer = await asyncio.get_running_loop().run_in_executor(
                kafka, self._assigned, at_end)
        except BaseException:
            kafka.shutdown(wait=False)
            raise
        self._kafka = kafka

    def _assigned(self, at_end: bool) -> Consumer:
        """On the follower's thread: a consumer (no group, no commits) holding every
        partition of the topics at an explicit offset, each written into `positions`."""
        settings = self.settings.librdkafka_config()
        consumer = Consumer({
            **settings, "group.id": "pit-follower", "enable.auto.commit": False,
            # A position trimmed from the embedded broker meanwhile is an error the reading
            # hands to `_read_trimmed`, not a silent jump to the new beginning.
            "enable.auto.offset.store": False, "auto.offset.reset": "error",
            "fetch.wait.max.ms": self.fetch_max_wait_ms,
            "queued.max.messages.kbytes": QUEUED_KBYTES,
            # librdkafka reconnects on its own; what it says meanwhile goes to the log
            "log_level": 0, "error_cb": _kafka_error})
        try:
            metadata = consumer.list_topics(timeout=START_TIMEOUT_S)
            assignment = []
            for topic in self.topics:
                described = metadata.topics.get(topic)
                if described is None or described.error is not None or not described.partitions:
                    raise PitError(f"topic {topic} does not exist (apply infra/topics.yaml)")
                for partition in sorted(described.partitions):
                    position = self.positions.get((topic, partition))
                    if position is None:
                        low, high = consumer.get_watermark_offsets(
                            KafkaPartition(topic, partition), timeout=START_TIMEOUT_S)
                        position = self.positions[(topic, partition)] = high if at_end else low
                    assignment.append(KafkaPartition(topic, partition, position))
            consumer.assign(assignment)
        except KafkaException as exc:
            consumer.close()
            raise BrokerUnavailableError(
                f"Kafka unavailable at {settings['bootstrap.servers']}: {exc}") from None
        except BaseException:
            consumer.close()
            raise
        return consumer

    async def batches(self, stop: asyncio.Event,
                      wait_ms: int | Callable[[], int] = 100) -> AsyncIterator[list[LogRecord]]:
        """Each batch read live, in offset order per partition, until `stop` is set; empty
        when `wait_ms` (a number, or asked before every read) passed without a record. A
        batch read while stopping is not handed over: the service is going away, and it
        starts from the log again."""
        consumer, kafka = self._consumer, self._kafka
        if consumer is None or kafka is None:
            raise RuntimeError("Follower.batches before start")
        loop = asyncio.get_running_loop()
        most = self.max_records or LIVE_BATCH
        while not stop.is_set():
            timeout_ms = wait_ms() if callable(wait_ms) else wait_ms
            messages = await loop.run_in_executor(kafka, consume_ready, consumer, most,
                                                  timeout_ms / 1000, stop)
            if stop.is_set():
                return
            records, trimmed = [], []
            for message in messages:
                error = message.error()
                if error is None:
                    record = LogRecord.from_librdkafka(message)
                    records.append(record)
                    self.positions[(record.topic, record.partition)] = record.offset + 1
                elif error.code() == KafkaError._AUTO_OFFSET_RESET:
                    trimmed.append((str(message.topic()), int(message.partition() or 0)))
                elif error.fatal():
                    raise BrokerUnavailableError(f"reading {', '.join(self.topics)}: {error}")
                else:  # librdkafka retries on its own (a broker restarting, a leader moving)
                    log.debug("reading %s: %s", ", ".join(self.topics), error)
            for topic, partition in trimmed:
                records.extend(await self._read_trimmed(topic, partition, kafka))
            yield records

    async def _read_trimmed(self, topic: str, partition: int, kafka: ThreadPoolExecutor
                            ) -> list[LogRecord]:
        """A partition whose position left Kafka (trimmed while this follower lagged: the Pit
        trims only what the archive holds, streams/memory.py): what the archive holds from
        the position on, then the consumer again just after it, so every record is still
        handed over once, in order. Records in neither (a broker that dropped what was not
        archived) are skipped, and said. A position past the log's end (a broker that lost
        records and came back) reads the partition again from its beginning, and says so."""
        tp, db = (topic, partition), self.db
        position = self.positions[tp]
        gap = [] if db is None else await asyncio.to_thread(
            lambda: list(archived_records(db, [topic], {tp: position - 1},
                                          partitions=[partition])))
        if gap:
            position = gap[-1].offset + 1
        consumer = self._consumer
        assert consumer is not None  # only while reading

        def follow_on() -> int:
            low, high = consumer.get_watermark_offsets(KafkaPartition(topic, partition),
                                                       timeout=START_TIMEOUT_S)
            # Past the end: a broker that lost records and came back, writing new ones at
            # their offsets. Which are new is unknowable: it reads them all again, as the
            # consumer's reset to the beginning did before.
            start = max(position, low) if position <= high else low
            consumer.incremental_unassign([KafkaPartition(topic, partition)])
            consumer.incremental_assign([KafkaPartition(topic, partition, start)])
            return start

        start = await asyncio.get_running_loop().run_in_executor(kafka, follow_on)
        if start > position:
            log.error("%s[%d]: offsets %d..%d are in neither the archive nor Kafka; following"
                      " on from %d", topic, partition, position, start - 1, start)
        elif start < position:
            log.error("%s[%d]: the log ends before this follower's position %d (a broker"
                      " that lost records); reading it again from offset %d", topic,
                      partition, position, start)
        self.positions[tp] = start
        return gap

    async def stop(self) -> None:
        """Close the consumer (after a read in progress, on its thread); a no-op before
        `start`, and the second time."""
        consumer, self._consumer = self._consumer, None
        kafka, self._kafka = self._kafka, None
        if consumer is not None and kafka is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(kafka, consumer.close)
            finally:
                kafka.shutdown(wait=False)


def _kafka_error(error: KafkaError) -> None:
    log.log(logging.WARNING if error.fatal() else logging.DEBUG, "follower: %s", error)
