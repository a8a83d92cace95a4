"""Durable timers (issue 4): timers that live in the event log and survive restarts of every
process. They drive the DAG decider's retries with backoff, node timeouts and workflow
timeouts, and anything else that must happen "at T".

A timer is a command to send later: `TimerScheduled(timer_id, due_at_ms, target_topic, key,
command_type, command_json, owner)`. At its due time the timer service sends the command to
the target topic with the timer id as its command id, then records `TimerFired` on
pit.timers. `TimerCancelled(timer_id)` stops a timer that has not fired.

How a decider asks for a timer (the choice, and why): it emits `schedule_timer(...)` (a
`TimerScheduled`) and `cancel_timer(...)` (a `TimerCancelled`) among its own events - add
`TIMER_EVENTS` to its `events` and let `evolve` see them. The processor needs no change: the
timer events go to the decider's own event topic, on the command's partition, with its other
events, and the timer service follows that topic (`timer_topics(DECIDERS)`: pit.timers plus
every decider event topic that carries timer events). The alternative, the processor writing
timer records to pit.timers, would split one decision over two topics: a crash between them
leaves events that make the redelivered command a duplicate (the ledger is rebuilt from the
events) and a timer that is never written. On the decider's own topic the timer request is
as durable, and as ordered, as the decision that made it. Anyone else (a service, a test)
writes the same records to pit.timers directly (`timer_output`).

Why the command travels as JSON and not as encoded bytes: a decider is pure and cannot
encode (schema ids come from the registry), and bytes encoded when the timer was scheduled
would carry a schema version the target processor may have left behind by the time it
fires. The service encodes `command_json` with the current schema of `command_type` when the
timer fires (new fields take their defaults), so it stays generic: it knows no command type.

The service (`TimerService`, run by `pit up`):
* on start it rebuilds the pending timers from the whole history of the topics it follows
  (the audit archive, then Kafka: `streams.follower`): scheduled minus fired minus cancelled,
  in any order across topics (a timer id is used once: a cancel or fire seen first wins);
* it keeps them in a heap and, when the earliest is due by its clock (injectable, epoch
  ms), sends the due commands in due order, waits for the broker's acks, and only then
  writes their `TimerFired`. A crash in between sends the command again after the restart,
  with the same command id: the processor answers a duplicate, with no second effect;
* timers that fell due while everything was down fire right after start: late, never lost;
* a timer whose command cannot be sent (no schema for it, invalid fields, a target topic
  outside the catalog) is recorded as fired with the error, so it cannot wedge the service;
* when Kafka fails under it, it forgets everything and starts over from the log, as the
  processors do.
It runs once per Pit (in `pit up`); a second one would fire every timer again - harmless,
each a duplicate, but wasted. It remembers the last DONE_KEPT ids of done timers (never
reused) in memory.
A command can still arrive after its timer was cancelled (the cancel decided while the
command was on its way): deciders check a timer command is still current (e.g. the attempt
it names) and reject or ignore a stale one. Timer ids must be unique across the Pit and
never reused (a deterministic id such as "<execution>/<node>/timeout/<attempt>"): the id
is the fired command's idempotency key.

Commands are sent, and pit.timers records keyed, with Kafka's default (murmur2) partitioner,
the one aiokafka clients use, so a timer command lands on the partition of its entity's other
commands.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from streams.decider import Decider, Message, from_record, to_record
from streams.errors import PitError, SchemaError
from streams.topics import TIMERS, load_catalog

if TYPE_CHECKING:  # the service's runtime, imported when it runs: deciders need none of it
    from confluent_kafka import Producer
    from sqlalchemy import Engine

    from schemas.codec import Codec
    from streams.config import Settings
    from streams.processor import Output

log = logging.getLogger(__name__)

PRODUCER = "timer-service"
DONE_KEPT = 100_000  # done timer ids a TimerTable remembers, the most recent
HEAP_SLACK = 1_000   # cancelled timers a TimerTable's heap may hold beyond its pending ones


# --- the records ------------------------------------------------------------------------------

class _TimerEvent(Message):
    key_field = "timer_id"


@dataclass(frozen=True)
class TimerScheduled(_TimerEvent):
    avro_name = "pit.timer.TimerScheduled"
    timer_id: str
    due_at_ms: int
    target_topic: str
    key: str
    command_type: str
    command_json: str
    owner: str = ""


@dataclass(frozen=True)
class TimerCancelled(_TimerEvent):
    avro_name = "pit.timer.TimerCancelled"
    timer_id: str
    reason: str = ""


@dataclass(frozen=True)
class TimerFired(_TimerEvent):
    avro_name = "pit.timer.TimerFired"
    timer_id: str
    due_at_ms: int
    fired_at_ms: int
    error: str | None = None


TIMER_EVENTS = (TimerScheduled, TimerCancelled)  # what a decider may emit: add to its events
_TIMER_RECORDS = frozenset(cls.avro_name for cls in (*TIMER_EVENTS, TimerFired))


# --- pure helpers for deciders ----------------------------------------------------------------

def _plain(value: object) -> object:
    if isinstance(value, Enum):
        return value.value
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def schedule_timer(timer_id: str, due_at_ms: int, command: Message, target: Decider,
                   owner: str = "") -> TimerScheduled:
    """The event that asks for `command` to be sent to `target`'s processor at `due_at_ms`.
    Deterministic (sorted JSON), so a decider that emits it stays replayable."""
    return TimerScheduled(timer_id, due_at_ms, target.command_topic, target.entity_of(command),
                          command.avro_name,
                          json.dumps(to_record(command), sort_keys=True, separators=(",", ":"),
                                     default=_plain),
                          owner)


def cancel_timer(timer_id: str, reason: str = "") -> TimerCancelled:
    return TimerCancelled(timer_id, reason)


def timer_topics(deciders: Iterable[Decider]) -> list[str]:
    """The topics a timer service follows: pit.timers and every decider event topic that
    carries timer events."""
    return [TIMERS, *sorted({d.event_topic for d in deciders if TimerScheduled in d.events})]


# --- the pending timers (pure) ----------------------------------------------------------------

@dataclass(frozen=True)
class Timer:
    """A pending timer: its request, and where the request came from (for the command)."""

    request: TimerScheduled
    correlation_id: str = ""
    scheduled_by: str = ""  # the event id of its TimerScheduled

    @property
    def timer_id(self) -> str:
        return self.request.timer_id

    @property
    def due_at_ms(self) -> int:
        return self.request.due_at_ms

    @classmethod
    def of(cls, record: dict) -> Timer:
        """From a decoded TimerScheduled record."""
        envelope = record["envelope"]
        request = from_record(TimerScheduled, record)
        return cls(request, envelope["correlation_id"], envelope["event_id"])


class TimerTable:
    """Scheduled minus fired minus cancelled, whatever order the three arrive in: a timer id
    once fired or cancelled is done for good. Due timers come out earliest first (ties by
    id). No I/O and no clock: `take_due` is told the time.

    It remembers the last DONE_KEPT done ids (memory stays bounded under steady work): a
    TimerScheduled read again for an id forgotten earlier fires once more, a duplicate its
    processor answers with the first outcome (ids are command ids)."""

    def __init__(self, heap_slack: int = HEAP_SLACK) -> None:
        self.heap_slack = heap_slack
        self.pending: dict[str, Timer] = {}
        # The oldest are forgotten first. An OrderedDict, not a dict: a dict's deleted entries
        # stay at the front of its table until it is rebuilt, and finding the first live one
        # took ~80 µs per resolve once DONE_KEPT was reached (3 µs this way).
        self.done: OrderedDict[str, None] = OrderedDict()
        self._heap: list[tuple[int, str]] = []  # (due, id); cancelled ones skipped: `_compact`

    def schedule(self, timer: Timer) -> bool:
        """Add a timer; False when its id is already pending or done."""
        if timer.timer_id in self.pending or timer.timer_id in self.done:
            return False
        self.pending[timer.timer_id] = timer
        heapq.heappush(self._heap, (timer.due_at_ms, timer.timer_id))
        return True

    def resolve(self, timer_id: str) -> None:
        """The timer fired or was cancelled: it never fires (again)."""
        self._done(timer_id)
        if self.pending.pop(timer_id, None) is not None:
            self._compact()

    def _compact(self) -> None:
        """A cancelled timer stays in the heap until it comes due, and is skipped then. Once
        they are more than half of it (and `heap_slack` besides), the heap is rebuilt from
        the pending timers: long timeouts cancelled early - an hour's node timeouts, each
        cancelled within a second - would hold an hour of timers, some 100 bytes each."""
        if len(self._heap) > 2 * len(self.pending) + self.heap_slack:
            self._heap = [(timer.due_at_ms, timer_id) for timer_id, timer in self.pending.items()]
            heapq.heapify(self._heap)

    def _done(self, timer_id: str) -> None:
        self.done[timer_id] = None
        if len(self.done) > DONE_KEPT:
            self.done.popitem(last=False)

    def apply(self, name: str, record: dict) -> None:
        """Fold one decoded timer record (TimerScheduled, TimerCancelled or TimerFired)."""
        if name == TimerScheduled.avro_name:
            self.schedule(Timer.of(record))
        elif name in (TimerCancelled.avro_name, TimerFired.avro_name):
            self.resolve(record["timer_id"])

    def next_due(self) -> int | None:
        heap = self._heap
        while heap and heap[0][1] not in self.pending:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def take_due(self, now_ms: int, limit: int | None = None) -> list[Timer]:
        """Remove and return the timers due at `now_ms` (due_at_ms <= now_ms), in due order;
        they count as done from here on."""
        due: list[Timer] = []
        while (limit is None or len(due) < limit) and (
                (next_due := self.next_due()) is not None and next_due <= now_ms):
            _, timer_id = heapq.heappop(self._heap)
            due.append(self.pending.pop(timer_id))
            self._done(timer_id)
        return due


# --- encoding ---------------------------------------------------------------------------------

def timer_output(codec: Codec, event: TimerScheduled | TimerCancelled | TimerFired,
                 at_ms: int, *, correlation_id: str = "", causation_id: str = "",
                 producer: str = PRODUCER) -> Output:
    """A timer record for pit.timers, keyed by its timer id. Its envelope's entity is the
    timer: TimerScheduled is its sequence 1, TimerCancelled/TimerFired its 2 (a timer
    scheduled by a decider has its sequence 1 on the decider's topic)."""
    from streams.kafka import ANY_PARTITION
    from streams.processor import Output

    timer_id = event.timer_id
    envelope = {
        "event_id": f"{timer_id}/{event.type_name}", "event_type": event.type_name,
        "entity_key": timer_id, "sequence": 1 if isinstance(event, TimerScheduled) else 2,
        "correlation_id": correlation_id or timer_id, "causation_id": causation_id or timer_id,
        "occurred_at": at_ms, "producer": producer,
    }
    value = codec.encode(event.avro_name, {"envelope": envelope, **to_record(event)})
    return Output(TIMERS, ANY_PARTITION, timer_id.encode(), value, at_ms)


def command_output(codec: Codec, timer: Timer, now_ms: int) -> Output:
    """The timer's command, encoded with its current schema, its id the timer id.
    Raises SchemaError when `command_json` does not make a valid `command_type`."""
    from streams.kafka import ANY_PARTITION
    from streams.processor import Output

    request = timer.request
    try:
        fields = json.loads(request.command_json)
    except ValueError as exc:
        raise SchemaError(f"timer {timer.timer_id}: command_json is not JSON: {exc}") from None
    meta = {"command_id": timer.timer_id, "issued_at": now_ms, "issued_by": PRODUCER,
            "correlation_id": timer.correlation_id or None}
    value = codec.encode(request.command_type, {**fields, "meta": meta})
    return Output(request.target_topic, ANY_PARTITION, request.key.encode(), value, now_ms)


def fold(table: TimerTable, codec: Codec, value: bytes | None) -> None:
    """Fold one log record's value into `table` if it is a timer record."""
    if value is None:
        return  # a tombstone: a restored placeholder
    try:
        if codec.name_of(value) not in _TIMER_RECORDS:
            return  # most records of a decider's event topic: not decoded
        decoded = codec.decode(value)
    except SchemaError:
        return  # dead-lettered or ignored by whoever owns the topic
    table.apply(decoded.name, decoded.record)


def wall_ms() -> int:
    return int(time.time() * 1000)


# --- the service ------------------------------------------------------------------------------

class TimerService:
    """Fires the timers found on `topics` (pit.timers and decider event topics) by `clock`."""

    def __init__(self, settings: Settings, codec: Codec, db: Engine | None = None, *,
                 topics: Sequence[str] = (TIMERS,), clock: Callable[[], int] = wall_ms,
                 poll_ms: int = 100, max_batch: int = 5_000, retry_s: float = 1.0,
                 produce_timeout_s: float = 30.0,
                 targets: Collection[str] | None = None) -> None:
        self.settings, self.codec, self.db = settings, codec, db
        self.topics = list(topics)
        # Where commands may go (default: the catalog). A timer naming another topic is
        # recorded as fired with an error: sending to a topic that does not exist would fail
        # (or create it) on every start.
        self.targets = set(load_catalog() if targets is None else targets)
        self.clock = clock
        # The longest wait between looks at the clock: a due timer is seen within it even
        # when the clock is not the wall clock (tests move theirs by hand).
        self.poll_ms = poll_ms
        self.max_batch, self.retry_s = max_batch, retry_s
        self.produce_timeout_s = produce_timeout_s
        self.table = TimerTable()
        self.ready = asyncio.Event()  # set once the history is read and the log followed

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop`: rebuild from the log, then follow it and fire what falls due."""
        from streams.history import HistoryError
        from streams.kafka import keep_running

        def forget() -> None:
            self.table = TimerTable()
            self.ready.clear()

        await keep_running("timers", lambda: self._run(stop), stop, self.retry_s,
                           retry_on=(HistoryError,), on_restart=forget)

    async def _run(self, stop: asyncio.Event) -> None:
        from streams import metrics
        from streams.follower import Follower
        from streams.kafka import keyed_producer, stop_clients

        follower = Follower(self.settings, self.topics, self.db, max_records=self.max_batch)
        await follower.restore(lambda record: fold(self.table, self.codec, record.value), stop)
        if stop.is_set():
            return
        producer = keyed_producer(self.settings)
        failed = True
        try:
            await follower.start()
            log.info("timers: %d pending after reading %s", len(self.table.pending),
                     ", ".join(self.topics))
            self.ready.set()
            await self._fire_due(producer)
            metrics.TIMERS_PENDING.set(len(self.table.pending))
            # The wait is asked before each read: a timer due sooner than a poll shortens it.
            async for records in follower.batches(stop, wait_ms=self._wait_ms):
                for record in records:
                    fold(self.table, self.codec, record.value)
                await self._fire_due(producer)
                metrics.TIMERS_PENDING.set(len(self.table.pending))
            failed = False
        finally:
            await stop_clients(follower, producer, failed)

    def _wait_ms(self) -> int:
        next_due = self.table.next_due()
        if next_due is None:
            return self.poll_ms
        return max(0, min(self.poll_ms, next_due - self.clock()))

    async def _fire_due(self, producer: Producer) -> None:
        from streams import metrics
        from streams.kafka import produce_all

        while due := self.table.take_due(now_ms := self.clock(), self.max_batch):
            commands, fired = [], []
            for timer in due:
                error = None
                try:
                    if timer.request.target_topic not in self.targets:
                        raise PitError(f"timer {timer.timer_id}: unknown target topic"
                                       f" {timer.request.target_topic}")
                    commands.append(command_output(self.codec, timer, now_ms))
                except PitError as exc:
                    error = str(exc)
                    log.error("timer %s (%s) cannot fire: %s", timer.timer_id,
                              timer.request.owner, error)
                fired.append(timer_output(
                    self.codec, TimerFired(timer.timer_id, timer.due_at_ms, now_ms, error),
                    now_ms, correlation_id=timer.correlation_id,
                    causation_id=timer.scheduled_by))
            # The commands are acknowledged before any timer is recorded as fired.
            await produce_all(producer, commands, self.produce_timeout_s)
            await self._record_fired(producer, fired)
            metrics.TIMERS_FIRED.inc(len(commands))
            for timer in due:
                metrics.TIMER_LATENESS_SECONDS.observe((now_ms - timer.due_at_ms) / 1000)

    async def _record_fired(self, producer: Producer, fired: list[Output]) -> None:
        # Its own step, after the commands' acks: where tests inject a crash.
        from streams.kafka import produce_all

        await produce_all(producer, fired, self.produce_timeout_s)

