"""Artifact search inside the views database: SQLite FTS5 (the embedded default) and
PostgreSQL full text (tsvector). Every part of a search runs in the engine, and its work is
bounded by the page and a sample, never by the size of the result:
* filters (tags, content types, creation time) are SQL conditions on the full-text query
  (or, without text, on the indexes of `_docs` and `_tags`);
* the page: with text, the engine's top k by score (a bounded sorter, only over the
  documents the filters keep); without, an index scan in creation order;
* total and facets: without text and with no filter, one tag, or content types alone,
  exact, from facet counts kept in the same transaction as the rows (`_facets`);
  otherwise counted over the result when it has at most FACET_SAMPLE documents (exact),
  else estimated from FACET_SAMPLE of them (`SearchPage.facets_exact` is then False; the
  total is always exact).

Tables (names start with `prefix`, default "search"):
* `<prefix>_docs`: one row per artifact; `doc_id` = 63 bits of BLAKE2b(address), so ids
  need no allocation round trip and a rebuild gives every document the same id again (a
  collision, ~1e-9 at 100,000 documents, is refused, never overwritten). Because ids are
  hashes, the matches in id order are a uniform random sample of the result;
* `<prefix>_tags`: (tag, doc_id) with the creation time, so one tag's documents come
  newest first from an index;
* `<prefix>_facets`: (scope, facet, key) -> the number of documents; scope "" counts every
  document, "t:<tag>" those with that tag, "c:<type>" those of that content type; facet
  "t" counts per tag, "c" per content type;
* SQLite: `<prefix>_fts`, an FTS5 table (name, text, metadata), rowid = doc_id. It keeps
  its own copy of the text rather than pointing at `_docs` (external content): such a
  table names its content table in its schema, which a rename would leave behind;
* PostgreSQL: the text lives in `_docs` with a GIN-indexed tsvector column built from the
  words alone (see `PostgresSearch`).

An index made before `_tags` and `_facets` existed (with the `_meta`/`_removed` tables of
the in-memory columns it was searched with then) gets them filled from `_docs` by
`ensure()`, which the projection runs when `_facets` is missing.

Writes go through the connection the backend was made with: a projection passes the
connection of its transaction (`Fts5Search(conn)` or `backend.using(conn)`), so index rows
and counts commit together with its positions; made with an Engine, each call is its own
transaction. A search reads in one read transaction.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    BindParameter,
    Column,
    Connection,
    CursorResult,
    Engine,
    Index,
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

from projections.search.model import (
    TEXT_LIMIT,
    SearchDoc,
    SearchHit,
    SearchPage,
    SearchQuery,
    clean,
    marked_html,
    metadata_text,
    top_counts,
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
FACET_SAMPLE = 1000  # documents a query's facets are counted over at most
_LEGACY = ("removed", "meta")  # tables of the in-memory columns this index replaced

_ready: set[tuple[str, str]] = set()  # (database, prefix) of indexes known to exist
_ready_lock = threading.Lock()


def doc_id(address: str) -> int:
    """The row id of an address: 63 bits of its BLAKE2b hash (positive as a signed int64)."""
    return int.from_bytes(hashlib.blake2b(address.encode(), digest_size=8).digest(), "big") >> 1


def _first_line(exc: BaseException) -> str:
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _ids(name: str) -> BindParameter[Any]:
    return bindparam(name, expanding=True)


def _count(counts: Counter, docs: Iterable[tuple[str, Sequence[str]]], sign: int) -> None:
    """Add `sign` per document (content type, tags) to the facet counts of every scope it
    is in: everything, its content type, each of its tags."""
    for content_type, tags in docs:
        for scope in ("", f"c:{content_type}", *(f"t:{tag}" for tag in tags)):
            counts[scope, "c", content_type] += sign
            for tag in tags:
                counts[scope, "t", tag] += sign


def _facets(counts: Iterable[tuple[str, str, int]], limit: int) -> dict[str, dict[str, int]]:
    """(facet, key, n) rows -> the page's facets."""
    by_facet: dict[str, dict[str, int]] = {"c": {}, "t": {}}
    for facet, key, n in counts:
        if n:
            by_facet[facet][key] = int(n)
    return {"tags": top_counts(by_facet["t"], limit),
            "content_types": top_counts(by_facet["c"], limit)}


