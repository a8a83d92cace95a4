"""What a processor keeps in memory under steady work, and how the rest comes back.

A processor holds every entity it decides and a ledger of command ids (to answer a re-sent
command with its first outcome). Without a bound both grow with every command ever decided.
`pit up` (`run_processor` with a database) keeps them bounded:

* Ended entities (a decider with a checkpoint topic: `final(state)` is not None, e.g. a
  finished execution) stay in memory while they are among the ENDED_KEPT most recently
  ended; older ones are evicted once the archive holds their ended marker. Live entities
  stay.
* The ledger keeps the LEDGER_KEPT most recent outcomes; older ones are evicted once the
  archive holds them (pit.results, keyed by command id).
* An evicted key goes into `Forgotten`, a Bloom filter. A command whose entity or command id
  is not in memory but may have been evicted is looked up in the archive (`ArchiveRecall`):
  the entity comes back from its ended marker (else from its archived events), decided as
  its `final` record - the state a restore holds it as, which decides every command as the
  full one (streams/recovery.py, rule 7); the outcome comes back as it was first answered,
  so a duplicate is still a duplicate. A key not in the filter is new: no lookup, so new
  commands cost nothing; a false positive costs one indexed query that finds nothing.

Nothing is evicted that the archive cannot give back, so what a processor decides does not
depend on what it evicted: tests/property/test_memory_properties.py checks that an evicted
and recalled entity decides exactly as one never evicted.

The embedded broker (librdkafka's mock) holds every record it keeps in memory, up to ~5 MiB
per partition: some 600 MiB over the catalog's partitions, filled at the pace of the work.
`trim_broker` deletes a partition's records once they are archived and every projection
has applied them (the lowest position in projection_positions), were in the log a while ago
(`retained_for`: ARCHIVED_RETAIN_S, or BROKER_RETAIN_S for a topic someone reads from Kafka
alone), and every consumer group that reads the topic has committed past them.
Every topic is trimmed but _pit.schemas, which clients read from Kafka alone. A compacted
topic such as pit.dag.checkpoints is trimmed like the others: its readers read the archive's
latest records first (`latest_history`), and the mock does not compact, so it would keep
every record written - three or four a 20-node workflow - up to its cap of 5 MiB a partition.
Everyone who reads history reads the archive first, then Kafka beyond it (streams/history.py).

Why the broker keeps seconds, not minutes: the mock finds a fetch's offset by walking the
partition's message sets from the oldest, so every fetch that returns records costs time in
proportion to what the partition holds, on the one thread that serves every client. Held
for a minute, 20-node chains run back to back slowed from 30 to 17 workflows a second within
four rounds (README, "A fetch walks the partition's log"); held ten seconds, from 45 to 35
within eight. A reader that lags more than ARCHIVED_RETAIN_S loses nothing: a `Follower`, a
history read and an `ExecutionLog` read the trimmed part from the archive, and a consumer
group holds the trim at its committed offsets. A topic some reader reads from Kafka alone
(`TopicSpec.read_from_kafka_alone` in infra/topics.yaml: pit.results, for the command
clients' outcome readers; pit.pool.events, for `pit host`; pit.deadletters, for `pit demo`)
keeps BROKER_RETAIN_S: an outcome reader lagging more than that reads on from the new
beginning (an outcome trimmed unread is not seen: its waiter times out).

The C heap: what Python and librdkafka free goes back to glibc's malloc, which keeps it -
per arena, and glibc gives threads up to eight arenas per core - so RSS stays at each
burst's high-water mark. `pit up` limits malloc to two arenas (`limit_malloc_arenas`, before
any thread starts) and hands free pages back to the system every minute (`trim_heap_every`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import logging
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec  # type: ignore[attr-defined]
from sqlalchemy import Engine, func, select

from schemas.codec import Codec
from streams import metrics
from streams.archive import AUDIT, audit_log
from streams.config import Settings
from streams.decider import Decider, from_record
from streams.errors import PitError
from streams.sql import connection, positions, read_positions
from streams.topics import OUTCOME, RESULTS, SCHEMAS, TopicSpec

if TYPE_CHECKING:
    from streams.broker import EmbeddedBroker

log = logging.getLogger(__name__)

ENDED_KEPT = 50        # ended entities kept in memory: the most recently ended
LEDGER_KEPT = 500      # outcomes kept in memory: the most recent
EVICT_EVERY_S = 5.0    # how often `keep_bounded` looks
EVICT_BATCH = 2_000    # keys looked up in the archive per query
# The embedded broker keeps at least what a partition held this long ago (`retained_for`)
BROKER_RETAIN_S = 10.0  # of a topic someone reads from Kafka alone
ARCHIVED_RETAIN_S = 2.0  # of one whose every reader falls back on the archive, or commits
TRIM_EVERY_S = 2.0
DROP_CHECK_RECORDS = 50  # a partition this far ahead of the archive is checked for drops
HEAP_TRIM_EVERY_S = 60.0
M_ARENA_MAX = -8  # glibc's mallopt parameter
POINT = "pit.RecoveryPoint"


class Forgotten:
    """The keys evicted from memory, as a Bloom filter: `key in forgotten` is False for every
    key never added, and True for every key added (and, rarely, for one that was not). Its
    size is fixed: 2^23 bits (1 MiB, taken on the first add) keep false positives near 1% up
    to some 800,000 keys; past that they grow, which costs lookups, never answers."""

    BITS = 1 << 23
    HASHES = 4

    def __init__(self) -> None:
        self._bits: bytearray | None = None

    def _positions(self, key: str) -> Iterable[int]:
        digest = hashlib.blake2b(key.encode(), digest_size=4 * self.HASHES).digest()
        for i in range(self.HASHES):
            yield int.from_bytes(digest[4 * i:4 * i + 4], "big") % self.BITS

    def add(self, key: str) -> None:
        if self._bits is None:
            self._bits = bytearray(self.BITS // 8)
        for position in self._positions(key):
            self._bits[position >> 3] |= 1 << (position & 7)

    def __contains__(self, key: str) -> bool:
        bits = self._bits
        return bits is not None and all(bits[p >> 3] & (1 << (p & 7))
                                        for p in self._positions(key))

    def clear(self) -> None:
        self._bits = None


def _chunks(keys: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(keys), EVICT_BATCH):
        yield keys[start:start + EVICT_BATCH]


class ArchiveRecall:
    """Reads back from the archive what a processor evicted (and says what it may evict)."""

    def __init__(self, engine: Engine, decider: Decider, codec: Codec,
                 processor_name: str) -> None:
        self.engine, self.decider, self.codec, self.name = engine, decider, codec, processor_name

    # --- the ledger --------------------------------------------------------------------------

    def _answers(self, command_ids: Collection[str]) -> dict[str, dict]:
        """The first (not duplicate) outcome of this processor for each command id archived."""
        found: dict[str, dict] = {}
        for chunk in _chunks(sorted(command_ids)):
            stmt = (select(audit_log.c.key, audit_log.c.value)
                    .where(audit_log.c.topic == RESULTS, audit_log.c.key.in_(chunk))
                    .order_by(audit_log.c.partition, audit_log.c.offset))
            with connection(self.engine) as conn:
                rows = conn.execute(stmt).all()
            for key, value in rows:
                if key in found or value is None:
                    continue
                outcome = self._decoded(value, OUTCOME)
                if outcome is not None and outcome["processor"] == self.name and not outcome[
                        "duplicate"]:
                    found[key] = outcome
        return found

    def archived_outcomes(self, command_ids: Collection[str]) -> set[str]:
        return set(self._answers(command_ids))

    def outcome(self, command_id: str) -> dict | None:
        """The outcome this processor first gave `command_id`, as it remembered it."""
        found = self._answers([command_id]).get(command_id)
        if found is None:
            return None
        found.pop("command_partition", None)
        found.pop("command_offset", None)
        return found

    # --- ended entities ----------------------------------------------------------------------

    def _markers(self, keys: Collection[str]) -> dict[str, dict]:
        """The latest archived checkpoint record of each key, when it is an ended marker."""
        spec = self.decider.checkpoint_topic
        if spec is None:
            return {}
        latest: dict[str, tuple[int, bytes | None]] = {}
        for chunk in _chunks(sorted(keys)):
            stmt = (select(audit_log.c.key, audit_log.c.offset, audit_log.c.value)
                    .where(audit_log.c.topic == spec.topic, audit_log.c.key.in_(chunk)))
            with connection(self.engine) as conn:
                for key, offset, value in conn.execute(stmt):
                    if key not in latest or offset > latest[key][0]:
                        latest[key] = (offset, value)
        markers = {}
        for key, (_, value) in latest.items():
            point = self._decoded(value, POINT) if value is not None else None
            if point is not None and point["events_offset"] < 0:
                markers[key] = point
        return markers

    def archived_entities(self, keys: Collection[str]) -> set[str]:
        return set(self._markers(keys))

    def entity(self, key: str) -> tuple[Any, int, int] | None:
        """An evicted entity as (state, sequence, last time): from its ended marker, else
        folded from its archived events (from its last snapshot); None when the archive holds
        nothing of it."""
        spec = self.decider.checkpoint_topic
        marker = self._markers([key]).get(key)
        if spec is not None and marker is not None:
            return spec.from_final(marker["final"]), marker["sequence"], marker["last_at"]
        return self._folded(key)

    def _folded(self, key: str) -> tuple[Any, int, int] | None:
        decider = self.decider
        stmt = (select(audit_log.c.value)
                .where(audit_log.c.topic == decider.event_topic, audit_log.c.entity_key == key)
                .order_by(audit_log.c.partition, audit_log.c.offset))
        with connection(self.engine) as conn:
            values = [value for (value,) in conn.execute(stmt) if value is not None]
        state, sequence, last_at = decider.initial_state(key), 0, 0
        for value in values:
            decoded = self.codec.decode(value)
            event_type = decider.event_type(decoded.name)
            if event_type is None:
                continue
            envelope = decoded.record["envelope"]
            event = from_record(event_type, decoded.record)
            if isinstance(event, decider.snapshots) and decider.from_snapshot is not None:
                state = decider.from_snapshot(event)
            else:
                state = decider.evolve(state, event, envelope["occurred_at"])
            sequence, last_at = envelope["sequence"], max(last_at, envelope["occurred_at"])
        if not sequence:
            return None
        spec = decider.checkpoint_topic
        final = spec.final(state) if spec is not None else None
        return (spec.from_final(final) if spec is not None and final is not None else state,
                sequence, last_at)

    def _decoded(self, value: bytes, name: str) -> dict | None:
        try:
            decoded = self.codec.decode(bytes(value))
        except PitError:
            return None
        return decoded.record if decoded.name == name else None


class Bounded(Protocol):
    """What `keep_bounded` needs of a processor (streams/processor.py), named here so this
    module does not import the processor that imports it."""

    @property
    def name(self) -> str: ...
    @property
    def decider(self) -> Decider: ...
    @property
    def generation(self) -> int: ...
    @property
    def entities(self) -> Mapping[str, Any]: ...
    @property
    def ended(self) -> Mapping[str, None]: ...
    @property
    def ledger(self) -> Mapping[str, Any]: ...

    def eviction_candidates(self, ended_kept: int, ledger_kept: int
                            ) -> tuple[list[str], list[str]]: ...

    def evict(self, keys: Iterable[str], command_ids: Iterable[str]) -> None: ...


def report(processor: Bounded) -> None:
    component = processor.decider.name
    ended = len(processor.ended)
    metrics.PROCESSOR_ENTITIES.labels(component, "live").set(len(processor.entities) - ended)
    metrics.PROCESSOR_ENTITIES.labels(component, "ended").set(ended)
    metrics.PROCESSOR_LEDGER.labels(component).set(len(processor.ledger))


async def keep_bounded(processor: Bounded, recall: ArchiveRecall,
                       stop: asyncio.Event) -> None:
    """Until `stop`: every EVICT_EVERY_S, evict what lies beyond the bounds and is archived."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), EVICT_EVERY_S)
        keys, command_ids = processor.eviction_candidates(ENDED_KEPT, LEDGER_KEPT)
        if keys or command_ids:
            generation = processor.generation
            try:
                entities = await asyncio.to_thread(recall.archived_entities, keys)
                outcomes = await asyncio.to_thread(recall.archived_outcomes, command_ids)
            except Exception:  # the archive unreadable for a moment: keep all, look again
                log.exception("%s: cannot read the archive to evict", processor.name)
                continue
            if processor.generation == generation:  # no restore meanwhile
                processor.evict(entities, outcomes)
        report(processor)


