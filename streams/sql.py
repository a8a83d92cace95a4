"""The Pit's database, below everything that stores: one engine for SQLite (the embedded
default) and PostgreSQL, the consumer positions table, and fast bulk writes.

`connect(url)` returns a SQLAlchemy engine that has been proven to answer, `create_tables`
creates every table defined on `METADATA`, and `write_transaction` opens the transaction a
writer must use: it takes the writer lock up front (SQLite `BEGIN IMMEDIATE`; on PostgreSQL
a lock on `projection_positions`), so projectors, the archive's hash chain and a replay's
table swap are serialized while readers keep reading.

Decisions:
* SQLite runs in WAL mode with `synchronous=NORMAL` (a committed batch survives a process
  crash; the last batches may be lost on power loss, and Kafka still holds them since the
  consumer positions roll back with them) and a busy timeout, so readers never block writers.
* The pysqlite driver's own transaction handling is switched off and SQLAlchemy emits the
  `BEGIN`, the recipe from SQLAlchemy's SQLite dialect documentation; that is what makes
  `BEGIN IMMEDIATE` possible.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    bindparam,
    create_engine,
    event,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
    SQLAlchemyError,
)

from streams.errors import DatabaseUnavailableError

if TYPE_CHECKING:
    from sqlalchemy.pool import ConnectionPoolEntry

METADATA = MetaData()

# A BIGINT on PostgreSQL, an INTEGER (the 64-bit rowid type) on SQLite.
Long = BigInteger().with_variant(Integer(), "sqlite")

TopicPartition = tuple[str, int]

# Consumer positions of every projection (and of the archive), written in the same
# transaction as its rows.
positions = Table(
    "projection_positions",
    METADATA,
    Column("projection", String(200), nullable=False),
    Column("topic", String(249), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("offset", Long, nullable=False),
    PrimaryKeyConstraint("projection", "topic", "partition", name="pk_projection_positions"),
)

_WRITE = "pit_write"
SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_CACHE_KIB = 64 * 1024
SQLITE_HEAP_LIMIT_BYTES = 48 * 1024 * 1024  # for all connections of the process together
WAL_AUTOCHECKPOINT_PAGES = 50_000       # ~200 MiB: the safety net behind the checkpointer
CHECKPOINT_INTERVAL_S = 0.25
CHECKPOINT_WAL_BYTES = 4 * 1024 * 1024  # checkpoint once the WAL holds this much
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024  # truncate a WAL that grew beyond this once reset


def _safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid url>"


def connect(url: str, *, echo: bool = False) -> Engine:
    """An engine for `url` that answered a query; `DatabaseUnavailableError` if it cannot."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseUnavailableError(f"invalid database URL {url!r}") from None
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite and parsed.database and parsed.database != ":memory:" and \
            not parsed.database.startswith("file:"):
        try:
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DatabaseUnavailableError(
                f"cannot create the directory for {parsed.database}: {exc.strerror}") from None
    try:
        engine = create_engine(parsed, echo=echo, pool_pre_ping=True)
    except (NoSuchModuleError, ArgumentError, ImportError) as exc:
        raise DatabaseUnavailableError(
            f"unsupported database URL {_safe_url(url)}: {exc}") from None
    if sqlite:
        _configure_sqlite(engine)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except (DBAPIError, SQLAlchemyError, OSError) as exc:
        engine.dispose()
        reason = str(getattr(exc, "orig", exc) or exc).strip().splitlines()
        detail = reason[0] if reason else type(exc).__name__
        raise DatabaseUnavailableError(
            f"database unavailable at {_safe_url(url)}: {detail}") from None
    if sqlite and parsed.database and parsed.database != ":memory:" and \
            not parsed.database.startswith("file:"):
        _start_checkpointer(engine, str(Path(parsed.database).expanduser()))
    return engine


