"""Checkpoint topics: where a processor's restore starts, so recovery reads the recent log only.

A decider with snapshot events (`Decider.snapshots`, the DAG's CheckpointTaken) may name a
checkpoint topic (`Decider.checkpoint_topic`; the DAG's is pit.dag.checkpoints). Its rules:

1. The topic is compacted, keyed by entity, with the partitions of the event topic: partition
   p describes the entities whose commands are on command partition p, whose events are on
   event partition p and whose outcomes are on pit.results p.
2. An entity's record (`pit.RecoveryPoint`) says where its restore starts: at its last
   snapshot event, else at its first event - precisely, at the first event of the command
   that caused it, so a restore meets all of that command's events - and the offset of the
   outcome of that command. Once the entity ended (`final(state)` is not None) its record is
   the ended marker: `final` holds what deciding on it still needs (for an execution: status,
   definition hash, inputs, times, error), with its last sequence and time. Compaction keeps
   one record per entity, so the pointer to an older snapshot - and, once it ended, to any -
   is cleaned up; the snapshot events themselves stay in the event log as its history.
3. The partition's marks (`pit.RecoveryMarks`, key `__pit.marks__`): every event up to
   `events_through` and every outcome up to `results_through` is reflected in the records,
   and `answered_through` is the last command offset answered (the resume position).
4. The processor writes records after the events and outcomes they refer to are acknowledged
   (their offsets are known then) and before it commits the commands, so the records never
   run ahead of the log; a crash in between leaves a gap behind the marks, which the next
   restore reads and writes right away. Every entity whose start or end a batch recorded is
   written with that batch; the marks with any record, else once they fall MARKS_EVERY
   records behind.
5. Restoring partition p reads its records (the archive's latest per key, then Kafka beyond
   it). They are trusted when they lie inside the log: marks and starts below the ends of
   event partition p and results partition p. (A log that lost its tail - an embedded broker
   restored from an archive that was behind - is restored in full, and the records of
   entities it no longer holds are deleted.) Events are read from the oldest start of a live
   entity, or from `events_through + 1` if that is older; outcomes likewise from the oldest
   `results_offset` or `results_through + 1`, and at least the last LEDGER_TAIL outcomes of
   the partition. Entities with an ended marker fold no event.
   Every other entity read must be met at its snapshot or first event; otherwise the records
   do not fit the log and the partition is restored in full.
6. The ledger then holds every command decided since the oldest live start, and the last
   LEDGER_TAIL answered on the partition (so a client's retry of a command answered just
   before a restart is still a duplicate): the outcomes read, and the commands of every
   event read. Positions are the larger of `answered_through` and the outcomes read. An
   older command sent again is decided again, as the full ledger's bound (LEDGER_SIZE) has
   it for older ones still: a decider that opts in must make an accepted command sent again
   change nothing - the DAG's rules do: a repeated report or timer is stale, the same start
   again is a no-op, a command to an ended execution changes nothing; only TakeCheckpoint
   takes another checkpoint. Its answer is not flagged duplicate, and a command rejected
   once is decided as if new.
7. After a restore every ended entity is held as `from_final(final(state))`, whether it came
   from its marker or from its events: the same state either way, and a small one.
8. A live entity whose start lies more than CHECKPOINT_LAG events behind its partition's last
   event is asked for a checkpoint (`request(key)`, sent to the command topic with the command
   id "<key>/checkpoint-at/<start offset>"). So no entity - an idle one neither - holds the
   restore of its partition back further than that, whatever its own checkpoint settings.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

from schemas.codec import Codec
from streams.decider import CheckpointTopic, Decider, to_record
from streams.errors import PitError, SchemaError
from streams.log import LogRecord
from streams.topics import RESULTS

if TYPE_CHECKING:
    from streams.processor import Output

log = logging.getLogger(__name__)

MARKS_KEY = b"__pit.marks__"  # no entity has this key (restore_broker's placeholder is alike)
POINT = "pit.RecoveryPoint"
MARKS = "pit.RecoveryMarks"
CHECKPOINT_LAG = 10_000  # events past a live entity's start on its partition: ask for one
MARKS_EVERY = 1_000      # events or outcomes the written marks may fall behind
LEDGER_TAIL = 500        # outcomes a restore reads at least, for the duplicate ledger


@dataclass(frozen=True)
class Point:
    """An entity's record on the checkpoint topic."""

    entity_key: str
    events_offset: int          # its restore starts here on the event partition; -1: ended
    results_offset: int = -1    # the outcome of the command that caused that event
    sequence: int = 0           # ended: its last event's sequence and time, and `final`
    last_at: int = 0
    final: bytes = b""

    @property
    def ended(self) -> bool:
        return self.events_offset < 0


