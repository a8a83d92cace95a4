"""The search contract, in two parts.

(a) Behaviour, on a seeded corpus, for every backend that can run here: SQLite FTS5 (a
    real database file) and PostgreSQL (the server on 127.0.0.1:5432) through the `engine`
    fixture, and a real OpenSearch container through testcontainers when a Docker engine
    answers. Every answer is checked against a reference computed in Python from the corpus
    (which documents match, the facets, the order without text), and then: pagination,
    highlights, removal, upserts, reset and reindex.
(b) OpenSearch's request/response contract, against a local HTTP server that records every
    request (method, path, query, JSON or NDJSON body) and answers with OpenSearch 2.x
    response shapes (those of the OpenSearch API reference): the exact requests the
    backend sends, and how it reads the answers, errors included.
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, inspect

from projections.search import (
    SearchBackend,
    SearchDoc,
    SearchHit,
    SearchPage,
    SearchQuery,
    parse_terms,
    sql,
    sql_search,
)
from projections.search.model import MAX_LIMIT, metadata_text, top_counts
from projections.search.opensearch import MAPPING, OpenSearchSearch
from projections.search.query import WORD, Term, fold, highlight
from streams.artifacts.errors import SearchError

T0 = 1_700_000_000_000
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
         "juliet", "kilo", "lima", "mike", "november", "oscar", "papa"]
TAGS = ["finance", "ml", "ops", "q3", "draft"]
TYPES = ["text/plain", "text/markdown", "application/json", "image/png"]


def corpus() -> list[SearchDoc]:
    """Hand-written documents with known content, then seeded generated ones; every
    creation time differs (the order without text is then one answer)."""
    docs = [
        SearchDoc("sha256:" + "a1" * 32, "quarterly-revenue-report", "text/markdown",
                  ("finance", "q3"), T0 + 1,
                  "The quarterly revenue grew by twelve percent. Revenue from configuration "
                  "services doubled", {"owner": "ann"}, ("ann",)),
        SearchDoc("sha256:" + "a2" * 32, "revenue-forecast", "application/json",
                  ("finance",), T0 + 2, '{"forecast": "revenue", "quarter": "q4"}',
                  {"owner": "bob"}, ("bob",)),
        SearchDoc("sha256:" + "a3" * 32, "model-weights", "image/png", ("ml",), T0 + 3, "",
                  {"framework": "torch", "owner": "cyd"}, ("cyd",)),
        SearchDoc("sha256:" + "a4" * 32, "training-log", "text/plain", ("ml", "ops"), T0 + 4,
                  "epoch one loss falling, configuration loaded <script>alert(1)</script> & "
                  "done", {"owner": "ann"}, ("ann", "bob")),
        SearchDoc("sha256:" + "a5" * 32, "café-menu", "text/plain", ("draft",), T0 + 5,
                  "Un café crème and a configurable menu", {}, ()),
    ]
    rng = random.Random(5)
    for i in range(40):
        docs.append(SearchDoc(
            f"sha256:{rng.getrandbits(256):064x}",
            f"{rng.choice(WORDS)}-{rng.choice(WORDS)}-{i}",
            rng.choice(TYPES),
            tuple(rng.sample(TAGS, rng.randint(0, 3))),
            T0 + 1000 * (i + 1),
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 30))),
            {"owner": rng.choice(["ann", "bob", "cyd"]), "stage": rng.choice(WORDS)},
            (rng.choice(["ann", "bob"]),)))
    return docs


CORPUS = corpus()
FIELDS = ("name", "text", "metadata")


def fields_of(doc: SearchDoc) -> dict[str, str]:
    return {"name": doc.name, "text": doc.text, "metadata": metadata_text(doc)}


def matched_fields(doc: SearchDoc, terms: tuple[Term, ...]) -> set[str]:
    return {field for field, value in fields_of(doc).items()
            if any(highlight(value, (term,)) is not None for term in terms)}


def reference(docs: list[SearchDoc], query: SearchQuery) -> tuple[list[SearchDoc], dict]:
    """The documents a query keeps (newest first) and its facets, computed in Python."""
    terms = parse_terms(query.text)

    def keeps(doc: SearchDoc) -> bool:
        values = fields_of(doc).values()
        return (all(any(highlight(v, (term,)) is not None for v in values) for term in terms)
                and all(tag in doc.tags for tag in query.tags)
                and (not query.content_types or doc.content_type in query.content_types)
                and (query.created_from_ms is None or doc.created_at_ms >= query.created_from_ms)
                and (query.created_to_ms is None or doc.created_at_ms < query.created_to_ms))

    kept = sorted((doc for doc in docs if keeps(doc)), key=lambda doc: -doc.created_at_ms)
    facets = {"tags": top_counts(Counter(t for doc in kept for t in doc.tags),
                                 query.facet_limit),
              "content_types": top_counts(Counter(doc.content_type for doc in kept),
                                          query.facet_limit)}
    return kept, facets


def check_highlights(hit: SearchHit, doc: SearchDoc, terms: tuple[Term, ...]) -> None:
    """One highlight per field that matched; HTML-escaped; marks only around query words."""
    assert set(hit.highlights) == matched_fields(doc, terms), hit
    wanted = {fold(word) for term in terms for word in term.words}
    prefixes = [fold(term.words[-1]) for term in terms if term.prefix]
    for fragments in hit.highlights.values():
        for fragment in fragments:
            assert re.sub(r"</?mark>", "", fragment).count("<") == 0, fragment
            marks = re.findall(r"<mark>(.*?)</mark>", fragment)
            assert marks, fragment
            for word in (w for mark in marks for w in WORD.findall(mark)):
                assert fold(word) in wanted or any(fold(word).startswith(p) for p in prefixes)


def all_hits(backend: SearchBackend, query: SearchQuery) -> list[SearchHit]:
    page = backend.search(SearchQuery(query.text, query.tags, query.content_types,
                                      query.created_from_ms, query.created_to_ms, limit=1000))
    return list(page.hits)


QUERIES = [
    SearchQuery(),
    SearchQuery("revenue"),
    SearchQuery("REVENUE quarterly"),
    SearchQuery('"quarterly revenue"'),
    SearchQuery('"revenue quarterly"'),  # a phrase in the wrong order matches nothing
    SearchQuery("config*"),
    SearchQuery("cafe"),                 # diacritics fold
    SearchQuery("torch"),                # metadata only
    SearchQuery("ann"),                  # metadata and creators
    SearchQuery("script alert"),
    SearchQuery("alpha bravo"),
    SearchQuery('"alpha bravo" c*'),
    SearchQuery("nothingmatchesthis"),
    SearchQuery(tags=("finance",)),
    SearchQuery(tags=("ml", "ops")),
    SearchQuery(tags=("unknown-tag",)),
    SearchQuery(content_types=("text/plain", "image/png")),
    SearchQuery("alpha", content_types=("application/json",)),
    SearchQuery(created_from_ms=T0 + 10_000, created_to_ms=T0 + 20_000),
    SearchQuery("echo", tags=("q3",), created_from_ms=T0 + 5_000),
    SearchQuery("alpha", facet_limit=2),
]


class SearchContract:
    """The behaviour every SearchBackend shares; subclasses provide `backend`, already
    ensured and empty."""

    @pytest.fixture
    def backend(self) -> SearchBackend:
        raise NotImplementedError

    @pytest.fixture
    def seeded(self, backend: SearchBackend) -> SearchBackend:
        backend.index(CORPUS[:20])
        backend.index(CORPUS[20:])
        return backend

    @pytest.mark.parametrize("query", QUERIES, ids=lambda q: repr(q.text or q.tags or
                                                                  q.content_types or "all"))
    def test_answers_agree_with_the_reference(self, seeded: SearchBackend,
                                              query: SearchQuery) -> None:
        kept, facets = reference(CORPUS, query)
        page = seeded.search(query)
        assert page.total == len(kept)
        assert page.facets == facets
        terms = parse_terms(query.text)
        by_address = {doc.address: doc for doc in CORPUS}
        if terms:  # by score: the same documents, scores never rising
            assert {hit.address for hit in page.hits} <= {doc.address for doc in kept}
            assert len(page.hits) == min(query.limit, len(kept))
            scores = [hit.score for hit in page.hits]
            assert scores == sorted(scores, reverse=True)
            for hit in page.hits:
                check_highlights(hit, by_address[hit.address], terms)
        else:
            assert [hit.address for hit in page.hits] == \
                [doc.address for doc in kept[:query.limit]]
            assert all(hit.highlights == {} for hit in page.hits)
        for hit in page.hits:
            doc = by_address[hit.address]
            assert (hit.name, hit.content_type, hit.tags, hit.created_at_ms) == \
                (doc.name, doc.content_type, doc.tags, doc.created_at_ms)

    @pytest.mark.parametrize("text", ["alpha", "", "a* b*"])
    def test_pages_partition_the_result(self, seeded: SearchBackend, text: str) -> None:
        whole = all_hits(seeded, SearchQuery(text))
        assert len(whole) == seeded.search(SearchQuery(text, limit=0)).total
        pages: list[SearchHit] = []
        for offset in range(0, len(whole) + 7, 7):
            page = seeded.search(SearchQuery(text, limit=7, offset=offset))
            assert page.total == len(whole)
            pages.extend(page.hits)
        assert [hit.address for hit in pages] == [hit.address for hit in whole]

    def test_highlights_are_html_safe(self, seeded: SearchBackend) -> None:
        (hit,) = seeded.search(SearchQuery("script")).hits
        assert hit.highlights["text"] == [
            "epoch one loss falling, configuration loaded &lt;<mark>script</mark>&gt;alert(1)"
            "&lt;/<mark>script</mark>&gt; &amp; done"]

    def test_removal(self, seeded: SearchBackend) -> None:
        gone = [CORPUS[0].address, CORPUS[1].address, "sha256:" + "ff" * 32]
        seeded.remove(gone)
        seeded.remove([CORPUS[0].address])  # again: nothing to remove, no error
        rest = CORPUS[2:]
        for query in (SearchQuery(), SearchQuery("revenue"), SearchQuery(tags=("finance",))):
            kept, facets = reference(rest, query)
            page = seeded.search(query)
            assert (page.total, page.facets) == (len(kept), facets)
            assert not {hit.address for hit in page.hits} & set(gone)

    def test_indexing_again_replaces(self, seeded: SearchBackend) -> None:
        old = CORPUS[0]
        new = SearchDoc(old.address, "renamed", "text/csv", ("ops", "archived"),
                        old.created_at_ms, "nothing about money", {"owner": "dan"}, ("dan",))
        seeded.index([new])
        docs = [new, *CORPUS[1:]]
        for query in (SearchQuery(), SearchQuery("revenue"), SearchQuery("money"),
                      SearchQuery(tags=("archived",))):
            kept, facets = reference(docs, query)
            page = seeded.search(query)
            assert (page.total, page.facets) == (len(kept), facets), query
        (hit,) = seeded.search(SearchQuery("money")).hits
        assert (hit.address, hit.name, hit.content_type, hit.tags) == \
            (old.address, "renamed", "text/csv", ("archived", "ops"))

    def test_reset_then_reindex_gives_the_same_answers(self, seeded: SearchBackend) -> None:
        before = [seeded.search(query) for query in QUERIES]
        seeded.reset()
        assert seeded.search(SearchQuery()) == SearchPage(0, (), {"tags": {},
                                                                  "content_types": {}})
        seeded.index(list(reversed(CORPUS)))  # the log replayed, in any batch order
        assert [seeded.search(query) for query in QUERIES] == before

    def test_a_phrase_is_matched_within_one_field(self, backend: SearchBackend) -> None:
        backend.index([SearchDoc("sha256:" + "a1" * 32, "alpha", "text/plain", (), T0,
                                 "bravo charlie", {"owner": "delta"}, ())])
        for text, total in (('"alpha bravo"', 0), ('"alpha bra"*', 0), ("alpha-bravo", 0),
                            ('"delta bravo"', 0), ("alpha bravo", 1), ('"bravo ch"*', 1),
                            ('"owner delta"', 1)):
            assert backend.search(SearchQuery(text)).total == total, text

    def test_malformed_text_is_a_search_error(self, seeded: SearchBackend) -> None:
        with pytest.raises(SearchError, match="unbalanced quote"):
            seeded.search(SearchQuery('"revenue'))

    def test_engine_syntax_in_text_is_just_words(self, seeded: SearchBackend) -> None:
        for text in ("revenue OR nothing", "NEAR(revenue quarterly)", "name:revenue",
                     "revenue AND -quarterly", "revenue^2"):
            kept, _ = reference(CORPUS, SearchQuery(text))
            assert seeded.search(SearchQuery(text)).total == len(kept), text


class TestSqlSearch(SearchContract):
    """FTS5 on a SQLite file and tsvector on PostgreSQL (the `engine` fixture runs both)."""

    @pytest.fixture
    def backend(self, engine: Engine) -> Iterator[SearchBackend]:
        backend = sql_search(engine, prefix="search_test")
        backend.reset()
        yield backend
        backend.drop()

    def test_writes_commit_with_the_callers_transaction(self, engine: Engine) -> None:
        backend = sql_search(engine, prefix="search_test")
        backend.reset()
        with pytest.raises(RuntimeError), engine.begin() as conn:
            backend.using(conn).index(CORPUS[:3])
            raise RuntimeError("the projection's batch failed")
        assert backend.search(SearchQuery()).total == 0
        with engine.begin() as conn:
            backend.using(conn).index(CORPUS[:3])
        assert backend.search(SearchQuery()).total == 3

    def test_an_id_collision_is_refused_not_overwritten(self, engine: Engine,
                                                         backend: SearchBackend) -> None:
        backend.index(CORPUS[:1])
        with engine.begin() as conn:  # as if another address hashed to the same id
            conn.exec_driver_sql("UPDATE search_test_docs SET address = 'sha256:other'")
        with pytest.raises(SearchError, match="search document id collision: sha256:other"):
            backend.index(CORPUS[:1])

    def test_an_index_of_the_in_memory_columns_era_is_upgraded_in_place(
            self, engine: Engine, backend: SearchBackend) -> None:
        backend.index(CORPUS)
        with engine.begin() as conn:  # that layout: no _tags/_facets; _meta, _removed, seq
            for ddl in ("DROP TABLE search_test_tags", "DROP TABLE search_test_facets",
                        "DROP INDEX ix_search_test_docs_created",
                        "ALTER TABLE search_test_docs ADD COLUMN seq BIGINT NOT NULL DEFAULT 1",
                        "CREATE INDEX ix_search_test_docs_seq ON search_test_docs (seq)",
                        "CREATE TABLE search_test_meta (id INTEGER PRIMARY KEY, "
                        "generation VARCHAR(32) NOT NULL, version BIGINT NOT NULL)",
                        "CREATE TABLE search_test_removed (doc_id BIGINT PRIMARY KEY, "
                        "seq BIGINT NOT NULL)"):
                conn.exec_driver_sql(ddl)
        backend.ensure()
        tables = set(inspect(engine).get_table_names())
        assert {"search_test_tags", "search_test_facets"} <= tables
        assert not {"search_test_meta", "search_test_removed"} & tables
        assert "seq" not in {c["name"] for c in inspect(engine).get_columns("search_test_docs")}
        for query in QUERIES:
            kept, facets = reference(CORPUS, query)
            page = backend.search(query)
            assert (page.total, page.facets) == (len(kept), facets), query
        backend.remove([CORPUS[0].address])  # and the counts go on from the filled ones
        kept, facets = reference(CORPUS[1:], SearchQuery(tags=("finance",)))
        assert backend.search(SearchQuery(tags=("finance",))).facets == facets

    def test_search_before_anything_was_indexed(self, engine: Engine) -> None:
        assert sql_search(engine, prefix="never_made").search(SearchQuery("x")).total == 0


@pytest.fixture(scope="module")
def fts5_corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SearchBackend]:
    from streams.sql import connect

    engine = connect(f"sqlite:///{tmp_path_factory.mktemp('search') / 'corpus.db'}")
    backend = sql_search(engine)
    backend.reset()
    backend.index(CORPUS)
    yield backend
    engine.dispose()


query_text = st.lists(st.sampled_from([*WORDS[:6], '"alpha bravo"', "ch*", "e*", "café",
                                       "zulu"]), max_size=2).map(" ".join)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=query_text, tags=st.lists(st.sampled_from(TAGS), max_size=2, unique=True),
       types=st.lists(st.sampled_from(TYPES), max_size=2, unique=True),
       start=st.none() | st.integers(0, 45).map(lambda k: T0 + 1000 * k),
       limit=st.integers(1, 9))
def test_fts5_pages_partition_and_facets_count_the_whole_result(
        fts5_corpus: SearchBackend, text: str, tags: list[str], types: list[str],
        start: int | None, limit: int) -> None:
    query = SearchQuery(text, tuple(tags), tuple(types), start)
    kept, facets = reference(CORPUS, query)
    pages = []
    for offset in range(0, len(kept) + limit, limit):
        page = fts5_corpus.search(SearchQuery(text, tuple(tags), tuple(types), start,
                                              limit=limit, offset=offset))
        assert (page.total, page.facets) == (len(kept), facets)
        pages.extend(hit.address for hit in page.hits)
    assert sorted(pages) == sorted(doc.address for doc in kept)
    assert len(set(pages)) == len(pages)
    assert sum(facets["content_types"].values()) == len(kept)  # one content type each


# --- (a) on random small corpora: top k, totals and facets against a brute force ----------

small_docs = st.lists(st.builds(
    lambda address, name, content_type, tags, created, body: SearchDoc(
        f"sha256:{address:064x}", name, content_type, tuple(tags), T0 + created, body),
    st.integers(1, 30), st.sampled_from(WORDS[:4]), st.sampled_from(TYPES[:3]),
    st.lists(st.sampled_from(TAGS[:4]), max_size=3), st.integers(0, 6),
    st.lists(st.sampled_from(WORDS[:5]), max_size=6).map(" ".join)), max_size=12)
small_queries = st.builds(
    SearchQuery, st.sampled_from(["", "", "alpha", "bravo charlie", "d*", '"alpha bravo"']),
    st.lists(st.sampled_from(TAGS[:4]), max_size=2, unique=True).map(tuple),
    st.lists(st.sampled_from(TYPES[:3]), max_size=2, unique=True).map(tuple),
    st.none() | st.integers(0, 3).map(lambda k: T0 + k),
    st.none() | st.integers(3, 7).map(lambda k: T0 + k),
    limit=st.integers(0, 5), offset=st.integers(0, 4), facet_limit=st.integers(0, 3))


def check_against_brute_force(backend: SearchBackend, docs: dict[str, SearchDoc],
                              query: SearchQuery) -> None:
    """Total and facets as `reference` counts them (estimated from the first FACET_SAMPLE
    documents by id when there are more), and the page the first of the whole result in
    score order (text) or newest first (none), ties by id."""
    kept, facets = reference(list(docs.values()), query)
    page = backend.search(query)
    assert page.total == len(kept)
    if len(kept) > sql.FACET_SAMPLE and (parse_terms(query.text) or not sql._scopes(query)):
        sample = sorted(kept, key=lambda doc: sql.doc_id(doc.address))[:sql.FACET_SAMPLE]
        scale = len(kept) / sql.FACET_SAMPLE
        _, counted = reference(sample, SearchQuery(facet_limit=MAX_LIMIT))
        facets = {facet: top_counts({key: round(n * scale) for key, n in counts.items()},
                                    query.facet_limit)
                  for facet, counts in counted.items()}
        assert not page.facets_exact
    else:
        assert page.facets_exact
    assert page.facets == facets
    if parse_terms(query.text):
        whole = backend.search(SearchQuery(query.text, query.tags, query.content_types,
                                           query.created_from_ms, query.created_to_ms,
                                           limit=1000)).hits
        assert {hit.address for hit in whole} == {doc.address for doc in kept}
        ranked = sorted(whole, key=lambda hit: (-hit.score, sql.doc_id(hit.address)))
        expected = ranked[query.offset:query.offset + query.limit]
    else:
        kept.sort(key=lambda doc: (-doc.created_at_ms, sql.doc_id(doc.address)))
        expected = kept[query.offset:query.offset + query.limit]
    assert [hit.address for hit in page.hits] == [hit.address for hit in expected]


@pytest.mark.parametrize("sample", [1000, 3])  # 3: the estimated facets of a large result
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(small_docs, st.lists(st.integers(1, 30), max_size=4)),
                      min_size=1, max_size=4),
       queries=st.lists(small_queries, min_size=1, max_size=4))
def test_sql_engines_agree_with_a_brute_force_through_updates_and_removals(
        engine: Engine, monkeypatch: pytest.MonkeyPatch, sample: int,
        steps: list[tuple[list[SearchDoc], list[int]]], queries: list[SearchQuery]) -> None:
    monkeypatch.setattr(sql, "FACET_SAMPLE", sample)
    backend = sql_search(engine, prefix="search_prop")
    backend.reset()
    state: dict[str, SearchDoc] = {}
    for written, removed in steps:
        backend.index(written)
        state.update((doc.address, doc) for doc in written)  # upserts: the last one wins
        gone = [f"sha256:{address:064x}" for address in removed]
        backend.remove(gone)
        for address in gone:
            state.pop(address, None)
        # the kept counts: every scope `_facets` answers from, after every change
        for query in (SearchQuery(facet_limit=50),
                      *(SearchQuery(tags=(tag,), facet_limit=50) for tag in TAGS[:4]),
                      *(SearchQuery(content_types=(ct,), facet_limit=50) for ct in TYPES[:3])):
            check_against_brute_force(backend, state, query)
    for query in queries:
        check_against_brute_force(backend, state, query)
    backend.drop()


# --- (a) on a real OpenSearch, when Docker can run one ------------------------------------

@pytest.fixture(scope="module")
def opensearch_client() -> Iterator[Any]:
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        pytest.skip("no Docker engine for a testcontainers OpenSearch (the request/response "
                    "contract below runs without one)")
    from testcontainers.community.opensearch import OpenSearchContainer

    with OpenSearchContainer("opensearchproject/opensearch:2.11.1") as container:
        yield container.get_client()


class TestOpenSearchOnDocker(SearchContract):
    @pytest.fixture
    def backend(self, opensearch_client: Any) -> Iterator[SearchBackend]:
        backend = OpenSearchSearch(opensearch_client, index="pit-artifacts-test",
                                   refresh="true")
        backend.reset()
        yield backend
        opensearch_client.indices.delete(index="pit-artifacts-test")


# --- (b) the OpenSearch request/response contract ------------------------------------------

@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any  # parsed JSON, a list of NDJSON lines, or None


class RecordingServer(ThreadingHTTPServer):
    """Records each request and answers with the next queued (status, JSON body)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[Recorded] = []
        self.answers: deque[tuple[int, Any]] = deque()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: RecordingServer

    def _answer(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        body: Any = None
        if raw and url.path.endswith("/_bulk"):  # NDJSON (opensearch-py labels it JSON)
            assert raw.endswith(b"\n"), "a bulk body ends with a newline"
            body = [json.loads(line) for line in raw.splitlines()]
        elif raw:
            body = json.loads(raw)
        self.server.requests.append(Recorded(self.command, url.path,
                                             dict(parse_qsl(url.query)), body))
        status, answer = self.server.answers.popleft() if self.server.answers else \
            (500, {"error": "no answer queued"})
        data = b"" if answer is None else json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    recording = RecordingServer()
    thread = threading.Thread(target=recording.serve_forever, daemon=True)
    thread.start()
    yield recording
    recording.shutdown()
    recording.server_close()


def shards() -> dict:
    return {"total": 1, "successful": 1, "failed": 0}


def bulk_item(action: str, _id: str, result: str, status: int, seq: int) -> dict:
    return {action: {"_index": "pit-artifacts", "_id": _id, "_version": 1, "result": result,
                     "_shards": shards(), "_seq_no": seq, "_primary_term": 1,
                     "status": status}}


def error_body(kind: str, reason: str, status: int) -> dict:
    return {"error": {"root_cause": [{"type": kind, "reason": reason,
                                      "index": "pit-artifacts"}],
                      "type": kind, "reason": reason}, "status": status}


DOC = CORPUS[0]
SOURCE = {"address": DOC.address, "name": DOC.name, "content_type": "text/markdown",
          "tags": ["finance", "q3"], "creators": ["ann"], "created_at": T0 + 1,
          "text": DOC.text, "metadata": "owner: ann\ncreator: ann"}


def test_ensure_creates_the_index_with_its_mapping(server: RecordingServer) -> None:
    server.answers.extend([(404, None), (200, {"acknowledged": True,
                                               "shards_acknowledged": True,
                                               "index": "pit-artifacts"})])
    OpenSearchSearch(server.url).ensure()
    assert server.requests == [Recorded("HEAD", "/pit-artifacts", {}, None),
                               Recorded("PUT", "/pit-artifacts", {}, MAPPING)]
    assert MAPPING["mappings"]["properties"] == {
        "address": {"type": "keyword"},
        "name": {"type": "text", "analyzer": "pit_text",
                 "fields": {"keyword": {"type": "keyword", "ignore_above": 512}}},
        "content_type": {"type": "keyword"},
        "tags": {"type": "keyword"},
        "creators": {"type": "keyword"},
        "created_at": {"type": "date", "format": "epoch_millis"},
        "text": {"type": "text", "analyzer": "pit_text", "index_options": "offsets"},
        "metadata": {"type": "text", "analyzer": "pit_text"},
    }


def test_ensure_leaves_an_existing_index_and_survives_a_race(server: RecordingServer) -> None:
    server.answers.extend([
        (200, None),
        (404, None),
        (400, error_body("resource_already_exists_exception",
                         "index [pit-artifacts/abc] already exists", 400)),
    ])
    backend = OpenSearchSearch(server.url)
    backend.ensure()
    backend.ensure()  # another process created it between HEAD and PUT
    assert [(r.method, r.path) for r in server.requests] == [
        ("HEAD", "/pit-artifacts"), ("HEAD", "/pit-artifacts"), ("PUT", "/pit-artifacts")]


def test_index_is_one_bulk_request_of_index_actions(server: RecordingServer) -> None:
    other = CORPUS[1]
    server.answers.extend([
        (200, None),  # HEAD: the index exists
        (200, {"took": 30, "errors": False, "items": [
            bulk_item("index", DOC.address, "created", 201, 0),
            bulk_item("index", other.address, "updated", 200, 1)]}),
    ])
    OpenSearchSearch(server.url, refresh="wait_for").index([DOC, other, DOC])
    head, bulk = server.requests
    assert head == Recorded("HEAD", "/pit-artifacts", {}, None)
    assert (bulk.method, bulk.path, bulk.query) == ("POST", "/_bulk", {"refresh": "wait_for"})
    assert bulk.body == [
        {"index": {"_index": "pit-artifacts", "_id": DOC.address}}, SOURCE,
        {"index": {"_index": "pit-artifacts", "_id": other.address}},
        {"address": other.address, "name": "revenue-forecast",
         "content_type": "application/json", "tags": ["finance"], "creators": ["bob"],
         "created_at": T0 + 2, "text": other.text, "metadata": "owner: bob\ncreator: bob"},
    ]


def test_remove_is_bulk_deletes_and_a_missing_document_is_no_error(
        server: RecordingServer) -> None:
    server.answers.extend([
        (200, None),
        (200, {"took": 5, "errors": False, "items": [
            bulk_item("delete", DOC.address, "deleted", 200, 2),
            bulk_item("delete", "sha256:" + "ff" * 32, "not_found", 404, 3)]}),
    ])
    OpenSearchSearch(server.url).remove([DOC.address, "sha256:" + "ff" * 32, DOC.address])
    bulk = server.requests[1]
    assert (bulk.method, bulk.path, bulk.query) == ("POST", "/_bulk", {})
    assert bulk.body == [{"delete": {"_index": "pit-artifacts", "_id": DOC.address}},
                         {"delete": {"_index": "pit-artifacts", "_id": "sha256:" + "ff" * 32}}]


def test_a_rejected_document_is_one_line(server: RecordingServer) -> None:
    server.answers.extend([
        (200, None),
        (200, {"took": 3, "errors": True, "items": [{"index": {
            "_index": "pit-artifacts", "_id": DOC.address, "status": 400,
            "error": {"type": "strict_dynamic_mapping_exception",
                      "reason": "mapping set to strict, dynamic introduction of [extra] "
                                "within [_doc] is not allowed"}}}]}),
    ])
    with pytest.raises(SearchError) as caught:
        OpenSearchSearch(server.url).index([DOC])
    assert str(caught.value) == (
        f"OpenSearch rejected 1 document(s) of indexing into 'pit-artifacts'; first "
        f"{DOC.address}: strict_dynamic_mapping_exception: mapping set to strict, dynamic "
        f"introduction of [extra] within [_doc] is not allowed")


SEARCH_RESPONSE = {
    "took": 4, "timed_out": False,
    "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
    "hits": {
        "total": {"value": 7, "relation": "eq"},
        "max_score": None,
        "hits": [{
            "_index": "pit-artifacts", "_id": DOC.address, "_score": 3.2155848,
            "_source": {"address": DOC.address, "name": DOC.name,
                        "content_type": "text/markdown", "tags": ["finance", "q3"],
                        "created_at": T0 + 1},
            "highlight": {"name": ["<mark>quarterly</mark>-<mark>revenue</mark>-report"],
                          "text": ["The <mark>quarterly</mark> <mark>revenue</mark> grew"]},
            "sort": [3.2155848, DOC.address],
        }],
    },
    "aggregations": {
        "tags": {"doc_count_error_upper_bound": 0, "sum_other_doc_count": 0,
                 "buckets": [{"key": "finance", "doc_count": 7},
                             {"key": "q3", "doc_count": 2}]},
        "content_types": {"doc_count_error_upper_bound": 0, "sum_other_doc_count": 0,
                          "buckets": [{"key": "text/markdown", "doc_count": 7}]},
    },
}


def test_search_request_and_answer(server: RecordingServer) -> None:
    server.answers.append((200, SEARCH_RESPONSE))
    query = SearchQuery('revenue "quarterly revenue" conf* "data set"*', tags=("finance",),
                        content_types=("text/markdown", "text/plain"),
                        created_from_ms=T0, created_to_ms=T0 + 10, limit=5, offset=5,
                        facet_limit=10)
    page = OpenSearchSearch(server.url).search(query)
    fields = ["name^4", "metadata^2", "text"]
    (request,) = server.requests
    assert (request.method, request.path, request.query) == \
        ("POST", "/pit-artifacts/_search", {})
    assert request.body == {
        "from": 5, "size": 5, "track_total_hits": True,
        "query": {"bool": {
            "must": [
                {"multi_match": {"query": "revenue", "type": "phrase", "fields": fields}},
                {"multi_match": {"query": "quarterly revenue", "type": "phrase",
                                 "fields": fields}},
                {"multi_match": {"query": "conf", "type": "bool_prefix", "fields": fields}},
                {"multi_match": {"query": "data set", "type": "phrase_prefix",
                                 "fields": fields}},
            ],
            "filter": [
                {"term": {"tags": "finance"}},
                {"terms": {"content_type": ["text/markdown", "text/plain"]}},
                {"range": {"created_at": {"gte": T0, "lt": T0 + 10}}},
            ],
        }},
        "sort": [{"_score": {"order": "desc"}}, {"address": {"order": "asc"}}],
        "_source": ["address", "name", "content_type", "tags", "created_at"],
        "aggs": {"tags": {"terms": {"field": "tags", "size": 10}},
                 "content_types": {"terms": {"field": "content_type", "size": 10}}},
        "highlight": {
            "pre_tags": ["<mark>"], "post_tags": ["</mark>"], "encoder": "html",
            "fields": {"name": {"number_of_fragments": 0},
                       "text": {"fragment_size": 150, "number_of_fragments": 1},
                       "metadata": {"fragment_size": 150, "number_of_fragments": 1}},
        },
    }
    assert page == SearchPage(7, (SearchHit(
        DOC.address, DOC.name, "text/markdown", ("finance", "q3"), T0 + 1, 3.2155848,
        {"name": ["<mark>quarterly</mark>-<mark>revenue</mark>-report"],
         "text": ["The <mark>quarterly</mark> <mark>revenue</mark> grew"]}),),
        {"tags": {"finance": 7, "q3": 2}, "content_types": {"text/markdown": 7}})


def test_browsing_without_text(server: RecordingServer) -> None:
    answer = json.loads(json.dumps(SEARCH_RESPONSE))
    hit = answer["hits"]["hits"][0]
    hit["_score"], hit["sort"] = None, [T0 + 1, DOC.address]
    del hit["highlight"]
    server.answers.append((200, answer))
    page = OpenSearchSearch(server.url).search(SearchQuery(facet_limit=0))
    assert server.requests[0].body == {
        "from": 0, "size": 20, "track_total_hits": True, "query": {"match_all": {}},
        "sort": [{"created_at": {"order": "desc"}}, {"address": {"order": "asc"}}],
        "_source": ["address", "name", "content_type", "tags", "created_at"]}
    assert page.hits[0].score == 0.0 and page.hits[0].highlights == {}
    assert page.facets == {"tags": {}, "content_types": {}}


def test_search_errors_are_one_line(server: RecordingServer) -> None:
    server.answers.extend([
        (400, error_body("query_shard_exception",
                         "failed to create query: field [tags] is not a text field", 400)),
        (404, error_body("index_not_found_exception", "no such index [pit-artifacts]", 404)),
    ])
    backend = OpenSearchSearch(server.url)
    with pytest.raises(SearchError) as caught:
        backend.search(SearchQuery("x"))
    assert str(caught.value) == ("OpenSearch refused searching 'pit-artifacts': 400 "
                                 "query_shard_exception: failed to create query: field [tags] "
                                 "is not a text field")
    assert backend.search(SearchQuery("x")) == SearchPage(0, (), {"tags": {},
                                                                  "content_types": {}})
    with pytest.raises(SearchError, match="unbalanced quote"):
        backend.search(SearchQuery('"x'))
    assert len(server.requests) == 2  # a malformed query never reaches OpenSearch


def test_reset_deletes_and_creates(server: RecordingServer) -> None:
    server.answers.extend([(200, {"acknowledged": True}), (404, None),
                           (200, {"acknowledged": True, "shards_acknowledged": True,
                                  "index": "pit-artifacts"})])
    OpenSearchSearch(server.url).reset()
    assert [(r.method, r.path) for r in server.requests] == [
        ("DELETE", "/pit-artifacts"), ("HEAD", "/pit-artifacts"), ("PUT", "/pit-artifacts")]


def test_an_unreachable_cluster_is_one_line() -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), _Handler) as closed:
        url = f"http://127.0.0.1:{closed.server_address[1]}"
    with pytest.raises(SearchError, match=r"^OpenSearch unreachable at .*127\.0\.0\.1") as caught:
        OpenSearchSearch(url, timeout_s=2).search(SearchQuery("x"))
    assert "\n" not in str(caught.value)


