"""Artifact search inside the views database: SQLite FTS5 (the embedded default) and
PostgreSQL full text (tsvector). The full-text engine lists the documents a query's text
matches and scores them (all of them when filters will drop some; otherwise it ranks just
the page, as scoring every match costs several times listing it); filters, facets and the
page come from an in-memory columnar copy of the documents (`columns.py`), kept in step
with the tables by a version.

Tables (names start with `prefix`, default "search"):
* `<prefix>_docs`: one row per artifact; `doc_id` = 63 bits of BLAKE2b(address), so ids
  need no allocation round trip and a rebuild gives every document the same id again (a
  collision, ~1e-9 at 100,000 documents, is refused, never overwritten); `seq` = the
  version that wrote the row;
* `<prefix>_removed`: ids removed, with the version that removed them;
* `<prefix>_meta`: the generation (new at every reset) and the version (bumped by every
  write transaction), which tell a reader's columns what to load;
* SQLite: `<prefix>_fts`, an FTS5 table (name, text, metadata), rowid = doc_id. It keeps
  its own copy of the text rather than pointing at `_docs` (external content): such a
  table names its content table in its schema, which a rename would leave behind;
* PostgreSQL: the text lives in `_docs` with a GIN-indexed tsvector column built from the
  words alone (see `PostgresSearch`).

Writes go through the connection the backend was made with: a projection passes the
connection of its transaction (`Fts5Search(conn)` or `backend.using(conn)`), so index rows
commit together with its positions; made with an Engine, each call is its own transaction.
A search reads the version, the matches, the page's rows and highlights in one read
transaction.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    bindparam,
    inspect,
    text,
)
from sqlalchemy.dialects.postgresql import TSVECTOR
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from projections.search.columns import Columns, select
from projections.search.model import (
    TEXT_LIMIT,
    SearchDoc,
    SearchHit,
    SearchPage,
    SearchQuery,
    clean,
    marked_html,
    metadata_text,
)
from projections.search.query import (
    Term,
    fts5_expression,
    highlight,
    parse_terms,
    words,
)
from streams.artifacts.errors import SearchError
from streams.sql import Long, insert_rows, is_sqlite

_PREFIX = re.compile(r"[a-z][a-z0-9_]{0,40}")
_CHUNK = 500  # ids per IN (...)
_SNIPPET_TOKENS = 24

_columns: dict[tuple[str, str], Columns] = {}  # (database, prefix) -> the latest columns
_columns_lock = threading.Lock()


def doc_id(address: str) -> int:
    """The row id of an address: 63 bits of its BLAKE2b hash (positive as a signed int64)."""
    return int.from_bytes(hashlib.blake2b(address.encode(), digest_size=8).digest(), "big") >> 1


def _first_line(exc: BaseException) -> str:
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _ids(name: str):
    return bindparam(name, expanding=True)


class SqlSearch:
    """The dialect-independent part; use `Fts5Search`, `PostgresSearch` or `sql_search`."""

    dialect: str
    _BASE_COLUMNS = ("doc_id", "address", "name", "content_type", "created_at_ms", "tags",
                     "metadata_json", "creators", "seq")

    def __init__(self, bind: Engine | Connection, *, prefix: str = "search") -> None:
        if not _PREFIX.fullmatch(prefix):
            raise SearchError(f"invalid search table prefix {prefix!r} (lowercase letters, "
                              f"digits and _, starting with a letter)")
        if bind.dialect.name != self.dialect:
            raise SearchError(f"{type(self).__name__} needs a {self.dialect} database, "
                              f"not {bind.dialect.name}")
        self.bind, self.prefix = bind, prefix
        engine = bind.engine if isinstance(bind, Connection) else bind
        self._key = (engine.url.render_as_string(hide_password=True), prefix)
        metadata = MetaData()
        self.docs = Table(
            f"{prefix}_docs", metadata,
            Column("doc_id", Long, nullable=False, autoincrement=False),
            Column("address", String(255), nullable=False),
            Column("name", Text, nullable=False),
            Column("content_type", String(255), nullable=False),
            Column("created_at_ms", Long, nullable=False),
            Column("tags", Text, nullable=False),           # JSON array
            Column("metadata_json", Text, nullable=False),  # JSON object
            Column("creators", Text, nullable=False),       # JSON array
            Column("seq", Long, nullable=False),
            *self._content_columns(),
            PrimaryKeyConstraint("doc_id", name=f"pk_{prefix}_docs"),
            Index(f"ux_{prefix}_docs_address", "address", unique=True),
            Index(f"ix_{prefix}_docs_seq", "seq"),
        )
        self.removed = Table(
            f"{prefix}_removed", metadata,
            Column("doc_id", Long, nullable=False, autoincrement=False),
            Column("seq", Long, nullable=False),
            PrimaryKeyConstraint("doc_id", name=f"pk_{prefix}_removed"),
            Index(f"ix_{prefix}_removed_seq", "seq"),
        )
        self.meta = Table(
            f"{prefix}_meta", metadata,
            Column("id", Integer, nullable=False, autoincrement=False),
            Column("generation", String(32), nullable=False),
            Column("version", Long, nullable=False),
            PrimaryKeyConstraint("id", name=f"pk_{prefix}_meta"),
        )
        self.fts_name = f"{prefix}_fts"

    def using(self, conn: Connection) -> SqlSearch:
        """The same index written and read on `conn` (a projection's transaction)."""
        return type(self)(conn, prefix=self.prefix)

    def _content_columns(self) -> list[Column]:
        return []

    def _q(self, name: str) -> str:
        return self.bind.dialect.identifier_preparer.quote(name)

    # --- schema --------------------------------------------------------------------------

    def _create_content(self, conn: Connection) -> None:
        """Dialect DDL beyond the tables (SQLite: the FTS5 table)."""

    def _drop_content(self, conn: Connection) -> None:
        """Drop what `_create_content` made."""

    def ensure(self) -> None:
        with self._transaction() as conn:
            self._create(conn)

    def _create(self, conn: Connection) -> None:
        for table in (self.docs, self.removed, self.meta):
            table.create(conn, checkfirst=True)
        self._create_content(conn)
        conn.execute(text(f"INSERT INTO {self._q(self.meta.name)} (id, generation, version) "
                          f"VALUES (1, :generation, 0) ON CONFLICT (id) DO NOTHING"),
                     {"generation": uuid.uuid4().hex})

    def reset(self) -> None:
        """Empty the index (a new generation): in a projection's transaction, readers see
        the old index until the rebuild that follows commits."""
        with self._transaction() as conn:
            self._drop(conn)
            self._create(conn)

    def drop(self) -> None:
        """Drop the index's tables."""
        with self._transaction() as conn:
            self._drop(conn)

    def _drop(self, conn: Connection) -> None:
        self._drop_content(conn)
        for table in (self.meta, self.removed, self.docs):
            table.drop(conn, checkfirst=True)

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """The caller's transaction as it is (its database errors are the caller's to
        handle, as a projector retries an unavailable database), or one of our own."""
        if isinstance(self.bind, Connection):
            yield self.bind
            return
        try:
            with self.bind.begin() as conn:
                yield conn
        except (DBAPIError, SQLAlchemyError) as exc:
            raise SearchError(f"search index {self.prefix!r}: {_first_line(exc)}") from None

    @contextmanager
    def _reader(self) -> Iterator[Connection]:
        if isinstance(self.bind, Connection):
            yield self.bind
        else:
            with self.bind.connect() as conn:
                yield conn

    # --- writes --------------------------------------------------------------------------

    def _bump(self, conn: Connection) -> int:
        """The version of this write transaction (the meta row stays locked until it ends,
        so concurrent writers get increasing versions in commit order)."""
        version = conn.execute(text(f"UPDATE {self._q(self.meta.name)} "
                                    f"SET version = version + 1 WHERE id = 1 "
                                    f"RETURNING version")).scalar()
        if version is None:
            raise SearchError(f"search index {self.prefix!r} is not set up (ensure() it)")
        return int(version)

    def index(self, docs: Sequence[SearchDoc]) -> None:
        """Upsert by address (the last of duplicates in `docs` wins)."""
        latest = {doc.address: doc for doc in docs}
        by_id = {doc_id(address): doc for address, doc in latest.items()}
        if len(by_id) < len(latest):
            raise SearchError("two addresses of one batch share a search document id")
        if not by_id:
            return
        with self._transaction() as conn:
            version = self._bump(conn)
            stored = self._addresses(conn, list(by_id))
            for identity, address in stored.items():
                if address != by_id[identity].address:
                    raise SearchError(f"search document id collision: {address} and "
                                      f"{by_id[identity].address}")
            self._delete(conn, list(stored))
            self._insert(conn, by_id, version)

    def remove(self, addresses: Iterable[str]) -> None:
        ids = list({doc_id(address) for address in addresses})
        if not ids:
            return
        with self._transaction() as conn:
            version = self._bump(conn)
            self._delete(conn, ids)
            self._in_chunks(conn, f"DELETE FROM {self._q(self.removed.name)} "
                                  f"WHERE doc_id IN :ids", ids)
            insert_rows(conn, self.removed, ("doc_id", "seq"), [(i, version) for i in ids])

    def _row(self, identity: int, doc: SearchDoc, version: int) -> tuple[Any, ...]:
        return (identity, doc.address, clean(doc.name), doc.content_type, doc.created_at_ms,
                json.dumps(list(doc.tags)), json.dumps(dict(doc.metadata), sort_keys=True),
                json.dumps(list(doc.creators)), version)

    def _insert(self, conn: Connection, docs: dict[int, SearchDoc], version: int) -> None:
        insert_rows(conn, self.docs, self._BASE_COLUMNS,
                    [self._row(identity, doc, version) for identity, doc in docs.items()])

    def _in_chunks(self, conn: Connection, sql: str, ids: list[int]) -> list[Any]:
        statement = text(sql).bindparams(_ids("ids"))
        rows: list[Any] = []
        for start in range(0, len(ids), _CHUNK):
            result = conn.execute(statement, {"ids": ids[start:start + _CHUNK]})
            if result.returns_rows:
                rows.extend(result.all())
        return rows

    def _addresses(self, conn: Connection, ids: list[int]) -> dict[int, str]:
        return dict(self._in_chunks(conn, f"SELECT doc_id, address FROM "
                                          f"{self._q(self.docs.name)} WHERE doc_id IN :ids",
                                    ids))

    def _delete(self, conn: Connection, ids: list[int]) -> None:
        self._in_chunks(conn, f"DELETE FROM {self._q(self.docs.name)} WHERE doc_id IN :ids",
                        ids)

    # --- search --------------------------------------------------------------------------

    def _match(self, terms: tuple[Term, ...], params: dict[str, Any]) -> tuple[str, str, str]:
        """(id expression, score expression (higher is better), FROM ... WHERE ...) of the
        documents the terms match; fills `params`."""
        raise NotImplementedError

    def _matches(self, conn: Connection, terms: tuple[Term, ...], *, scored: bool
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        """The ids of the documents the terms match, and their scores if `scored`."""
        params: dict[str, Any] = {}
        identity, score, source = self._match(terms, params)
        if not scored:
            ids = conn.execute(text(f"SELECT {identity} {source}"), params).scalars().all()
            return np.array(ids, np.int64), None
        rows = conn.execute(text(f"SELECT {identity}, {score} {source}"), params).all()
        if not rows:
            return np.empty(0, np.int64), np.empty(0)
        ids, scores = zip(*rows, strict=True)
        return np.array(ids, np.int64), np.array(scores, np.float64)

    def _ranked(self, conn: Connection, terms: tuple[Term, ...], count: int
                ) -> list[tuple[int, float]]:
        """The `count` best (id, score) of the matches, by score, ties by id: the engine
        sorts with a bounded sorter, never handing every score over."""
        params: dict[str, Any] = {"count": count}
        identity, score, source = self._match(terms, params)
        rows = conn.execute(text(f"SELECT {identity} AS id, {score} AS score {source} "
                                 f"ORDER BY score DESC, id LIMIT :count"), params)
        return [(int(identity), float(score)) for identity, score in rows]

    def _fields(self, conn: Connection, ids: list[int]) -> list[tuple[int, str, str, str]]:
        """(doc_id, name, text, metadata) of `ids`, as indexed."""
        raise NotImplementedError

    def _highlights(self, conn: Connection, terms: tuple[Term, ...], ids: list[int]
                    ) -> dict[int, dict[str, list[str]]]:
        """Marked in Python (`highlight`) over the words the engines index: FTS5's own
        highlight()/snippet() need the MATCH again, which for a prefix costs as much as the
        search itself, and ts_headline parses text unlike the words PostgreSQL indexes."""
        marked = {}
        for identity, name, body, metadata in self._fields(conn, ids):
            fragments = [("name", highlight(name, terms)),
                         ("text", highlight(body, terms, window=_SNIPPET_TOKENS)),
                         ("metadata", highlight(metadata, terms, window=_SNIPPET_TOKENS))]
            marked[identity] = {field: [marked_html(fragment)]
                                for field, fragment in fragments if fragment is not None}
        return marked

    def columns(self, conn: Connection) -> Columns | None:
        """The columns as of `conn`'s snapshot (None: the index was never set up); loads
        only what changed since the columns this process last read."""
        with _columns_lock:
            known = _columns.get(self._key)
        if known is None and not inspect(conn).has_table(self.meta.name):
            return None
        row = conn.execute(text(f"SELECT generation, version FROM "
                                f"{self._q(self.meta.name)} WHERE id = 1")).first()
        if row is None:
            return None
        generation, version = row
        docs = self._q(self.docs.name)
        if known is not None and known.generation == generation:
            if known.version >= version:
                return known
            rows = conn.execute(text(f"SELECT doc_id, content_type, created_at_ms, tags "
                                     f"FROM {docs} WHERE seq > :seen"), {"seen": known.version})
            removed = conn.execute(text(f"SELECT doc_id FROM {self._q(self.removed.name)} "
                                        f"WHERE seq > :seen"), {"seen": known.version})
            fresh = known.apply(version, rows.all(), removed.scalars().all())
        else:
            rows = conn.execute(text(f"SELECT doc_id, content_type, created_at_ms, tags "
                                     f"FROM {docs}"))
            fresh = Columns.load(generation, version, rows.all())
        with _columns_lock:
            current = _columns.get(self._key)
            if current is None or current.generation != generation or \
                    current.version < version:
                _columns[self._key] = fresh
        return fresh

    def search(self, query: SearchQuery) -> SearchPage:
        terms = parse_terms(query.text)
        with self._reader() as conn:
            try:
                columns = self.columns(conn)
                if columns is None:
                    return SearchPage(0, (), {"tags": {}, "content_types": {}})
                if not terms:
                    chosen = select(columns, query, None)
                    page = chosen.page
                elif query.tags or query.content_types or query.created_from_ms is not None \
                        or query.created_to_ms is not None:  # rank what the filters keep
                    chosen = select(columns, query, *self._matches(conn, terms, scored=True))
                    page = chosen.page
                else:  # scores only for the page: bm25 of every match costs 4x the match
                    ids, _ = self._matches(conn, terms, scored=False)
                    chosen = select(columns, query, ids)
                    end = query.offset + query.limit
                    page = self._ranked(conn, terms, end)[query.offset:] if end else []
                ids = [identity for identity, _ in page]
                details = self._details(conn, ids)
                marks = self._highlights(conn, terms, ids) if terms and ids else {}
            except (DBAPIError, SQLAlchemyError) as exc:
                raise SearchError(f"search {query.text!r} failed: {_first_line(exc)}") from None
        hits = tuple(SearchHit(*details[identity], score=score,
                               highlights=marks.get(identity, {}))
                     for identity, score in page if identity in details)
        return SearchPage(chosen.total, hits, chosen.facets)

    def _details(self, conn: Connection, ids: list[int]
                 ) -> dict[int, tuple[str, str, str, tuple[str, ...], int]]:
        if not ids:
            return {}
        rows = conn.execute(
            text(f"SELECT doc_id, address, name, content_type, tags, created_at_ms "
                 f"FROM {self._q(self.docs.name)} WHERE doc_id IN :ids").bindparams(_ids("ids")),
            {"ids": ids})
        return {identity: (address, name, content_type, tuple(json.loads(tags)), created)
                for identity, address, name, content_type, tags, created in rows}


class Fts5Search(SqlSearch):
    """SQLite FTS5: unicode61 tokens (case and diacritics folded), bm25 ranking (name
    weighs 4, metadata 2, text 1)."""

    dialect = "sqlite"

    def _create_content(self, conn: Connection) -> None:
        conn.exec_driver_sql(
            f"CREATE VIRTUAL TABLE IF NOT EXISTS {self._q(self.fts_name)} USING fts5("
            f"name, text, metadata, tokenize = 'unicode61 remove_diacritics 2')")

    def _drop_content(self, conn: Connection) -> None:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {self._q(self.fts_name)}")

    def _insert(self, conn: Connection, docs: dict[int, SearchDoc], version: int) -> None:
        super()._insert(conn, docs, version)
        conn.exec_driver_sql(
            f"INSERT INTO {self._q(self.fts_name)} (rowid, name, text, metadata) "
            f"VALUES (?, ?, ?, ?)",
            [(identity, clean(doc.name), clean(doc.text[:TEXT_LIMIT]),
              clean(metadata_text(doc))) for identity, doc in docs.items()])

    def _delete(self, conn: Connection, ids: list[int]) -> None:
        super()._delete(conn, ids)
        self._in_chunks(conn, f"DELETE FROM {self._q(self.fts_name)} WHERE rowid IN :ids",
                        ids)

    def _match(self, terms: tuple[Term, ...], params: dict[str, Any]) -> tuple[str, str, str]:
        fts = self._q(self.fts_name)
        params["match"] = fts5_expression(terms)
        return "rowid", f"-bm25({fts}, 4.0, 1.0, 2.0)", f"FROM {fts} WHERE {fts} MATCH :match"

    def _fields(self, conn: Connection, ids: list[int]) -> list[tuple[int, str, str, str]]:
        return [tuple(row) for row in self._in_chunks(
            conn, f"SELECT rowid, name, text, metadata FROM {self._q(self.fts_name)} "
                  f"WHERE rowid IN :ids", ids)]


class PostgresSearch(SqlSearch):
    """PostgreSQL full text: a tsvector column with a GIN index, ts_rank_cd ranking.

    PostgreSQL's text parser reads "report-3.md" as one file-name token where FTS5 sees the
    words report, 3, md; so the tsvector is built from the words alone (`words`: runs of
    letters and digits) with the 'simple' configuration (lower case, no stemming), and
    highlights are marked in Python over the same words (`highlight`), not by ts_headline,
    which would parse the stored text its own way."""

    dialect = "postgresql"
    _DOCUMENT = ("setweight(to_tsvector('simple', :name_words), 'A') || "
                 "setweight(to_tsvector('simple', :metadata_words), 'B') || "
                 "setweight(to_tsvector('simple', :text_words), 'C')")

    def _content_columns(self) -> list[Column]:
        return [Column("text", Text, nullable=False),
                Column("metadata", Text, nullable=False),
                Column("document", TSVECTOR, nullable=False),
                Index(f"ix_{self.prefix}_docs_document", "document", postgresql_using="gin")]

    def _insert(self, conn: Connection, docs: dict[int, SearchDoc], version: int) -> None:
        columns = (*self._BASE_COLUMNS, "text", "metadata")
        rows = []
        for identity, doc in docs.items():
            body, metadata = clean(doc.text[:TEXT_LIMIT]), clean(metadata_text(doc))
            row = dict(zip(columns, (*self._row(identity, doc, version), body, metadata),
                           strict=True))
            row.update(name_words=words(row["name"]), metadata_words=words(metadata),
                       text_words=words(body))
            rows.append(row)
        names = ", ".join(self._q(name) for name in columns)
        values = ", ".join(f":{name}" for name in columns)
        conn.execute(text(f"INSERT INTO {self._q(self.docs.name)} ({names}, document) "
                          f"VALUES ({values}, {self._DOCUMENT})"), rows)

    @staticmethod
    def _tsquery(terms: tuple[Term, ...], params: dict[str, Any]) -> str:
        parts = []
        for i, term in enumerate(terms):
            if term.prefix:  # quoted lexemes: no character of a word is a tsquery operator
                params[f"term{i}"] = " <-> ".join(f"'{word}'" for word in
                                                  words(term.text).split()) + ":*"
                parts.append(f"to_tsquery('simple', :term{i})")
            else:
                params[f"term{i}"] = words(term.text)
                parts.append(f"phraseto_tsquery('simple', :term{i})")
        return " && ".join(parts)

    def _match(self, terms: tuple[Term, ...], params: dict[str, Any]) -> tuple[str, str, str]:
        return ("d.doc_id", "ts_rank_cd(d.document, q.q)",
                f"FROM {self._q(self.docs.name)} d CROSS JOIN "
                f"(SELECT {self._tsquery(terms, params)} AS q) AS q WHERE d.document @@ q.q")

    def _fields(self, conn: Connection, ids: list[int]) -> list[tuple[int, str, str, str]]:
        return [tuple(row) for row in self._in_chunks(
            conn, f"SELECT doc_id, name, text, metadata FROM {self._q(self.docs.name)} "
                  f"WHERE doc_id IN :ids", ids)]


def sql_search(bind: Engine | Connection, *, prefix: str = "search") -> SqlSearch:
    """The search backend of the views database: FTS5 on SQLite, tsvector on PostgreSQL."""
    if is_sqlite(bind):
        return Fts5Search(bind, prefix=prefix)
    if bind.dialect.name == "postgresql":
        return PostgresSearch(bind, prefix=prefix)
    raise SearchError(f"no embedded search on {bind.dialect.name}; configure OpenSearch")
