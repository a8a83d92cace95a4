"""Properties of the pure parts of search: the text rules, highlighting and the columnar
filters/facets/pages (projections/search/query.py, columns.py)."""

from __future__ import annotations

import json
import re
import sqlite3
from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from projections.search.columns import Columns, select
from projections.search.model import CLOSE_MARK, OPEN_MARK, SearchQuery, top_counts
from projections.search.query import WORD, fold, fts5_expression, highlight, parse_terms
from streams.artifacts.errors import SearchError

_FTS = sqlite3.connect(":memory:")
_FTS.execute("CREATE VIRTUAL TABLE t USING fts5(name, text, metadata, "
             "tokenize = 'unicode61 remove_diacritics 2')")
_FTS.execute("INSERT INTO t VALUES ('a', 'b', 'c')")

user_text = st.text(alphabet=st.sampled_from(list('ab Cé"*-:()^ _1\t')), max_size=30) | \
    st.text(max_size=30)


@given(user_text)
def test_any_user_text_is_a_search_error_or_a_valid_match(text: str) -> None:
    try:
        terms = parse_terms(text)
    except SearchError as exc:
        assert "\n" not in str(exc)
        return
    assert all(WORD.search(term.text) for term in terms)
    if terms:  # FTS5 accepts it: no syntax error can come from user text
        _FTS.execute("SELECT rowid FROM t WHERE t MATCH ?", (fts5_expression(terms),)).fetchall()


vocabulary = st.sampled_from(["alpha", "beta", "Gamma", "délta", "alphabet", "be"])
texts = st.lists(st.tuples(vocabulary, st.sampled_from([" ", "-", ", ", ".\n", "_"])),
                 max_size=25).map(lambda parts: "".join(w + sep for w, sep in parts))
queries = st.lists(st.tuples(st.lists(vocabulary, min_size=1, max_size=2), st.booleans()),
                   min_size=1, max_size=3).map(
    lambda terms: " ".join(('"' + " ".join(ws) + '"' if len(ws) > 1 else ws[0]) +
                           ("*" if prefix else "") for ws, prefix in terms))


@given(texts, queries)
def test_highlight_only_adds_marks_around_matching_words(text: str, query: str) -> None:
    terms = parse_terms(query)
    marked = highlight(text, terms)
    if marked is None:
        return
    assert marked.replace(OPEN_MARK, "").replace(CLOSE_MARK, "") == text
    wanted = {fold(word) for term in terms for word in term.words}
    prefixes = [fold(term.words[-1]) for term in terms if term.prefix]
    for region in re.findall(f"{OPEN_MARK}(.*?){CLOSE_MARK}", marked, re.S):
        for word in WORD.findall(region):
            assert fold(word) in wanted or any(fold(word).startswith(p) for p in prefixes)


@given(texts, queries, st.integers(4, 12))
def test_a_window_keeps_the_first_match(text: str, query: str, window: int) -> None:
    terms = parse_terms(query)
    whole, fragment = highlight(text, terms), highlight(text, terms, window=window)
    assert (whole is None) == (fragment is None)
    if fragment is not None:
        assert OPEN_MARK in fragment
        assert len(WORD.findall(fragment)) <= window


# --- columns -----------------------------------------------------------------------------

doc_rows = st.dictionaries(
    st.integers(1, 60),
    st.tuples(st.sampled_from(["a/json", "b/csv", "c/png"]), st.integers(0, 20),
              st.lists(st.sampled_from(["t1", "t2", "t3", "t4"]), unique=True, max_size=3)),
    max_size=25)


def rows_of(docs: dict[int, tuple[str, int, list[str]]]) -> list[tuple[int, str, int, str]]:
    return [(i, ct, created, json.dumps(tags)) for i, (ct, created, tags) in docs.items()]


@given(st.lists(st.tuples(doc_rows, st.lists(st.integers(1, 60), max_size=5)), max_size=6))
def test_applying_changes_equals_loading_the_result(steps) -> None:
    columns, state = Columns.load("g", 0, []), {}
    for version, (written, removed) in enumerate(steps, start=1):
        for identity in removed:
            state.pop(identity, None)
        state.update(written)
        columns = columns.apply(version, rows_of(written), removed)
    fresh = Columns.load("g", len(steps), rows_of(state))

    def documents(c: Columns) -> dict[int, tuple[str, int, list[str]]]:
        tags: dict[int, list[str]] = {int(i): [] for i in c.ids}
        for owner, code in zip(c.tag_owner, c.tag_code, strict=True):
            tags[int(c.ids[owner])].append(c.tags[code])
        return {int(i): (c.content_types[code], int(t), sorted(tags[int(i)]))
                for i, code, t in zip(c.ids, c.content_type, c.created, strict=True)}

    expected = {i: (ct, t, sorted(tags)) for i, (ct, t, tags) in state.items()}
    assert documents(columns) == documents(fresh) == expected
    assert list(columns.ids) == list(fresh.ids)  # the same browse order


@settings(max_examples=200)
@given(doc_rows, st.data())
def test_select_agrees_with_a_reference(docs, data) -> None:
    columns = Columns.load("g", 1, rows_of(docs))
    ids = sorted(docs)
    text = data.draw(st.booleans())
    match_ids = match_scores = None
    scores: dict[int, float] = {}
    if text:
        matched = data.draw(st.lists(st.sampled_from([*ids, 999]), unique=True)) if ids else []
        scores = {i: data.draw(st.sampled_from([0.5, 1.0, 2.0])) for i in matched}
        match_ids = np.array(list(scores), np.int64)
        match_scores = np.array(list(scores.values()))
    start = data.draw(st.none() | st.integers(0, 20))
    span = data.draw(st.none() | st.integers(0, 10))
    query = SearchQuery(
        tags=tuple(data.draw(st.lists(st.sampled_from(["t1", "t2", "t9"]), max_size=2))),
        content_types=tuple(data.draw(st.lists(st.sampled_from(["a/json", "b/csv", "x"]),
                                               max_size=2))),
        created_from_ms=start,
        created_to_ms=None if span is None else (start or 0) + span,
        limit=data.draw(st.integers(0, 6)), offset=data.draw(st.integers(0, 8)),
        facet_limit=data.draw(st.integers(0, 3)))

    def keeps(i: int) -> bool:
        ct, created, tags = docs[i]
        return ((not text or i in scores)
                and (not query.content_types or ct in query.content_types)
                and (query.created_from_ms is None or created >= query.created_from_ms)
                and (query.created_to_ms is None or created < query.created_to_ms)
                and all(tag in tags for tag in query.tags))

    kept = [i for i in ids if keeps(i)]
    if text:
        kept.sort(key=lambda i: (-scores[i], i))
    else:
        kept.sort(key=lambda i: (-docs[i][1], i))
    chosen = select(columns, query, match_ids, match_scores)
    assert chosen.total == len(kept)
    assert [i for i, _ in chosen.page] == kept[query.offset:query.offset + query.limit]
    assert all(score == scores.get(i, 0.0) for i, score in chosen.page)
    assert chosen.facets == {
        "content_types": top_counts(Counter(docs[i][0] for i in kept), query.facet_limit),
        "tags": top_counts(Counter(t for i in kept for t in docs[i][2]), query.facet_limit)}
    if text:  # an engine ranking the page itself asks for the count and facets alone
        unranked = select(columns, query, match_ids)
        assert (unranked.total, unranked.facets, unranked.page) == \
            (chosen.total, chosen.facets, [])
