"""The audit log: every record of every topic, in a hash chain, and the archive of the log.

One row per log record (topic, partition, offset unique), numbered by `seq` in the order the
projector archived them, with the record's original bytes (`value`, `key`, headers) and,
for reading, its decoded payload as JSON (NULL plus `error` when it does not decode).

Hash chain: `hash = sha256(prev_hash_bytes || canonical(row))` where `prev_hash` is the
previous row's hash (genesis: 64 zeros) and `canonical(row)` is a length-prefixed encoding
of every stored column: seq, topic, partition, offset, timestamp, key, raw key, value,
headers, event type, entity key, payload JSON and error. So any edited column, deleted,
inserted or reordered row breaks the chain at a row `verify` names. What no chain without
an outside anchor can detect is a rewrite that recomputes every later hash; `verify`
reports the head hash so it can be anchored elsewhere (a ticket, a second system).

The archive is what the embedded broker is restored from after a restart and the source of
a replay when Kafka no longer holds the beginning: `archived_records`, `archive_positions`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    func,
    or_,
    select,
)

from projections.db import METADATA, Long, insert_rows, positions
from projections.runtime import AUDIT
from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.decider import Decider, from_record
from streams.errors import AuditChainError, PitError
from streams.log import LogRecord
from streams.pool.lifecycle import LIFECYCLE
from streams.pool.pool import POOL
from streams.pool.topics import POOL_EVENTS

if TYPE_CHECKING:
    from projections.runtime import Entry

GENESIS = "0" * 64

audit_log = Table(
    "audit_log",
    METADATA,
    Column("seq", Long, nullable=False, autoincrement=False),
    Column("topic", String(249), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", Long, nullable=False),
    Column("timestamp_ms", Long, nullable=False),
    Column("key", Text),              # the Kafka key as text (UTF-8)
    Column("key_raw", LargeBinary),   # the key's bytes when they are not clean UTF-8 text
    Column("event_type", String(200)),
    Column("entity_key", Text),
    Column("payload_json", Text),     # the decoded record; NULL when it did not decode
    Column("error", Text),            # why it did not decode
    Column("value", LargeBinary),     # the original bytes, exactly as in the log
    Column("headers_json", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    PrimaryKeyConstraint("seq", name="pk_audit_log"),
    UniqueConstraint("topic", "partition", "offset", name="uq_audit_log_position"),
    Index("ix_audit_log_entity_key", "entity_key"),
    Index("ix_audit_log_key", "key"),
)

COLUMNS = [c.name for c in audit_log.columns]
_COLUMN_TUPLE = tuple(COLUMNS)
_NUMBERS = struct.Struct(">qiqq")  # seq, partition, offset, timestamp


# --- encoding ---------------------------------------------------------------------------------

def _text(value: str | None) -> str | None:
    """Text for a column: PostgreSQL text cannot hold NUL, so NUL is written as \\x00."""
    return value.replace("\x00", "\\x00") if value is not None and "\x00" in value else value


def _key_columns(key: bytes | None) -> tuple[str | None, bytes | None]:
    """The key as text, plus its raw bytes when the text is not an exact copy of them."""
    if key is None:
        return None, None
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        return _text(key.decode("utf-8", "backslashreplace")), key
    if "\x00" in text:
        return _text(text), key
    return text, None


def encode_headers(headers: Sequence[tuple[str, bytes | None]]) -> str:
    """Headers as JSON; values that are not UTF-8 text keep their bytes as base64."""
    if not headers:
        return "[]"
    out: list[list[Any]] = []
    for name, value in headers:
        if value is None:
            out.append([name, None])
            continue
        try:
            text = bytes(value).decode("utf-8")
            out.append([name, text] if "\x00" not in text else
                       [name, {"base64": base64.b64encode(value).decode()}])
        except UnicodeDecodeError:
            out.append([name, {"base64": base64.b64encode(value).decode()}])
    return json.dumps(out, separators=(",", ":"))


def decode_headers(text: str) -> tuple[tuple[str, bytes], ...]:
    out = []
    for name, value in json.loads(text):
        if isinstance(value, dict):
            out.append((name, base64.b64decode(value["base64"])))
        else:
            out.append((name, None if value is None else value.encode("utf-8")))
    return tuple(out)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"bytes_hex": bytes(value).hex()}
    return str(value)


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=_json_default)


def payload_json(record: Any) -> str:
    return _JSON.encode(record)


_LENGTHS = struct.Struct(">9q")


def chain_hash(prev_hash: str, seq: int, topic: str, partition: int, offset: int,
               timestamp_ms: int, key: str | None, key_raw: bytes | None,
               value: bytes | None, headers_json: str, event_type: str | None,
               entity_key: str | None, payload: str | None, error: str | None) -> str:
    """sha256(prev_hash || canonical bytes of every other column of the row).

    Canonical bytes: seq, partition, offset, timestamp as big-endian int64 (partition
    int32); then the byte length of each of topic, key, key_raw, value, headers_json,
    event_type, entity_key, payload_json, error (-1 for NULL; text as UTF-8); then those
    bytes concatenated in the same order. `prev_hash` enters as its 32 raw bytes.
    """
    values = (topic, key, key_raw, value, headers_json, event_type, entity_key, payload, error)
    parts = [b"" if v is None else v.encode() if type(v) is str else bytes(v) for v in values]
    digest = hashlib.sha256(bytes.fromhex(prev_hash))
    digest.update(_NUMBERS.pack(seq, partition, offset, timestamp_ms))
    digest.update(_LENGTHS.pack(*[-1 if v is None else len(p)
                                  for v, p in zip(values, parts, strict=True)]))
    digest.update(b"".join(parts))
    return digest.hexdigest()


def row_hash(row: Any) -> str:
    """The hash a stored row should have (a mapping of audit_log's columns)."""
    return chain_hash(row["prev_hash"], row["seq"], row["topic"], row["partition"],
                      row["offset"], row["timestamp_ms"], row["key"], row["key_raw"],
                      row["value"], row["headers_json"], row["event_type"], row["entity_key"],
                      row["payload_json"], row["error"])


def _describe(entry: Entry) -> tuple[str | None, str | None, str | None]:
    """event type, entity key, payload JSON of a decoded entry."""
    decoded = entry.decoded
    if decoded is None:
        if entry.json_value is None:
            return None, None, None
        return None, None, payload_json(entry.json_value)
    record = decoded.record
    envelope = record.get("envelope")
    if isinstance(envelope, dict):
        event_type, entity_key = envelope.get("event_type"), envelope.get("entity_key")
    else:
        event_type = decoded.name.rsplit(".", 1)[-1]
        entity_key = record.get("entity_key")
        if not isinstance(entity_key, str):
            entity_key = None
    return _text(event_type), _text(entity_key), payload_json(record)


def append(conn: Connection, entries: Sequence[Entry]) -> int:
    """Append entries to the chain (caller holds the writer lock); returns rows written."""
    if not entries:
        return 0
    last = conn.execute(
        select(audit_log.c.seq, audit_log.c.hash).order_by(audit_log.c.seq.desc()).limit(1)
    ).first()
    seq, prev = (last[0], last[1]) if last else (0, GENESIS)
    rows = []
    for entry in entries:
        rec = entry.record
        seq += 1
        key, key_raw = _key_columns(rec.key)
        event_type, entity_key, payload = _describe(entry)
        if entity_key is None:
            entity_key = key
        headers = encode_headers(rec.headers) if rec.headers else "[]"
        digest = chain_hash(prev, seq, rec.topic, rec.partition, rec.offset, rec.timestamp_ms,
                            key, key_raw, rec.value, headers, event_type, entity_key, payload,
                            entry.error)
        rows.append((seq, rec.topic, rec.partition, rec.offset, rec.timestamp_ms, key, key_raw,
                     event_type, entity_key, payload, entry.error, rec.value, headers, prev,
                     digest))
        prev = digest
    insert_rows(conn, audit_log, _COLUMN_TUPLE, rows)
    return len(rows)


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


def _where(row: dict[str, Any]) -> str:
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
    with _connection(engine) as conn:
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


class _connection:
    """Use a given connection as is, or open one from an engine."""

    def __init__(self, bind: Engine | Connection) -> None:
        self.bind, self.conn = bind, None

    def __enter__(self) -> Connection:
        if isinstance(self.bind, Connection):
            return self.bind
        self.conn = self.bind.connect()
        return self.conn

    def __exit__(self, *exc: object) -> None:
        if self.conn is not None:
            self.conn.close()


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
    with _connection(engine) as conn:
        return [_row_out(row) for row in conn.execute(stmt).mappings()]


def format_row(row: dict[str, Any]) -> str:
    """One history row (from `history`) as one line for `pit audit <key>`:
    seq, log time (UTC), topic[partition]@offset, type, key, then the payload without its
    envelope (or the decoding error)."""
    when = datetime.fromtimestamp(row["timestamp_ms"] / 1000, tz=UTC)
    stamp = when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{row['timestamp_ms'] % 1000:03d}Z"
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


# event topic -> (the decider of its entities, the decider of one subject's events)
DECIDERS: dict[str, tuple[Decider, Decider]] = {POOL_EVENTS: (POOL, LIFECYCLE)}


def state_as_of(engine: Engine | Connection, key: str, until_ms: int, *,
                topic: str | None = None, codec: Codec | None = None) -> Any:
    """The state of `key` at `until_ms` (inclusive), replayed from its archived events; None
    when it had no event by then. A key that is an entity (a pool) replays the entity's
    decider over all its events; a subject (a model: the events' Kafka key) replays the
    subject's decider (the model lifecycle) over the events about it.

    Event time is the envelope's `occurred_at` (what `evolve` uses), else the log timestamp.
    """
    with _connection(engine) as conn:
        if topic is None:
            topics = set(conn.execute(
                select(audit_log.c.topic).distinct()
                .where(audit_log.c.topic.in_(list(DECIDERS)),
                       or_(audit_log.c.entity_key == key, audit_log.c.key == key))).scalars())
            if not topics:
                return None
            if len(topics) > 1:
                raise PitError(f"{key} has events on {', '.join(sorted(topics))}; name the topic")
            topic = topics.pop()
        try:
            entity_decider, subject_decider = DECIDERS[topic]
        except KeyError:
            raise PitError(f"no decider replays {topic}; known: {', '.join(DECIDERS)}") from None
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
    with _connection(engine) as conn:
        for value, timestamp_ms in conn.execute(stmt):
            decoded = codec.decode(value)
            event_type = decider.event_type(decoded.name)
            if event_type is None:
                continue
            envelope = decoded.record.get("envelope") or {}
            at_ms = envelope.get("occurred_at", timestamp_ms)
            if at_ms > until_ms:
                break
            state = decider.evolve(state, from_record(event_type, decoded.record), at_ms)
            seen = True
    return state if seen else None


# --- the archive ------------------------------------------------------------------------------

def archive_positions(engine: Engine | Connection) -> dict[tuple[str, int], int]:
    """The last archived offset of every (topic, partition)."""
    stmt = (select(audit_log.c.topic, audit_log.c.partition, func.max(audit_log.c.offset))
            .group_by(audit_log.c.topic, audit_log.c.partition))
    with _connection(engine) as conn:
        return {(topic, partition): offset for topic, partition, offset in conn.execute(stmt)}


def archive_count(engine: Engine | Connection, topics: Sequence[str] | None = None,
                  after: dict[tuple[str, int], int] | None = None) -> int:
    stmt = select(audit_log.c.topic, audit_log.c.partition, func.count(), func.max(
        audit_log.c.offset)).group_by(audit_log.c.topic, audit_log.c.partition)
    if topics is not None:
        stmt = stmt.where(audit_log.c.topic.in_(list(topics)))
    total = 0
    with _connection(engine) as conn:
        for topic, partition, count, _ in conn.execute(stmt):
            floor = (after or {}).get((topic, partition))
            if floor is None:
                total += count
            else:
                total += conn.execute(select(func.count()).where(
                    audit_log.c.topic == topic, audit_log.c.partition == partition,
                    audit_log.c.offset > floor)).scalar_one()
    return total


def to_log_record(row: Any) -> LogRecord:
    key = row.key_raw if row.key_raw is not None else (
        None if row.key is None else row.key.encode("utf-8"))
    value = None if row.value is None else bytes(row.value)
    return LogRecord(row.topic, row.partition, row.offset, row.timestamp_ms, key, value,
                     decode_headers(row.headers_json))


_RECORD_COLUMNS = [audit_log.c.topic, audit_log.c.partition, audit_log.c.offset,
                   audit_log.c.timestamp_ms, audit_log.c.key, audit_log.c.key_raw,
                   audit_log.c.value, audit_log.c.headers_json]


def archived_records(engine: Engine | Connection, topics: Sequence[str] | None = None,
                     after: dict[tuple[str, int], int] | None = None,
                     *, until: dict[tuple[str, int], int] | None = None,
                     partitions: Collection[int] | None = None) -> Iterator[LogRecord]:
    """Archived records in (topic, partition, offset) order, streamed, optionally only those
    of `topics` and `partitions`, after the offsets in `after` and up to the offsets in `until`
    (inclusive)."""
    after = after or {}
    columns = _RECORD_COLUMNS
    with _connection(engine) as conn:
        for topic, partition in sorted(archive_positions(conn)):
            if topics is not None and topic not in topics:
                continue
            if partitions is not None and partition not in partitions:
                continue
            stmt = (select(*columns)
                    .where(audit_log.c.topic == topic, audit_log.c.partition == partition,
                           audit_log.c.offset > after.get((topic, partition), -1))
                    .order_by(audit_log.c.offset))
            if until is not None:
                if (topic, partition) not in until:
                    continue
                stmt = stmt.where(audit_log.c.offset <= until[(topic, partition)])
            for row in conn.execute(stmt.execution_options(yield_per=5000)):
                yield to_log_record(row)


def latest_records(engine: Engine | Connection, topic: str,
                   partitions: Collection[int] | None = None) -> list[LogRecord]:
    """Per partition of an archived topic (or of `partitions`), the latest record of each
    key, tombstones included, in (partition, offset) order: found by the database, so only
    those rows are read."""
    where = [audit_log.c.topic == topic]
    if partitions is not None:
        where.append(audit_log.c.partition.in_(sorted(partitions)))
    latest = (select(audit_log.c.partition, func.max(audit_log.c.offset).label("last"))
              .where(*where)
              .group_by(audit_log.c.partition, audit_log.c.key, audit_log.c.key_raw)
              .subquery())
    stmt = (select(*_RECORD_COLUMNS)
            .join(latest, and_(audit_log.c.partition == latest.c.partition,
                               audit_log.c.offset == latest.c.last))
            .where(audit_log.c.topic == topic)
            .order_by(audit_log.c.partition, audit_log.c.offset))
    with _connection(engine) as conn:
        return [to_log_record(row) for row in conn.execute(stmt)]


def compacted_records(engine: Engine | Connection, topic: str) -> list[LogRecord]:
    """What Kafka's log compaction would keep of an archived topic: per partition, the latest
    record of each key, in offset order; keys whose latest record is a tombstone (value
    NULL) and records without a key are dropped. For restoring compacted topics."""
    return [r for r in latest_records(engine, topic)
            if r.key is not None and r.value is not None]