def connect_existing(url: str) -> Engine:
    """`connect`, for readers (the CLI's views and audit): a SQLite file that is not there
    is no Pit, said in one line, and not created empty."""
    with contextlib.suppress(ArgumentError):
        parsed = make_url(url)
        path = parsed.database
        if parsed.get_backend_name() == "sqlite" and path and path != ":memory:" and \
                not path.startswith("file:") and not Path(path).expanduser().exists():
            raise DatabaseUnavailableError(
                f"no Pit here: {path} does not exist (start `pit up` in this directory, or"
                " point PIT_DATA_DIR or PIT_DATABASE_URL at a Pit)")
    return connect(url)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: ConnectionPoolEntry
                    ) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # A page cache big enough for the hot index pages of a growing audit log (the
        # default 2 MiB costs the projector ~10% at 100k rows); allocated as pages are used.
        cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        # ...but bounded for the whole process (the pragma is process-wide): each pooled
        # connection keeps its cache while idle, so 15 of them could hold 15 x 64 MiB.
        # Near the limit a cache recycles its own pages instead of growing.
        cursor.execute(f"PRAGMA soft_heap_limit={SQLITE_HEAP_LIMIT_BYTES}")
        # Checkpoints run in a background thread (below), not inside a writer's COMMIT;
        # this bound only applies if that thread falls far behind.
        cursor.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_WRITE)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _start_checkpointer(engine: Engine, path: str) -> None:
    """Copy the WAL into the database file from a background thread.

    SQLite's automatic checkpoint runs inside the COMMIT that crosses the threshold, which
    made it about a tenth of the projector's time (copying pages and an fsync at every
    5,000-record batch). A PASSIVE checkpoint in another thread never blocks readers or
    writers, and SQLite releases the GIL while it works, so it overlaps the projector.
    The thread stops when the engine is garbage collected (a disposed engine can still be
    used again, so disposal does not stop it).
    """
    stop = threading.Event()
    thread = threading.Thread(target=_checkpoint_loop, args=(path, stop),
                              name=f"pit-sqlite-checkpoint:{Path(path).name}", daemon=True)
    weakref.finalize(engine, stop.set)
    thread.start()


def _checkpoint_loop(path: str, stop: threading.Event) -> None:
    wal = path + "-wal"
    connection = None
    checkpointed = None  # the WAL's (size, mtime) after the last checkpoint
    try:
        while not stop.wait(CHECKPOINT_INTERVAL_S):
            try:
                info = os.stat(wal)
                state = (info.st_size, info.st_mtime_ns)
                if info.st_size < CHECKPOINT_WAL_BYTES or state == checkpointed:
                    continue
                if connection is None:
                    connection = sqlite3.connect(path, timeout=1, isolation_level=None,
                                                 check_same_thread=False)
                connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                info = os.stat(wal)
                checkpointed = (info.st_size, info.st_mtime_ns)
            except (OSError, sqlite3.Error):
                continue  # no WAL yet, file gone, busy: try again at the next tick
    finally:
        if connection is not None:
            connection.close()