class SqlSearch:
    """The dialect-independent part; use `Fts5Search`, `PostgresSearch` or `sql_search`."""

    dialect: str
    _BASE_COLUMNS = ("doc_id", "address", "name", "content_type", "created_at_ms", "tags",
                     "metadata_json", "creators")

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
            *self._content_columns(),
            PrimaryKeyConstraint("doc_id", name=f"pk_{prefix}_docs"),
            Index(f"ux_{prefix}_docs_address", "address", unique=True),
        )
        # browse order (newest first, ties by id); a content type is filtered on its scan
        Index(f"ix_{prefix}_docs_created", self.docs.c.created_at_ms.desc(),
              self.docs.c.doc_id)
        self.tags = Table(
            f"{prefix}_tags", metadata,
            Column("tag", String(255), nullable=False),
            Column("doc_id", Long, nullable=False, autoincrement=False),
            Column("created_at_ms", Long, nullable=False),
            PrimaryKeyConstraint("doc_id", "tag", name=f"pk_{prefix}_tags"),
            sqlite_with_rowid=False,  # the key is the row: one b-tree fewer to write
        )
        Index(f"ix_{prefix}_tags_created", self.tags.c.tag, self.tags.c.created_at_ms.desc(),
              self.tags.c.doc_id)
        self.facets = Table(
            f"{prefix}_facets", metadata,
            Column("scope", Text, nullable=False),
            Column("facet", String(1), nullable=False),
            Column("key", Text, nullable=False),
            Column("n", Long, nullable=False),
            PrimaryKeyConstraint("scope", "facet", "key", name=f"pk_{prefix}_facets"),
            sqlite_with_rowid=False,
        )
        self.fts_name = f"{prefix}_fts"

    def using(self, conn: Connection) -> SqlSearch:
        """The same index written and read on `conn` (a projection's transaction)."""
        return type(self)(conn, prefix=self.prefix)

    def _content_columns(self) -> list[Column | Index]:
        """The docs table's text columns, with any index over them."""
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
        counted = inspect(conn).has_table(self.facets.name)
        for table in (self.docs, self.tags, self.facets):
            table.create(conn, checkfirst=True)
        for index in self.docs.indexes:  # a table made by an older version lacks some
            index.create(conn, checkfirst=True)
        self._create_content(conn)
        for legacy in _LEGACY:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {self._q(f'{self.prefix}_{legacy}')}")
        if not counted:
            self._backfill(conn)

    def _backfill(self, conn: Connection) -> None:
        """`_tags` and `_facets` from the documents, and without the columns' `seq` (an
        index made before they existed)."""
        if "seq" in {column["name"] for column in inspect(conn).get_columns(self.docs.name)}:
            conn.exec_driver_sql(f"DROP INDEX IF EXISTS {self._q(f'ix_{self.prefix}_docs_seq')}")
            conn.exec_driver_sql(f"ALTER TABLE {self._q(self.docs.name)} DROP COLUMN seq")
        rows = conn.execute(text(f"SELECT doc_id, content_type, created_at_ms, tags "
                                 f"FROM {self._q(self.docs.name)}")).all()
        docs = [(identity, content_type, created, json.loads(tags))
                for identity, content_type, created, tags in rows]
        insert_rows(conn, self.tags, ("tag", "doc_id", "created_at_ms"),
                    [(tag, identity, created) for identity, _, created, tags in docs
                     for tag in tags])
        counts: Counter = Counter()
        _count(counts, ((content_type, tags) for _, content_type, _, tags in docs), 1)
        self._add_counts(conn, counts)

    def reset(self) -> None:
        """Empty the index: in a projection's transaction, readers see the old index until
        the rebuild that follows commits."""
        with self._transaction() as conn:
            self._drop(conn)
            self._create(conn)

    def drop(self) -> None:
        """Drop the index's tables."""
        with self._transaction() as conn:
            self._drop(conn)
        with _ready_lock:
            _ready.discard(self._key)

    def _drop(self, conn: Connection) -> None:
        self._drop_content(conn)
        for table in (self.facets, self.tags, self.docs):
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

    def _exists(self, conn: Connection) -> bool:
        with _ready_lock:
            if self._key in _ready:
                return True
        if not inspect(conn).has_table(self.facets.name):
            return False
        with _ready_lock:
            _ready.add(self._key)
        return True

    # --- writes --------------------------------------------------------------------------

    def index(self, docs: Sequence[SearchDoc]) -> None:
        """Upsert by address (the last of duplicates in `docs` wins)."""
        latest = {doc.address: doc for doc in docs}
        # in id order: FTS5 flushes its pending terms to a new segment whenever a rowid is
        # lower than the one before (ids are hashes), and b-trees fill page by page
        by_id = dict(sorted(((doc_id(address), doc) for address, doc in latest.items()),
                            key=lambda item: item[0]))
        if len(by_id) < len(latest):
            raise SearchError("two addresses of one batch share a search document id")
        if not by_id:
            return
        with self._transaction() as conn:
            stored = self._stored(conn, list(by_id))
            for identity, (address, _, _) in stored.items():
                if address != by_id[identity].address:
                    raise SearchError(f"search document id collision: {address} and "
                                      f"{by_id[identity].address}")
            counts: Counter = Counter()
            _count(counts, ((content_type, tags) for _, content_type, tags in stored.values()),
                   -1)
            _count(counts, ((doc.content_type, doc.tags) for doc in by_id.values()), 1)
            self._delete(conn, list(stored))
            self._insert(conn, by_id)
            self._add_counts(conn, counts)

    def remove(self, addresses: Iterable[str]) -> None:
        ids = list({doc_id(address) for address in addresses})
        if not ids:
            return
        with self._transaction() as conn:
            stored = self._stored(conn, ids)
            counts: Counter = Counter()
            _count(counts, ((content_type, tags) for _, content_type, tags in stored.values()),
                   -1)
            self._delete(conn, list(stored))
            self._add_counts(conn, counts)

    def _stored(self, conn: Connection, ids: list[int]
                ) -> dict[int, tuple[str, str, list[str]]]:
        """id -> (address, content type, tags) of the documents of `ids` in the index."""
        rows = self._in_chunks(conn, f"SELECT doc_id, address, content_type, tags FROM "
                                     f"{self._q(self.docs.name)} WHERE doc_id IN :ids", ids)
        return {identity: (address, content_type, json.loads(tags))
                for identity, address, content_type, tags in rows}

    def _add_counts(self, conn: Connection, counts: Counter) -> None:
        """Add the deltas to `_facets` (concurrent writers add, never overwrite), then drop
        the counts that reached zero, so a facet lists only keys some document has."""
        changed = [(*scope_facet_key, n) for scope_facet_key, n in counts.items() if n]
        if not changed:
            return
        facets, key = self._q(self.facets.name), self._q("key")
        mark = "?" if is_sqlite(conn) else "%s"  # the driver's own executemany: many rows
        conn.exec_driver_sql(f"INSERT INTO {facets} (scope, facet, {key}, n) "
                             f"VALUES ({mark}, {mark}, {mark}, {mark}) "
                             f"ON CONFLICT (scope, facet, {key}) "
                             f"DO UPDATE SET n = {facets}.n + excluded.n", changed)
        fallen = [row[:3] for row in changed if row[3] < 0]
        if fallen:
            conn.exec_driver_sql(f"DELETE FROM {facets} WHERE scope = {mark} AND "
                                 f"facet = {mark} AND {key} = {mark} AND n <= 0", fallen)

    def _row(self, identity: int, doc: SearchDoc) -> tuple[Any, ...]:
        return (identity, doc.address, clean(doc.name), doc.content_type, doc.created_at_ms,
                json.dumps(list(doc.tags)), json.dumps(dict(doc.metadata), sort_keys=True),
                json.dumps(list(doc.creators)))

    def _insert(self, conn: Connection, docs: dict[int, SearchDoc]) -> None:
        insert_rows(conn, self.docs, self._BASE_COLUMNS,
                    [self._row(identity, doc) for identity, doc in docs.items()])
        self._insert_tags(conn, docs)

    def _insert_tags(self, conn: Connection, docs: dict[int, SearchDoc]) -> None:
        insert_rows(conn, self.tags, ("tag", "doc_id", "created_at_ms"),
                    [(tag, identity, doc.created_at_ms) for identity, doc in docs.items()
                     for tag in doc.tags])

    def _in_chunks(self, conn: Connection, sql: str, ids: list[int]) -> list[Any]:
        statement = text(sql).bindparams(_ids("ids"))
        rows: list[Any] = []
        for start in range(0, len(ids), _CHUNK):
            result = conn.execute(statement, {"ids": ids[start:start + _CHUNK]})
            if result.returns_rows:
                rows.extend(result.all())
        return rows

    def _delete(self, conn: Connection, ids: list[int]) -> None:
        for table in (self.docs, self.tags):
            self._in_chunks(conn, f"DELETE FROM {self._q(table.name)} WHERE doc_id IN :ids",
                            ids)

    # --- search --------------------------------------------------------------------------

    _join = "JOIN"

    def _run(self, conn: Connection, sql: str, params: dict[str, Any]
             ) -> CursorResult[*tuple[Any, ...]]:
        """`sql` with list parameters expanded into IN (...)."""
        statement = text(sql).bindparams(*(_ids(name) for name, value in params.items()
                                           if isinstance(value, list)))
        return conn.execute(statement, params)

    def _match(self, terms: tuple[Term, ...], params: dict[str, Any], *, joined: bool
               ) -> tuple[str, str, str, list[str]]:
        """(id expression, score expression (higher is better), FROM, WHERE conditions) of
        the documents the terms match; fills `params`. With `joined`, `_docs` is in the
        FROM as `d`."""
        raise NotImplementedError

    def _rarest(self, conn: Connection, tags: list[str]) -> int:
        """The position in `tags` of the tag the fewest documents have."""
        counts = dict(self._run(conn, f"SELECT {self._q('key')}, n FROM "
                                      f"{self._q(self.facets.name)} WHERE scope = '' AND "
                                      f"facet = 't' AND {self._q('key')} IN :tags",
                                {"tags": tags}).all())
        return min(range(len(tags)), key=lambda i: counts.get(tags[i], 0))

    def _source(self, conn: Connection, terms: tuple[Term, ...], query: SearchQuery,
                params: dict[str, Any], *, docs: bool) -> tuple[str, str, str, str]:
        """(id, score ("" without text), creation time, FROM ... WHERE ...) of the query's
        result, its filters in the engine. With `docs`, `_docs` is in the FROM as `d` (else
        only when a filter needs it). Without text, one tag's index (the rarest tag's) or
        `_docs`' own lead, in creation order."""
        tags = list(query.tags)
        timed = query.created_from_ms is not None or query.created_to_ms is not None
        docs = docs or bool(query.content_types)
        docs_table, tags_table = self._q(self.docs.name), self._q(self.tags.name)
        if terms:
            identity, score, source, where = self._match(terms, params, joined=docs or timed)
            created = "d.created_at_ms"
        elif tags:
            params["tag"] = tags.pop(self._rarest(conn, tags))
            identity, score, created = "t.doc_id", "", "t.created_at_ms"
            source = f"FROM {tags_table} t"
            if docs:
                source += f" {self._join} {docs_table} d ON d.doc_id = t.doc_id"
            where = ["t.tag = :tag"]
        else:
            identity, score, created = "d.doc_id", "", "d.created_at_ms"
            source, where = f"FROM {docs_table} d", []
        if query.content_types:
            params["types"] = list(query.content_types)
            where.append("d.content_type IN :types")
        if query.created_from_ms is not None:
            params["created_from"] = query.created_from_ms
            where.append(f"{created} >= :created_from")
        if query.created_to_ms is not None:
            params["created_to"] = query.created_to_ms
            where.append(f"{created} < :created_to")
        for i, tag in enumerate(tags):
            params[f"tag{i}"] = tag
            where.append(f"EXISTS (SELECT 1 FROM {tags_table} x WHERE x.tag = :tag{i} "
                         f"AND x.doc_id = {identity})")
        if where:
            source += " WHERE " + " AND ".join(where)
        return identity, score, created, source

    def _counted(self, conn: Connection, scopes: list[str], limit: int
                 ) -> tuple[int, dict[str, dict[str, int]]]:
        """Total and facets of the documents in any of `scopes` (disjoint), from `_facets`."""
        key = self._q("key")
        rows = self._run(conn, f"SELECT facet, {key}, sum(n) FROM {self._q(self.facets.name)}"
                               f" WHERE scope IN :scopes GROUP BY facet, {key}",
                         {"scopes": scopes}).all()
        return sum(int(n) for facet, _, n in rows if facet == "c"), _facets(rows, limit)

    def _sampled(self, conn: Connection, terms: tuple[Term, ...], query: SearchQuery
                 ) -> tuple[int, dict[str, dict[str, int]], bool]:
        """Total and facets counted over the result, or over its first FACET_SAMPLE
        documents by id (a uniform sample: ids are hashes) scaled to the total, with
        whether they are exact. The engine counts; only (facet, key, n) rows come back."""
        params: dict[str, Any] = {"sample": FACET_SAMPLE}
        identity, _, _, source = self._source(conn, terms, query, params, docs=True)
        rows = self._run(conn, f"WITH s AS (SELECT {identity} AS id, d.content_type AS ct "
                               f"{source} ORDER BY {identity} LIMIT :sample) "
                               f"SELECT 'c', ct, count(*) FROM s GROUP BY ct UNION ALL "
                               f"SELECT 't', t.tag, count(*) FROM s {self._join} "
                               f"{self._q(self.tags.name)} t ON t.doc_id = s.id "
                               f"GROUP BY t.tag", params).all()
        counted = sum(int(n) for facet, _, n in rows if facet == "c")
        if counted < FACET_SAMPLE:
            return counted, _facets(rows, query.facet_limit), True
        params = {}
        _, _, _, source = self._source(conn, terms, query, params, docs=False)
        total = int(self._run(conn, f"SELECT count(*) {source}", params).scalar() or 0)
        scale = total / FACET_SAMPLE
        return total, _facets(((facet, key, round(n * scale)) for facet, key, n in rows),
                              query.facet_limit), total == FACET_SAMPLE

    def _page(self, conn: Connection, terms: tuple[Term, ...], query: SearchQuery
              ) -> list[tuple[int, float]]:
        """(id, score) of the page: with text the engine's top offset + limit by score (a
        bounded sorter, ties by id), without the newest first from an index."""
        params: dict[str, Any] = {}
        identity, score, created, source = self._source(conn, terms, query, params,
                                                        docs=False)
        if terms:
            params["count"] = query.offset + query.limit
            rows = self._run(conn, f"SELECT {identity} AS id, {score} AS score {source} "
                                   f"ORDER BY score DESC, id LIMIT :count", params)
            return [(int(identity), float(score)) for identity, score in rows][query.offset:]
        params.update(limit=query.limit, offset=query.offset)
        rows = self._run(conn, f"SELECT {identity} {source} ORDER BY {created} DESC, "
                               f"{identity} LIMIT :limit OFFSET :offset", params)
        return [(int(identity), 0.0) for identity in rows.scalars()]

    def ranked(self, query: SearchQuery) -> list[tuple[int, float]]:
        """Just the page's (id, score): no total, facets, fields or highlights (the
        benchmark's floor)."""
        with self._reader() as conn:
            return self._page(conn, parse_terms(query.text), query)

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

    def search(self, query: SearchQuery) -> SearchPage:
        terms = parse_terms(query.text)
        with self._reader() as conn:
            try:
                if not self._exists(conn):
                    return SearchPage(0, (), {"tags": {}, "content_types": {}})
                scopes = None if terms else _scopes(query)
                if scopes is not None:
                    total, facets = self._counted(conn, scopes, query.facet_limit)
                    exact = True
                else:
                    total, facets, exact = self._sampled(conn, terms, query)
                page = self._page(conn, terms, query) if total > query.offset else []
                ids = [identity for identity, _ in page]
                details = self._details(conn, ids)
                marks = self._highlights(conn, terms, ids) if terms and ids else {}
            except (DBAPIError, SQLAlchemyError) as exc:
                raise SearchError(f"search {query.text!r} failed: {_first_line(exc)}") from None
        hits = tuple(SearchHit(*details[identity], score=score,
                               highlights=marks.get(identity, {}))
                     for identity, score in page if identity in details)
        return SearchPage(total, hits, facets, facets_exact=exact)

    def _details(self, conn: Connection, ids: list[int]
                 ) -> dict[int, tuple[str, str, str, tuple[str, ...], int]]:
        if not ids:
            return {}
        rows = self._run(conn, f"SELECT doc_id, address, name, content_type, tags, "
                               f"created_at_ms FROM {self._q(self.docs.name)} "
                               f"WHERE doc_id IN :ids", {"ids": ids})
        return {identity: (address, name, content_type, tuple(json.loads(tags)), created)
                for identity, address, name, content_type, tags, created in rows}


