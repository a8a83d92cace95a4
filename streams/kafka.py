"""Thin Kafka plumbing shared by the runtime: clients, topic metadata, producing outputs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol
from weakref import WeakKeyDictionary

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError
from confluent_kafka import Producer

from streams.config import Settings, parse_count
from streams.errors import BrokerUnavailableError, PitError

if TYPE_CHECKING:
    import confluent_kafka

log = logging.getLogger(__name__)


# librdkafka's mock cluster (the embedded broker) completes a group's sync when the leader's
# SyncGroup arrives and answers any member's SyncGroup after that with INVALID_REQUEST
# (rdkafka_mock_cgrp.c), so two aiokafka members in one process, where the group leader
# always sends first, never form a group. A group leader with others to wait for waits this
# long before its SyncGroup; a real broker holds every SyncGroup until the leader's, so
# there it only adds this much to a rebalance of two members or more.
LEADER_SYNC_DELAY_S = 0.5


def group_session(settings: Settings) -> dict[str, int]:
    """A consumer group's session timeout (`PIT_GROUP_SESSION_TIMEOUT_MS`, default aiokafka's
    10 s: how long a killed member holds its partitions) and a heartbeat of a third of it."""
    text = settings.env.get("PIT_GROUP_SESSION_TIMEOUT_MS", "")
    session = parse_count("PIT_GROUP_SESSION_TIMEOUT_MS", text) if text else 10_000
    return {"session_timeout_ms": session, "heartbeat_interval_ms": session // 3}


async def start_consumer(settings: Settings, *topics: str, **options: Any
                         ) -> AIOKafkaConsumer:
    if options.get("group_id") is not None and "session_timeout_ms" not in options:
        options = {**group_session(settings), **options}
    consumer = AIOKafkaConsumer(*topics, **settings.kafka_client_options(),
                                enable_auto_commit=False, **options)
    try:
        await consumer.start()
    except KafkaConnectionError as exc:
        await stop_consumer(consumer)
        raise BrokerUnavailableError(
            f"Kafka unreachable at {settings.bootstrap()}: {exc}") from None
    if options.get("group_id") is not None:
        _let_followers_sync_first(consumer)
    return consumer


def _let_followers_sync_first(consumer: AIOKafkaConsumer) -> None:
    coordinator = consumer._coordinator
    perform = coordinator._perform_assignment

    async def perform_then_wait(response: Any) -> dict[str, Any]:
        assignments = await perform(response)
        if len(assignments) > 1:
            await asyncio.sleep(LEADER_SYNC_DELAY_S)
        return assignments

    coordinator._perform_assignment = perform_then_wait


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


async def seek_explicitly(consumer: AIOKafkaConsumer, partitions: Sequence[TopicPartition],
                          positions: dict[tuple[str, int], int] | None = None, *,
                          at_end: bool = False) -> dict[tuple[str, int], int]:
    """Seek each of the consumer's assigned `partitions` to an explicit offset: its entry in
    `positions` ((topic, partition) -> the next offset to read), or else its beginning
    (`at_end`: its end as it is now), asked for first and written into `positions`, which
    is returned.

    Why explicit offsets: aiokafka applies an offset reset already in flight for a fresh
    assignment (auto_offset_reset, "latest" by default) to a later `seek_to_beginning` or
    `seek_to_end`, which then silently starts at the end. A plain `seek` to an offset asked
    for beforehand cannot race, so every consumer of the Pit is positioned this way."""
    positions = {} if positions is None else positions
    fresh = [tp for tp in partitions if (tp.topic, tp.partition) not in positions]
    if fresh:
        ask = consumer.end_offsets if at_end else consumer.beginning_offsets
        for tp, offset in (await ask(fresh)).items():
            positions[(tp.topic, tp.partition)] = offset
    for tp in partitions:
        consumer.seek(tp, positions[(tp.topic, tp.partition)])
    return positions


async def assign_at(consumer: AIOKafkaConsumer, topics: Iterable[str],
                    positions: dict[tuple[str, int], int] | None = None, *,
                    at_end: bool = False) -> list[TopicPartition]:
    """Assign the consumer every partition of `topics` and seek each explicitly
    (`seek_explicitly`: from `positions`, else the beginning or, `at_end`, the end);
    returns the assignment."""
    assignment = [TopicPartition(topic, p) for topic in topics
                  for p in await partitions_of(consumer, topic)]
    consumer.assign(assignment)
    await seek_explicitly(consumer, assignment, positions, at_end=at_end)
    return assignment


async def topic_size(settings: Settings, topic: str) -> int:
    """How many records `topic` has ever held: the sum of its partitions' end offsets."""
    consumer = await start_consumer(settings)
    try:
        tps = [TopicPartition(topic, p) for p in await partitions_of(consumer, topic)]
        return sum((await consumer.end_offsets(tps)).values())
    finally:
        await stop_consumer(consumer)


