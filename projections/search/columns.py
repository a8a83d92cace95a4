"""An in-memory, columnar copy of what search filters, counts and orders by: per document
its id, creation time, content type and tags, as numpy arrays.

Why: counting facets in SQL over the documents a query matches costs SQLite about 8 µs per
matching document (a materialized result, a tag lookup per document, a sorter per GROUP
BY), so a word found in 10,000 of 100,000 artifacts took ~90 ms before the page was even
read. Here the full-text engine only lists the matching ids and scores; the filters are
vectorized comparisons and the facets `bincount`s, about 1 ms for 100,000 documents.

The copy follows the database by version: every write transaction of a SQL backend bumps
the version in its meta table and stamps the rows it writes (and the ids it removes) with
it; a reader that sees a newer version loads only the rows stamped after its own (`apply`),
and a new generation (a reset) loads everything again.

`select` is pure: columns + query + full-text matches -> total, facets and the page.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from projections.search.model import SearchQuery

Row = tuple[int, str, int, str]  # doc_id, content_type, created_at_ms, tags as a JSON array


@dataclass(frozen=True)
class Columns:
    """Documents in browse order (newest first, ties by id); codes index the name tuples."""

    generation: str
    version: int
    ids: np.ndarray            # int64 doc ids
    created: np.ndarray        # int64 created_at_ms
    content_type: np.ndarray   # int32 code into content_types
    tag_owner: np.ndarray      # int64 position of the document of each (document, tag)
    tag_code: np.ndarray       # int32 code into tags, one per (document, tag)
    content_types: tuple[str, ...]
    tags: tuple[str, ...]
    by_id: np.ndarray          # positions in id order, to find ids by binary search

    @property
    def size(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls, generation: str, version: int) -> Columns:
        return cls(generation, version, np.empty(0, np.int64), np.empty(0, np.int64),
                   np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.int32), (), (),
                   np.empty(0, np.int64))

    @classmethod
    def load(cls, generation: str, version: int, rows: Iterable[Row]) -> Columns:
        return cls.empty(generation, version).apply(version, rows, ())

    def apply(self, version: int, rows: Iterable[Row], removed: Iterable[int]) -> Columns:
        """These columns with `removed` ids gone and `rows` (new or rewritten documents)
        put in, at `version`."""
        rows = list(rows)
        gone = np.fromiter([*removed, *(row[0] for row in rows)], np.int64)
        keep = ~np.isin(self.ids, gone) if len(gone) else np.ones(self.size, bool)
        new_position = np.cumsum(keep) - 1
        tag_keep = keep[self.tag_owner]

        content_types = {name: code for code, name in enumerate(self.content_types)}
        tags = {name: code for code, name in enumerate(self.tags)}
        added = len(rows)
        ids = np.fromiter((row[0] for row in rows), np.int64, added)
        created = np.fromiter((row[2] for row in rows), np.int64, added)
        codes = np.fromiter((content_types.setdefault(row[1], len(content_types))
                             for row in rows), np.int32, added)
        owners: list[int] = []
        tag_codes: list[int] = []
        base = int(keep.sum())
        for offset, row in enumerate(rows):
            for tag in json.loads(row[3]):
                owners.append(base + offset)
                tag_codes.append(tags.setdefault(tag, len(tags)))

        all_ids = np.concatenate([self.ids[keep], ids])
        all_created = np.concatenate([self.created[keep], created])
        order = np.lexsort((all_ids, -all_created))  # newest first, ties by id
        position_of = np.empty_like(order)
        position_of[order] = np.arange(len(order))
        owner = np.concatenate([new_position[self.tag_owner[tag_keep]],
                                np.asarray(owners, np.int64)]).astype(np.int64)
        ids = all_ids[order]
        return Columns(
            generation=self.generation, version=version,
            ids=ids, created=all_created[order],
            content_type=np.concatenate([self.content_type[keep], codes])[order],
            tag_owner=position_of[owner] if len(owner) else owner,
            tag_code=np.concatenate([self.tag_code[tag_keep],
                                     np.asarray(tag_codes, np.int32)]).astype(np.int32),
            content_types=tuple(content_types), tags=tuple(tags), by_id=np.argsort(ids))


@dataclass(frozen=True)
class Selection:
    total: int
    facets: dict[str, dict[str, int]]
    page: list[tuple[int, float]]  # (doc_id, score) in order


def _top(counts: np.ndarray, names: Sequence[str], limit: int) -> dict[str, int]:
    """The `limit` largest non-zero counts, ties by name."""
    codes = np.flatnonzero(counts)
    if not len(codes) or limit == 0:
        return {}
    if len(codes) > limit:  # only those that can make the cut (ties at it included)
        cut = np.partition(counts[codes], len(codes) - limit)[len(codes) - limit]
        codes = codes[counts[codes] >= cut]
    ranked = sorted(codes.tolist(), key=lambda code: (-int(counts[code]), names[code]))
    return {names[code]: int(counts[code]) for code in ranked[:limit]}


def select(columns: Columns, query: SearchQuery, match_ids: np.ndarray | None,
           scores: np.ndarray | None = None) -> Selection:
    """The documents of `columns` that the full text matched (`match_ids`; None: no text,
    every document) and the query's filters keep: their number, facets and page. The page
    goes by `scores` (aligned with `match_ids`; higher first, ties by id), without text
    newest first; with text but no scores it is left empty, for an engine that ranks the
    top of an unfiltered result itself."""
    n = columns.size
    by_position = None
    if match_ids is None:
        mask = np.ones(n, bool)
    else:
        order = columns.by_id
        at = np.minimum(np.searchsorted(columns.ids, match_ids, sorter=order), max(n - 1, 0))
        found = columns.ids[order[at]] == match_ids if n else np.zeros(len(match_ids), bool)
        positions = order[at[found]]
        mask = np.zeros(n, bool)
        mask[positions] = True
        if scores is not None:
            by_position = np.zeros(n)
            by_position[positions] = scores[found]
    if query.content_types:
        wanted = [code for code, name in enumerate(columns.content_types)
                  if name in query.content_types]
        mask &= np.isin(columns.content_type, wanted)
    if query.created_from_ms is not None:
        mask &= columns.created >= query.created_from_ms
    if query.created_to_ms is not None:
        mask &= columns.created < query.created_to_ms
    for tag in query.tags:
        has = np.zeros(n, bool)
        if tag in columns.tags:
            has[columns.tag_owner[columns.tag_code == columns.tags.index(tag)]] = True
        mask &= has

    chosen = np.flatnonzero(mask)  # in browse order
    facets = {
        "content_types": _top(np.bincount(columns.content_type[chosen],
                                          minlength=len(columns.content_types)),
                              columns.content_types, query.facet_limit),
        "tags": _top(np.bincount(columns.tag_code[mask[columns.tag_owner]],
                                 minlength=len(columns.tags)),
                     columns.tags, query.facet_limit),
    }
    if match_ids is not None and by_position is None:
        return Selection(len(chosen), facets, [])
    if by_position is not None:
        chosen = chosen[np.lexsort((columns.ids[chosen], -by_position[chosen]))]
    page = chosen[query.offset:query.offset + query.limit]
    return Selection(
        total=len(chosen), facets=facets,
        page=[(int(columns.ids[p]), float(by_position[p]) if by_position is not None else 0.0)
              for p in page])