def is_sqlite(bind: Engine | Connection) -> bool:
    return bind.dialect.name == "sqlite"


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction holding the projection writer lock; commits on success.

    SQLite: `BEGIN IMMEDIATE` (one writer at a time, readers unaffected in WAL mode).
    PostgreSQL: `LOCK projection_positions IN EXCLUSIVE MODE` (conflicts with other writers,
    not with plain SELECTs), so positions, rows and the audit chain move as one.
    """
    with engine.connect().execution_options(**{_WRITE: True}) as conn, conn.begin():
        if not is_sqlite(conn):
            table = conn.dialect.identifier_preparer.format_table(positions)
            conn.exec_driver_sql(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
        yield conn


def quote(bind: Engine | Connection, name: str) -> str:
    return bind.dialect.identifier_preparer.quote(name)


def insert_many(conn: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """`INSERT` many rows given as dicts with the same keys (see `insert_rows`)."""
    if rows:
        names = tuple(rows[0])
        insert_rows(conn, table, names, [tuple(row[name] for name in names) for row in rows])


def insert_rows(conn: Connection, table: Table, columns: tuple[str, ...],
                rows: Sequence[tuple[Any, ...]]) -> None:
    """`INSERT` many rows through the driver's executemany, skipping SQLAlchemy's per-row
    parameter processing (a third of the projector's time otherwise). Only for plain values
    (str, int, bytes, None); `columns` names the tuple positions."""
    if not rows:
        return
    if conn.dialect.driver == "psycopg":  # PostgreSQL: COPY is several times faster
        _copy_rows(conn, table, columns, rows)
        return
    marker = _MARKERS.get(conn.dialect.paramstyle)
    if marker is None:
        conn.execute(table.insert(), [dict(zip(columns, row, strict=True)) for row in rows])
        return
    sql = _insert_sql(marker, conn.dialect.identifier_preparer, table, columns)
    conn.exec_driver_sql(sql, list(rows))


def _copy_rows(conn: Connection, table: Table, columns: tuple[str, ...],
               rows: Sequence[tuple[Any, ...]]) -> None:
    preparer = conn.dialect.identifier_preparer
    names = ", ".join(preparer.quote(name) for name in columns)
    statement = f"COPY {preparer.format_table(table)} ({names}) FROM STDIN"
    driver_connection = conn.connection.driver_connection  # the same psycopg transaction
    assert driver_connection is not None  # set while the connection is checked out
    with driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row(row)


def update_rows(conn: Connection, table: Table, key: str | tuple[str, ...],
                columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]) -> None:
    """`UPDATE table SET columns... WHERE key = ?` for many rows through the driver's
    executemany; each row is the new column values followed by the key value(s) (`key`
    may name several columns: a composite key)."""
    if not rows:
        return
    keys = (key,) if isinstance(key, str) else key
    marker = _MARKERS.get(conn.dialect.paramstyle)
    if marker is None:
        stmt = table.update().where(*(table.c[k] == bindparam(f"_key_{k}") for k in keys))
        width = len(columns)
        conn.execute(stmt, [{**dict(zip(columns, row[:width], strict=True)),
                             **{f"_key_{k}": v for k, v in zip(keys, row[width:], strict=True)}}
                            for row in rows])
        return
    preparer = conn.dialect.identifier_preparer
    sets = ", ".join(f"{preparer.quote(name)} = {marker}" for name in columns)
    where = " AND ".join(f"{preparer.quote(k)} = {marker}" for k in keys)
    conn.exec_driver_sql(f"UPDATE {preparer.format_table(table)} SET {sets} WHERE {where}",
                         list(rows))


_MARKERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}


@lru_cache(maxsize=256)
def _insert_sql(marker: str, preparer: Any, table: Table, names: tuple[str, ...]) -> str:
    columns = ", ".join(preparer.quote(name) for name in names)
    return (f"INSERT INTO {preparer.format_table(table)} ({columns}) "
            f"VALUES ({', '.join([marker] * len(names))})")


def create_tables(engine: Engine) -> None:
    """Create every table defined on METADATA that does not exist yet (idempotent);
    `DatabaseUnavailableError` in one line when the database cannot do it."""
    try:
        METADATA.create_all(engine)
    except (DBAPIError, SQLAlchemyError) as exc:
        lines = str(getattr(exc, "orig", exc)).strip().splitlines()
        reason = lines[0] if lines else type(exc).__name__
        if isinstance(exc, OperationalError | InterfaceError):
            raise DatabaseUnavailableError(
                f"projection database unavailable: {reason}") from None
        raise DatabaseUnavailableError(
            f"cannot create the projection tables: {reason}") from None


class connection:
    """Use a given connection as is, or open one from an engine (closed on exit)."""

    def __init__(self, bind: Engine | Connection) -> None:
        self.bind: Engine | Connection = bind
        self.conn: Connection | None = None

    def __enter__(self) -> Connection:
        if isinstance(self.bind, Connection):
            return self.bind
        self.conn = self.bind.connect()
        return self.conn

    def __exit__(self, *exc: object) -> None:
        if self.conn is not None:
            self.conn.close()


# --- positions --------------------------------------------------------------------------------

def load_positions(conn: Connection, projections: Iterable[str]
                   ) -> dict[str, dict[TopicPartition, int]]:
    names = list(projections)
    found: dict[str, dict[TopicPartition, int]] = {name: {} for name in names}
    rows = conn.execute(select(positions).where(positions.c.projection.in_(names)))
    for projection, topic, partition, offset in rows:
        found[projection][(topic, partition)] = offset
    return found


def save_positions(conn: Connection, before: dict[str, dict[TopicPartition, int]],
                   after: dict[str, dict[TopicPartition, int]]) -> None:
    inserts, updates = [], []
    for projection, offsets in after.items():
        old = before.get(projection, {})
        for (topic, partition), offset in offsets.items():
            if (topic, partition) not in old:
                inserts.append({"projection": projection, "topic": topic,
                                "partition": partition, "offset": offset})
            elif old[(topic, partition)] != offset:
                updates.append({"_p": projection, "_t": topic, "_n": partition,
                                "offset": offset})
    if inserts:
        conn.execute(positions.insert(), inserts)
    if updates:
        conn.execute(
            update(positions).where(positions.c.projection == bindparam("_p"),
                                    positions.c.topic == bindparam("_t"),
                                    positions.c.partition == bindparam("_n")),
            updates,
        )


def read_positions(engine: Engine | Connection, projection: str) -> dict[TopicPartition, int]:
    with connection(engine) as conn:
        return load_positions(conn, [projection])[projection]