class PitProducer(Producer):
    """A librdkafka producer that knows whether its broker acknowledges fast enough for
    `produce_all` to wait on the event loop itself (`acknowledged`)."""

    inline_from = 0.0  # time.monotonic() from which an inline wait may be tried again
    inline_misses = 0  # inline waits in a row that were not long enough


def make_producer(settings: Settings, **overrides: str | int) -> PitProducer:
    """A librdkafka producer: idempotent, so retries never duplicate or reorder a partition."""
    config = {"enable.idempotence": True, "linger.ms": 2, "log_level": 3,
              **settings.librdkafka_config(), **overrides}
    return PitProducer(config)


ANY_PARTITION = -1  # an `Output`'s partition for a `keyed_producer` to choose by its key


def keyed_producer(settings: Settings, **overrides: str | int) -> PitProducer:
    """A producer that partitions by key as aiokafka clients do (murmur2), so a record keyed
    like a client's command lands where that command would (its entity's partition)."""
    return make_producer(settings, partitioner="murmur2_random", **overrides)


# How long `acknowledged` waits on the event loop before it hands the wait to a thread, for
# batches of at most INLINE_RECORDS, and how long a producer whose broker was slower than
# that INLINE_MISSES times in a row waits in a thread only.
INLINE_ACK_S = 0.002
INLINE_RECORDS = 16
INLINE_MISSES = 3
INLINE_PAUSE_S = 1.0


async def acknowledged(producer: Producer, timeout_s: float, records: int) -> int:
    """Wait until the broker has acknowledged every record `producer` holds (`records` were
    just produced); returns how many it had not within `timeout_s`.

    The embedded broker acknowledges in about 0.3 ms (p50; p90 1.5 ms during `pit bench
    dag`), less than handing the wait to a thread and back costs beside a busy event loop
    (a chain's hop waited 0.8 ms, p50, for its events' acknowledgement that way). So a
    `PitProducer` first waits up to INLINE_ACK_S on the loop itself (librdkafka's flush
    releases the GIL and sends at once, whatever `linger.ms`) for a batch of at most
    INLINE_RECORDS: a small batch is what a hop or a command's round trip waits for, while
    a large one is throughput, and the loop has other work to do meanwhile. When that is
    not enough - a moment of load - the rest is waited for in a thread. A broker that is
    slower every time (a cluster's acks=all) is waited for in a thread only, for
    INLINE_PAUSE_S after INLINE_MISSES misses in a row, so it blocks the loop for a few
    INLINE_ACK_S a second at most. One slow acknowledgement among fast ones does not
    pause: a pause after the embedded broker's rare slow one cost the chains of `pit bench
    dag` what the inline wait had gained them."""
    if isinstance(producer, PitProducer) and records <= INLINE_RECORDS:
        now = time.monotonic()
        if now >= producer.inline_from:
            if not producer.flush(INLINE_ACK_S):
                producer.inline_misses = 0
                return 0
            producer.inline_misses += 1
            if producer.inline_misses >= INLINE_MISSES:
                producer.inline_from, producer.inline_misses = now + INLINE_PAUSE_S, 0
    return await asyncio.to_thread(producer.flush, timeout_s)


