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

Why explicit offsets: aiokafka applies an offset reset already in flight for a fresh
assignment to a later `seek_to_beginning` or `seek_to_end`, which then silently starts at
the end; `streams.kafka.assign_at` seeks to offsets asked for beforehand, which cannot race.

What the follower leaves to its service: what a record means (`take`, and the body of the
loop), what it does between reads (the dispatcher relays, the timer service fires, the
prewarmer sends; `wait_ms` may be a function, so a timer due soon shortens the wait), and
when it starts over (`keep_running`: a new follower, from the whole history again).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer
from sqlalchemy import Engine

from streams.config import Settings
from streams.decider import Decider, Message, from_record
from streams.errors import SchemaError
from streams.history import history_source, kafka_log_reader
from streams.kafka import assign_at, getmany_ready, start_consumer, stop_consumer
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


LIVE_BATCH = 10_000


class Follower:
    """Reads `topics`: their history (the archive `db`, then Kafka), then live from where it
    ended. A live batch is what the broker holds, up to `max_records` (None: LIVE_BATCH)."""

    def __init__(self, settings: Settings, topics: Sequence[str], db: Engine | None = None, *,
                 max_records: int | None = None, fetch_max_wait_ms: int = 20) -> None:
        self.settings, self.topics, self.db = settings, list(topics), db
        self.max_records, self.fetch_max_wait_ms = max_records, fetch_max_wait_ms
        # The next offset to read, per (topic, partition): past what was handed over.
        self.positions: dict[tuple[str, int], int] = {}
        self._consumer: AIOKafkaConsumer | None = None

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
        is skipped, and nothing produced after this returns is missed."""
        consumer = await start_consumer(self.settings, fetch_max_wait_ms=self.fetch_max_wait_ms)
        try:
            await assign_at(consumer, self.topics, self.positions, at_end=at_end)
        except BaseException:
            await stop_consumer(consumer)
            raise
        self._consumer = consumer

    async def batches(self, stop: asyncio.Event,
                      wait_ms: int | Callable[[], int] = 100) -> AsyncIterator[list[LogRecord]]:
        """Each batch read live, in offset order per partition, until `stop` is set; empty
        when `wait_ms` (a number, or asked before every read) passed without a record. A
        batch read while stopping is not handed over: the service is going away, and it
        starts from the log again."""
        if self._consumer is None:
            raise RuntimeError("Follower.batches before start")
        while not stop.is_set():
            timeout_ms = wait_ms() if callable(wait_ms) else wait_ms
            fetched = await getmany_ready(self._consumer, timeout_ms,
                                          self.max_records or LIVE_BATCH)
            if stop.is_set():
                return
            records = [LogRecord.from_kafka(m) for messages in fetched.values()
                       for m in messages]
            for record in records:
                self.positions[(record.topic, record.partition)] = record.offset + 1
            yield records

    async def stop(self) -> None:
        """Stop the consumer (like an aiokafka client's `stop`); a no-op before `start`."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await stop_consumer(consumer)
