"""The processor runtime: runs a decider over Kafka.

Per batch of commands (aiokafka `getmany`): decode, drop duplicates, decide, evolve the
in-memory state, then produce every event and outcome, wait for the broker's acks, and only
then commit the command offsets. A crash anywhere redelivers the batch; the ledger of handled
command ids (rebuilt from the events and results topics on start) turns the redelivery into
acknowledgements with no second effect. On the embedded broker, which keeps nothing over a
restart, the events are also made durable in the database before the outcomes are produced
(`produce_archived`).

`Processor.handle` is the pure-ish core (no I/O): tests and benchmarks drive it directly.
Why not a Faust agent per event: its per-message send path is the bottleneck; a batch loop
on aiokafka's fetcher plus librdkafka's producer is several times faster on the same broker
(the figures, measured side by side: README, "Performance", the Faust paragraph).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from sqlalchemy import Engine

from schemas.codec import Codec
from streams import metrics
from streams.archive import AUDIT, keep_pending, prune_pending
from streams.decider import (
    MAX_ID_CHARS,
    Decided,
    Decider,
    Message,
    Rejection,
    from_record,
    to_record,
)
from streams.errors import BrokerUnavailableError, DatabaseUnavailableError, SchemaError
from streams.history import end_offsets, history_source, kafka_log_reader, latest_history
from streams.kafka import (
    BUSY_FETCH_WAIT_MS,
    getmany_ready,
    make_producer,
    produce_all,
    start_consumer,
    stop_clients,
)
from streams.log import LogRecord, source_headers
from streams.memory import ArchiveRecall, Forgotten, keep_bounded
from streams.recovery import CheckpointBook, RecordsMismatch, within_commands
from streams.sql import read_positions
from streams.topics import DEAD_LETTERS, OUTCOME, RESULTS

if TYPE_CHECKING:
    from confluent_kafka import Producer

    from streams.config import Settings

log = logging.getLogger(__name__)

LEDGER_SIZE = 1_000_000  # command ids remembered at most (without an archive to evict to)
# An event id is "<command id>/<index>" and must fit the views' id columns (MAX_ID_CHARS).
MAX_COMMAND_ID_CHARS = MAX_ID_CHARS - 8


@dataclass(frozen=True)
class Output:
    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()


def dead_letter(record: LogRecord, error_type: str, reason: str, by: str,
                component: str | None = None) -> Output:
    """A record that cannot be handled, for the dead-letter topic (counted in
    `pit_dead_letters_total`): its key, original bytes and headers, plus headers saying why
    (`pit.error`, `pit.error.type`), where it came from (`pit.source.*`) and who gave up on it
    (`pit.processor`: a processor's name, `projector`, `registry`)."""
    metrics.DEAD_LETTERS.labels(component or by, error_type).inc()
    headers = (
        ("pit.error", reason.encode("utf-8", "backslashreplace")),
        ("pit.error.type", error_type.encode()),
        *source_headers(record.topic, record.partition, record.offset),
        ("pit.processor", by.encode()),
    )
    return Output(DEAD_LETTERS, 0, record.key, record.value or b"", record.timestamp_ms,
                  record.headers + headers)


@dataclass
class Entity:
    """Runtime bookkeeping around one entity's decider state."""

    state: Any
    sequence: int = 0
    last_at_ms: int = 0


Fields = dict[str, Any]  # an event's decoded record, envelope included
Held = tuple[type[Message], Fields]  # an event held back by a restore, not converted yet


class Fold(Protocol):
    """How `Processor.restore` turns the events it reads into entity state: one strategy per
    kind of decider, chosen once (`Processor._restore_strategy`). The processor reads the
    records and keeps ledger and positions; the fold is told every outcome and event."""

    def outcome(self, record: LogRecord, command_id: str | None) -> None:
        """An outcome read; `command_id` when it is this processor's own decision (not a
        re-acknowledgement)."""

    def event(self, record: LogRecord, envelope: Fields, event_type: type[Message],
              fields: Fields) -> None:
        """An event of the decider read; `fields` is its decoded record."""

    def finish(self) -> None:
        """Every record was read."""


class PlainFold:
    """Every event evolves its entity's state as it is read."""

    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    def outcome(self, record: LogRecord, command_id: str | None) -> None:
        pass

    def event(self, record: LogRecord, envelope: Fields, event_type: type[Message],
              fields: Fields) -> None:
        self.processor._apply(envelope, from_record(event_type, fields))

    def finish(self) -> None:
        pass


class _Tail:
    """An entity's events held back by a restore: its last snapshot read, if any, and the
    events after it."""

    __slots__ = ("events", "snapshot")

    def __init__(self, snapshot: Held | None) -> None:
        self.snapshot = snapshot
        self.events: list[Held] = []

    @property
    def complete(self) -> bool:
        """Read from where the entity's restore may start: a snapshot or its first event."""
        return self.snapshot is not None or (
            bool(self.events) and self.events[0][1]["envelope"]["sequence"] == 1)


class SnapshotFold:
    """For a decider that takes checkpoints (`Decider.snapshots`): an entity's events are
    held back, not evolved; a snapshot drops what was held and becomes the entity's starting
    point, and only once the records are read is each entity's state rebuilt from its last
    snapshot plus the events after it. Every record is still read (the ledger and positions
    need all of them), but the evolve work - what grows with a long execution - is only the
    tail since the last snapshot. The price is holding the decoded tails in memory."""

    def __init__(self, processor: Processor, from_snapshot: Callable[[Message], Any]) -> None:
        self.processor, self.from_snapshot = processor, from_snapshot
        self.snapshots = processor.decider.snapshots
        self.tails: dict[str, _Tail] = {}

    def outcome(self, record: LogRecord, command_id: str | None) -> None:
        pass

    def event(self, record: LogRecord, envelope: Fields, event_type: type[Message],
              fields: Fields) -> None:
        self._hold(envelope, event_type, fields)

    def finish(self) -> None:
        for key, tail in self.tails.items():
            entity = self.processor.entities[key]
            entity.state = self._rebuilt(entity.state, tail)

    def _hold(self, envelope: Fields, event_type: type[Message], fields: Fields) -> bool:
        """Keep an event for the fold (converted only if it is folded); the entity's position
        advances now. True when the entity's restore may start here: a snapshot, or its first
        event."""
        key = envelope["entity_key"]
        entity = self.processor.entity(key)
        entity.sequence = envelope["sequence"]
        entity.last_at_ms = max(entity.last_at_ms, envelope["occurred_at"])
        if issubclass(event_type, self.snapshots):
            self.tails[key] = _Tail((event_type, fields))
            return True
        tail = self.tails.get(key)
        if tail is None:
            tail = self.tails[key] = _Tail(None)
        tail.events.append((event_type, fields))
        return envelope["sequence"] == 1

    def _rebuilt(self, state: Any, tail: _Tail) -> Any:
        if tail.snapshot is not None:
            state = self.from_snapshot(from_record(*tail.snapshot))
        evolve = self.processor.decider.evolve
        for event_type, fields in tail.events:
            state = evolve(state, from_record(event_type, fields),
                           fields["envelope"]["occurred_at"])
        return state


class CheckpointTopicFold(SnapshotFold):
    """For a decider with a checkpoint topic (rules: streams/recovery.py), whose records may
    start late: the snapshot fold, telling the book what it read (events, outcomes, where an
    entity's restore may start, each entity folded). Entities the book holds as their ended
    marker fold nothing; an entity read without its start is not folded (the records do not
    fit the log); one that ended is held as its `final` record."""

    def __init__(self, processor: Processor, from_snapshot: Callable[[Message], Any],
                 book: CheckpointBook) -> None:
        super().__init__(processor, from_snapshot)
        self.book = book
        self.where: dict[str, int] = {}  # entity -> its partition
        self.command: dict[int, tuple[str, int]] = {}  # partition -> (command, its 1st event)

    def outcome(self, record: LogRecord, command_id: str | None) -> None:
        self.book.saw_outcome(record.partition, record.offset, command_id)

    def event(self, record: LogRecord, envelope: Fields, event_type: type[Message],
              fields: Fields) -> None:
        partition, key, cause = record.partition, envelope["entity_key"], envelope["causation_id"]
        self.book.saw_event(partition, record.offset)
        if self.command.get(partition, ("",))[0] != cause:
            self.command[partition] = (cause, record.offset)
        if self.book.holds(partition, key):
            return  # restored from its ended marker: only the ledger learns from it
        if self._hold(envelope, event_type, fields):
            self.book.saw_start(partition, key, self.command[partition][1], cause)
        self.where[key] = partition

    def finish(self) -> None:
        spec = self.book.spec
        for key, tail in self.tails.items():
            if not tail.complete:
                self.book.saw_entity(self.where[key], key, False, None, 0, 0)
                continue
            entity = self.processor.entities[key]
            state = self._rebuilt(entity.state, tail)
            final = spec.final(state)
            if final is not None:
                state = spec.from_final(final)
            self.book.saw_entity(self.where[key], key, True, final, entity.sequence,
                                 entity.last_at_ms)
            entity.state = state


@dataclass
class Processor:
    decider: Decider
    codec: Codec
    name: str = ""
    entities: dict[str, Entity] = field(default_factory=dict)
    ledger: OrderedDict[str, dict] = field(default_factory=OrderedDict)
    # command partition -> offset of the last command answered: where to resume when the
    # group's committed offsets are gone (the embedded broker restarts empty)
    positions: dict[int, int] = field(default_factory=dict)
    # the checkpoint topic's bookkeeping, for a decider with snapshots and a checkpoint topic
    book: CheckpointBook | None = field(default=None, init=False, repr=False, compare=False)
    # Memory (streams/memory.py): the ended entities in `entities`, oldest end first; the
    # keys and command ids evicted; where evicted ones come back from (None: nothing is
    # evicted); and a count of restores, so an eviction planned before one is dropped.
    ended: dict[str, None] = field(default_factory=dict, repr=False, compare=False)
    forgotten: Forgotten = field(default_factory=Forgotten, repr=False, compare=False)
    recall: ArchiveRecall | None = field(default=None, repr=False, compare=False)
    generation: int = field(default=0, repr=False, compare=False)
    _fold: Callable[[], Fold] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.name = self.name or f"{self.decider.name}-processor"
        if self.decider.checkpoint_topic is not None and self.decider.snapshots:
            self.book = CheckpointBook(self.decider, self.codec, self.name)
        self._fold = self._restore_strategy()
        component = self.decider.name
        self._latency = metrics.PROCESSING_SECONDS.labels(component)
        self._decided_count = {status: metrics.COMMANDS.labels(component, status)
                               for status in ("accepted", "rejected", "duplicate")}

    def forget(self) -> None:
        """Drop everything held in memory; the log is the truth to restore from."""
        self.entities.clear()
        self.ledger.clear()
        self.positions.clear()
        self.ended.clear()
        self.generation += 1
        if self.book is not None:
            self.book.forget()

    def entity(self, key: str) -> Entity:
        found = self.entities.get(key)
        if found is None:
            found = self.entities[key] = Entity(self.decider.initial_state(key))
        return found

    def state(self, key: str) -> Any:
        return self.entity(key).state

    def _restore_strategy(self) -> Callable[[], Fold]:
        """How `restore` turns events into state, by what the decider takes."""
        decider = self.decider
        if not decider.snapshots:
            return partial(PlainFold, self)
        if decider.from_snapshot is None:
            raise ValueError(f"the {decider.name} decider has snapshots but no from_snapshot")
        if self.book is None:
            return partial(SnapshotFold, self, decider.from_snapshot)
        return partial(CheckpointTopicFold, self, decider.from_snapshot, self.book)

    # --- restoring from the log ------------------------------------------------------------

    def restore(self, records: Iterable[LogRecord]) -> int:
        """Fold past events and outcomes into state and ledger; returns records applied.

        Every record teaches the ledger and positions the same way; how events become state
        is the decider's restore strategy (`Fold`): evolved as read (`PlainFold`), from each
        entity's last snapshot (`SnapshotFold`), or from what its checkpoint topic says
        (`CheckpointTopicFold`)."""
        fold = self._fold()
        applied = 0
        for record in records:
            if record.value is None:
                continue  # a tombstone (a restore's placeholder)
            try:
                decoded = self.codec.decode(record.value)
            except SchemaError:
                continue  # it was dead-lettered when it was first read
            if decoded.name == OUTCOME:
                # Re-acknowledgements (duplicate=True) repeat an outcome already remembered.
                outcome = decoded.record
                mine = outcome["processor"] == self.name
                if mine:
                    self._advance(outcome["command_partition"], outcome["command_offset"])
                    if not outcome["duplicate"]:
                        self._remember(outcome["command_id"], outcome)
                fold.outcome(record, outcome["command_id"]
                             if mine and not outcome["duplicate"] else None)
                continue
            event_type = self.decider.event_type(decoded.name)
            if event_type is None:
                continue
            envelope = decoded.record["envelope"]
            fold.event(record, envelope, event_type, decoded.record)
            accepted = self.ledger.get(envelope["causation_id"])
            if accepted is None:
                accepted = self._outcome(envelope["causation_id"], "", envelope["entity_key"],
                                         envelope["occurred_at"], event_ids=[])
                self._remember(envelope["causation_id"], accepted)
            if envelope["event_id"] not in accepted["event_ids"]:  # restores may repeat
                accepted["event_ids"].append(envelope["event_id"])
            applied += 1
        fold.finish()
        self._note_ended()
        return applied

    def restore_partitions(self, partitions: Collection[int],
                           read: Callable[[str, dict[int, int]], Iterable[LogRecord]],
                           checkpoints: Sequence[LogRecord],
                           ends: Mapping[tuple[str, int], int],
                           now_ms: int) -> tuple[int, list[Output]]:
        """Restore partitions from their checkpoint records (rules: streams/recovery.py).
        `read(topic, {partition: first offset})` reads a topic's history from there on,
        `checkpoints` are the partitions' latest checkpoint records, `ends` the end of each
        event and results partition. Returns the records applied and what to write to the
        checkpoint topic now. Partitions whose records do not fit the log are restored again,
        in full."""
        book = self.book
        if book is None:
            raise ValueError(f"the {self.decider.name} decider has no checkpoint topic")
        distrust: set[int] = set()
        while True:
            floors = book.plan(checkpoints, ends, partitions, distrust)
            for point in book.held():
                self.entities[point.entity_key] = Entity(
                    book.spec.from_final(point.final), point.sequence, point.last_at)
            applied = self.restore(read(self.decider.event_topic, {
                p: floor.events_from for p, floor in floors.items()}))
            applied += self.restore(read(RESULTS, {
                p: floor.results_from for p, floor in floors.items()}))
            try:
                return applied, book.finish(self.positions, ends, now_ms)
            except RecordsMismatch as mismatch:
                log.warning("%s: %s; restoring them from the whole log", self.name, mismatch)
                distrust |= mismatch.partitions
                self.entities.clear()

    # --- memory (streams/memory.py) ---------------------------------------------------------

    def _note_ended(self) -> None:
        """After a restore: which entities in memory ended (a restore holds every one)."""
        self.generation += 1
        spec = self.book.spec if self.book is not None else None
        if spec is None:
            return
        self.ended = {key: None for key in self.ended if key in self.entities}
        for key, entity in self.entities.items():
            if key not in self.ended and spec.final(entity.state) is not None:
                self.ended[key] = None

    def eviction_candidates(self, ended_kept: int, ledger_kept: int
                            ) -> tuple[list[str], list[str]]:
        """The ended entities beyond the `ended_kept` most recently ended, and the command
        ids beyond the `ledger_kept` most recent outcomes, oldest first (for `evict` once the
        archive holds them); none without an archive to recall them from."""
        if self.recall is None:
            return [], []
        keys = list(islice(self.ended, max(0, len(self.ended) - ended_kept)))
        command_ids = list(islice(self.ledger, max(0, len(self.ledger) - ledger_kept)))
        return keys, command_ids

    def evict(self, keys: Iterable[str], command_ids: Iterable[str]) -> None:
        """Drop these ended entities and outcomes from memory (the archive holds them:
        `recall` brings them back when a command needs them)."""
        for key in keys:
            if key in self.ended:
                del self.ended[key]
                self.entities.pop(key, None)
                self.forgotten.add(key)
        for command_id in command_ids:
            if self.ledger.pop(command_id, None) is not None:
                self.forgotten.add(command_id)

    def _known(self, command_id: str) -> dict | None:
        """The outcome of a command already decided: remembered, or recalled if evicted."""
        known = self.ledger.get(command_id)
        if known is None and self.recall is not None and command_id in self.forgotten:
            known = self.recall.outcome(command_id)
            if known is not None:
                self._remember(command_id, known)
        return known

    def _held(self, key: str) -> Entity | None:
        """The entity in memory, or recalled if it was evicted (it comes back ended)."""
        found = self.entities.get(key)
        if found is None and self.recall is not None and key in self.forgotten:
            recalled = self.recall.entity(key)
            if recalled is not None:
                found = self.entities[key] = Entity(*recalled)
                self.ended[key] = None
        return found

    def _apply(self, envelope: dict, event: Message, *, evolved: bool = False) -> None:
        """`evolved`: the entity's state has this event applied already (`Decided`)."""
        entity = self.entity(envelope["entity_key"])
        if not evolved:
            entity.state = self.decider.evolve(entity.state, event, envelope["occurred_at"])
        entity.sequence = envelope["sequence"]
        entity.last_at_ms = max(entity.last_at_ms, envelope["occurred_at"])

    def _remember(self, command_id: str, outcome: dict) -> None:
        self.ledger[command_id] = outcome
        if len(self.ledger) > LEDGER_SIZE:
            self.ledger.popitem(last=False)

    # --- deciding --------------------------------------------------------------------------

    def handle(self, records: Iterable[LogRecord]) -> list[Output]:
        """Decide a batch of command records; returns what must be produced, in order."""
        outputs: list[Output] = []
        if self.book is not None:
            self.book.begin()
        for record in records:
            started = time.perf_counter()
            outputs.extend(self._handle_one(record, len(outputs)))
            self._latency.observe(time.perf_counter() - started)
        return outputs

    def _advance(self, partition: int, offset: int) -> None:
        if offset > self.positions.get(partition, -1):
            self.positions[partition] = offset

    def _handle_one(self, record: LogRecord, base: int) -> list[Output]:
        """The outputs of one command; `base` is where they go in the batch's outputs."""
        if record.value is None:
            return []  # a tombstone says nothing to a command topic
        try:
            decoded = self.codec.decode(record.value)
        except SchemaError as exc:
            return [self._dead_letter(record, exc)]
        meta = decoded.record.get("meta")
        command_type = self.decider.command_type(decoded.name)
        if meta is None:
            return [self._dead_letter(record, SchemaError(f"{decoded.name} is not a command"))]
        command_id = meta["command_id"]
        known = self._known(command_id)
        if known is not None:
            self._decided_count["duplicate"].inc()
            return [self._result(record, {**known, "duplicate": True})]
        now_ms = record.timestamp_ms
        if not 0 < len(command_id) <= MAX_COMMAND_ID_CHARS or "\x00" in command_id:
            outcome = self._outcome(command_id, decoded.name.rsplit(".", 1)[-1], "", now_ms,
                                    reason=f"a command id has 1 to {MAX_COMMAND_ID_CHARS}"
                                    " characters and no NUL")
            return self._decided(record, outcome)
        if command_type is None:
            outcome = self._outcome(command_id, decoded.name, "", now_ms, reason=(
                f"{decoded.name} is not a command of the {self.decider.name} processor"))
            return self._decided(record, outcome)
        try:
            command = from_record(command_type, decoded.record)
        except (SchemaError, TypeError, ValueError) as exc:  # a record its class cannot take
            outcome = self._outcome(command_id, command_type.__name__, "", now_ms,
                                    reason=str(exc))
            return self._decided(record, outcome)
        key = self.decider.entity_of(command)
        entity = self._held(key) or Entity(self.decider.initial_state(key))
        now_ms = max(now_ms, entity.last_at_ms)  # per-entity time never runs backwards
        try:
            events = self.decider.decide(entity.state, command, now_ms)
        except Rejection as rejection:
            outcome = self._outcome(command_id, command.type_name, key, now_ms,
                                    reason=rejection.reason)
            return self._decided(record, outcome)
        except Exception as exc:  # a decider bug must not wedge the partition
            log.exception("decider %s failed on %s", self.decider.name, command_id)
            outcome = self._outcome(command_id, command.type_name, key, now_ms,
                                    reason=f"internal error: {exc!r}")
            return [self._dead_letter(record, exc), *self._decided(record, outcome)]
        correlation_id = meta.get("correlation_id") or command_id
        encoded: list[tuple[dict, Message, bytes]] = []
        try:  # every event encodes before any is applied: a decision is taken whole or not
            for index, event in enumerate(events):
                envelope = {
                    "event_id": f"{command_id}/{index}",  # deterministic: replays agree
                    "event_type": event.type_name,
                    "entity_key": key,
                    "sequence": entity.sequence + 1 + index,
                    "correlation_id": correlation_id,
                    "causation_id": command_id,
                    "occurred_at": now_ms,
                    "producer": self.name,
                }
                encoded.append((envelope, event, self.codec.encode(
                    event.avro_name, {"envelope": envelope, **to_record(event)})))
        except SchemaError as exc:  # the decider let through a value its events cannot hold
            log.error("decider %s decided an unencodable event on %s: %s", self.decider.name,
                      command_id, exc)
            outcome = self._outcome(command_id, command.type_name, key, now_ms,
                                    reason=f"internal error: {exc}")
            return [self._dead_letter(record, exc), *self._decided(record, outcome)]
        self.entities.setdefault(key, entity)
        applied = 0
        if isinstance(events, Decided):  # the decision evolved its first events already
            entity.state, applied = events.state, events.applied
        outputs: list[Output] = []
        event_ids: list[str] = []
        start = -1  # the output that starts the entity's restore (a snapshot, its first event)
        for index, (envelope, event, value) in enumerate(encoded):
            if envelope["sequence"] == 1 or isinstance(event, self.decider.snapshots):
                start = len(outputs)
            self._apply(envelope, event, evolved=index < applied)
            event_ids.append(envelope["event_id"])
            # Kafka key: the event's subject (a model, host, request), so the log can be
            # searched by it; the envelope names the deciding entity; the partition is the
            # command's, so an entity's events stay in order on one partition.
            outputs.append(Output(self.decider.event_topic, record.partition,
                                  event.entity_key.encode(), value, now_ms))
        outcome = self._outcome(command_id, command.type_name, key, now_ms, event_ids=event_ids)
        if self.book is not None and events and self._book_changes(
                self.book, record.partition, key, entity, base, base + len(outputs), start >= 0):
            self.ended[key] = None
        return outputs + self._decided(record, outcome)

    @staticmethod
    def _book_changes(book: CheckpointBook, partition: int, key: str, entity: Entity,
                      first: int, outcome: int, started: bool) -> bool:
        """Tell the checkpoint book what this decision changed: a new start of the entity's
        restore (its events hold a snapshot or its first event; the restore reads from the
        first of them, outputs[first], so it meets all of this command's events), or its end
        (then no command changes it again: True)."""
        final = book.spec.final(entity.state)
        if final is not None:
            book.ended(partition, key, final, entity.sequence, entity.last_at_ms)
            return True
        if started:
            book.started(partition, key, first, outcome)
        return False

    def _decided(self, record: LogRecord, outcome: dict) -> list[Output]:
        self._decided_count[outcome["status"].lower()].inc()
        self._remember(outcome["command_id"], outcome)
        return [self._result(record, outcome)]

    def _outcome(self, command_id: str, command_type: str, key: str, now_ms: int, *,
                 reason: str | None = None, event_ids: list[str] | None = None) -> dict:
        return {
            "command_id": command_id, "command_type": command_type, "entity_key": key,
            "status": "REJECTED" if reason is not None else "ACCEPTED", "duplicate": False,
            "reason": reason, "event_ids": event_ids or [], "decided_at": now_ms,
            "processor": self.name,
        }

    def _result(self, record: LogRecord, outcome: dict) -> Output:
        """The outcome answering this command record, which it names (so the results topic
        also records how far the processor got)."""
        self._advance(record.partition, record.offset)
        answer = {**outcome, "command_partition": record.partition,
                  "command_offset": record.offset}
        return Output(RESULTS, record.partition, outcome["command_id"].encode(),
                      self.codec.encode(OUTCOME, answer), outcome["decided_at"])

    def _dead_letter(self, record: LogRecord, error: Exception) -> Output:
        return dead_letter(record, type(error).__name__, str(error), self.name,
                           self.decider.name)


def processor_group(decider: Decider) -> str:
    """The consumer group of the decider's processors."""
    return f"pit.{decider.name}.processor"


async def restore_partitions(processor: Processor, settings: Settings, engine: Engine | None,
                             partitions: set[int]) -> tuple[int, list[Output]]:
    """Rebuild state and ledger for these partitions from their history (archive, then
    Kafka): events first, then outcomes. Entities with checkpoints evolve only the events
    after their last one (`Processor.restore`). With a checkpoint topic, only the recent
    history is read (`Processor.restore_partitions`); returns the records applied and the
    checkpoint records to write before deciding."""
    def read(topic: str, starts: dict[int, int] | None = None) -> Iterable[LogRecord]:
        chosen = set(starts) if starts is not None else partitions
        reader = kafka_log_reader(settings, [topic], partitions=chosen)
        return history_source(engine, [topic], reader, partitions=chosen, starts=starts)

    def restore() -> tuple[int, list[Output]]:
        decider, book = processor.decider, processor.book
        commands = end_offsets(settings, [(decider.command_topic, p) for p in sorted(partitions)])
        if book is None:
            applied = processor.restore(read(decider.event_topic)) + processor.restore(
                read(RESULTS))
            within_commands(processor.positions, commands, decider.command_topic)
            return applied, []
        topic = book.spec.topic
        checkpoints = latest_history(engine, topic, kafka_log_reader(
            settings, [topic], partitions=partitions), partitions)
        ends = end_offsets(settings, [(t, p) for t in (decider.event_topic, RESULTS)
                                      for p in sorted(partitions)])
        return processor.restore_partitions(partitions, read, checkpoints, ends | commands,
                                            int(time.time() * 1000))

    return await asyncio.to_thread(restore)


async def resume_after_answered(consumer: AIOKafkaConsumer, processor: Processor,
                                partitions: set[int]) -> None:
    """Never re-read commands the results topic shows as answered, even when the group's
    committed offsets are older or gone (a restored embedded broker has none)."""
    for partition in partitions:
        answered = processor.positions.get(partition)
        if answered is None:
            continue
        tp = TopicPartition(processor.decider.command_topic, partition)
        committed = await consumer.committed(tp)
        if committed is None or committed <= answered:
            consumer.seek(tp, answered + 1)


async def run_processor(processor: Processor, settings: Settings, engine: Engine | None,
                        stop: asyncio.Event, ready: asyncio.Event | None = None,
                        max_records: int = 5000, *,
                        produce_timeout_s: float = 30.0, retry_s: float = 1.0,
                        archive_first: ArchiveFirst | None = None,
                        fetch_max_wait_ms: int = BUSY_FETCH_WAIT_MS) -> None:
    """Consume the decider's command topic until `stop` is set (then finish the batch).

    With `archive_first` (the embedded broker, which keeps nothing over a restart), each
    batch's events are made durable before its outcomes are published (`produce_archived`):
    a client never sees *accepted* for events a kill could lose.

    When Kafka fails under it (a produce that cannot be acknowledged, a lost connection),
    or the archive cannot be written, the processor does not guess what landed: it forgets
    its state, waits, and starts over from the log - state, ledger and positions restored,
    uncommitted commands redelivered and answered (acknowledged again where their events
    had already landed).

    With a database (the archive), what it holds in memory stays bounded (streams/memory.py).

    `fetch_max_wait_ms`: how long the broker may hold a fetch that finds nothing. The
    embedded broker holds it that long even when a command arrives meanwhile, hence the
    short default; `pit up` on a cluster, which answers at once, passes a long one
    (`streams.kafka.path_fetch_wait_ms`)."""
    if engine is not None:
        processor.recall = ArchiveRecall(engine, processor.decider, processor.codec,
                                         processor.name)
        bounded = asyncio.create_task(keep_bounded(processor, processor.recall, stop),
                                      name=f"{processor.name}-memory")
    try:
        await _run_processor(processor, settings, engine, stop, ready, max_records,
                             produce_timeout_s, retry_s, archive_first, fetch_max_wait_ms)
    finally:
        if engine is not None:
            bounded.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await bounded


async def _run_processor(processor: Processor, settings: Settings, engine: Engine | None,
                         stop: asyncio.Event, ready: asyncio.Event | None, max_records: int,
                         produce_timeout_s: float, retry_s: float,
                         archive_first: ArchiveFirst | None, fetch_max_wait_ms: int) -> None:
    while True:
        try:
            await _consume(processor, settings, engine, stop, ready, max_records,
                           produce_timeout_s, archive_first, fetch_max_wait_ms)
            return
        except (BrokerUnavailableError, KafkaError, DatabaseUnavailableError) as exc:
            if stop.is_set():
                raise
            log.warning("%s: %s; restarting from the log in %.1f s", processor.name, exc,
                        retry_s)
            metrics.PROCESSOR_RESTARTS.labels(processor.decider.name).inc()
            processor.forget()
            await asyncio.sleep(retry_s)


PRUNE_EVERY_S = 10.0  # how often pending records the archive caught up with are removed

# The embedded broker keeps the newest ~5 MiB of a partition and drops older records whether
# or not they are archived: a processor waits before it writes more than this ahead of the
# archive on one partition (`Unarchived`).
ARCHIVE_AHEAD_BYTES = 2 << 20
RECORD_OVERHEAD_BYTES = 64  # what a record costs the broker beside its key, value and headers
ARCHIVE_POLL_S = 0.02  # how often a waiting processor looks at the archive's positions
ARCHIVE_SAY_EVERY_S = 10.0  # a wait that lasts says so again this often


def logged_size(key: bytes | None, value: bytes | None,
                headers: Iterable[tuple[str, bytes]]) -> int:
    """About what one record takes of a partition's window on the embedded broker."""
    return (RECORD_OVERHEAD_BYTES + len(key or b"") + len(value or b"")
            + sum(len(name) + len(data) for name, data in headers))


@dataclass
class Unarchived:
    """The events written and not yet seen archived, per partition: what a processor's next
    batch would add to what the embedded broker must still hold for the projector.

    Why: the mock broker keeps only the newest ~5 MiB of a partition (streams/broker.py). A
    projector that fell that far behind (the machine saturated, a 10,000-node workflow's
    events all on one partition) found its position gone: aiokafka jumped it ahead, the
    archive - the durable copy - had a hole, and the pending records in it were pruned as
    archived. So a processor waits until the archive is within `limit` bytes on the
    partitions it is about to write (a batch larger than that goes once nothing is ahead).
    Positions are read from the archive when the bytes counted would pass the limit (about
    once per `limit` of events) and with the pending records' prune (`ArchiveFirst.keep`)."""

    limit: float = ARCHIVE_AHEAD_BYTES  # inf: never wait (a bench with no projector)
    # per partition, one entry per batch kept: (its last offset there, its bytes there)
    written: dict[tuple[str, int], deque[tuple[int, int]]] = field(default_factory=dict)
    ahead: Counter[tuple[str, int]] = field(default_factory=Counter)

    def kept(self, records: Iterable[LogRecord], sizes: Mapping[tuple[str, int], int]
             ) -> None:
        """A batch's records, made durable, and their bytes per partition (`logged_size`):
        a batch counts as ahead until all of it is archived (one entry per partition, not
        per record)."""
        last: dict[tuple[str, int], int] = {}
        for record in records:
            where = (record.topic, record.partition)
            last[where] = max(record.offset, last.get(where, -1))
        for where, offset in last.items():
            self.written.setdefault(where, deque()).append((offset, sizes[where]))
            self.ahead[where] += sizes[where]

    def archived(self, positions: Mapping[tuple[str, int], int]) -> None:
        """Forget what the archive holds (its positions: the last offset archived)."""
        for where, written in self.written.items():
            archived = positions.get(where, -1)
            while written and written[0][0] <= archived:
                self.ahead[where] -= written.popleft()[1]

    def over(self, adding: Mapping[tuple[str, int], int]) -> list[tuple[str, int]]:
        """The partitions where writing `adding` bytes would put more than `limit` ahead."""
        return [where for where, size in adding.items()
                if self.ahead[where] and self.ahead[where] + size > self.limit]


@dataclass
class ArchiveFirst:
    """What the processors of one `pit up` on the embedded broker (which keeps nothing over
    a restart) share to make their events durable before their outcomes: the pending
    records (`pending_db`, `streams.archive.pending_engine`), written by one processor at a
    time (`gate`: no writer waits on SQLite's lock), the archive (`engine`) that says
    which of them can go, and how far the events are ahead of it (`unarchived`)."""

    engine: Engine
    pending_db: Engine
    gate: asyncio.Lock = field(default_factory=asyncio.Lock)
    pruned_at: float = field(default_factory=time.monotonic)
    unarchived: Unarchived = field(default_factory=Unarchived)

    def keep(self, records: Sequence[LogRecord], sizes: Mapping[tuple[str, int], int]
             ) -> None:
        """Make `records` durable; `sizes`: their bytes per partition (`EventChunk`)."""
        keep_pending(self.pending_db, records)
        self.unarchived.kept(records, sizes)
        if time.monotonic() - self.pruned_at >= PRUNE_EVERY_S:
            prune_pending(self.engine, self.pending_db)
            # what quiet partitions keep stays small too
            self.unarchived.archived(read_positions(self.engine, AUDIT))
            self.pruned_at = time.monotonic()

    async def room_for(self, name: str, adding: Mapping[tuple[str, int], int]) -> None:
        """Wait until writing `adding` bytes (per partition) keeps every partition within
        the unarchived limit (`Unarchived`); a wait is logged and counted (`name`: the
        decider's). Unbounded: with the projector stopped, the processor stops too rather
        than have the broker drop what is not archived."""
        unarchived = self.unarchived
        if not unarchived.over(adding):
            return
        started = said = time.monotonic()
        waited = False
        while True:
            unarchived.archived(await asyncio.to_thread(read_positions, self.engine, AUDIT))
            over = unarchived.over(adding)
            if not over:
                break
            now = time.monotonic()
            if not waited:
                metrics.ARCHIVE_WAITS.labels(name).inc()  # counted as it starts: a stuck one shows
            if not waited or now - said >= ARCHIVE_SAY_EVERY_S:
                topic, partition = over[0]
                log.warning("%s processor: waiting for the archive, %.1f MiB of %s[%d] not"
                            " archived yet (is the projector running?)", name,
                            unarchived.ahead[over[0]] / (1 << 20), topic, partition)
                said, waited = now, True
            await asyncio.sleep(ARCHIVE_POLL_S)
        if waited:
            metrics.ARCHIVE_WAIT_SECONDS.labels(name).inc(time.monotonic() - started)
            log.info("%s processor: the archive caught up after %.1f s; writing again", name,
                     time.monotonic() - started)


class EventChunk(NamedTuple):
    """Events of whole commands written together: their indexes among a batch's outputs,
    and their bytes per partition (`logged_size`, reckoned once per event)."""

    indexes: list[int]
    sizes: Counter[tuple[str, int]]


def event_chunks(outputs: Sequence[Output], topic: str, limit: float) -> list[EventChunk]:
    """The outputs on `topic` (the events), in order, cut into chunks of whole commands - a
    command's events are consecutive, its outcome after them - that put at most `limit`
    bytes on any one partition; a command's events over the limit make a chunk of their
    own. Most batches are one chunk."""
    chunks: list[EventChunk] = []
    chunk = EventChunk([], Counter())
    run: list[int] = []

    def close_run() -> None:
        nonlocal chunk
        adding: Counter[tuple[str, int]] = Counter()
        for i in run:
            out = outputs[i]
            adding[(out.topic, out.partition)] += logged_size(out.key, out.value, out.headers)
        sizes = chunk.sizes
        if chunk.indexes and (max(sizes.values()) > limit  # one command's, over it alone
                              or any(sizes[where] + size > limit
                                     for where, size in adding.items())):
            chunks.append(chunk)
            chunk = EventChunk([], Counter())
        chunk.indexes.extend(run)
        chunk.sizes.update(adding)
        run.clear()

    for i, out in enumerate(outputs):
        if out.topic == topic:
            run.append(i)
        elif run:
            close_run()
    if run:
        close_run()
    if chunk.indexes:
        chunks.append(chunk)
    return chunks


async def produce_archived(producer: Producer, outputs: Sequence[Output], processor: Processor,
                           durable: ArchiveFirst, timeout_s: float) -> list[int]:
    """Produce a batch's outputs with its events durable first: the events are produced and
    written to the pending records (`streams.archive.keep_pending`, one transaction) before
    the outcomes, dead letters and checkpoint requests go out. Returns each output's offset,
    in order.

    Events more than the embedded broker may hold unarchived go in chunks of whole commands
    (`event_chunks`), each once the archive has room for it (`ArchiveFirst.room_for`), each
    made durable in a transaction of its own: a crash between two leaves whole commands
    decided and the rest redelivered.

    On SQLite the write runs on the event loop: a small insert into a file of its own takes
    about a millisecond, while handing it to a thread cost a GIL switch interval or more
    beside the projector's thread (the processor's round trip is on every workflow hop).
    What others derive from the events before they are durable (a task relayed from a
    NodeScheduled) may be archived first; a restore leaves such a record out when its source
    did not survive (`streams.app.restore_broker`)."""
    topic = processor.decider.event_topic
    offsets = [-1] * len(outputs)
    for chunk in event_chunks(outputs, topic, durable.unarchived.limit):
        events = [outputs[i] for i in chunk.indexes]
        got: list[int] = []
        await durable.room_for(processor.decider.name, chunk.sizes)
        async with durable.gate:
            await produce_all(producer, events, timeout_s, offsets=got)
            records = [LogRecord(topic, out.partition, offset, out.timestamp_ms, out.key,
                                 out.value, out.headers)
                       for out, offset in zip(events, got, strict=True)]
            if durable.pending_db.url.get_backend_name() == "sqlite":
                durable.keep(records, chunk.sizes)
            else:
                await asyncio.to_thread(durable.keep, records, chunk.sizes)
        for i, offset in zip(chunk.indexes, got, strict=True):
            offsets[i] = offset
    rest = [i for i, out in enumerate(outputs) if out.topic != topic]
    got = []
    await produce_all(producer, [outputs[i] for i in rest], timeout_s, offsets=got)
    for i, offset in zip(rest, got, strict=True):
        offsets[i] = offset
    return offsets


async def _consume(processor: Processor, settings: Settings, engine: Engine | None,
                   stop: asyncio.Event, ready: asyncio.Event | None, max_records: int,
                   produce_timeout_s: float, archive_first: ArchiveFirst | None,
                   fetch_max_wait_ms: int) -> None:
    group = processor_group(processor.decider)
    restoring: list[set[int]] = []
    settled = asyncio.Event()  # clear from deciding a batch until its outputs are acknowledged
    settled.set()

    class Restore(ConsumerRebalanceListener):
        async def on_partitions_revoked(self, revoked: AbstractSet[TopicPartition]) -> None:
            # Another `pit up` may be assigned these partitions next and restore them from
            # the log: the batch in flight lands first, or it would decide it again.
            await settled.wait()

        async def on_partitions_assigned(self, assigned: AbstractSet[TopicPartition]) -> None:
            restoring.append({tp.partition for tp in assigned})

    consumer = await start_consumer(settings, group_id=group, auto_offset_reset="earliest",
                                    fetch_max_wait_ms=fetch_max_wait_ms,
                                    max_partition_fetch_bytes=4 << 20)
    consumer.subscribe([processor.decider.command_topic], listener=Restore())
    producer = make_producer(settings)
    failed = True
    try:
        while not stop.is_set():
            batch = await getmany_ready(consumer, 50, max_records)
            if restoring:
                # A (re)assignment: forget what others may have changed, rebuild, then decide.
                partitions = set().union(*restoring)
                restoring.clear()
                processor.entities.clear()
                if processor.book is not None:
                    processor.book.forget()
                applied, written = await restore_partitions(processor, settings, engine,
                                                            partitions)
                await produce_all(producer, written, produce_timeout_s)
                log.info("%s restored %d events for partitions %s", processor.name, applied,
                         sorted(partitions))
                await resume_after_answered(consumer, processor, partitions)
                if ready is not None:
                    ready.set()
            # Records fetched before a restore may already be answered: skip those.
            records = [LogRecord.from_kafka(m) for messages in batch.values() for m in messages
                       if m.offset > processor.positions.get(m.partition, -1)]
            if not records:
                if ready is not None and consumer.assignment():
                    ready.set()
                continue
            metrics.EVENTS_IN.labels(processor.decider.name, processor.decider.command_topic
                                     ).inc(len(records))
            settled.clear()
            outputs = processor.handle(records)
            book = processor.book
            offsets: list[int] = []
            if archive_first is not None:
                offsets = await produce_archived(producer, outputs, processor, archive_first,
                                                 produce_timeout_s)
            else:
                await produce_all(producer, outputs, produce_timeout_s,
                                  offsets=None if book is None else offsets)
            if book is not None:  # where the next restore starts, written before the commit
                written = book.written(outputs, offsets, processor.positions,
                                       int(time.time() * 1000))
                if written:  # most batches change no start and leave the marks near enough
                    await produce_all(producer, written, produce_timeout_s)
                    outputs = outputs + written
            for topic, count in Counter(out.topic for out in outputs).items():
                metrics.EVENTS_OUT.labels(processor.decider.name, topic).inc(count)
            await consumer.commit()
            settled.set()
            for tp in consumer.assignment():
                high = consumer.highwater(tp)
                if high is not None:
                    metrics.CONSUMER_LAG.labels(group, tp.topic, tp.partition).set(
                        max(0, high - await consumer.position(tp)))
        failed = False
    finally:
        settled.set()  # a failed batch is redelivered: nothing more to wait for
        await stop_clients(consumer, producer, failed)
