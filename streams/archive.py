"""The event archive: every record of every topic, in a hash chain, in the database.

One row per log record (topic, partition, offset unique), numbered by `seq` in the order it
was archived, with the record's original bytes (`value`, `key`, headers) and, for reading,
its decoded payload as JSON (NULL plus `error` when it does not decode).

Hash chain: `hash = sha256(prev_hash_bytes || canonical(row))` where `prev_hash` is the
previous row's hash (genesis: 64 zeros) and `canonical(row)` is a length-prefixed encoding
of every stored column: seq, topic, partition, offset, timestamp, key, raw key, value,
headers, event type, entity key, payload JSON and error (see `chain_hash`); the audit
projection verifies it.

The archive is what the embedded broker is restored from after a restart and the source of
a replay when Kafka no longer holds the beginning: `archived_records`, `archive_positions`.

Any writer may append (`append`, in its own `write_transaction`): the archive keeps its own
position per partition, so a record archived once, by whichever writer, is skipped when
another writer offers it again.

Pending records (`archive_pending`, in `pending_engine`): on the embedded broker a processor
makes its events durable there, raw, before it publishes their outcomes (`keep_pending`) and
removes those the archive has caught up with (`prune_pending`); a restore reads the archive
and then the pending records beyond it (`durable_records`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

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
    bindparam,
    delete,
    func,
    select,
)
from sqlalchemy.exc import InterfaceError, OperationalError

from schemas.codec import Codec, Decoded
from streams.errors import DatabaseUnavailableError, PitError
from streams.log import LogRecord
from streams.sql import (
    METADATA,
    Long,
    connect,
    connection,
    insert_rows,
    load_positions,
    read_positions,
    save_positions,
)
from streams.topics import SCHEMAS

AUDIT = "audit"  # the archive's name in projection_positions: how far each partition is archived


# --- decoding ---------------------------------------------------------------------------------

class Entry(NamedTuple):
    """One log record with its decoding: `decoded` is None when `error` says why (or when the
    value is a tombstone or a JSON record of a JSON topic, which `json_value` then holds)."""

    record: LogRecord
    decoded: Decoded | None
    error: str | None = None
    json_value: object = None


JSON_TOPICS = frozenset({SCHEMAS})  # topics whose values are JSON, not Avro


def decode_entry(codec: Codec, record: LogRecord) -> Entry:
    if record.value is None:
        return Entry(record, None)  # a tombstone: nothing to decode, nothing wrong
    if record.topic in JSON_TOPICS:
        try:
            return Entry(record, None, json_value=json.loads(record.value))
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            return Entry(record, None, f"invalid JSON: {exc}")
    try:
        return Entry(record, codec.decode(record.value))
    except PitError as exc:
        return Entry(record, None, f"{type(exc).__name__}: {exc}")


# --- the table --------------------------------------------------------------------------------

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


def decode_headers(text: str) -> tuple[tuple[str, bytes | None], ...]:
    out: list[tuple[str, bytes | None]] = []
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
    parts = [b"" if v is None else v.encode() if isinstance(v, str) else bytes(v) for v in values]
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


def append(conn: Connection, entries: Sequence[Entry]) -> list[Entry]:
    """Archive the entries beyond the archive's position of their partition and advance those
    positions, in the caller's `write_transaction` (the writer lock keeps seq and the chain in
    order); returns the entries archived now. An entry at or below its partition's position
    is already archived, by this writer or another, and is skipped. Pending records (below)
    now archived are removed."""
    before = load_positions(conn, [AUDIT])
    done = dict(before[AUDIT])
    fresh = []
    for entry in entries:
        rec = entry.record
        tp = (rec.topic, rec.partition)
        if rec.offset > done.get(tp, -1):
            done[tp] = rec.offset
            fresh.append(entry)
    _chain(conn, fresh)
    save_positions(conn, before, {AUDIT: done})
    return fresh


# --- pending records: durable before the archive has them ------------------------------------

# The embedded broker keeps nothing over a restart, so a processor makes its events durable
# here before it publishes their outcomes (`keep_pending`): their bytes at their offsets,
# unchained, one insert per batch - a tenth of what archiving them costs (decoding, JSON, the
# hash chain, three indexes), work the projector does anyway when it reads them from Kafka.
# They go once the archive has their offsets (`prune_pending`); a restore brings back the
# archive, then per partition the pending records beyond it (`durable_records`).
pending = Table(
    "archive_pending",
    METADATA,
    Column("topic", String(249), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", Long, nullable=False),
    Column("timestamp_ms", Long, nullable=False),
    Column("key", LargeBinary),
    Column("value", LargeBinary),
    Column("headers_json", Text, nullable=False),
    PrimaryKeyConstraint("topic", "partition", "offset", name="pk_archive_pending"),
)
_PENDING_COLUMNS = tuple(c.name for c in pending.columns)


def pending_engine(engine: Engine) -> Engine:
    """Where pending records live. On SQLite, a database file of its own beside the main one
    (`pit.pending.db` for `pit.db`): SQLite has one write lock per file, and a processor
    waiting for it behind the projector's transactions ran a 10,000-node workflow five times
    slower. Elsewhere (PostgreSQL: row locks) the database itself."""
    database = engine.url.database
    if engine.url.get_backend_name() != "sqlite" or not database or database == ":memory:" \
            or database.startswith("file:"):
        return engine
    path = Path(database)
    side = connect(str(engine.url.set(database=str(path.with_name(
        f"{path.stem}.pending{path.suffix or '.db'}")))))
    pending.create(side, checkfirst=True)
    return side


def keep_pending(pending_db: Engine, records: Sequence[LogRecord]) -> None:
    """Make a writer's records durable before the archive has them: one transaction, on disk
    when it returns (a process killed after it loses none of them); `DatabaseUnavailableError`
    when the database cannot take them. A plain transaction: distinct offsets never conflict,
    so it need not wait for the projection writer lock."""
    rows = [(r.topic, r.partition, r.offset, r.timestamp_ms, r.key, r.value,
             encode_headers(r.headers)) for r in records]
    try:
        with pending_db.begin() as conn:
            insert_rows(conn, pending, _PENDING_COLUMNS, rows)
    except (OperationalError, InterfaceError) as exc:
        lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise DatabaseUnavailableError(
            f"archive unavailable: {lines[0] if lines else type(exc).__name__}") from exc


def prune_pending(engine: Engine, pending_db: Engine) -> int:
    """Remove the pending records the archive now holds (by its stored positions); the
    number removed."""
    archived = read_positions(engine, AUDIT)
    with pending_db.begin() as conn:
        held = conn.execute(select(pending.c.topic, pending.c.partition).distinct()).all()
        done = [{"t": topic, "p": partition, "o": archived[(topic, partition)]}
                for topic, partition in held if (topic, partition) in archived]
        if not done:
            return 0
        return conn.execute(delete(pending).where(
            pending.c.topic == bindparam("t"), pending.c.partition == bindparam("p"),
            pending.c.offset <= bindparam("o")), done).rowcount


def durable_ends(engine: Engine, pending_db: Engine) -> dict[tuple[str, int], int]:
    """The last durable offset of every (topic, partition): archived or pending."""
    ends = archive_positions(engine)
    stmt = (select(pending.c.topic, pending.c.partition, func.max(pending.c.offset))
            .group_by(pending.c.topic, pending.c.partition))
    with connection(pending_db) as conn:
        for topic, partition, offset in conn.execute(stmt):
            ends[(topic, partition)] = max(offset, ends.get((topic, partition), -1))
    return ends


def durable_records(engine: Engine, pending_db: Engine) -> Iterator[LogRecord]:
    """Every record a restore can bring back, per (topic, partition) in offset order: the
    archived ones, then the pending ones beyond them."""
    archived = archive_positions(engine)
    with connection(engine) as conn, connection(pending_db) as side:
        held = {(t, p) for t, p in side.execute(
            select(pending.c.topic, pending.c.partition).distinct())}
        for topic, partition in sorted(archived.keys() | held):
            if (topic, partition) in archived:
                yield from _partition_records(conn, topic, partition, -1)
            if (topic, partition) in held:
                stmt = (select(pending).where(
                    pending.c.topic == topic, pending.c.partition == partition,
                    pending.c.offset > archived.get((topic, partition), -1))
                    .order_by(pending.c.offset))
                for row in side.execute(stmt):
                    yield LogRecord(row.topic, row.partition, row.offset, row.timestamp_ms,
                                    row.key, row.value, cast(
                                        "tuple[tuple[str, bytes], ...]",
                                        decode_headers(row.headers_json)))


def _chain(conn: Connection, entries: Sequence[Entry]) -> None:
    """Insert entries as rows linked to the chain's head."""
    if not entries:
        return
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


