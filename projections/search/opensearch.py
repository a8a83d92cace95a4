"""Artifact search on OpenSearch, through opensearch-py.

One index (default "pit-artifacts") with a strict mapping: keyword address, content_type,
tags and creators (exact filters and terms aggregations), text name, text and metadata
(analyzed with the standard tokenizer, lower case and ASCII folding, like FTS5's unicode61
with remove_diacritics), created_at a date in epoch milliseconds. One shard: the facets
(terms aggregations) are exact and scores are global, which a single shard serves well into
millions of artifacts.

Writes are `_bulk` requests (`opensearchpy.helpers.bulk`): `index` actions by address (an
upsert), `delete` actions for removals (a document already gone answers 404 `not_found`,
which is not an error here). A search is one `_search`: the terms of the text
(`parse_terms`) as `multi_match` clauses that must all match (phrase, or prefix), the
filters in the bool query's filter context, `from`/`size`, highlights with <mark></mark>
(HTML-encoded text) and a terms aggregation per facet; `track_total_hits` so totals beyond
10,000 are exact.

Failures are one-line `SearchError`s naming the index: unreachable cluster, refused
request (with OpenSearch's error type and reason), documents a bulk request rejected.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from opensearchpy import OpenSearch, helpers
from opensearchpy.exceptions import (
    ConnectionError as OpenSearchConnectionError,
)
from opensearchpy.exceptions import (
    NotFoundError,
    RequestError,
    TransportError,
)
from opensearchpy.helpers import BulkIndexError

from projections.search.model import (
    TEXT_LIMIT,
    SearchDoc,
    SearchHit,
    SearchPage,
    SearchQuery,
    metadata_text,
    top_counts,
)
from projections.search.query import Term, parse_terms
from streams.artifacts.errors import SearchError

DEFAULT_INDEX = "pit-artifacts"
FIELDS = ["name^4", "metadata^2", "text"]  # the weights of the FTS5 backend's bm25
HIGHLIGHT_FRAGMENT_CHARS = 150
_SOURCE = ["address", "name", "content_type", "tags", "created_at"]
_TEXT = {"type": "text", "analyzer": "pit_text"}

MAPPING: dict[str, Any] = {
    "settings": {
        "index": {"number_of_shards": 1},
        "analysis": {"analyzer": {"pit_text": {
            "type": "custom", "tokenizer": "standard",
            "filter": ["lowercase", "asciifolding"]}}},
    },
    "mappings": {
        "dynamic": "strict",
        "properties": {
            "address": {"type": "keyword"},
            "name": {**_TEXT, "fields": {"keyword": {"type": "keyword", "ignore_above": 512}}},
            "content_type": {"type": "keyword"},
            "tags": {"type": "keyword"},
            "creators": {"type": "keyword"},
            "created_at": {"type": "date", "format": "epoch_millis"},
            "text": {**_TEXT, "index_options": "offsets"},
            "metadata": _TEXT,
        },
    },
}


def _reason(exc: TransportError) -> str:
    """OpenSearch's own error type and reason, from the response body when it has one."""
    info = exc.info if isinstance(exc.info, dict) else {}
    error = info.get("error")
    if isinstance(error, dict):
        causes = error.get("root_cause") or [error]
        cause = causes[0] if isinstance(causes[0], dict) else error
        return f"{cause.get('type', 'error')}: {cause.get('reason', '')}".strip()
    return str(error or exc.error or exc)


def _clause(term: Term) -> dict[str, Any]:
    """One term as a multi_match every document must satisfy in one of the fields."""
    if not term.prefix:
        kind = "phrase"
    elif len(term.words) == 1:
        kind = "bool_prefix"  # a prefix query: every expansion, not the first 50
    else:
        kind = "phrase_prefix"
    return {"multi_match": {"query": term.text, "type": kind, "fields": FIELDS}}


def search_body(query: SearchQuery) -> dict[str, Any]:
    """The `_search` request body of a query."""
    terms = parse_terms(query.text)
    filters: list[dict[str, Any]] = [{"term": {"tags": tag}} for tag in query.tags]
    if query.content_types:
        filters.append({"terms": {"content_type": list(query.content_types)}})
    created: dict[str, int] = {}
    if query.created_from_ms is not None:
        created["gte"] = query.created_from_ms
    if query.created_to_ms is not None:
        created["lt"] = query.created_to_ms
    if created:
        filters.append({"range": {"created_at": created}})
    condition: dict[str, Any] = {}
    if terms:
        condition["must"] = [_clause(term) for term in terms]
    if filters:
        condition["filter"] = filters
    body: dict[str, Any] = {
        "from": query.offset,
        "size": query.limit,
        "track_total_hits": True,
        "query": {"bool": condition} if condition else {"match_all": {}},
        "sort": ([{"_score": {"order": "desc"}}] if terms
                 else [{"created_at": {"order": "desc"}}]) + [{"address": {"order": "asc"}}],
        "_source": _SOURCE,
    }
    if query.facet_limit:
        body["aggs"] = {name: {"terms": {"field": field, "size": query.facet_limit}}
                        for name, field in (("tags", "tags"), ("content_types", "content_type"))}
    if terms:
        body["highlight"] = {
            "pre_tags": ["<mark>"], "post_tags": ["</mark>"], "encoder": "html",
            "fields": {"name": {"number_of_fragments": 0},
                       "text": {"fragment_size": HIGHLIGHT_FRAGMENT_CHARS,
                                "number_of_fragments": 1},
                       "metadata": {"fragment_size": HIGHLIGHT_FRAGMENT_CHARS,
                                    "number_of_fragments": 1}},
        }
    return body