class DeliveryTracker:
    """Collects delivery failures of a producer so a batch is committed only when all landed."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def __call__(self, error: confluent_kafka.KafkaError | None,
                 message: confluent_kafka.Message) -> None:
        if error is not None:
            self.errors.append(f"{message.topic()}[{message.partition()}]: {error}")

    def at(self, offsets: list[int], index: int, error: confluent_kafka.KafkaError | None,
           message: confluent_kafka.Message) -> None:
        """Also note where the index-th record landed."""
        self(error, message)
        if error is None:
            # None only for an offset the broker did not report (never with acks=all, as
            # idempotence implies): the placeholder then stays -1.
            offset = message.offset()
            if offset is not None:
                offsets[index] = offset


async def produce_all(producer: Producer, outputs: Iterable, timeout_s: float = 30.0, *,
                      offsets: list[int] | None = None) -> int:
    """Produce `Output`s and wait until the broker acknowledged every one of them; with
    `offsets`, it is filled with the offset each one got, in order."""
    tracker = DeliveryTracker()
    count = 0
    for out in outputs:
        on_delivery: Callable[..., None] = tracker
        if offsets is not None:
            offsets.append(-1)
            on_delivery = partial(tracker.at, offsets, count)
        while True:
            try:
                producer.produce(out.topic, out.value, out.key, partition=out.partition,
                                 timestamp=out.timestamp_ms, headers=list(out.headers) or None,
                                 on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain
                await asyncio.to_thread(producer.poll, 0.05)
        count += 1
    remaining = await acknowledged(producer, timeout_s, count)
    if remaining or tracker.errors:
        problem = tracker.errors[0] if tracker.errors else f"{remaining} records unacknowledged"
        raise BrokerUnavailableError(f"produce failed: {problem}")
    return count


DRAIN_BUDGET_S = 0.02  # the most a batch waits for records already on the broker


async def take_ready(consumer: AIOKafkaConsumer, batch: dict, max_records: int) -> None:
    """Add to `batch` what the broker already holds beyond it, up to `max_records` or
    DRAIN_BUDGET_S: the embedded broker answers a fetch with one producer batch per
    partition, so a reader fed by many small producers (runners reporting a few nodes each)
    would otherwise pay its whole round - decide, produce, commit; or a database
    transaction - per few records. When nothing is waiting (a lone command, a chain's next
    hop) it adds no wait at all.

    "Waiting" is read from the batch itself - a partition whose last record is short of its
    high watermark as of the fetch - never from `consumer.position`, which blocks while a
    partition's position is being reset."""
    count = sum(len(records) for records in batch.values())
    deadline = time.monotonic() + DRAIN_BUDGET_S
    while count < max_records and _more_waiting(consumer, batch):
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            return
        more = await consumer.getmany(timeout_ms=left_ms, max_records=max_records - count)
        if not more:
            return
        for tp, records in more.items():
            batch.setdefault(tp, []).extend(records)
            count += len(records)


STOP_SLICE_S = 0.05  # `consume_ready` with a stop waits in slices this long


def consume_ready(consumer: confluent_kafka.Consumer, most: int, timeout_s: float,
                  stop: asyncio.Event | None = None) -> list[confluent_kafka.Message]:
    """`take_ready` for a librdkafka consumer, on the one thread that drives it: the first
    record to come within `timeout_s`, with what it has fetched already beside it (up to
    `most`; librdkafka fetches ahead on its own, so nothing more is waited for). With `stop`
    it waits in slices of STOP_SLICE_S, so a stop ends the wait within one (`is_set` only
    reads a flag)."""
    deadline = time.monotonic() + timeout_s
    slice_s = timeout_s if stop is None else STOP_SLICE_S
    while True:
        first = consumer.consume(1, max(0.0, min(slice_s, deadline - time.monotonic())))
        if first:
            return first + consumer.consume(most - 1, 0) if most > 1 else first
        if stop is None or stop.is_set() or time.monotonic() >= deadline:
            return []


async def getmany_ready(consumer: AIOKafkaConsumer, timeout_ms: int, max_records: int, *,
                        busy: Callable[[dict], bool] = bool) -> dict:
    """`consumer.getmany`, then `take_ready`: a batch of what the broker holds. The
    consumer's fetches are paced by how busy it is (`pace_fetches`): `busy(batch)`, by
    default whether it read anything."""
    batch = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
    if batch:
        await take_ready(consumer, batch, max_records)
    pace_fetches(consumer, busy(batch))
    return batch


# The fetch wait of the readers on a command's path and a workflow hop's: the processors,
# the command clients' outcome readers, the task dispatcher. The embedded broker holds an
# empty fetch for its whole wait, so a record waits on average half of it; 5 ms kept the
# command round trip's p99 at 14-15 ms, 2 ms at 8-9 (`pit bench backbone`, idle machine).
# What a short wait costs while idle, `pace_fetches` takes back.
BUSY_FETCH_WAIT_MS = 2

# On a cluster a fetch is answered as soon as a record arrives, so a long wait costs no
# latency there, and a short one only makes empty fetches.
CLUSTER_FETCH_WAIT_MS = 500


def path_fetch_wait_ms(embedded: bool) -> int:
    """The fetch wait of a reader on a command's or a hop's path (the processors, the task
    dispatcher) in a `pit up` on the embedded broker (`embedded`) or on a cluster."""
    return BUSY_FETCH_WAIT_MS if embedded else CLUSTER_FETCH_WAIT_MS


IDLE_AFTER_S = 0.5  # a consumer not busy for this long fetches at the idle pace
IDLE_FETCH_WAIT_MS = 50


@dataclass
class _Pace:
    busy_wait_ms: int  # the fetch wait the consumer was started with
    busy_at: float  # when it was last busy


