"""Properties of the artifact catalog decider under random command sequences.

A handful of contents, names, tags, creators and metadata values; random stores (named or
not, with random inputs and producers, some with a wrong size), links of both kinds between
random pairs, access counts (some for unknown addresses), removals. After every command,
checked against an oracle that follows the accepted commands only:
* decide is deterministic, a rejection carries a reason, and a rejected command changes
  nothing;
* every emitted event is a declared event type and survives the Avro codec unchanged;
* dedup never loses content or metadata: every tag, creator and producer ever stored for an
  address is in its entry, every metadata value ever written is kept or in its conflicts,
  and every address ever stored stays in the catalog;
* version histories only grow (the old history is a prefix of the new), are complete
  (1..n, each version's parent the one before, no two consecutive versions of one address)
  and end with the address last stored under the name;
* the lineage graph stays acyclic under random links, parents and children agree, and
  ancestors/descendants are each other's inverse;
* every artifact's quality is up to date with its usage, in [0, 1], with its components;
* statistics count what was accepted;
and at the end, folding evolve over the emitted events (through the codec) reproduces the
state.
"""

from __future__ import annotations

import json
from collections import defaultdict
from itertools import pairwise

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.artifacts.catalog import (
    EVENTS,
    RELATIONS,
    CatalogState,
    LinkArtifacts,
    RecordArtifactAccess,
    RemoveArtifact,
    StoreArtifact,
    canonical_json,
    decide,
    evolve,
    initial_state,
)
from streams.blobs import address_of
from streams.decider import Message, Rejection, from_record, to_record

T0 = 1_700_000_000_000
ADDRESSES = [address_of(bytes([i])) for i in range(6)]
SIZES = {address: index * 10 for index, address in enumerate(ADDRESSES)}
UNKNOWN = address_of(b"never stored")
CODEC = Codec(EmbeddedRegistry())
ENVELOPE = {"event_id": "e", "event_type": "t", "entity_key": "default", "sequence": 1,
            "correlation_id": "c", "causation_id": "c", "occurred_at": T0, "producer": "p"}

addresses = st.sampled_from(ADDRESSES)
metadata = st.dictionaries(st.sampled_from(["k", "owner", "run"]),
                           st.one_of(st.integers(0, 2), st.booleans(), st.sampled_from(["x", "y"]),
                                     st.just([1, {"a": None}])), max_size=3)
stores = st.builds(
    lambda address, wrong_size, name, tags, creator, meta, inputs, producer, score: StoreArtifact(
        address, SIZES[address] + wrong_size, name=name, tags=tags, creator=creator,
        metadata=json.dumps(meta), derived_from=inputs, execution_id=producer[0],
        node_id=producer[1], structure_score=score),
    addresses, st.sampled_from([0] * 9 + [1]), st.sampled_from([None, "report", "model"]),
    st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=3),
    st.sampled_from(["", "ann", "bob", "cy"]), metadata,
    st.just([]) | st.lists(addresses, min_size=1, max_size=2),
    st.sampled_from([("", ""), ("x1", "n1"), ("x2", "n1")]),
    st.one_of(st.none(), st.sampled_from([0.0, 0.25, 1.0])))
links = st.builds(LinkArtifacts, addresses, addresses, st.sampled_from(RELATIONS))
accesses = st.builds(
    lambda counts, start, length: RecordArtifactAccess(counts, start, start + length),
    st.dictionaries(st.sampled_from([*ADDRESSES, *ADDRESSES, UNKNOWN]), st.integers(0, 5),
                    min_size=1, max_size=3) | st.just({}),
    st.integers(T0, T0 + 10), st.sampled_from([0, 1, 1000, 60_000]))
removals = st.builds(RemoveArtifact, addresses, st.sampled_from(["", "stale"]))
commands = st.one_of(stores, stores, stores, links, links, accesses, removals)
# Stores first (so later commands find a catalog), then anything.
sequences = st.builds(lambda first, rest: first + rest, st.lists(stores, min_size=2, max_size=8),
                      st.lists(commands, max_size=40))


def through_codec(event: Message) -> Message:
    record = CODEC.decode(CODEC.encode(event.avro_name,
                                       {"envelope": ENVELOPE, **to_record(event)})).record
    return from_record(type(event), record)


def acyclic(state: CatalogState) -> bool:
    """Kahn's algorithm over every edge: all nodes come off iff there is no cycle."""
    waiting = {a: len(entry.parents) for a, entry in state.artifacts.items()}
    ready = [a for a, count in waiting.items() if count == 0]
    done = 0
    while ready:
        address = ready.pop()
        done += 1
        for child, _ in state.artifacts[address].children:
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    return done == len(waiting)