def page_of(response: dict[str, Any], query: SearchQuery) -> SearchPage:
    """A `_search` response as a SearchPage."""
    hits = []
    for hit in response["hits"]["hits"]:
        source = hit["_source"]
        hits.append(SearchHit(
            address=source["address"], name=source["name"],
            content_type=source["content_type"], tags=tuple(source.get("tags", ())),
            created_at_ms=int(source["created_at"]), score=float(hit.get("_score") or 0.0),
            highlights={field: list(fragments)
                        for field, fragments in hit.get("highlight", {}).items()}))
    aggregations = response.get("aggregations", {})
    facets = {name: top_counts({bucket["key"]: bucket["doc_count"]
                                for bucket in aggregations.get(name, {}).get("buckets", [])},
                               query.facet_limit)
              for name in ("tags", "content_types")}
    return SearchPage(response["hits"]["total"]["value"], tuple(hits), facets)


def source_of(doc: SearchDoc) -> dict[str, Any]:
    return {"address": doc.address, "name": doc.name, "content_type": doc.content_type,
            "tags": list(doc.tags), "creators": list(doc.creators),
            "created_at": doc.created_at_ms, "text": doc.text[:TEXT_LIMIT],
            "metadata": metadata_text(doc)}


class OpenSearchSearch:
    """The SearchBackend on an OpenSearch cluster. `client` is an `OpenSearch` client or
    a URL ("http://localhost:9200"); `refresh`, when given, is passed to every bulk request
    ("true" or "wait_for" make writes visible to the next search; by default the index's
    refresh interval does, as a projection should leave it)."""

    def __init__(self, client: OpenSearch | str, *, index: str = DEFAULT_INDEX,
                 refresh: str | None = None, chunk_size: int = 500, timeout_s: float = 30.0
                 ) -> None:
        if isinstance(client, str):
            client = OpenSearch(hosts=[client], timeout=timeout_s, max_retries=0)
        self.client, self.index_name, self.refresh = client, index, refresh
        self.chunk_size = chunk_size
        self._ensured = False

    def _fail(self, what: str, exc: Exception) -> SearchError:
        if isinstance(exc, OpenSearchConnectionError):
            hosts = ", ".join(str(conn.host) for conn in self.client.transport.connection_pool
                              .connections)
            return SearchError(f"OpenSearch unreachable at {hosts} ({what} "
                               f"{self.index_name!r}): {type(exc.info).__name__}")
        if isinstance(exc, TransportError):
            return SearchError(f"OpenSearch refused {what} {self.index_name!r}: "
                               f"{exc.status_code} {_reason(exc)}")
        if isinstance(exc, BulkIndexError):
            first = next(iter(exc.errors[0].values())) if exc.errors else {}
            error = first.get("error", {}) if isinstance(first, dict) else {}
            detail = f"{error.get('type', 'error')}: {error.get('reason', '')}" \
                if isinstance(error, dict) else str(error)
            return SearchError(f"OpenSearch rejected {len(exc.errors)} document(s) of {what} "
                               f"{self.index_name!r}; first {first.get('_id')}: {detail}")
        return SearchError(f"OpenSearch {what} {self.index_name!r} failed: {exc}")

    def ensure(self) -> None:
        try:
            if not self.client.indices.exists(index=self.index_name):
                self.client.indices.create(index=self.index_name, body=MAPPING)
        except RequestError as exc:
            if _reason(exc).split(":")[0] != "resource_already_exists_exception":
                raise self._fail("creating", exc) from None
        except (TransportError, OpenSearchConnectionError) as exc:
            raise self._fail("creating", exc) from None
        self._ensured = True

    def reset(self) -> None:
        try:
            self.client.indices.delete(index=self.index_name)
        except NotFoundError:
            pass
        except (TransportError, OpenSearchConnectionError) as exc:
            raise self._fail("deleting", exc) from None
        self._ensured = False
        self.ensure()

    def _bulk(self, what: str, actions: Iterator[dict[str, Any]], **options: Any) -> None:
        if not self._ensured:
            self.ensure()  # never let an index action create the index with a dynamic mapping
        if self.refresh is not None:
            options["refresh"] = self.refresh
        try:
            helpers.bulk(self.client, actions, chunk_size=self.chunk_size, **options)
        except (BulkIndexError, TransportError, OpenSearchConnectionError) as exc:
            raise self._fail(what, exc) from None

    def index(self, docs: Sequence[SearchDoc]) -> None:
        latest = {doc.address: doc for doc in docs}
        if latest:
            self._bulk("indexing into", ({"_op_type": "index", "_index": self.index_name,
                                          "_id": address, "_source": source_of(doc)}
                                         for address, doc in latest.items()))

    def remove(self, addresses: Iterable[str]) -> None:
        unique = list(dict.fromkeys(addresses))
        if unique:
            self._bulk("removing from", ({"_op_type": "delete", "_index": self.index_name,
                                          "_id": address} for address in unique),
                       ignore_status=(404,))

    def search(self, query: SearchQuery) -> SearchPage:
        body = search_body(query)
        try:
            response = self.client.search(index=self.index_name, body=body)
        except NotFoundError:
            return SearchPage(0, (), {"tags": {}, "content_types": {}})  # nothing indexed yet
        except (TransportError, OpenSearchConnectionError) as exc:
            raise self._fail("searching", exc) from None
        return page_of(response, query)
