"""The search benchmark runs (tiny sizes; the figures are `pit bench`'s business)."""

from __future__ import annotations

from sqlalchemy import inspect

from projections.search.bench import search_p99_100k
from streams.sql import connect


def test_on_a_temporary_sqlite_file() -> None:
    figures = search_p99_100k(n=300, queries=40)
    assert figures["search_docs"] == 300 and figures["search_queries"] == 40
    assert 0 < figures["search_p50_ms_100k"] <= figures["search_p99_ms_100k"] \
        <= figures["search_max_ms_100k"]
    assert figures["search_index_docs_per_s"] > 0


def test_on_a_given_engine_it_drops_its_tables(tmp_path) -> None:
    engine = connect(f"sqlite:///{tmp_path / 'views.db'}")
    assert search_p99_100k(engine, n=200, queries=20)["search_docs"] == 200
    assert not [name for name in inspect(engine).get_table_names()
                if name.startswith("bench_search")]