Partition = tuple[str, int]


class BrokerPositions:
    """What a trim asks the broker - each partition's end, each group's committed offsets -
    through one admin client kept for the trimmer's life: one request per question rather
    than a consumer made per group and a round trip per partition (50 ms of CPU a look,
    against 6-8: a look every two seconds made the first 2.5% of a core)."""

    def __init__(self, settings: Settings) -> None:
        # quiet, as the followers' consumers: a failed look is logged by the trim itself
        self.admin = AdminClient({**settings.librdkafka_config(), "log_level": 0})

    def ends(self, partitions: list[Partition]) -> dict[Partition, int]:
        return self._offsets(partitions, OffsetSpec.latest())

    def beginnings(self, partitions: list[Partition]) -> dict[Partition, int]:
        return self._offsets(partitions, OffsetSpec.earliest())

    def _offsets(self, partitions: list[Partition], spec: OffsetSpec) -> dict[Partition, int]:
        found = self.admin.list_offsets({TopicPartition(t, p): spec for t, p in partitions},
                                        request_timeout=10)
        return {(tp.topic, tp.partition): future.result().offset
                for tp, future in found.items()}

    def committed(self, group: str, partitions: list[Partition]) -> dict[Partition, int]:
        """The group's committed offsets (-1 where it committed none)."""
        asked = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in partitions])
        (future,) = self.admin.list_consumer_group_offsets([asked],
                                                           request_timeout=10).values()
        return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else -1
                for tp in future.result().topic_partitions}