# --- reading ----------------------------------------------------------------------------------

def archive_positions(engine: Engine | Connection) -> dict[tuple[str, int], int]:
    """The last archived offset of every (topic, partition)."""
    stmt = (select(audit_log.c.topic, audit_log.c.partition, func.max(audit_log.c.offset))
            .group_by(audit_log.c.topic, audit_log.c.partition))
    with connection(engine) as conn:
        return {(topic, partition): offset for topic, partition, offset in conn.execute(stmt)}


def archive_count(engine: Engine | Connection, topics: Sequence[str] | None = None,
                  after: dict[tuple[str, int], int] | None = None) -> int:
    stmt = select(audit_log.c.topic, audit_log.c.partition, func.count(), func.max(
        audit_log.c.offset)).group_by(audit_log.c.topic, audit_log.c.partition)
    if topics is not None:
        stmt = stmt.where(audit_log.c.topic.in_(list(topics)))
    total = 0
    with connection(engine) as conn:
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
    # LogRecord types header values as bytes; Kafka allows None, kept as it was.
    headers = cast("tuple[tuple[str, bytes], ...]", decode_headers(row.headers_json))
    return LogRecord(row.topic, row.partition, row.offset, row.timestamp_ms, key, value,
                     headers)


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
    with connection(engine) as conn:
        for topic, partition in sorted(archive_positions(conn)):
            if topics is not None and topic not in topics:
                continue
            if partitions is not None and partition not in partitions:
                continue
            if until is not None and (topic, partition) not in until:
                continue
            yield from _partition_records(conn, topic, partition, after.get((topic, partition),
                                          -1), None if until is None else until[
                                              (topic, partition)])


