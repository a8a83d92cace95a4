"""The Artifact Store's views (`artifacts`, `artifact_search`) on SQLite and PostgreSQL,
fed by the catalog decider's own events: they agree with the decider's state, a duplicated
event changes nothing, and `pit replay` rebuilds them exactly."""

from __future__ import annotations

import dataclasses
import json

from sqlalchemy import select

from projections import artifacts as views
from projections.artifacts import ArtifactSearchView, ArtifactsView
from projections.replay import rebuild
from projections.runtime import Projector, live_tables
from projections.search import SearchQuery, sql_search
from streams.artifacts.catalog import (
    ARTIFACTS,
    LinkArtifacts,
    RecordArtifactAccess,
    RemoveArtifact,
    StoreArtifact,
)
from streams.artifacts.storage import artifact_store
from streams.blobs import address_of
from streams.config import Settings

A, B, C = (address_of(text) for text in (b"alpha", b"beta", b"gamma"))


def catalog(decided):
    log = decided(ARTIFACTS)
    log.ok(StoreArtifact(A, 5, "text/plain", name="doc", tags=["x"], creator="ann",
                         metadata='{"team": "red"}', message="first"))
    log.ok(StoreArtifact(A, 5, "text/plain", tags=["y"], creator="bob",
                         metadata='{"team": "blue", "k": 1}'))
    log.ok(StoreArtifact(B, 4, "text/plain", name="doc", message="second",
                         derived_from=[A]))
    log.ok(StoreArtifact(C, 5, "application/json", derived_from=[B]))
    log.ok(LinkArtifacts(C, A, "parent_of"))
    log.ok(RecordArtifactAccess({A: 3, B: 1}, log.now, log.now + 60_000))
    log.ok(RemoveArtifact(C, "obsolete"))
    return log


def rows(engine) -> dict:
    tables = live_tables(ArtifactsView())
    with engine.connect() as conn:
        return {name: sorted(tuple(r) for r in conn.execute(select(table)))
                for name, table in tables.items()}


def assert_matches_catalog(engine, state) -> None:
    """Every artifact's row and the store's statistics say what the catalog's state says."""
    for address in state.artifacts:
        entry, row = state.artifact(address), views.artifact(engine, address)
        assert (row["size"], row["content_type"], row["tags"], row["creators"],
                row["metadata"], row["accesses"], row["removed"]) == (
            entry.size, entry.content_type, list(entry.tags), list(entry.creators),
            entry.metadata, entry.accesses, entry.removed)
        assert row["quality"] == entry.quality.score
    stats, expected = views.store_stats(engine), state.stats()
    assert (stats["total_stored"], stats["unique_stored"], stats["bytes_saved"]) == (
        expected.total_stored, expected.unique_stored, expected.bytes_saved)


def test_the_artifacts_view_agrees_with_the_catalog(engine, decided, tmp_path):
    store = artifact_store(Settings(data_dir=tmp_path))
    for content in (b"alpha", b"beta", b"gamma"):
        store.store(content)
    log = catalog(decided)
    projector = Projector(engine, [ArtifactsView(), ArtifactSearchView(
        Settings(data_dir=tmp_path))])
    projector.apply_batch(log.records)
    state = log.processor.state("default")

    assert_matches_catalog(engine, state)
    assert views.artifact(engine, A)["metadata_conflicts"] == {"team": ["blue"]}
    assert [(v["version"], v["address"], v["parent_version"])
            for v in views.versions(engine, "doc")] == [(1, A, 0), (2, B, 1)]
    assert views.resolve(engine, "doc") == B and views.resolve(engine, "doc@1") == A
    graph = views.lineage(engine, C, "up")
    assert set(graph["nodes"]) == set(state.lineage_graph(C).nodes) | {C}

    # the search index: metadata is searchable, a removed artifact is gone
    search = sql_search(engine)
    assert [h.address for h in search.search(SearchQuery("red")).hits] == [A]
    assert search.search(SearchQuery(tags=("y",))).total == 1
    assert search.search(SearchQuery(content_types=("application/json",))).total == 0
    assert search.search(SearchQuery("doc")).hits[0].name == "doc"
    assert [h.address for h in search.search(SearchQuery("beta")).hits] == [B]  # content

    # a duplicated event (the same record at a later offset) changes nothing
    before = rows(engine)
    copies = [dataclasses.replace(r, offset=r.offset + 1000) for r in log.records]
    projector.apply_batch(copies)
    assert rows(engine) == before

    # replay rebuilds both views exactly
    rebuild(engine, ArtifactsView(), log.records)
    assert rows(engine) == before
    rebuild(engine, ArtifactSearchView(Settings(data_dir=tmp_path)), log.records)
    assert [h.address for h in sql_search(engine).search(SearchQuery("red")).hits] == [A]
    assert json.loads(json.dumps(views.artifact(engine, A)["tags"])) == ["x", "y"]