class Oracle:
    """What the accepted commands stored, per address and name."""

    def __init__(self) -> None:
        self.tags: dict[str, set[str]] = defaultdict(set)
        self.creators: dict[str, set[str]] = defaultdict(set)
        self.producers: dict[str, set[tuple[str, str]]] = defaultdict(set)
        self.values: dict[str, set[tuple[str, str]]] = defaultdict(set)  # (key, canonical)
        self.latest: dict[str, str] = {}
        self.sizes: dict[str, int] = {}  # the first store's: the same content has one size
        self.stores = 0
        self.logical = 0

    def accepted(self, command: Message) -> None:
        if not isinstance(command, StoreArtifact):
            return
        address = command.address
        self.stores += 1
        self.logical += command.size
        assert self.sizes.setdefault(address, command.size) == command.size
        self.tags[address] |= set(command.tags)
        if command.creator:
            self.creators[address].add(command.creator)
        if command.execution_id:
            self.producers[address].add((command.execution_id, command.node_id))
        for key, value in json.loads(command.metadata).items():
            self.values[address].add((key, canonical_json(value)))
        if command.name is not None:
            self.latest[command.name] = address

    def check(self, state: CatalogState) -> None:
        assert set(state.artifacts) == set(self.tags)  # nothing stored is ever dropped
        for address, artifact in state.artifacts.items():
            assert self.tags[address] <= set(artifact.tags)
            assert self.creators[address] == set(artifact.creators)
            assert self.producers[address] == set(artifact.producers)
            held = {(k, canonical_json(v)) for k, v in artifact.metadata.items()}
            held |= {(k, canonical_json(v))
                     for k, values in artifact.metadata_conflicts.items() for v in values}
            assert self.values[address] == held
        for name, address in self.latest.items():
            assert state.version(name).address == address
        stats = state.stats()
        assert (stats.total_stored, stats.unique_stored, stats.logical_bytes) == (
            self.stores, len(self.tags), self.logical)
        assert stats.unique_bytes == sum(self.sizes.values())


def check_versions(before: CatalogState, after: CatalogState) -> None:
    for name, history in after.names.items():
        old = before.versions(name)
        assert history[:len(old)] == old, f"history of {name} was rewritten"
        assert [v.version for v in history] == list(range(1, len(history) + 1))
        assert [v.parent for v in history] == list(range(len(history)))
        assert all(a.address != b.address for a, b in pairwise(history))
        assert all(name in after.artifacts[v.address].names for v in history)


def check_lineage_and_quality(state: CatalogState) -> None:
    assert acyclic(state)
    for address, artifact in state.artifacts.items():
        for parent, relation in artifact.parents:
            assert (address, relation) in state.artifacts[parent].children
        for child, relation in artifact.children:
            assert (address, relation) in state.artifacts[child].parents
        for ancestor in state.ancestors(address):
            assert address in state.descendants(ancestor)
        scored = artifact.quality
        assert scored == artifact.scored(), f"{address} was not rescored"
        assert 0.0 <= scored.score <= 1.0
        assert 0.0 <= scored.structure <= 1.0 and 0.0 <= scored.utility <= 1.0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sequences)
def test_random_commands_keep_the_catalog_invariants(sequence: list[Message]) -> None:
    state = initial_state("default")
    oracle = Oracle()
    log: list[tuple[Message, int]] = []
    for step, command in enumerate(sequence):
        now = T0 + step
        try:
            events = decide(state, command, now)
        except Rejection as rejection:
            assert rejection.reason
            try:
                decide(state, command, now)
            except Rejection as again:
                assert again.reason == rejection.reason
            else:
                raise AssertionError("a rejection that is not deterministic") from None
            continue
        assert decide(state, command, now) == events
        before = state
        for event in events:
            assert type(event) in EVENTS
            assert through_codec(event) == event
            state = evolve(state, event, now)
            log.append((event, now))
        oracle.accepted(command)
        oracle.check(state)
        check_versions(before, state)
        check_lineage_and_quality(state)
    replayed = initial_state("default")
    for event, at in log:
        replayed = evolve(replayed, through_codec(event), at)
    assert replayed == state


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(addresses, addresses, st.sampled_from(RELATIONS)), max_size=60))
def test_random_links_never_make_a_cycle(pairs: list[tuple[str, str, str]]) -> None:
    state = initial_state("default")
    for address in ADDRESSES:
        for event in decide(state, StoreArtifact(address, SIZES[address]), T0):
            state = evolve(state, event, T0)
    for child, parent, relation in pairs:
        try:
            events = decide(state, LinkArtifacts(child, parent, relation), T0)
        except Rejection as rejection:
            # Refused only for a cycle: the parent is the child or already descends from it.
            assert parent == child or parent in state.descendants(child), rejection.reason
            continue
        for event in events:
            state = evolve(state, event, T0)
        assert (parent, relation) in state.artifact(child).parents
        assert acyclic(state)
