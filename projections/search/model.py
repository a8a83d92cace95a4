"""The values of artifact search and the interface every search backend implements.

A `SearchDoc` is what a projection indexes about one artifact (by address); a `SearchQuery`
asks for documents by full text (name, extracted text, metadata) and filters; a
`SearchPage` answers with one page of `SearchHit`s, the total and the facets, which count
over the WHOLE filtered result, not just the page.

Rules every backend keeps (the contract suite checks them):
* the text of a query is a conjunction of terms (`parse_terms`): every term must occur in
  one of the fields name, text or metadata;
* `tags` filter with AND (a document has every tag), `content_types` with OR, creation
  time is the half-open range [created_from_ms, created_to_ms);
* with text, hits come by score (higher first); without, newest first; ties by address,
  so pages of one query partition its result;
* highlights are HTML-safe: the field's text HTML-escaped, matches inside <mark></mark>,
  one entry per field that matched ("name", "text", "metadata");
* facets: per tag and per content type the number of matching documents, the
  `facet_limit` largest, ties by key. A backend may estimate them for a large result (the
  SQL ones do past FACET_SAMPLE documents, see sql.py); `facets_exact` then says False.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from streams.artifacts.errors import SearchError

FIELDS = ("name", "text", "metadata")  # the full-text fields, in index column order
MAX_LIMIT = 1000
MAX_WINDOW = 10_000     # offset + limit, OpenSearch's default index.max_result_window
TEXT_LIMIT = 256 * 1024  # characters of extracted text indexed per document
OPEN_MARK, CLOSE_MARK = "\x02", "\x03"  # raw match markers, replaced after HTML escaping


@dataclass(frozen=True)
class SearchDoc:
    """One artifact as search sees it; `text` is the extracted content of a text-like
    artifact ("" for binary ones); `metadata` values are searchable as "key: value"."""

    address: str
    name: str
    content_type: str
    tags: tuple[str, ...]
    created_at_ms: int
    text: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    creators: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.address:
            raise SearchError("a search document needs an address")
        object.__setattr__(self, "tags", tuple(sorted(set(self.tags))))
        object.__setattr__(self, "creators", tuple(self.creators))


@dataclass(frozen=True)
class SearchQuery:
    text: str = ""
    tags: tuple[str, ...] = ()           # all must match
    content_types: tuple[str, ...] = ()  # any may match
    created_from_ms: int | None = None   # inclusive
    created_to_ms: int | None = None     # exclusive
    limit: int = 20
    offset: int = 0
    facet_limit: int = 50

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", tuple(dict.fromkeys(self.tags)))
        object.__setattr__(self, "content_types", tuple(dict.fromkeys(self.content_types)))
        if not 0 <= self.limit <= MAX_LIMIT:
            raise SearchError(f"search limit must be between 0 and {MAX_LIMIT}, not {self.limit}")
        if self.offset < 0:
            raise SearchError(f"search offset must not be negative, not {self.offset}")
        if self.offset + self.limit > MAX_WINDOW:
            raise SearchError(f"search offset + limit must be at most {MAX_WINDOW} "
                              f"(narrow the query instead of paging that deep)")
        if not 0 <= self.facet_limit <= MAX_LIMIT:
            raise SearchError(f"facet limit must be between 0 and {MAX_LIMIT}, "
                              f"not {self.facet_limit}")
        if (self.created_from_ms is not None and self.created_to_ms is not None
                and self.created_from_ms > self.created_to_ms):
            raise SearchError(f"created_from_ms {self.created_from_ms} is after "
                              f"created_to_ms {self.created_to_ms}")


@dataclass(frozen=True)
class SearchHit:
    address: str
    name: str
    content_type: str
    tags: tuple[str, ...]
    created_at_ms: int
    score: float
    highlights: Mapping[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchPage:
    total: int
    hits: tuple[SearchHit, ...]
    facets: Mapping[str, Mapping[str, int]]  # {"tags": {tag: n}, "content_types": {ct: n}}
    facets_exact: bool = True  # False: estimated from a sample of the result


@runtime_checkable
class SearchBackend(Protocol):
    """An artifact search index. `index` upserts by address, `remove` ignores unknown
    addresses, `reset` empties the index (a rebuild then indexes from the event log)."""

    def ensure(self) -> None: ...

    def index(self, docs: Sequence[SearchDoc]) -> None: ...

    def remove(self, addresses: Iterable[str]) -> None: ...

    def search(self, query: SearchQuery) -> SearchPage: ...

    def reset(self) -> None: ...


def metadata_text(doc: SearchDoc) -> str:
    """The searchable metadata field: "key: value" per metadata entry, then "creator: x"."""
    lines = [f"{key}: {value}" for key, value in sorted(doc.metadata.items())]
    lines.extend(f"creator: {creator}" for creator in doc.creators)
    return "\n".join(lines)


def clean(text: str) -> str:
    """Indexed text without the raw match markers (so highlighting cannot be forged) and
    without NUL (which PostgreSQL text cannot hold and SQLite ends strings at)."""
    if OPEN_MARK in text or CLOSE_MARK in text or "\x00" in text:
        text = text.replace(OPEN_MARK, "").replace(CLOSE_MARK, "").replace("\x00", " ")
    return text


def marked_html(fragment: str) -> str:
    """A fragment with raw markers -> HTML-escaped text with <mark></mark>."""
    return (html.escape(fragment)
            .replace(OPEN_MARK, "<mark>").replace(CLOSE_MARK, "</mark>"))


def top_counts(counts: Mapping[str, int], limit: int) -> dict[str, int]:
    """The `limit` largest counts, ties by key (as OpenSearch orders terms buckets)."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return dict(ranked[:limit])