def _scopes(query: SearchQuery) -> list[str] | None:
    """The `_facets` scopes whose union is the result of a query without text, when there
    are: no filter, content types alone (disjoint), or one tag alone."""
    if query.created_from_ms is not None or query.created_to_ms is not None:
        return None
    if not query.tags:
        return [f"c:{content_type}" for content_type in query.content_types] or [""]
    if len(query.tags) == 1 and not query.content_types:
        return [f"t:{query.tags[0]}"]
    return None


class Fts5Search(SqlSearch):
    """SQLite FTS5: unicode61 tokens (case and diacritics folded), bm25 ranking (name
    weighs 4, metadata 2, text 1)."""

    dialect = "sqlite"
    _join = "CROSS JOIN"  # SQLite keeps the left table as the outer loop

    def _create_content(self, conn: Connection) -> None:
        conn.exec_driver_sql(
            f"CREATE VIRTUAL TABLE IF NOT EXISTS {self._q(self.fts_name)} USING fts5("
            f"name, text, metadata, tokenize = 'unicode61 remove_diacritics 2')")

    def _drop_content(self, conn: Connection) -> None:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {self._q(self.fts_name)}")

    def _insert(self, conn: Connection, docs: dict[int, SearchDoc]) -> None:
        super()._insert(conn, docs)
        conn.exec_driver_sql(
            f"INSERT INTO {self._q(self.fts_name)} (rowid, name, text, metadata) "
            f"VALUES (?, ?, ?, ?)",
            [(identity, clean(doc.name), clean(doc.text[:TEXT_LIMIT]),
              clean(metadata_text(doc))) for identity, doc in docs.items()])

    def _delete(self, conn: Connection, ids: list[int]) -> None:
        super()._delete(conn, ids)
        self._in_chunks(conn, f"DELETE FROM {self._q(self.fts_name)} WHERE rowid IN :ids",
                        ids)

    def _match(self, terms: tuple[Term, ...], params: dict[str, Any], *, joined: bool
               ) -> tuple[str, str, str, list[str]]:
        fts = self._q(self.fts_name)
        params["match"] = fts5_expression(terms)
        source = f"FROM {fts}"
        if joined:  # the FTS5 table stays the outer loop: its matches come in rowid order
            source += f" CROSS JOIN {self._q(self.docs.name)} d ON d.doc_id = {fts}.rowid"
        return f"{fts}.rowid", f"-bm25({fts}, 4.0, 1.0, 2.0)", source, [f"{fts} MATCH :match"]

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

    def _content_columns(self) -> list[Column | Index]:
        return [Column("text", Text, nullable=False),
                Column("metadata", Text, nullable=False),
                Column("document", TSVECTOR, nullable=False),
                Index(f"ix_{self.prefix}_docs_document", "document", postgresql_using="gin")]

    def _insert(self, conn: Connection, docs: dict[int, SearchDoc]) -> None:
        columns = (*self._BASE_COLUMNS, "text", "metadata")
        rows = []
        for identity, doc in docs.items():
            body, metadata = clean(doc.text[:TEXT_LIMIT]), clean(metadata_text(doc))
            row = dict(zip(columns, (*self._row(identity, doc), body, metadata), strict=True))
            row.update(name_words=words(row["name"]), metadata_words=words(metadata),
                       text_words=words(body))
            rows.append(row)
        names = ", ".join(self._q(name) for name in columns)
        values = ", ".join(f":{name}" for name in columns)
        conn.execute(text(f"INSERT INTO {self._q(self.docs.name)} ({names}, document) "
                          f"VALUES ({values}, {self._DOCUMENT})"), rows)
        self._insert_tags(conn, docs)

    @staticmethod
    def _tsquery(terms: tuple[Term, ...], params: dict[str, Any]) -> str:
        """Each term as quoted lexemes (no character of a word is a tsquery operator). A
        phrase is matched within one field, by weight: `||` numbers the fields' positions
        on from each other, so name "alpha" and text "bravo" would read as "alpha bravo"."""
        parts = []
        for i, term in enumerate(terms):
            lexemes = [f"'{word}'" for word in words(term.text).split()]
            star = "*" if term.prefix else ""
            params[f"term{i}"] = (_phrase(lexemes, star) if len(lexemes) == 1 else " | ".join(
                f"({_phrase(lexemes, star, weight)})" for weight in "ABC"))
            parts.append(f"to_tsquery('simple', :term{i})")
        return " && ".join(parts)

    def _match(self, terms: tuple[Term, ...], params: dict[str, Any], *, joined: bool
               ) -> tuple[str, str, str, list[str]]:
        return ("d.doc_id", "ts_rank_cd(d.document, q.q)",
                f"FROM {self._q(self.docs.name)} d CROSS JOIN "
                f"(SELECT {self._tsquery(terms, params)} AS q) AS q", ["d.document @@ q.q"])

    def _fields(self, conn: Connection, ids: list[int]) -> list[tuple[int, str, str, str]]:
        return [tuple(row) for row in self._in_chunks(
            conn, f"SELECT doc_id, name, text, metadata FROM {self._q(self.docs.name)} "
                  f"WHERE doc_id IN :ids", ids)]


def _phrase(lexemes: list[str], star: str, weight: str = "") -> str:
    """A tsquery of `lexemes` one after the other, each of `weight` (any field when ""),
    the last a prefix when `star` is "*"."""
    marks = [weight] * (len(lexemes) - 1) + [star + weight]
    return " <-> ".join(f"{lexeme}:{mark}" if mark else lexeme
                        for lexeme, mark in zip(lexemes, marks, strict=True))


def sql_search(bind: Engine | Connection, *, prefix: str = "search") -> SqlSearch:
    """The search backend of the views database: FTS5 on SQLite, tsvector on PostgreSQL."""
    if is_sqlite(bind):
        return Fts5Search(bind, prefix=prefix)
    if bind.dialect.name == "postgresql":
        return PostgresSearch(bind, prefix=prefix)
    raise SearchError(f"no embedded search on {bind.dialect.name}; configure OpenSearch")
