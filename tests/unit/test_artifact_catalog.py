"""The artifact catalog decider: dedup and metadata merge, versions, lineage, access counts,
quality rescoring, removal, statistics, every rejection's reason, and the wiring (schemas,
topics, DECIDERS)."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest

from schemas.catalog import current_schemas
from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.artifacts.catalog import (
    ARTIFACTS,
    COMMANDS,
    EVENTS,
    MAX_METADATA_BYTES,
    ArtifactAccessRecorded,
    ArtifactDeduplicated,
    ArtifactLinked,
    ArtifactQualityScored,
    ArtifactRemoved,
    ArtifactStored,
    ArtifactVersioned,
    CatalogState,
    Edge,
    LinkArtifacts,
    RecordArtifactAccess,
    RemoveArtifact,
    StoreArtifact,
    decide,
    evolve,
    initial_state,
    merge_metadata,
)
from streams.artifacts.errors import ArtifactError
from streams.artifacts.quality import quality
from streams.artifacts.topics import ARTIFACT_COMMANDS, ARTIFACT_EVENTS
from streams.blobs import address_of
from streams.components import DECIDERS, decider_for
from streams.decider import Message, Rejection, from_record, to_record
from streams.topics import RESULTS, load_catalog

T0 = 1_700_000_000_000
A, B, C, D = (address_of(x) for x in (b"a", b"b", b"c", b"d"))


class Catalog:
    """A catalog under test: send commands, keep the state, remember every event."""

    def __init__(self) -> None:
        self.state: CatalogState = initial_state("default")
        self.now = T0
        self.log: list[Message] = []

    def send(self, command: Message) -> list[Message]:
        self.now += 10
        events = decide(self.state, command, self.now)
        for event in events:
            self.state = evolve(self.state, event, self.now)
        self.log.extend(events)
        return events

    def store(self, address: str, size: int = 1, **fields: typing.Any) -> list[Message]:
        return self.send(StoreArtifact(address, size, **fields))

    def reject(self, command: Message) -> str:
        with pytest.raises(Rejection) as caught:
            decide(self.state, command, self.now)
        return caught.value.reason


def kinds(events: list[Message]) -> list[str]:
    return [type(e).__name__ for e in events]


# --- storing and deduplication ---------------------------------------------------------------

def test_a_first_store_catalogs_the_content_and_scores_it() -> None:
    catalog = Catalog()
    events = catalog.store(A, 5, content_type="text/plain", tags=["b", "a", "b"],
                           creator="ann", metadata='{"k": 1}', structure_score=1.0,
                           execution_id="x1", node_id="n1")
    assert kinds(events) == ["ArtifactStored", "ArtifactQualityScored"]
    stored = events[0]
    assert (stored.tags, stored.creators, stored.metadata, stored.newly_stored) == (
        ["a", "b"], ["ann"], '{"k":1}', True)
    artifact = catalog.state.artifact(A)
    assert artifact.producers == (("x1", "n1"),)
    assert artifact.quality == quality(1.0, 0, 0)
    assert events[1] == ArtifactQualityScored(A, 0.6, 1.0, 0.0, 0, 0)


def test_storing_known_content_merges_its_metadata_and_loses_nothing() -> None:
    catalog = Catalog()
    catalog.store(A, 3, content_type="text/plain", tags=["x"], creator="ann",
                  metadata='{"k": 1, "same": true}', execution_id="e1", node_id="n")
    events = catalog.store(A, 3, content_type="application/json", tags=["y", "x"],
                           creator="bob", metadata='{"k": 2, "j": 3, "same": true}',
                           structure_score=0.25, structure_issues=["bad"],
                           execution_id="e2", node_id="n")
    assert kinds(events) == ["ArtifactDeduplicated", "ArtifactQualityScored"]
    dedup = events[0]
    assert isinstance(dedup, ArtifactDeduplicated)
    assert (dedup.tags, dedup.added_tags, dedup.creators, dedup.stores) == (
        ["x", "y"], ["y"], ["ann", "bob"], 2)
    assert json.loads(dedup.metadata) == {"k": 1, "j": 3, "same": True}
    assert json.loads(dedup.metadata_conflicts) == {"k": [2]}
    assert dedup.content_type == "text/plain"  # the first store's
    assert (dedup.structure_score, dedup.structure_issues) == (0.25, ["bad"])  # first known
    # A third value for k joins the conflicts once; 1.0 and true are not 1.
    catalog.store(A, 3, metadata='{"k": 2}', creator="ann")
    catalog.store(A, 3, metadata='{"k": 1.0}')
    catalog.store(A, 3, metadata='{"k": true}')
    artifact = catalog.state.artifact(A)
    assert artifact.metadata["k"] == 1
    assert artifact.metadata_conflicts == {"k": (2, 1.0, True)}
    assert artifact.creators == ("ann", "bob")
    assert artifact.producers == (("e1", "n"), ("e2", "n"))
    assert artifact.stores == 5
    stats = catalog.state.stats()
    assert (stats.total_stored, stats.unique_stored, stats.bytes_saved) == (5, 1, 12)
    assert (stats.dedup_ratio, stats.savings) == (5.0, 0.8)


def test_merge_rule_first_writer_wins_and_conflicts_are_kept_in_order() -> None:
    kept, conflicts = merge_metadata({"a": 1}, {}, {"a": 2, "b": [1]})
    kept, conflicts = merge_metadata(kept, conflicts, {"a": 3, "b": [1]})
    kept, conflicts = merge_metadata(kept, conflicts, {"a": 2})
    assert kept == {"a": 1, "b": [1]}
    assert conflicts == {"a": (2, 3)}


def test_an_empty_catalog_has_neutral_statistics() -> None:
    stats = initial_state("default").stats()
    assert (stats.total_stored, stats.unique_stored, stats.bytes_saved) == (0, 0, 0)
    assert (stats.dedup_ratio, stats.savings) == (1.0, 0.0)


# --- versions --------------------------------------------------------------------------------

def test_a_name_gets_a_complete_version_history() -> None:
    catalog = Catalog()
    events = catalog.store(A, name="report", message="first", creator="ann")
    assert events[1] == ArtifactVersioned(A, "report", 1, "first", 0, "", "ann")
    # The latest version stored again is no new version (it is a duplicate store).
    assert kinds(catalog.store(A, name="report")) == ["ArtifactDeduplicated"]
    events = catalog.store(B, name="report", message="second")
    assert events[1] == ArtifactVersioned(B, "report", 2, "second", 1, A, "")
    # Going back to older content is a new version of it.
    assert catalog.store(A, name="report")[1] == ArtifactVersioned(A, "report", 3, "", 2, B, "")
    history = catalog.state.versions("report")
    assert [(v.version, v.address, v.parent) for v in history] == [
        (1, A, 0), (2, B, 1), (3, A, 2)]
    assert catalog.state.version("report").version == 3
    assert catalog.state.version("report", 2).address == B
    assert catalog.state.artifact(A).names == ("report",)
    assert catalog.state.versions("unknown") == ()
    with pytest.raises(ArtifactError, match=r"'report' has versions 1 to 3, not 4"):
        catalog.state.version("report", 4)
    with pytest.raises(ArtifactError, match=r"no artifact is named 'nope'"):
        catalog.state.version("nope")


# --- lineage ---------------------------------------------------------------------------------

def test_lineage_links_derivations_and_keeps_the_graph_acyclic() -> None:
    catalog = Catalog()
    catalog.store(A)
    catalog.store(B, derived_from=[A, A])
    events = catalog.store(C, derived_from=[B], execution_id="x", node_id="n")
    assert kinds(events) == ["ArtifactStored", "ArtifactLinked", "ArtifactQualityScored",
                             "ArtifactQualityScored"]
    assert events[1] == ArtifactLinked(C, B, "derived_from")
    assert catalog.send(LinkArtifacts(C, A, "parent_of")) == [
        ArtifactLinked(C, A, "parent_of")]
    assert catalog.send(LinkArtifacts(C, A, "parent_of")) == []  # repeated: no change
    state = catalog.state
    assert state.ancestors(C) == tuple(sorted((A, B)))
    assert state.descendants(A) == tuple(sorted((B, C)))
    assert state.ancestors(A) == ()
    graph = state.lineage_graph(B)
    assert graph.nodes == tuple(sorted((A, B, C)))
    assert graph.edges == tuple(sorted(
        (Edge(A, B, "derived_from"), Edge(B, C, "derived_from"), Edge(A, C, "parent_of")),
        key=lambda e: (e.parent, e.child, e.relation)))
    assert state.artifact(A).derivations == 1  # parent_of is not a derivation
    assert "would make a cycle" in catalog.reject(LinkArtifacts(A, C))
    assert "would make a cycle" in catalog.reject(StoreArtifact(A, 1, derived_from=[C]))
    assert "cannot derive from itself" in catalog.reject(LinkArtifacts(A, A))
    assert "cannot derive from itself" in catalog.reject(StoreArtifact(D, 1, derived_from=[D]))
    with pytest.raises(ArtifactError, match="is not in the catalog"):
        state.lineage_graph(D)


# --- access counts, quality ------------------------------------------------------------------

def test_access_counts_are_recorded_per_artifact_and_rescore_it() -> None:
    catalog = Catalog()
    catalog.store(A, structure_score=1.0)
    catalog.store(B)
    events = catalog.send(RecordArtifactAccess({B: 3, A: 0}, T0, T0 + 60_000))
    assert events == [ArtifactAccessRecorded(B, T0, T0 + 60_000, 3, 3),
                      ArtifactQualityScored(B, 0.3923, 0.5, 0.2308, 3, 0)]
    events = catalog.send(RecordArtifactAccess({B: 2}, T0 + 60_000, T0 + 120_000))
    assert events[0].total == 5
    assert catalog.state.artifact(B).quality == quality(None, 5, 0)


def test_removal_takes_an_artifact_out_and_a_new_store_brings_it_back() -> None:
    catalog = Catalog()
    catalog.store(A, 4, tags=["old"], name="n")
    assert catalog.send(RemoveArtifact(A, "stale")) == [ArtifactRemoved(A, "stale")]
    artifact = catalog.state.artifact(A)
    assert (artifact.removed, artifact.removed_reason) == (True, "stale")
    assert catalog.state.versions("n")[0].address == A  # history stays
    assert "was removed" in catalog.reject(RemoveArtifact(A))
    assert "was removed" in catalog.reject(StoreArtifact(B, 1, derived_from=[A]))
    events = catalog.store(A, 4, tags=["new"], name="n")
    assert kinds(events) == ["ArtifactStored"]  # cataloged again; still the latest version
    assert (events[0].newly_stored, events[0].tags) == (False, ["new", "old"])
    assert not catalog.state.artifact(A).removed
    assert catalog.state.stats().bytes_saved == 4  # the blob was never deleted


# --- rejections ------------------------------------------------------------------------------

@pytest.mark.parametrize(("command", "reason"), [
    (StoreArtifact("sha256:abc", 1), "address 'sha256:abc' is not an artifact address"),
    (StoreArtifact(A, -1), "size must not be negative, got -1"),
    (StoreArtifact(A, 1, content_type=" "), "content_type must not be empty"),
    (StoreArtifact(A, 1, name=""), "name must not be empty"),
    (StoreArtifact(A, 1, tags=["ok", ""]), "tags must not be empty"),
    (StoreArtifact(A, 1, metadata="[1]"), "metadata must be a JSON object, not list"),
    (StoreArtifact(A, 1, metadata="{"), "metadata is not JSON"),
    (StoreArtifact(A, 1, metadata='{"x": NaN}'), "metadata is not JSON: NaN is not JSON"),
    (StoreArtifact(A, 1, metadata=json.dumps({"x": "y" * MAX_METADATA_BYTES})),
     f"metadata is larger than {MAX_METADATA_BYTES} bytes"),
    (StoreArtifact(A, 1, derived_from=[B]), f"derived_from {B} is not in the catalog"),
    (StoreArtifact(A, 1, derived_from=["x"]), "derived_from 'x' is not an artifact address"),
    (StoreArtifact(A, 1, node_id="n"), "node 'n' needs the execution_id that ran it"),
    (StoreArtifact(A, 1, structure_score=1.5), "structure_score must lie in [0, 1], got 1.5"),
    (StoreArtifact(A, 1, structure_score=float("nan")),
     "StoreArtifact.structure_score: nan is not a finite number"),
    (StoreArtifact(A, 1, store_id="other"), "command for store 'other' sent to store 'default'"),
    (StoreArtifact(A, 1, store_id=""), "store_id must not be empty"),
    (LinkArtifacts(A, B, "cousin_of"),
     "unknown relation 'cousin_of'; known: derived_from, parent_of"),
    (LinkArtifacts(A, B), f"child {A} is not in the catalog"),
    (RecordArtifactAccess({A: 1}, T0, T0), f"the interval [{T0}, {T0}) is empty"),
    (RecordArtifactAccess({}, T0, T0 + 1), "no access counts"),
    (RecordArtifactAccess({A: 1}, T0, T0 + 1), f"counted address {A} is not in the catalog"),
    (RemoveArtifact(A), f"artifact {A} is not in the catalog"),
])
def test_invalid_commands_are_rejected_with_their_reason(command: Message, reason: str) -> None:
    assert Catalog().reject(command).startswith(reason)


def test_rejections_that_depend_on_the_catalog() -> None:
    catalog = Catalog()
    catalog.store(A, 2)
    assert catalog.reject(StoreArtifact(A, 3)) == (
        f"{A} is cataloged with size 2, not 3: the same content has one size")
    assert catalog.reject(LinkArtifacts(A, B)) == f"parent {B} is not in the catalog"
    assert catalog.reject(RecordArtifactAccess({A: -1}, T0, T0 + 1)) == (
        f"access count of {A} must not be negative, got -1")
    assert catalog.reject(dataclasses.replace(
        RecordArtifactAccess({A: 1}, T0, T0 + 1), counts={A: 1, "b": 1})) == (
        "counted address 'b' is not an artifact address (expected sha256:<64 hex digits>)")


# --- wiring ----------------------------------------------------------------------------------

def test_every_message_has_its_schema_and_survives_the_codec() -> None:
    codec = Codec(EmbeddedRegistry())
    samples = {str: A, int: 7, float: 0.5, bool: False, list[str]: ["a", "b"],
               str | None: "name", float | None: 0.25, dict[str, int]: {A: 3}}
    envelope = {"event_id": "e", "event_type": "t", "entity_key": "default", "sequence": 1,
                "correlation_id": "c", "causation_id": "c", "occurred_at": T0, "producer": "p"}
    meta = {"command_id": "c", "issued_at": T0, "issued_by": "t", "correlation_id": None}
    for cls in (*COMMANDS, *EVENTS):
        assert cls.avro_name in current_schemas(), cls.avro_name
        hints = typing.get_type_hints(cls)
        message = cls(**{f.name: samples[hints[f.name]] for f in dataclasses.fields(cls)})
        head = {"meta": meta} if cls in COMMANDS else {"envelope": envelope}
        decoded = codec.decode(codec.encode(cls.avro_name, {**head, **to_record(message)}))
        assert from_record(cls, decoded.record) == message
    # A minimal producer's command (defaults only) goes to the default store.
    minimal = codec.decode(codec.encode("pit.artifacts.StoreArtifact",
                                        {"meta": meta, "address": A, "size": 1}))
    assert from_record(StoreArtifact, minimal.record) == StoreArtifact(A, 1)
    assert StoreArtifact(A, 1).entity_key == "default"


def test_the_catalog_is_a_component_with_its_topics() -> None:
    assert ARTIFACTS in DECIDERS
    assert decider_for(StoreArtifact) is ARTIFACTS
    assert ARTIFACTS.entity_of(RemoveArtifact(A, store_id="s")) == "s"
    topics = load_catalog()
    assert topics[ARTIFACT_COMMANDS].partitions == topics[ARTIFACT_EVENTS].partitions == 8
    assert topics[ARTIFACT_COMMANDS].partitions <= topics[RESULTS].partitions
    assert ArtifactLinked(A, B, "derived_from").entity_key == A  # events keyed by artifact
    assert ArtifactStored(B, 1, "t", "", [], [], "{}").entity_key == B