def applied_everywhere(engine: Engine) -> dict[Partition, int]:
    """Per partition, the last offset every projection (the archive one of them) applied."""
    stmt = (select(positions.c.topic, positions.c.partition, func.min(positions.c.offset))
            .group_by(positions.c.topic, positions.c.partition))
    with connection(engine) as conn:
        return {(topic, partition): offset for topic, partition, offset in conn.execute(stmt)}


def trim_points(archived: Mapping[Partition, int], retained: Mapping[Partition, int],
                committed: Iterable[Mapping[Partition, int]]) -> dict[Partition, int]:
    """Where each partition may start: below what is archived and projected (`archived`: the
    last offset), what the log held a while ago (`retained`: its end then) and every group's
    committed position on it (a group that committed nothing there holds it at 0)."""
    points = {}
    for tp, end in retained.items():
        point = min(archived.get(tp, -1) + 1, end)
        for group in committed:
            if tp in group:
                point = min(point, max(group[tp], 0))
        points[tp] = point
    return points


def retained_for(spec: TopicSpec, retain_s: float = BROKER_RETAIN_S,
                 archived_retain_s: float = ARCHIVED_RETAIN_S) -> float:
    """How long ago the embedded broker's log of this topic must still be held."""
    return retain_s if spec.read_from_kafka_alone else archived_retain_s


