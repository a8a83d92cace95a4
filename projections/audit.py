"""The audit projection: the event archive's hash chain verified, the history of a key, the
state of a key as of a time, and one line per archived record.

`verify` walks the chain (`streams.archive`) and names every row where it breaks: any
edited column, deleted, inserted or reordered row. What no chain without an outside anchor
can detect is a rewrite that recomputes every later hash; `verify` reports the head hash so
it can be anchored elsewhere (a ticket, a second system).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, RowMapping, or_, select

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.archive import AUDIT, COLUMNS, GENESIS, audit_log, payload_json, row_hash
from streams.decider import Decider, from_record
from streams.errors import AuditChainError, PitError
from streams.sql import connection, positions
from streams.times import iso

# --- verification -----------------------------------------------------------------------------

@dataclass
class VerifyReport:
    rows: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    problems: list[str] = field(default_factory=list)
    more: int = 0  # problems found beyond the ones listed

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        if self.ok:
            return [f"audit log OK: {self.rows} rows, head seq {self.head_seq} "
                    f"hash {self.head_hash}"]
        extra = [f"... and {self.more} more problems"] if self.more else []
        return [*self.problems, *extra,
                f"audit log BROKEN: {len(self.problems) + self.more} problems in {self.rows} rows"]

    def raise_for_problems(self) -> None:
        if not self.ok:
            raise AuditChainError(self.problems[0])

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "rows": self.rows, "head_seq": self.head_seq,
                "head_hash": self.head_hash, "problems": self.problems,
                "more_problems": self.more}


def _where(row: RowMapping) -> str:
    return f"seq {row['seq']} ({row['topic']} partition {row['partition']} offset {row['offset']})"


def verify(engine: Engine | Connection, *, max_problems: int = 100) -> VerifyReport:
    """Walk the chain in seq order and name every row where it breaks.

    * edited row: its stored hash is not the hash of its contents;
    * deleted rows: a gap in seq (and the next row's prev_hash links to a missing row);
    * inserted row: its prev_hash does not link to the row before it, or its hash does not
      match (seq is hashed, so renumbering rows to make room breaks every renumbered row);
    * reordered rows: hash mismatches (seq is hashed) and, per partition, offsets that go
      backwards in seq order;
    * rows deleted at the end (which leave no gap): the audit projection's stored position
      is beyond the last archived offset of its partition.
    """
    report = VerifyReport()

    def problem(text: str) -> None:
        if len(report.problems) < max_problems:
            report.problems.append(text)
        else:
            report.more += 1

    expected_seq, prev_hash = 1, GENESIS
    last_offsets: dict[tuple[str, int], tuple[int, int]] = {}
    highest: dict[tuple[str, int], int] = {}
    stmt = select(audit_log).order_by(audit_log.c.seq)
    with connection(engine) as conn:
        for row in conn.execute(stmt.execution_options(yield_per=5000)).mappings():
            report.rows += 1
            seq = row["seq"]
            if seq > expected_seq:
                missing = (f"seq {expected_seq}" if seq == expected_seq + 1
                           else f"seq {expected_seq}..{seq - 1}")
                problem(f"rows deleted: {missing} missing before {_where(row)}")
            elif seq < expected_seq:
                problem(f"row out of order: {_where(row)} after seq {expected_seq - 1}")
            if row["prev_hash"] != prev_hash:
                problem(f"chain broken at {_where(row)}: prev_hash does not match the hash "
                        f"of the row before it (row inserted, deleted or reordered)")
            actual = row_hash(dict(row))
            if actual != row["hash"]:
                problem(f"row edited: {_where(row)}: stored hash does not match its contents")
            tp = (row["topic"], row["partition"])
            if tp in last_offsets and row["offset"] <= last_offsets[tp][1]:
                problem(f"rows reordered: {_where(row)} comes after offset "
                        f"{last_offsets[tp][1]} of the same partition (seq {last_offsets[tp][0]})")
            last_offsets[tp] = (seq, row["offset"])
            highest[tp] = max(row["offset"], highest.get(tp, -1))
            expected_seq, prev_hash = seq + 1, row["hash"]
            report.head_seq, report.head_hash = seq, row["hash"]
        # The tail: the projector's own position says how far the archive must reach.
        recorded = conn.execute(select(positions.c.topic, positions.c.partition,
                                       positions.c.offset)
                                .where(positions.c.projection == AUDIT))
        for topic, partition, offset in recorded:
            top = highest.get((topic, partition))
            if top is None or top < offset:
                where = "no rows" if top is None else f"rows up to offset {top}"
                problem(f"rows deleted at the end: {topic} partition {partition} has {where} "
                        f"but offset {offset} was archived")
    return report


# --- reading the history ----------------------------------------------------------------------

def _row_out(row: Any) -> dict[str, Any]:
    out = {name: row[name] for name in COLUMNS if name not in ("value", "key_raw", "payload_json")}
    out["payload"] = None if row["payload_json"] is None else json.loads(row["payload_json"])
    out["value_size"] = None if row["value"] is None else len(row["value"])
    return out


def history(engine: Engine | Connection, key: str) -> list[dict[str, Any]]:
    """Every archived record of one entity (by entity key or Kafka key), in seq order."""
    stmt = (select(audit_log).where(or_(audit_log.c.entity_key == key, audit_log.c.key == key))
            .order_by(audit_log.c.seq))
    with connection(engine) as conn:
        return [_row_out(row) for row in conn.execute(stmt).mappings()]


def latest_payload(engine: Engine | Connection, key: str, event_type: str
                   ) -> dict[str, Any] | None:
    """The payload of the entity's last archived record of `event_type` (None if none)."""
    stmt = (select(audit_log.c.payload_json)
            .where(audit_log.c.entity_key == key, audit_log.c.event_type == event_type)
            .order_by(audit_log.c.seq.desc()).limit(1))
    with connection(engine) as conn:
        found = conn.execute(stmt).scalar()
    return None if found is None else json.loads(found)


def format_row(row: dict[str, Any]) -> str:
    """One history row (from `history`) as one line for `pit audit <key>`:
    seq, log time (UTC), topic[partition]@offset, type, key, then the payload without its
    envelope (or the decoding error)."""
    stamp = iso(row["timestamp_ms"])
    payload = row.get("payload")
    if isinstance(payload, dict):
        body = payload_json({k: v for k, v in payload.items() if k != "envelope"})
    elif payload is not None:
        body = payload_json(payload)
    elif row.get("error"):
        body = f"undecodable: {row['error']}"
    else:
        body = "tombstone" if row.get("value_size") is None else "-"
    return (f"#{row['seq']} {stamp} {row['topic']}[{row['partition']}]@{row['offset']} "
            f"{row.get('event_type') or '-'} {row.get('key') or '-'} {body}")


def history_lines(rows: Sequence[dict[str, Any]], quiet: Collection[str] = ()
                  ) -> Iterator[str]:
    """`format_row` for each row, except that each run of two or more consecutive rows of
    `quiet` types is one line: how many, of which types, from when to when, and how many
    said ok and not ok where their payloads say."""
    run: list[dict[str, Any]] = []
    for row in [*rows, None]:
        if row is not None and row.get("event_type") in quiet:
            run.append(row)
            continue
        if len(run) == 1:
            yield format_row(run[0])
        elif run:
            yield _folded(run)
        run = []
        if row is not None:
            yield format_row(row)


def _folded(run: list[dict[str, Any]]) -> str:
    types = sorted({row["event_type"] for row in run})
    said = [row["payload"].get("ok") for row in run if isinstance(row.get("payload"), dict)]
    outcome = (f" ({said.count(True)} ok, {said.count(False)} not ok)"
               if said.count(True) + said.count(False) else "")
    return (f"#{run[0]['seq']}..#{run[-1]['seq']} {iso(run[0]['timestamp_ms'])} to"
            f" {iso(run[-1]['timestamp_ms'])}: {len(run)} {' and '.join(types)}{outcome}"
            " (--all shows each)")


def state_as_of(engine: Engine | Connection, key: str, until_ms: int,
                deciders: Mapping[str, tuple[Decider, Decider]], *,
                topic: str | None = None, codec: Codec | None = None) -> Any:
    """The state of `key` at `until_ms` (inclusive), replayed from its archived events; None
    when it had no event by then (a subject's initial state when it had only events its
    decider does not fold, such as a model's registration). `deciders` maps an event topic
    to the decider of its entities and that of one subject's events
    (`streams.component.audit_deciders`). A key that is an entity (a pool) replays the
    entity's decider over all its events; a subject (a model: the events' Kafka key) replays
    the subject's decider (the model lifecycle) over the events about it.

    Event time is the envelope's `occurred_at` (what `evolve` uses), else the log timestamp.
    """
    with connection(engine) as conn:
        if topic is None:
            topics = set(conn.execute(
                select(audit_log.c.topic).distinct()
                .where(audit_log.c.topic.in_(list(deciders)),
                       or_(audit_log.c.entity_key == key, audit_log.c.key == key))).scalars())
            if not topics:
                return None
            if len(topics) > 1:
                raise PitError(f"{key} has events on {', '.join(sorted(topics))}; name the topic")
            topic = topics.pop()
        try:
            entity_decider, subject_decider = deciders[topic]
        except KeyError:
            raise PitError(f"no decider replays {topic}; known: {', '.join(deciders)}") from None
        is_entity = conn.execute(select(audit_log.c.seq).where(
            audit_log.c.topic == topic, audit_log.c.entity_key == key).limit(1)).first()
    decider, column = ((entity_decider, audit_log.c.entity_key) if is_entity
                       else (subject_decider, audit_log.c.key))
    codec = codec or Codec(EmbeddedRegistry())
    stmt = (select(audit_log.c.value, audit_log.c.timestamp_ms)
            .where(audit_log.c.topic == topic, audit_log.c.value.is_not(None),
                   audit_log.c.error.is_(None), column == key)
            .order_by(audit_log.c.partition, audit_log.c.offset))
    state, seen = decider.initial_state(key), False
    with connection(engine) as conn:
        for value, timestamp_ms in conn.execute(stmt):
            decoded = codec.decode(value)
            envelope = decoded.record.get("envelope") or {}
            at_ms = envelope.get("occurred_at", timestamp_ms)
            if at_ms > until_ms:
                break
            # It exists from its first event, one its decider does not fold too (a model's
            # registration is the pool's event): until the next, it is in its initial state.
            seen = True
            event_type = decider.event_type(decoded.name)
            if event_type is not None:
                state = decider.evolve(state, from_record(event_type, decoded.record), at_ms)
    return state if seen else None
