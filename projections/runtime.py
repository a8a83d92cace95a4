"""The projection runtime: log records in, SQL rows out, exactly once.

A `View` owns some tables and turns decoded events of its topics into rows. A `Projector`
applies a batch of log records to the audit log (every record of every topic) and to each
of its views inside ONE transaction, together with the consumer positions of each of them
in `projection_positions` (the tracking-record pattern). A record at or below a
projection's position has already been applied and changes nothing, so redelivery after a
crash, a rebalance or a replay is harmless, and a rebuild is "positions = nothing".

Each record is decoded once per batch; views receive their events as one batch so they can
keep per-batch state in memory and write with executemany.

`run(projector, consumer, stop)` is the thin Kafka side: assign every partition of the
projector's topics, seek to the stored positions + 1, loop `getmany` -> `apply_batch`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from sqlalchemy import Connection, Engine, MetaData, Table
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from schemas.codec import Codec, Decoded
from schemas.registry import EmbeddedRegistry, SchemaRegistry
from streams.archive import AUDIT, Entry, append, decode_entry
from streams.errors import BrokerUnavailableError, DatabaseUnavailableError, PitError
from streams.log import LogRecord
from streams.sql import (
    METADATA,
    TopicPartition,
    create_tables,
    load_positions,
    save_positions,
    write_transaction,
)
from streams.topics import load_catalog

if TYPE_CHECKING:  # the Kafka side is imported by `run`: reading a view needs none of it
    from collections.abc import Set as AbstractSet

    from aiokafka import AIOKafkaConsumer
    from aiokafka import TopicPartition as KafkaTopicPartition
    from confluent_kafka import Producer

    from streams.processor import Output

log = logging.getLogger(__name__)


# --- observers --------------------------------------------------------------------------------

class FreshEvents:
    """For projector observers: the decoded events of one topic not seen before. A
    duplicated event in the log (its entity's sequence again) is skipped; the last sequence
    of the `limit` most recently seen entities is remembered."""

    def __init__(self, topic: str, limit: int = 100_000) -> None:
        self.topic, self.limit = topic, limit
        self.sequences: OrderedDict[str, int] = OrderedDict()  # entity -> last sequence

    def __call__(self, entries: Sequence[Entry]) -> Iterator[tuple[str, dict, dict]]:
        """(record name, record, envelope) of each new event, in log order."""
        for entry in entries:
            if entry.decoded is None or entry.record.topic != self.topic:
                continue
            record = entry.decoded.record
            envelope = record.get("envelope")
            if envelope is None:
                continue
            entity, sequence = envelope["entity_key"], envelope["sequence"]
            if sequence <= self.sequences.get(entity, 0):
                continue
            self.sequences[entity] = sequence
            self.sequences.move_to_end(entity)
            if len(self.sequences) > self.limit:
                self.sequences.popitem(last=False)
            yield entry.decoded.name, record, envelope


# --- views ------------------------------------------------------------------------------------

class View:
    """A projection into tables. Subclasses set `name`, `topics`, `table_names`, implement
    `define`, and `apply` (per event) or `apply_batch` (per batch, faster)."""

    name: ClassVar[str]
    topics: ClassVar[tuple[str, ...]]
    table_names: ClassVar[tuple[str, ...]]
    # A view whose storage is not SQLAlchemy tables (a full-text index) is rebuilt in place:
    # `reset` in the rebuild's transaction, then every record projected again.
    in_place: ClassVar[bool] = False

    def reset(self, conn: Connection) -> None:
        raise NotImplementedError

    def define(self, metadata: MetaData, suffix: str = "", token: str = "") -> dict[str, Table]:
        """The view's tables on `metadata`, keyed by logical name; physical names carry
        `suffix` (shadow tables of a rebuild), index/constraint names carry `token` so
        shadow and live tables never collide on them (they are schema-global on both
        SQLite and PostgreSQL and keep their names when a table is renamed)."""
        raise NotImplementedError

    def apply(self, conn: Connection, tables: dict[str, Table], decoded: Decoded,
              record: LogRecord) -> None:
        raise NotImplementedError

    def apply_batch(self, conn: Connection, tables: dict[str, Table],
                    events: Sequence[tuple[Decoded, LogRecord]]) -> None:
        for decoded, record in events:
            self.apply(conn, tables, decoded, record)


def index_name(table: str, column: str, token: str = "") -> str:
    return f"ix_{table}_{column}" + (f"_{token}" if token else "")


def constraint_name(kind: str, table: str, token: str = "") -> str:
    return f"{kind}_{table}" + (f"_{token}" if token else "")


def view_by_name(name: str, views: Sequence[View]) -> View:
    """One of `views` (the registry's: `streams.components.views`), by name."""
    found = {view.name: view for view in views}
    try:
        return found[name]
    except KeyError:
        raise PitError(f"unknown view {name!r}; views: {', '.join(sorted(found))}") from None


_live_lock = threading.Lock()


def live_tables(view: View) -> dict[str, Table]:
    """The live tables of a view on the shared METADATA (defined once)."""
    with _live_lock:
        if all(name in METADATA.tables for name in view.table_names):
            return {name: METADATA.tables[name] for name in view.table_names}
        return view.define(METADATA)


def create_schema(engine: Engine, views: Sequence[View] = ()) -> None:
    """Create the positions table, the archive and the tables of `views` (and of any view
    whose live tables are defined already)."""
    for view in views:
        live_tables(view)
    create_tables(engine)


@dataclass(frozen=True)
class Binding:
    """A view bound to its tables under a projection name (`models`, `models@rebuild`)."""

    projection: str
    view: View
    tables: dict[str, Table]


def _first_line(exc: BaseException) -> str:
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# --- the projector ----------------------------------------------------------------------------

@dataclass
class BatchResult:
    records: int = 0
    archived: int = 0
    applied: dict[str, int] = field(default_factory=dict)  # projection -> events applied
    undecodable: int = 0
    fresh: list[Entry] = field(default_factory=list)  # the records archived for the first time
    # Events a view could not apply (entry, projection, why): archived, positions moved past,
    # no row of that view.
    failed: list[tuple[Entry, str, BaseException]] = field(default_factory=list)


def _unavailable(exc: BaseException) -> bool:
    """The database (not the record) failed: keep the batch and retry it later."""
    return isinstance(exc, OperationalError | InterfaceError | DatabaseUnavailableError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated)


def project(conn: Connection, entries: Sequence[Entry], bindings: Sequence[Binding],
            *, archive: bool) -> BatchResult:
    """Apply decoded entries to the audit log (if `archive`) and to each binding, in the
    caller's transaction, skipping what each projection's position says it already has.

    An event a view cannot apply (a value its columns cannot hold, a bug) stops nothing: the
    batch is applied again with a savepoint per event and view, so the failing event's rows
    in that view roll back while it is archived, the other views apply it and every position
    moves past it; `failed` says which and why. A database that is down is no event's fault:
    that error propagates."""
    try:
        with conn.begin_nested():
            return _project(conn, entries, bindings, archive=archive)
    except Exception as exc:
        if _unavailable(exc):
            raise
    return _project(conn, entries, bindings, archive=archive, isolate=True)


def _project(conn: Connection, entries: Sequence[Entry], bindings: Sequence[Binding],
             *, archive: bool, isolate: bool = False) -> BatchResult:
    """`project`'s work; `isolate`: each event in its own savepoint, failures collected."""
    before = load_positions(conn, [b.projection for b in bindings])
    after = {name: dict(offsets) for name, offsets in before.items()}
    result = BatchResult(records=len(entries))

    if archive:
        fresh = append(conn, entries)
        result.archived = len(fresh)
        result.fresh = fresh
        result.undecodable = sum(1 for e in fresh if e.error is not None)

    for binding in bindings:
        done = after[binding.projection]
        topics = binding.view.topics
        events = []
        for entry in entries:
            rec = entry.record
            if rec.topic not in topics:
                continue
            tp = (rec.topic, rec.partition)
            if rec.offset <= done.get(tp, -1):
                continue  # redelivered: already applied
            done[tp] = rec.offset
            if entry.decoded is not None:
                events.append((entry, entry.decoded, rec))
        applied = len(events)
        if events and not isolate:
            binding.view.apply_batch(conn, binding.tables, [(d, r) for _, d, r in events])
        for entry, decoded, rec in events if isolate else ():
            try:
                with conn.begin_nested():
                    binding.view.apply_batch(conn, binding.tables, [(decoded, rec)])
            except Exception as exc:
                if _unavailable(exc):
                    raise
                applied -= 1
                result.failed.append((entry, binding.projection, exc))
        result.applied[binding.projection] = applied

    save_positions(conn, before, after)
    return result


Observer = Callable[[Sequence[Entry]], None]


class Projector:
    """Applies batches of log records to the audit log and the views, exactly once.

    `observers` (live metrics) are called after each commit with the records archived for
    the first time, so never twice for a record, nor for a replay (which never archives)."""

    def __init__(self, engine: Engine, views: Sequence[View], *,
                 archive: bool = True, registry: SchemaRegistry | None = None,
                 codec: Codec | None = None, topics: Sequence[str] | None = None,
                 observers: Sequence[Observer] = ()) -> None:
        self.engine = engine
        self.observers = list(observers)
        self.views = list(views)
        self.bindings = [Binding(v.name, v, live_tables(v)) for v in self.views]
        self.archive = archive
        self.codec = codec or Codec(registry or EmbeddedRegistry())
        if topics is None:
            wanted = set(load_catalog()) if archive else set()
            for view in self.views:
                wanted.update(view.topics)
            topics = sorted(wanted)
        self.topics = list(topics)
        self._schema_ready = False

    @property
    def projections(self) -> list[str]:
        return [b.projection for b in self.bindings] + ([AUDIT] if self.archive else [])

    def apply_batch(self, records: Sequence[LogRecord],
                    dead_letters: Callable[[list[Output]], None] | None = None) -> BatchResult:
        """One transaction: audit rows, view rows and positions commit together or not at all.

        An event a view cannot apply is dead-lettered (`dead_letters` produces them, before
        the commit moves the positions past them; a crash in between sends them again),
        logged and counted, and the batch goes on without its rows in that view (`project`).

        Raises `DatabaseUnavailableError` (one line) when the database cannot be reached;
        nothing of the batch is committed then, so applying it again later is safe."""
        entries = [decode_entry(self.codec, r) for r in records]
        self._ensure_schema()
        try:
            with write_transaction(self.engine) as conn:
                result = project(conn, entries, self.bindings, archive=self.archive)
                if result.failed:
                    self._dead_letter(result.failed, dead_letters)
        except (OperationalError, InterfaceError) as exc:
            raise DatabaseUnavailableError(
                f"projection database unavailable: {_first_line(exc)}") from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise DatabaseUnavailableError(
                    f"projection database unavailable: {_first_line(exc)}") from exc
            raise
        for observer in self.observers if result.fresh else ():
            try:
                observer(result.fresh)
            except Exception:  # metrics must never stop the projections
                log.exception("projection observer %r failed", observer)
        return result

    @staticmethod
    def _dead_letter(failed: list[tuple[Entry, str, BaseException]],
                     sink: Callable[[list[Output]], None] | None) -> None:
        from streams.processor import dead_letter

        outputs = []
        for entry, projection, exc in failed:
            rec, reason = entry.record, f"{projection}: {_first_line(exc)[:1000]}"
            log.warning("projector: %s[%d]@%d cannot be applied, dead-lettered: %s: %s",
                        rec.topic, rec.partition, rec.offset, type(exc).__name__, reason)
            outputs.append(dead_letter(rec, type(exc).__name__, reason, "projector"))
        if sink is not None:
            sink(outputs)

    def _ensure_schema(self) -> None:
        if not self._schema_ready:
            create_schema(self.engine)  # idempotent; DatabaseUnavailableError when down
            self._schema_ready = True

    def positions(self) -> dict[str, dict[TopicPartition, int]]:
        self._ensure_schema()
        with self.engine.connect() as conn:
            return load_positions(conn, self.projections)

    def resume_positions(self) -> dict[TopicPartition, int]:
        """Where to resume reading: per partition the lowest position among the projections
        that consume it; partitions some consumer has never seen are absent (= beginning)."""
        stored = self.positions()
        seen = {tp for offsets in stored.values() for tp in offsets}
        resume: dict[TopicPartition, int] = {}
        for tp in seen:
            lowest = min(offsets.get(tp, -1) for name, offsets in stored.items()
                         if tp[0] in self._topics_of(name))
            if lowest >= 0:
                resume[tp] = lowest
        return resume

    def _topics_of(self, projection: str) -> set[str]:
        if projection == AUDIT:
            return set(self.topics)
        return next(set(b.view.topics) for b in self.bindings if b.projection == projection)


# --- Kafka ------------------------------------------------------------------------------------

# After a batch that was not full, `run` waits this long before reading again, so records
# flowing steadily are applied in batches of what came meanwhile rather than a few at a
# time: each batch pays a transaction, the positions and a thread hand-off, whatever its
# size. A full batch (a backlog) is followed at once; after an empty read, the next record
# is applied as soon as it is read. Measured with 20-node chains back to back
# (`pit bench dag`): the projector's process used 52-55% of a core without it, 34% with
# it, and the chains went 30.5 -> 34.7 workflows/s (medians of eight alternating runs,
# README "The projector's process"). The views lag the log by up to this much more under
# load.
LINGER_MS = 50


async def _seek_stored(projector: Projector, consumer: AIOKafkaConsumer,
                       partitions: Sequence[KafkaTopicPartition]) -> None:
    """Seek each of `partitions` past its stored position, or to its beginning."""
    from streams.kafka import seek_explicitly

    resume = await asyncio.to_thread(projector.resume_positions)
    # Explicit offsets, never seek_to_beginning (it races an offset reset in flight).
    await seek_explicitly(consumer, list(partitions),
                          {where: position + 1 for where, position in resume.items()})


async def run(projector: Projector, consumer: AIOKafkaConsumer, stop: asyncio.Event, *,
              topics: Sequence[str] | None = None, max_records: int = 5000,
              timeout_ms: int = 100, group: bool = False,
              producer: Producer | None = None, linger_ms: int = LINGER_MS) -> None:
    """Feed an already started aiokafka consumer into the projector until `stop` is set.

    Assigns every partition of `topics` (default: the projector's), from the cluster's
    metadata, or, with `group`, subscribes to them in the consumer's group, so projectors
    sharing a database divide the partitions between them. Each partition is sought to its
    stored position + 1, or to its beginning offset when no projection has a position there.
    Loops getmany -> apply_batch; each batch is applied in a worker thread so the event
    loop stays responsive, and one that was not full is followed by a wait of `linger_ms`
    (LINGER_MS) before the next read. While the database (or, for a dead letter, Kafka) is
    unavailable the batch is kept and retried with backoff (nothing was committed, so
    nothing is lost or doubled). Records no view can apply go to the dead-letter topic
    through `producer`. It never stops on a record: any other failure is logged and the
    batch retried.

    Why projectors in one group cannot collide: a batch's rows and positions commit in one
    `write_transaction`, which serialises writers (SQLite `BEGIN IMMEDIATE`, PostgreSQL a
    table lock) and reads the positions inside it, so a record a former owner of its
    partition applied while the partition moved is skipped, and the archive's `seq` and
    hash chain follow one order across every projector.
    """
    from aiokafka import ConsumerRebalanceListener
    from aiokafka import TopicPartition as KafkaTopicPartition

    from streams.kafka import getmany_ready, partitions_of, produce_all

    def sink(outputs: list[Output]) -> None:  # in apply_batch's worker thread
        if producer is not None:
            asyncio.run(produce_all(producer, outputs))

    wanted = list(topics or projector.topics)
    if group:
        class Resume(ConsumerRebalanceListener):
            async def on_partitions_revoked(self, revoked: AbstractSet[KafkaTopicPartition]
                                            ) -> None:
                pass  # positions are in the database: nothing to hand over

            async def on_partitions_assigned(self, assigned: AbstractSet[KafkaTopicPartition]
                                             ) -> None:
                await _seek_stored(projector, consumer, list(assigned))

        consumer.subscribe(wanted, listener=Resume())
    else:
        assignment = [KafkaTopicPartition(t, p) for t in wanted
                      for p in await partitions_of(consumer, t)]
        consumer.assign(assignment)
        await _seek_stored(projector, consumer, assignment)
    while not stop.is_set():
        batches = await getmany_ready(consumer, timeout_ms, max_records)
        records = [LogRecord.from_kafka(m) for messages in batches.values() for m in messages]
        delay = 0.5
        while records and not stop.is_set():
            try:
                await asyncio.to_thread(projector.apply_batch, records, sink)
                break
            except (DatabaseUnavailableError, BrokerUnavailableError) as exc:
                log.warning("%s; retrying in %.1fs", exc, delay)  # keep the batch, try again
            except Exception:
                log.exception("projector: a batch failed; retrying in %.1fs", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, 10.0)
        if 0 < len(records) < max_records:  # linger; a stop ends it at once
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), linger_ms / 1000)