def ends_as_of(looks: Sequence[tuple[float, Mapping[Partition, int]]], now: float,
               keep_s: Mapping[Partition, float]) -> dict[Partition, int]:
    """Each partition's end in the newest of `looks` (time, ends then; oldest first) taken
    at least `keep_s[partition]` before `now`. A partition no look is that old for is left
    out: the trim does not yet know what it held then."""
    found: dict[Partition, int] = {}
    for tp, keep in keep_s.items():
        for at, ends in reversed(looks):
            if at <= now - keep:
                if tp in ends:
                    found[tp] = ends[tp]
                break
    return found


def dropped_unarchived(archived: Mapping[Partition, int], beginnings: Mapping[Partition, int],
                       told: Mapping[Partition, int]) -> dict[Partition, tuple[int, int]]:
    """The offsets (first, last) the broker no longer holds and the archive never held, per
    partition: below its beginning, above the last offset archived (`archived`), and not
    already `told` (the beginning when a loss was last reported)."""
    lost = {}
    for tp, beginning in beginnings.items():
        first = max(archived.get(tp, -1) + 1, told.get(tp, 0))
        if beginning > first:
            lost[tp] = (first, beginning - 1)
    return lost


async def trim_broker(broker: EmbeddedBroker, settings: Settings, engine: Engine,
                      catalog: Mapping[str, TopicSpec], groups: Mapping[str, Collection[str]],
                      stop: asyncio.Event, every_s: float = TRIM_EVERY_S,
                      retain_s: float = BROKER_RETAIN_S,
                      archived_retain_s: float = ARCHIVED_RETAIN_S) -> None:
    """Until `stop`: trim the embedded broker's partitions (rules above). `groups`: each
    consumer group's topics."""
    keep_s = {(spec.name, p): retained_for(spec, retain_s, archived_retain_s)
              for spec in catalog.values() if spec.name != SCHEMAS
              for p in range(spec.partitions)}
    partitions = list(keep_s)
    longest = max(keep_s.values(), default=0.0)
    ends: list[tuple[float, dict[Partition, int]]] = []  # (monotonic time, ends then)
    trimmed: dict[Partition, int] = {}
    told: dict[Partition, int] = {}  # where a loss was last reported
    broker_positions = await asyncio.to_thread(BrokerPositions, settings)

    def tell_drops(asked: BrokerPositions, now_ends: Mapping[Partition, int]) -> None:
        """Say so (an error line, `pit_broker_dropped_unarchived_total`) when the mock's own
        ~5 MiB window dropped records the archive does not hold: the processors wait for
        the archive (streams/processor.py `Unarchived`), but other writers do not. Only a
        partition more than DROP_CHECK_RECORDS ahead of the archive is asked about."""
        archived = read_positions(engine, AUDIT)
        behind = [tp for tp, end in now_ends.items()
                  if end - archived.get(tp, -1) - 1 > DROP_CHECK_RECORDS]
        if not behind:
            return
        for tp, (first, last) in dropped_unarchived(archived, asked.beginnings(behind),
                                                    told).items():
            metrics.BROKER_DROPPED_UNARCHIVED.labels(tp[0]).inc(last - first + 1)
            log.error("the embedded broker dropped %s[%d] offsets %d..%d before the archive"
                      " held them (its window is ~5 MiB a partition): they are lost", *tp,
                      first, last)
            told[tp] = last + 1

    def look(asked: BrokerPositions) -> dict[Partition, int]:
        now = time.monotonic()
        ends.append((now, asked.ends(partitions)))
        tell_drops(asked, ends[-1][1])
        while len(ends) > 1 and ends[1][0] <= now - longest:
            ends.pop(0)
        retained = ends_as_of(ends, now, keep_s)
        if not retained:
            return {}  # not running long enough to know what the log held then
        committed = [asked.committed(group, [tp for tp in partitions if tp[0] in topics])
                     for group, topics in groups.items()]
        return trim_points(applied_everywhere(engine), retained, committed)

    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
            try:
                points = await asyncio.to_thread(look, broker_positions)
                moved = {tp: point for tp, point in points.items()
                         if point > trimmed.get(tp, 0)}
                # off the event loop: each deletion waits ~50 ms for the mock's thread
                await asyncio.to_thread(broker.delete_records_below, moved)
                trimmed.update(moved)
            except Exception:  # the archive or the broker busy for a moment: look again
                log.exception("cannot trim the embedded broker")
    finally:
        # librdkafka destroys the client with its last reference; a cancelled task keeps
        # its frame, and the client would go on reconnecting to a stopped broker
        del broker_positions


# --- the C heap -------------------------------------------------------------------------------

@cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (malloc_trim and mallopt are glibc's); else None."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes, libc.mallopt.argtypes = [ctypes.c_size_t], [ctypes.c_int] * 2
    except (OSError, AttributeError):
        return None
    return libc


def limit_malloc_arenas(arenas: int = 2) -> None:
    """At most `arenas` malloc arenas for the threads started from now on (no-op off glibc):
    fewer places for freed memory to sit unused. The GIL serialises most allocation anyway,
    so more arenas buy little."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_ARENA_MAX, arenas)


def trim_heap() -> None:
    """Give every arena's free pages back to the system (no-op off glibc)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


async def trim_heap_every(stop: asyncio.Event, every_s: float = HEAP_TRIM_EVERY_S) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        await asyncio.to_thread(trim_heap)