_paces: WeakKeyDictionary[AIOKafkaConsumer, _Pace] = WeakKeyDictionary()


def pace_fetches(consumer: AIOKafkaConsumer, busy: bool) -> None:
    """Told after each read whether the consumer is `busy` (it read a record, or its owner
    waits for one): one not busy for IDLE_AFTER_S fetches with a wait of
    IDLE_FETCH_WAIT_MS, and goes back to its own wait as soon as it is busy again.

    Why: the embedded broker holds an empty fetch for its whole wait and answers it empty
    even when a record arrives meanwhile, so the readers on a command's path fetch with short
    waits (BUSY_FETCH_WAIT_MS) - hundreds of fetches a second each, idle or not. With 5 ms
    waits, an idle Pit (five processors, four command clients, the dispatcher...) spent 60%
    of a core on them, beside the event loop of the busy ones. Paced, a quiet reader costs
    a tenth to a twenty-fifth of that, and the first record after a quiet spell waits at
    most IDLE_FETCH_WAIT_MS more; a reader with work, or with a record every few hundred
    milliseconds (a chain's hops), keeps its own wait. On a Kafka cluster a fetch returns
    as soon as a record arrives, so the pace costs nothing there.

    aiokafka reads the wait (its fetcher's `_fetch_max_wait_ms`) for every fetch it
    builds, and has no public way to change it."""
    fetcher = consumer._fetcher
    now = time.monotonic()
    pace = _paces.get(consumer)
    if pace is None:
        pace = _paces[consumer] = _Pace(fetcher._fetch_max_wait_ms, now)
    if busy:
        pace.busy_at = now
        fetcher._fetch_max_wait_ms = pace.busy_wait_ms
    elif now - pace.busy_at >= IDLE_AFTER_S:
        fetcher._fetch_max_wait_ms = max(pace.busy_wait_ms, IDLE_FETCH_WAIT_MS)


def _more_waiting(consumer: AIOKafkaConsumer, batch: dict) -> bool:
    for tp, records in batch.items():
        high = consumer.highwater(tp)
        if records and high is not None and records[-1].offset + 1 < high:
            return True
    return False


async def keep_running(name: str, attempt: Callable[[], Awaitable[None]], stop: asyncio.Event,
                       retry_s: float = 1.0, *, retry_on: tuple[type[Exception], ...] = (),
                       on_restart: Callable[[], None] | None = None) -> None:
    """Run a service's `attempt` until `stop`. When Kafka fails under it (or it raises one
    of `retry_on`), wait `retry_s` and start it again, after `on_restart` (forget state)."""
    while not stop.is_set():
        try:
            await attempt()
        except (BrokerUnavailableError, KafkaError, *retry_on) as exc:
            if stop.is_set():
                return
            log.warning("%s: %s; starting again in %.1f s", name, exc, retry_s)
            if on_restart is not None:
                on_restart()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), retry_s)


class Reader(Protocol):
    """What reads the log: an aiokafka consumer, or a `streams.follower.Follower`."""

    async def stop(self) -> None: ...


async def stop_consumer(consumer: Reader) -> None:
    """Stop an aiokafka consumer (or a follower), which may raise CancelledError on its own
    while a broker is down: that is swallowed, a cancellation of the calling task is not."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        # aiokafka's fetcher (0.14, Fetcher.close) awaits the fetch requests it has just
        # cancelled: one caught in its retry backoff (a broker down) ends the stop with
        # CancelledError though nobody cancelled this task. Only a real cancellation goes on.
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise


STOP_FLUSH_S = 10.0  # the most a service's stop waits for its producer's queue


async def stop_clients(consumer: Reader, producer: Producer, failed: bool) -> None:
    """Stop a service's consumer (or follower) and producer. After a failure nothing still
    queued may land (the service starts again from the log); otherwise the queue is
    delivered, for up to STOP_FLUSH_S. Then the producer is closed: left open, a stopped service's
    producer kept its threads and went on calling a broker that had gone (`pit bench dag`
    printed librdkafka's "Connection refused" after its simulated crash). `close` waits for
    whatever is still queued, so that is purged first: it was not delivered in time."""
    if failed:
        producer.purge()
    await stop_consumer(consumer)
    await close_producer(producer, 0 if failed else STOP_FLUSH_S)


async def close_producer(producer: Producer, flush_s: float) -> None:
    """Close `producer` once its broker has taken what it holds or `flush_s` has passed;
    what is left then is purged, since `close` alone would wait for it."""
    if await asyncio.to_thread(producer.flush, flush_s):
        producer.purge()
    await asyncio.to_thread(producer.close)
