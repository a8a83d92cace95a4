"""Artifact search (issue 5): one interface, `SearchBackend`, three engines.

* `Fts5Search`: SQLite FTS5 in the views database, the embedded default;
* `PostgresSearch`: PostgreSQL full text (tsvector) in the views database;
* `OpenSearchSearch`: OpenSearch through opensearch-py.

`sql_search(bind)` picks the first or the second by the database's dialect. The benchmark
`projections.search.bench.search_p99_100k` measures the embedded one.
"""

from projections.search.model import (
    SearchBackend,
    SearchDoc,
    SearchHit,
    SearchPage,
    SearchQuery,
)
from projections.search.opensearch import OpenSearchSearch
from projections.search.query import Term, parse_terms
from projections.search.sql import Fts5Search, PostgresSearch, sql_search

__all__ = [
    "Fts5Search",
    "OpenSearchSearch",
    "PostgresSearch",
    "SearchBackend",
    "SearchDoc",
    "SearchHit",
    "SearchPage",
    "SearchQuery",
    "Term",
    "parse_terms",
    "sql_search",
]