def test_the_artifact_search_view_mirrors_to_opensearch_and_waits_out_an_outage(
        server: RecordingServer, decided, tmp_path) -> None:
    """With PIT_OPENSEARCH_URL the projection bulk-indexes what it indexes locally; an
    unreachable cluster keeps the batch (nothing committed) for the projector to retry."""
    from projections.artifacts import ArtifactSearchView
    from projections.runtime import Projector
    from streams.artifacts.catalog import ARTIFACTS, StoreArtifact
    from streams.blobs import address_of
    from streams.config import Settings
    from streams.errors import DatabaseUnavailableError
    from streams.sql import connect, read_positions

    address = address_of(b"mirrored")
    log = decided(ARTIFACTS)
    log.ok(StoreArtifact(address, 8, "application/octet-stream", name="m", tags=["t"],
                         creator="ann"))
    view = ArtifactSearchView(Settings(data_dir=tmp_path,
                                         env={"PIT_OPENSEARCH_URL": server.url}))
    engine = connect(f"sqlite:///{tmp_path / 'views.db'}")
    projector = Projector(engine, [view], archive=False)

    server.answers.extend([(503, error_body("unavailable", "cluster down", 503))] * 8)
    with pytest.raises(DatabaseUnavailableError, match="pit-artifacts"):
        projector.apply_batch(log.records)
    assert read_positions(engine, "artifact_search") == {}

    server.requests.clear()
    server.answers.clear()
    server.answers.extend([
        (200, None),  # HEAD: the index exists
        (200, {"took": 5, "errors": False, "items": [
            bulk_item("index", address, "created", 201, 0)]}),
    ])
    projector.apply_batch(log.records)
    (bulk,) = [r for r in server.requests if r.path == "/_bulk"]
    assert bulk.body[0] == {"index": {"_index": "pit-artifacts", "_id": address}}
    assert (bulk.body[1]["name"], bulk.body[1]["tags"], bulk.body[1]["creators"]) == (
        "m", ["t"], ["ann"])
    assert read_positions(engine, "artifact_search")
