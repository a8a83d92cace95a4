"""Properties of the pure parts of search: the text rules and highlighting
(projections/search/query.py). The engines' answers against a brute force are in
tests/integration/test_search_contract.py."""

from __future__ import annotations

import re
import sqlite3

from hypothesis import given
from hypothesis import strategies as st

from projections.search.model import CLOSE_MARK, OPEN_MARK
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


@given(texts, queries)
def test_highlight_finds_a_match_wherever_there_is_one(text: str, query: str) -> None:
    terms = parse_terms(query)
    tokens = [fold(word) for word in WORD.findall(text)]

    def occurs(*init: str, last: str, prefix: bool) -> bool:
        return any(tokens[i:i + len(init)] == list(init) and (
            tokens[i + len(init)].startswith(last) if prefix else tokens[i + len(init)] == last)
            for i in range(len(tokens) - len(init)))

    assert (highlight(text, terms) is not None) == any(
        occurs(*[fold(w) for w in term.words[:-1]], last=fold(term.words[-1]),
               prefix=term.prefix) for term in terms)


@given(texts, queries, st.integers(4, 12))
def test_a_window_keeps_the_first_match(text: str, query: str, window: int) -> None:
    terms = parse_terms(query)
    whole, fragment = highlight(text, terms), highlight(text, terms, window=window)
    assert (whole is None) == (fragment is None)
    if fragment is not None:
        assert OPEN_MARK in fragment
        assert len(WORD.findall(fragment)) <= window