def _partition_records(conn: Connection, topic: str, partition: int, after: int,
                       until: int | None = None) -> Iterator[LogRecord]:
    stmt = (select(*_RECORD_COLUMNS)
            .where(audit_log.c.topic == topic, audit_log.c.partition == partition,
                   audit_log.c.offset > after)
            .order_by(audit_log.c.offset))
    if until is not None:
        stmt = stmt.where(audit_log.c.offset <= until)
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
    with connection(engine) as conn:
        return [to_log_record(row) for row in conn.execute(stmt)]


def compacted_positions(engine: Engine, pending_db: Engine, topic: str
                        ) -> set[tuple[int, int]]:
    """What Kafka's log compaction would keep of a topic's durable records (archived, then
    pending beyond the archive), as (partition, offset): the latest record of each key; keys
    whose latest record is a tombstone (value NULL) and records without a key are dropped.
    For restoring compacted topics: a pending record supersedes an archived one."""
    latest = {(r.partition, r.key): (r.offset, r.value is not None)
              for r in latest_records(engine, topic)}
    archived = read_positions(engine, AUDIT)  # stored by `append`: no scan of the archive
    stmt = (select(pending.c.partition, pending.c.offset, pending.c.key,
                   pending.c.value.is_not(None)).where(pending.c.topic == topic)
            .order_by(pending.c.partition, pending.c.offset))
    with connection(pending_db) as conn:
        for partition, offset, key, live in conn.execute(stmt):
            if offset > archived.get((topic, partition), -1):
                latest[(partition, None if key is None else bytes(key))] = (offset, live)
    return {(partition, offset) for (partition, key), (offset, live) in latest.items()
            if key is not None and live}
