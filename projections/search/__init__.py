"""Artifact search (issue 5): one interface, `SearchBackend`, three engines.

* `Fts5Search`: SQLite FTS5 in the views database, the embedded default;
* `PostgresSearch`: PostgreSQL full text (tsvector) in the views database;
* `OpenSearchSearch`: OpenSearch through opensearch-py.

`sql_search(bind)` picks the first or the second by the database's dialect. The benchmark
`projections.search.bench.search_p99_100k` measures the embedded one.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from projections.search.model import (
    SearchBackend,
    SearchDoc,
    SearchHit,
    SearchPage,
    SearchQuery,
)
from projections.search.query import Term, parse_terms

if TYPE_CHECKING:
    from projections.search.opensearch import OpenSearchSearch
    from projections.search.sql import Fts5Search, PostgresSearch, sql_search

# The engines are imported on first use: the SQL ones need numpy, OpenSearch its client
# (and aiohttp), which a reader of the model (`pit artifact info`) never needs.
_ENGINES = {"Fts5Search": "projections.search.sql", "PostgresSearch": "projections.search.sql",
            "sql_search": "projections.search.sql",
            "OpenSearchSearch": "projections.search.opensearch"}


def __getattr__(name: str) -> Any:
    if name not in _ENGINES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_ENGINES[name]), name)

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