@dataclass(frozen=True)
class Marks:
    events_through: int = -1
    results_through: int = -1
    answered_through: int = -1


@dataclass(frozen=True)
class Floors:
    """Where a partition's restore reads from."""

    events_from: int
    results_from: int


@dataclass
class _Partition:
    """What the processor knows of one partition's records."""

    live: dict[str, Point] = field(default_factory=dict)  # as written
    marks: Marks = Marks()          # how far the log is reflected (once written)
    written: Marks = Marks()        # the marks as last written
    requested: dict[str, int] = field(default_factory=dict)  # entity -> start asked about
    lag_checked: int = -1           # events_through when lags were last looked at


@dataclass
class _Restoring:
    """One partition's restore in progress."""

    trusted: bool
    existing: dict[str, Point]      # the records read (all of them, live and ended)
    held: set[str]                  # entities restored from their ended marker
    starts: dict[str, tuple[int, str]] = field(default_factory=dict)  # key -> (offset, cause)
    live: set[str] = field(default_factory=set)          # entities folded, still live
    ended: dict[str, Point] = field(default_factory=dict)  # entities folded that ended
    incomplete: bool = False        # an entity was read without its start
    causes: set[str] = field(default_factory=set)  # commands that caused a start read
    outcomes: dict[str, int] = field(default_factory=dict)  # cause -> its outcome's offset
    read_events: int = -1
    read_results: int = -1


class RecordsMismatch(PitError):
    """The checkpoint records of these partitions do not fit the log: restore them in full."""

    def __init__(self, partitions: set[int]) -> None:
        super().__init__(f"checkpoint records do not fit the log on partitions {partitions}")
        self.partitions = partitions


def within_commands(positions: dict[int, int], ends: Mapping[tuple[str, int], int],
                    topic: str) -> None:
    """Answered positions inside the command topic's partitions (`ends`: their next offsets).
    An outcome restored without its command (the archive took them in different batches
    before a kill) names an offset the restored command topic does not hold: the next
    command gets it, so it does not count as answered."""
    for partition, answered in positions.items():
        end = ends.get((topic, partition))
        if end is not None and answered >= end:
            positions[partition] = end - 1


def _inside(marks: Marks | None, live: Mapping[str, Point], events_end: int,
            results_end: int) -> TypeGuard[Marks]:
    """Rule 5: a partition's records are trusted when its marks and the starts of its live
    entities lie inside the log (below the ends of its event and results partitions)."""
    return (marks is not None
            and marks.events_through < events_end and marks.results_through < results_end
            and all(p.events_offset < events_end and p.results_offset <= results_end
                    for p in live.values()))


