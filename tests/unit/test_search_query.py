"""The search text rules (projections/search/query.py) and the query values."""

from __future__ import annotations

import pytest

from projections.search.model import (
    CLOSE_MARK,
    OPEN_MARK,
    SearchDoc,
    SearchQuery,
    marked_html,
    metadata_text,
    top_counts,
)
from projections.search.query import Term, fold, fts5_expression, highlight, parse_terms, words
from streams.artifacts.errors import SearchError


def test_words_phrases_and_prefixes() -> None:
    assert parse_terms('revenue "quarterly  report" conf* "data set"*') == (
        Term("revenue"), Term("quarterly report"), Term("conf", prefix=True),
        Term("data set", prefix=True))


def test_operators_of_engines_are_plain_words() -> None:
    terms = parse_terms('NOT a OR b AND NEAR(c) col:d -e +f')
    assert [t.text for t in terms] == ["NOT", "a", "OR", "b", "AND", "NEAR(c)", "col:d",
                                       "-e", "+f"]
    assert fts5_expression(terms) == ('"NOT" "a" "OR" "b" "AND" "NEAR(c)" "col:d" "-e" '
                                      '"+f"')


def test_terms_without_letters_or_digits_are_dropped() -> None:
    assert parse_terms('- && "" " " _ ok') == (Term("ok"),)
    assert parse_terms("") == ()


@pytest.mark.parametrize("text, message", [
    ('"unfinished phrase', "unbalanced quote"),
    ("*", "'*' needs a word before it"),
    ("word **", "'*' needs a word before it"),
])
def test_malformed_text_is_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(SearchError, match=message) as caught:
        parse_terms(text)
    assert "\n" not in str(caught.value)


def test_too_many_terms() -> None:
    with pytest.raises(SearchError, match="at most 32"):
        parse_terms(" ".join(f"w{i}" for i in range(33)))


def test_fts5_quotes_double_quotes_inside_a_term() -> None:
    assert fts5_expression((Term('say"hi'),)) == '"say""hi"'


def test_words_and_fold() -> None:
    assert words("Report-3.md, v1_final, Café!") == "report 3 md v1 final cafe"
    assert fold("Café") == "cafe"
    assert fold("ÉCOLE") == "ecole"


def test_highlight_whole_field() -> None:
    terms = parse_terms('"quarterly report" rev*')
    marked = highlight("The Quarterly  Report: revenue & Revision", terms)
    assert marked == (f"The {OPEN_MARK}Quarterly  Report{CLOSE_MARK}: {OPEN_MARK}revenue"
                      f"{CLOSE_MARK} & {OPEN_MARK}Revision{CLOSE_MARK}")
    assert highlight("nothing to see", terms) is None


def test_highlight_window_cuts_around_the_first_match() -> None:
    text = " ".join(f"w{i}" for i in range(100)) + " needle " + \
        " ".join(f"v{i}" for i in range(100))
    fragment = highlight(text, parse_terms("needle"), window=12)
    assert fragment == (f"…w97 w98 w99 {OPEN_MARK}needle{CLOSE_MARK} v0 v1 v2 v3 v4 v5 v6 v7"
                        f"…")


def test_highlight_folds_case_and_diacritics() -> None:
    assert highlight("Un café", parse_terms("CAFE")) == f"Un {OPEN_MARK}café{CLOSE_MARK}"


def test_marked_html_escapes_text_but_not_marks() -> None:
    assert marked_html(f"<b>{OPEN_MARK}x&y{CLOSE_MARK}</b>") == \
        "&lt;b&gt;<mark>x&amp;y</mark>&lt;/b&gt;"


def test_metadata_text_and_doc_normalization() -> None:
    doc = SearchDoc("sha256:1", "n", "text/plain", ("b", "a", "b"), 1,
                    metadata={"stage": "raw", "owner": "ann"}, creators=("bob",))
    assert doc.tags == ("a", "b")
    assert metadata_text(doc) == "owner: ann\nstage: raw\ncreator: bob"


def test_top_counts_orders_by_count_then_key() -> None:
    assert top_counts({"b": 2, "a": 2, "c": 5, "d": 1}, 3) == {"c": 5, "a": 2, "b": 2}


@pytest.mark.parametrize("fields, message", [
    ({"limit": -1}, "limit must be between 0 and 1000"),
    ({"limit": 1001}, "limit must be between 0 and 1000"),
    ({"offset": -5}, "offset must not be negative"),
    ({"offset": 9_990, "limit": 20}, "at most 10000"),
    ({"created_from_ms": 5, "created_to_ms": 4}, "created_from_ms 5 is after"),
    ({"facet_limit": -1}, "facet limit"),
])
def test_query_validation(fields: dict, message: str) -> None:
    with pytest.raises(SearchError, match=message):
        SearchQuery(**fields)


def test_query_deduplicates_filters() -> None:
    query = SearchQuery(tags=("a", "b", "a"), content_types=("x", "x"))
    assert query.tags == ("a", "b") and query.content_types == ("x",)