class CheckpointBook:
    """A processor's side of its checkpoint topic: what it wrote per partition, what the batch
    being decided changes (`started`/`ended`, then `written`), and a restore's bookkeeping
    (`plan`, the `saw_*` calls while the processor folds, then `finish`)."""

    def __init__(self, decider: Decider, codec: Codec, producer: str) -> None:
        if decider.checkpoint_topic is None:
            raise ValueError(f"the {decider.name} decider has no checkpoint topic")
        self.spec: CheckpointTopic[Any] = decider.checkpoint_topic
        self.event_topic, self.command_topic = decider.event_topic, decider.command_topic
        self.codec, self.producer = codec, producer
        self.partitions: dict[int, _Partition] = {}
        self._starts: list[tuple[int, str, int, int]] = []  # (partition, key, event, outcome)
        self._ends: list[tuple[int, Point]] = []
        self._restoring: dict[int, _Restoring] = {}

    def forget(self) -> None:
        self.partitions.clear()
        self._restoring.clear()
        self.begin()

    # --- deciding ----------------------------------------------------------------------------

    def begin(self) -> None:
        """A new batch: nothing recorded yet."""
        self._starts.clear()
        self._ends.clear()

    def started(self, partition: int, key: str, event_index: int, outcome_index: int) -> None:
        """The entity's restore starts at the batch's outputs[event_index]: the first event of
        a command whose events hold a snapshot or the entity's first event, the command
        answered by outputs[outcome_index]."""
        self._starts.append((partition, key, event_index, outcome_index))

    def ended(self, partition: int, key: str, final: bytes, sequence: int,
              last_at: int) -> None:
        self._ends.append((partition, Point(key, -1, -1, sequence, last_at, final)))

    def written(self, outputs: Sequence[Output], offsets: Sequence[int],
                positions: Mapping[int, int], now_ms: int) -> list[Output]:
        """The batch's outputs were acknowledged at `offsets`: the records (and checkpoint
        requests) to produce before the commands are committed (rule 4)."""
        heads: dict[int, list[int]] = {}  # partition -> [last event, last outcome]
        for out, offset in zip(outputs, offsets, strict=True):
            if out.topic == self.event_topic:
                head = heads.setdefault(out.partition, [-1, -1])
                head[0] = max(head[0], offset)
            elif out.topic == RESULTS:
                head = heads.setdefault(out.partition, [-1, -1])
                head[1] = max(head[1], offset)
        changed: dict[int, dict[str, Point]] = {}
        for partition, key, event, outcome in self._starts:
            changed.setdefault(partition, {})[key] = Point(key, offsets[event], offsets[outcome])
        for partition, point in self._ends:
            changed.setdefault(partition, {})[point.entity_key] = point
        self.begin()
        records = []
        for partition in sorted(heads.keys() | changed.keys()):
            part = self.partitions.setdefault(partition, _Partition())
            points = changed.get(partition, {})
            for point in points.values():
                self._keep(part, point)
                records.append(self._point_output(partition, point, now_ms))
            events, results = heads.get(partition, (-1, -1))
            marks = Marks(max(part.marks.events_through, events),
                          max(part.marks.results_through, results),
                          positions.get(partition, part.marks.answered_through))
            records.extend(self._marks(partition, part, marks, now_ms, force=bool(points)))
            records.extend(self._requests(partition, part, now_ms))
        return records

    def _keep(self, part: _Partition, point: Point) -> None:
        part.requested.pop(point.entity_key, None)
        if point.ended:
            part.live.pop(point.entity_key, None)
        else:
            part.live[point.entity_key] = point

    def _marks(self, partition: int, part: _Partition, marks: Marks, now_ms: int, *,
               force: bool) -> list[Output]:
        part.marks = marks
        behind = max(marks.events_through - part.written.events_through,
                     marks.results_through - part.written.results_through)
        if marks in (part.written, Marks()) or not (force or behind >= MARKS_EVERY):
            return []
        part.written = marks
        value = self.codec.encode(MARKS, {"events_through": marks.events_through,
                                          "results_through": marks.results_through,
                                          "answered_through": marks.answered_through})
        return [self._output(self.spec.topic, partition, MARKS_KEY, value, now_ms)]

    def _requests(self, partition: int, part: _Partition, now_ms: int) -> list[Output]:
        """Checkpoint requests for live entities whose start lags too far (rule 8)."""
        head = part.marks.events_through
        if head - part.lag_checked < CHECKPOINT_LAG // 10:
            return []
        part.lag_checked = head
        requests = []
        for key, point in part.live.items():
            if head - point.events_offset > CHECKPOINT_LAG and part.requested.get(
                    key) != point.events_offset:
                part.requested[key] = point.events_offset
                command = self.spec.request(key)
                meta = {"command_id": f"{key}/checkpoint-at/{point.events_offset}",
                        "issued_at": now_ms, "issued_by": self.producer,
                        "correlation_id": None}
                value = self.codec.encode(command.avro_name, {"meta": meta,
                                                              **to_record(command)})
                requests.append(self._output(self.command_topic, partition, key.encode(),
                                             value, now_ms))
        return requests

    def _point_output(self, partition: int, point: Point, now_ms: int) -> Output:
        value = self.codec.encode(POINT, {
            "entity_key": point.entity_key, "events_offset": point.events_offset,
            "results_offset": point.results_offset, "sequence": point.sequence,
            "last_at": point.last_at, "final": point.final})
        return self._output(self.spec.topic, partition, point.entity_key.encode(), value,
                            now_ms)

    @staticmethod
    def _output(topic: str, partition: int, key: bytes, value: bytes | None,
                now_ms: int) -> Output:
        from streams.processor import Output  # the processor imports this module

        return Output(topic, partition, key, value, now_ms)

    # --- restoring -----------------------------------------------------------------------------

    def plan(self, records: Iterable[LogRecord], ends: Mapping[tuple[str, int], int],
             partitions: Iterable[int], distrust: Iterable[int] = ()) -> dict[int, Floors]:
        """Read the partitions' records (rule 5): where each restore starts. `ends` holds the
        end (next offset) of each event and results partition; `distrust` partitions are
        restored in full. `held()` then lists the entities restored from ended markers."""
        found: dict[int, dict[bytes, LogRecord]] = {}
        for record in records:
            if record.key is not None:
                found.setdefault(record.partition, {})[record.key] = record
        distrust = set(distrust)
        floors = {}
        for partition in partitions:
            existing, marks = self._decode(found.get(partition, {}).values())
            events_end = ends.get((self.event_topic, partition), 0)
            results_end = ends.get((RESULTS, partition), 0)
            live = {key: p for key, p in existing.items() if not p.ended}
            part = self.partitions[partition] = _Partition()
            if partition not in distrust and _inside(marks, live, events_end, results_end):
                part.live, part.marks, part.written = live, marks, marks
                floors[partition] = Floors(
                    min([p.events_offset for p in live.values()] + [marks.events_through + 1]),
                    max(0, min([p.results_offset for p in live.values()]
                               + [marks.results_through + 1, results_end - LEDGER_TAIL])))
                held = {key for key, p in existing.items() if p.ended}
                self._restoring[partition] = _Restoring(True, existing, held)
            else:
                floors[partition] = Floors(0, 0)
                self._restoring[partition] = _Restoring(False, existing, set())
        return floors

    def _decode(self, records: Iterable[LogRecord]) -> tuple[dict[str, Point], Marks | None]:
        points: dict[str, Point] = {}
        marks = None
        for record in records:
            if record.value is None:
                continue  # deleted (or a restore's placeholder)
            try:
                decoded = self.codec.decode(record.value)
            except SchemaError:
                continue
            value = decoded.record
            if decoded.name == MARKS:
                marks = Marks(value["events_through"], value["results_through"],
                              value["answered_through"])
            elif decoded.name == POINT:
                points[value["entity_key"]] = Point(
                    value["entity_key"], value["events_offset"], value["results_offset"],
                    value["sequence"], value["last_at"], value["final"])
        return points, marks

    def held(self) -> Iterable[Point]:
        """The ended markers the planned restores hold entities as."""
        for restoring in self._restoring.values():
            for key in restoring.held:
                yield restoring.existing[key]

    def _restore(self, partition: int) -> _Restoring:
        found = self._restoring.get(partition)
        if found is None:  # a restore that was not planned: everything is read
            found = self._restoring[partition] = _Restoring(False, {}, set())
        return found

    def holds(self, partition: int, key: str) -> bool:
        """True when the entity is restored from its ended marker: it folds no event."""
        restoring = self._restoring.get(partition)
        return restoring is not None and key in restoring.held

    def saw_event(self, partition: int, offset: int) -> None:
        restoring = self._restore(partition)
        restoring.read_events = max(restoring.read_events, offset)

    def saw_start(self, partition: int, key: str, offset: int, cause: str) -> None:
        """The entity may be restored from here: the first event (at `offset`) of the
        command `cause`, whose events hold a snapshot or the entity's first event."""
        restoring = self._restore(partition)
        restoring.starts[key] = (offset, cause)
        restoring.causes.add(cause)

    def saw_outcome(self, partition: int, offset: int, command_id: str | None) -> None:
        """An outcome read (command_id: this processor's, not a re-acknowledgement)."""
        restoring = self._restore(partition)
        restoring.read_results = max(restoring.read_results, offset)
        if command_id in restoring.causes:
            restoring.outcomes[command_id] = offset

    def saw_entity(self, partition: int, key: str, complete: bool, final: bytes | None,
                   sequence: int, last_at: int) -> None:
        """An entity folded from its events, ended (`final`) or live; or, not `complete`,
        read without its start (not folded)."""
        restoring = self._restore(partition)
        if not complete:
            restoring.incomplete = True
            if not restoring.trusted:
                log.error("%s[%d]: %s is in the log without its first event or a snapshot;"
                          " it is not restored", self.event_topic, partition, key)
        elif final is None:
            restoring.live.add(key)
        else:
            restoring.ended[key] = Point(key, -1, -1, sequence, last_at, final)

    def finish(self, positions: dict[int, int], ends: Mapping[tuple[str, int], int],
               now_ms: int) -> list[Output]:
        """After the planned partitions' events and outcomes were folded: advance positions
        to the marks, and the records to write now - the entities and marks the log holds
        beyond what the topic says. Raises RecordsMismatch (nothing changed) when the
        records of a trusted partition do not fit what was read (rule 5)."""
        mismatch = {partition for partition, r in self._restoring.items()
                    if r.trusted and (r.incomplete or any(
                        r.starts.get(key, (-1,))[0] < point.events_offset
                        for key, point in self.partitions[partition].live.items()))}
        if mismatch:
            self._restoring.clear()
            raise RecordsMismatch(mismatch)
        records = []
        for partition, restoring in sorted(self._restoring.items()):
            part = self.partitions.setdefault(partition, _Partition())
            points = list(restoring.ended.values())
            for key in restoring.live:
                offset, cause = restoring.starts[key]
                known = restoring.existing.get(key) if restoring.trusted else None
                if known is None or known.events_offset != offset:
                    points.append(Point(key, offset, restoring.outcomes.get(
                        cause, ends.get((RESULTS, partition), 0))))
            points = [p for p in points if restoring.existing.get(p.entity_key) != p]
            for point in points:
                self._keep(part, point)
                records.append(self._point_output(partition, point, now_ms))
            if not restoring.trusted:  # records of entities the log does not hold: delete
                gone = restoring.existing.keys() - restoring.live - restoring.ended.keys()
                records.extend(self._output(self.spec.topic, partition, key.encode(), None,
                                            now_ms) for key in sorted(gone))
            if restoring.trusted and part.marks.answered_through >= 0:
                positions[partition] = max(positions.get(partition, -1),
                                           part.marks.answered_through)
            within_commands(positions, ends, self.command_topic)
            marks = Marks(max(part.marks.events_through, restoring.read_events),
                          max(part.marks.results_through, restoring.read_results),
                          positions.get(partition, -1))
            if not restoring.trusted:
                part.written = Marks(-2, -2, -2)  # whatever the topic holds: write them
            records.extend(self._marks(partition, part, marks, now_ms, force=True))
            records.extend(self._requests(partition, part, now_ms))
        self._restoring.clear()
        return records
