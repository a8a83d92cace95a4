"""The artifact catalog decider (issue 5, seed M3.3): what the Artifact Store holds, under
which names and versions, how artifacts derive from each other, how they are used and how
good they are. Pure: no I/O, no wall clock; time arrives as `now_ms`.

The entity is the whole store (key = store id, "default" unless a command says otherwise),
routed like the pool, because deduplication and an acyclic lineage graph need every artifact
in one place. The content itself never passes through here: the client writes the blob
(streams/artifacts/storage.py), then sends StoreArtifact with its address, size and what it
measured about the content (its structure score, streams/artifacts/quality.py). Events are
keyed by the artifact's address (ArtifactLinked by the child's).

Rules (written down where the issue leaves them open):
* Deduplication: storing an address the catalog holds is ArtifactDeduplicated; the first
  store is ArtifactStored. Both carry the catalog entry as it is after the store, so a
  projection writes it as it comes. Merging never loses a value:
  - tags are united (sorted); creators are recorded in the order first seen ("" is unknown,
    not recorded); producers (execution id, node id) are recorded the same way;
  - metadata (a JSON object): the first value written for a key is kept; a later, different
    value goes to `metadata_conflicts[key]` (a list, in arrival order, each value once);
  - size and content type are the first store's; a store with another size for the same
    address is rejected (same content has one size). The structure score is the first one
    known.
* A removed artifact stored again is cataloged again: ArtifactStored with newly_stored=false,
  merging into what it had. Removal (ArtifactRemoved) only takes it out of search and
  lineage growth: its versions, links and counts stay, and the blob is left to the Stale
  Manager.
* Versions: a store with a name makes the address that name's next version (1, 2, ...;
  parent = the version before) unless it already is the latest one. Going back to an older
  content makes a new version of it.
* Lineage: edges parent -> child of kind "derived_from" (the child's content was computed
  from the parent's) or "parent_of" (the parent holds the child: a dataset and its parts).
  Both kinds form one graph, held acyclic: a link whose parent already descends from the
  child is rejected. Both ends must be cataloged and not removed. A repeated link is
  accepted and changes nothing.
* Access counts arrive aggregated per interval (RecordArtifactAccess); each counted
  artifact gets one ArtifactAccessRecorded. Every address must be cataloged.
* Quality (quality.py): recomputed for every artifact a command touches - the stored one,
  the parents it derives from (derivations count toward utility), the accessed ones - and
  ArtifactQualityScored is emitted when the score or a component changed.
* Statistics count every accepted store: total_stored; unique_stored (distinct addresses
  ever cataloged: removal does not delete blobs); bytes_saved = bytes stored again;
  dedup_ratio = logical bytes / unique bytes; savings = bytes_saved / logical bytes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, TypedDict

from streams.artifacts.errors import ArtifactError
from streams.artifacts.quality import Quality, quality, strict_json
from streams.artifacts.topics import ARTIFACT_COMMANDS, ARTIFACT_EVENTS
from streams.blobs import is_address
from streams.decider import Decided, Decider, Decision, Message, Rejection, Rules, fits_int64
from streams.persistent import PMap

DEFAULT_STORE = "default"
DERIVED_FROM = "derived_from"
PARENT_OF = "parent_of"
RELATIONS = (DERIVED_FROM, PARENT_OF)
MAX_METADATA_BYTES = 64 * 1024  # of a command's metadata JSON: events stay far below 1 MiB
DEFAULT_CONTENT_TYPE = "application/octet-stream"


def canonical_json(value: Any) -> str:
    """One text per JSON value: sorted keys, no spaces (events carry metadata as this)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --- commands -------------------------------------------------------------------------------
# Every command carries store_id (the entity key, Avro default "default") as its last field.

class _StoreCommand(Message):
    key_field = "store_id"


@dataclass(frozen=True)
class StoreArtifact(_StoreCommand):
    """Catalog content the client has written to the blob store."""
    avro_name = "pit.artifacts.StoreArtifact"
    address: str
    size: int
    content_type: str = DEFAULT_CONTENT_TYPE
    name: str | None = None         # a named artifact gets a version
    message: str = ""               # the version's message
    tags: list[str] = field(default_factory=list)
    creator: str = ""
    metadata: str = "{}"            # a JSON object
    derived_from: list[str] = field(default_factory=list)  # addresses of its inputs
    execution_id: str = ""          # produced by a DAG node: its execution and node
    node_id: str = ""
    structure_score: float | None = None  # quality.structure(...).score; None: not checked
    structure_issues: list[str] = field(default_factory=list)
    store_id: str = DEFAULT_STORE


@dataclass(frozen=True)
class LinkArtifacts(_StoreCommand):
    avro_name = "pit.artifacts.LinkArtifacts"
    child: str
    parent: str
    relation: str = DERIVED_FROM
    store_id: str = DEFAULT_STORE


@dataclass(frozen=True)
class RecordArtifactAccess(_StoreCommand):
    """Reads counted per artifact over [interval_start, interval_end)."""
    avro_name = "pit.artifacts.RecordArtifactAccess"
    counts: dict[str, int]
    interval_start: int
    interval_end: int
    store_id: str = DEFAULT_STORE


@dataclass(frozen=True)
class RemoveArtifact(_StoreCommand):
    avro_name = "pit.artifacts.RemoveArtifact"
    address: str
    reason: str = ""
    store_id: str = DEFAULT_STORE


# --- events ---------------------------------------------------------------------------------
# The envelope's entity key is the store id; key_field names the subject (the Kafka key).

@dataclass(frozen=True)
class _Cataloged(Message):
    """A store of content: the catalog entry after it, and what this store added."""
    key_field = "address"
    address: str
    size: int
    content_type: str
    creator: str                    # who stored it this time ("" unknown)
    tags: list[str]                 # the entry's tags, sorted
    creators: list[str]             # every creator recorded, first seen first
    metadata: str                   # JSON object: the first value of every key
    metadata_conflicts: str = "{}"  # JSON {key: [later values that differ]}
    execution_id: str = ""          # this store's producer, if a DAG node
    node_id: str = ""
    structure_score: float | None = None  # the entry's: the first one known
    structure_issues: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ArtifactStored(_Cataloged):
    avro_name = "pit.artifacts.ArtifactStored"
    newly_stored: bool = True  # False: a removed artifact cataloged again


@dataclass(frozen=True)
class ArtifactDeduplicated(_Cataloged):
    avro_name = "pit.artifacts.ArtifactDeduplicated"
    added_tags: list[str] = field(default_factory=list)  # tags this store brought in
    stores: int = 2  # how often the content has been stored, this time included


@dataclass(frozen=True)
class ArtifactVersioned(Message):
    avro_name = "pit.artifacts.ArtifactVersioned"
    key_field = "address"
    address: str
    name: str
    version: int
    message: str = ""
    parent_version: int = 0  # 0: the first version
    parent_address: str = ""
    creator: str = ""


@dataclass(frozen=True)
class ArtifactLinked(Message):
    avro_name = "pit.artifacts.ArtifactLinked"
    key_field = "child"
    child: str
    parent: str
    relation: str


@dataclass(frozen=True)
class ArtifactAccessRecorded(Message):
    avro_name = "pit.artifacts.ArtifactAccessRecorded"
    key_field = "address"
    address: str
    interval_start: int
    interval_end: int
    count: int
    total: int  # every access counted so far


@dataclass(frozen=True)
class ArtifactQualityScored(Message):
    avro_name = "pit.artifacts.ArtifactQualityScored"
    key_field = "address"
    address: str
    score: float
    structure: float
    utility: float
    accesses: int
    derivations: int


@dataclass(frozen=True)
class ArtifactRemoved(Message):
    avro_name = "pit.artifacts.ArtifactRemoved"
    key_field = "address"
    address: str
    reason: str = ""


# --- state ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Edge:
    parent: str
    child: str
    relation: str


@dataclass(frozen=True, slots=True)
class Version:
    name: str
    version: int
    address: str
    message: str
    parent: int  # the version before; 0 for the first
    creator: str
    created_at: int


@dataclass(frozen=True, slots=True)
class Artifact:
    """A catalog entry. `metadata` and `metadata_conflicts` are never mutated in place."""
    address: str
    size: int
    content_type: str
    stored_at: int
    tags: tuple[str, ...] = ()
    creators: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    metadata_conflicts: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    producers: tuple[tuple[str, str], ...] = ()  # (execution id, node id), first seen first
    structure: float | None = None
    structure_issues: tuple[str, ...] = ()
    stores: int = 1
    names: tuple[str, ...] = ()       # the names it is a version of
    parents: frozenset[tuple[str, str]] = frozenset()   # (address, relation)
    children: frozenset[tuple[str, str]] = frozenset()  # (address, relation)
    accesses: int = 0
    quality: Quality | None = None    # as last scored
    removed: bool = False
    removed_reason: str = ""

    @property
    def derivations(self) -> int:
        """Artifacts derived from this one."""
        return sum(1 for _, relation in self.children if relation == DERIVED_FROM)

    def scored(self) -> Quality:
        """The quality its structure and usage give now."""
        return quality(self.structure, self.accesses, self.derivations)


@dataclass(frozen=True, slots=True)
class CatalogStats:
    total_stored: int
    unique_stored: int
    logical_bytes: int  # every store's size
    unique_bytes: int   # each distinct content's size once

    @property
    def bytes_saved(self) -> int:
        return self.logical_bytes - self.unique_bytes

    @property
    def dedup_ratio(self) -> float:
        """Logical bytes per stored byte: 1.0 without duplicates."""
        return self.logical_bytes / self.unique_bytes if self.unique_bytes else 1.0

    @property
    def savings(self) -> float:
        """The share of stored bytes deduplication saved, in [0, 1]."""
        return self.bytes_saved / self.logical_bytes if self.logical_bytes else 0.0


@dataclass(frozen=True, slots=True)
class Lineage:
    address: str
    nodes: tuple[str, ...]  # the address, its ancestors and descendants, sorted
    edges: tuple[Edge, ...]  # every edge between two of them, sorted


@dataclass(frozen=True, slots=True)
class CatalogState:
    store_id: str
    artifacts: PMap[str, Artifact] = field(default_factory=PMap)
    names: PMap[str, tuple[Version, ...]] = field(default_factory=PMap)
    total_stored: int = 0
    logical_bytes: int = 0
    unique_bytes: int = 0

    # --- queries ---

    def artifact(self, address: str) -> Artifact:
        found = self.artifacts.get(address)
        if found is None:
            raise ArtifactError(f"artifact {address} is not in the catalog")
        return found

    def ancestors(self, address: str) -> tuple[str, ...]:
        """Every artifact it derives from or belongs to, transitively, sorted."""
        self.artifact(address)
        return tuple(sorted(_reach(self, address, _parents)))

    def descendants(self, address: str) -> tuple[str, ...]:
        self.artifact(address)
        return tuple(sorted(_reach(self, address, _children)))

    def lineage_graph(self, address: str) -> Lineage:
        nodes = {address, *self.ancestors(address), *self.descendants(address)}
        edges = sorted(
            (Edge(parent, node, relation)
             for node in nodes for parent, relation in self.artifacts[node].parents
             if parent in nodes),
            key=lambda e: (e.parent, e.child, e.relation))
        return Lineage(address, tuple(sorted(nodes)), tuple(edges))

    def versions(self, name: str) -> tuple[Version, ...]:
        """The name's whole history, version 1 first (empty for an unknown name)."""
        return self.names.get(name, ())

    def version(self, name: str, number: int | None = None) -> Version:
        """A version of a name; the latest when `number` is None."""
        history = self.versions(name)
        if not history:
            raise ArtifactError(f"no artifact is named {name!r}")
        if number is None:
            return history[-1]
        if not 1 <= number <= len(history):
            raise ArtifactError(f"{name!r} has versions 1 to {len(history)}, not {number}")
        return history[number - 1]

    def stats(self) -> CatalogStats:
        return CatalogStats(self.total_stored, len(self.artifacts), self.logical_bytes,
                            self.unique_bytes)


def _parents(artifact: Artifact) -> frozenset[tuple[str, str]]:
    return artifact.parents


def _children(artifact: Artifact) -> frozenset[tuple[str, str]]:
    return artifact.children


def _reach(state: CatalogState, start: str,
           step: Callable[[Artifact], Iterable[tuple[str, str]]]) -> set[str]:
    """Every address reachable from `start` along `step` (parents or children), not itself
    (the graph is acyclic)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for address, _ in step(state.artifacts[todo.pop()]):
            if address not in seen:
                seen.add(address)
                todo.append(address)
    return seen


def initial_state(store_id: str) -> CatalogState:
    return CatalogState(store_id)


# --- evolve: apply one fact ------------------------------------------------------------------

def _cataloged(existing: Artifact | None, event: _Cataloged, at_ms: int) -> Artifact:
    producers = existing.producers if existing is not None else ()
    if event.execution_id and (event.execution_id, event.node_id) not in producers:
        producers = (*producers, (event.execution_id, event.node_id))
    values = dict(
        tags=tuple(event.tags), creators=tuple(event.creators),
        metadata=json.loads(event.metadata),
        metadata_conflicts={key: tuple(values) for key, values
                            in json.loads(event.metadata_conflicts).items()},
        producers=producers, structure=event.structure_score,
        structure_issues=tuple(event.structure_issues))
    if existing is None:
        return Artifact(event.address, event.size, event.content_type, at_ms, **values)
    return dataclasses.replace(existing, stores=existing.stores + 1, removed=False,
                               removed_reason="", **values)


def _changed(state: CatalogState, address: str, **changes: Any) -> PMap[str, Artifact]:
    return state.artifacts.set(address, dataclasses.replace(state.artifacts[address], **changes))


def evolve(state: CatalogState, event: Message, at_ms: int) -> CatalogState:
    match event:
        case ArtifactStored() | ArtifactDeduplicated():
            existing = state.artifacts.get(event.address)
            new = isinstance(event, ArtifactStored) and event.newly_stored
            return dataclasses.replace(
                state, artifacts=state.artifacts.set(
                    event.address, _cataloged(existing, event, at_ms)),
                total_stored=state.total_stored + 1,
                logical_bytes=state.logical_bytes + event.size,
                unique_bytes=state.unique_bytes + (event.size if new else 0))
        case ArtifactVersioned(address=address, name=name):
            version = Version(name, event.version, address, event.message, event.parent_version,
                              event.creator, at_ms)
            artifact = state.artifacts[address]
            names = artifact.names if name in artifact.names else (*artifact.names, name)
            return dataclasses.replace(
                state, names=state.names.set(name, (*state.versions(name), version)),
                artifacts=_changed(state, address, names=names))
        case ArtifactLinked(child=child, parent=parent, relation=relation):
            artifacts = _changed(state, child,
                                 parents=state.artifacts[child].parents | {(parent, relation)})
            parent_entry = artifacts[parent]
            artifacts = artifacts.set(parent, dataclasses.replace(
                parent_entry, children=parent_entry.children | {(child, relation)}))
            return dataclasses.replace(state, artifacts=artifacts)
        case ArtifactAccessRecorded(address=address, total=total):
            return dataclasses.replace(state, artifacts=_changed(state, address, accesses=total))
        case ArtifactQualityScored(address=address):
            scored = Quality(event.score, event.structure, event.utility)
            return dataclasses.replace(state, artifacts=_changed(state, address, quality=scored))
        case ArtifactRemoved(address=address, reason=reason):
            return dataclasses.replace(state, artifacts=_changed(
                state, address, removed=True, removed_reason=reason))
    return state


# --- decide: the rules -----------------------------------------------------------------------

class _Decision(Decision[CatalogState]):
    """The catalog's working copy, with the rescoring every touched artifact gets."""

    __slots__ = ()

    def rescore(self, addresses: Iterable[str]) -> None:
        for address in dict.fromkeys(addresses):
            artifact = self.state.artifacts[address]
            now = artifact.scored()
            if now != artifact.quality:
                self.emit(ArtifactQualityScored(address, now.score, now.structure, now.utility,
                                                artifact.accesses, artifact.derivations))


def _address(value: str, role: str) -> str:
    if not is_address(value):
        raise Rejection(f"{role} {value!r} is not an artifact address "
                        "(expected sha256:<64 hex digits>)")
    return value


def _cataloged_live(state: CatalogState, address: str, role: str) -> Artifact:
    artifact = state.artifacts.get(_address(address, role))
    if artifact is None:
        raise Rejection(f"{role} {address} is not in the catalog")
    if artifact.removed:
        raise Rejection(f"{role} {address} was removed from the catalog")
    return artifact


def _no_cycle(state: CatalogState, child: str, parent: str) -> None:
    if child == parent:
        raise Rejection(f"artifact {child} cannot derive from itself")
    if child in state.artifacts and parent in _reach(state, child, _children):
        raise Rejection(f"linking {child} to parent {parent} would make a cycle: "
                        f"{parent} already descends from {child}")


def _metadata(text: str) -> dict[str, Any]:
    if len(text.encode()) > MAX_METADATA_BYTES:
        raise Rejection(f"metadata is larger than {MAX_METADATA_BYTES} bytes")
    try:
        value = strict_json(text)
    except ValueError as exc:
        raise Rejection(f"metadata is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise Rejection(f"metadata must be a JSON object, not {type(value).__name__}")
    return value


def merge_metadata(kept: dict[str, Any], conflicts: dict[str, tuple[Any, ...]],
                   incoming: dict[str, Any]) -> tuple[dict[str, Any], dict[str, tuple[Any, ...]]]:
    """First writer wins per key; a later, different value joins the key's conflicts (once,
    in arrival order). Every value ever written is in one or the other. New dicts; values
    are compared as canonical JSON (so 1, 1.0 and true stay distinct)."""
    kept, conflicts = dict(kept), dict(conflicts)
    for key in sorted(incoming):
        value = incoming[key]
        if key not in kept:
            kept[key] = value
            continue
        text = canonical_json(value)
        if text != canonical_json(kept[key]) and all(
                text != canonical_json(seen) for seen in conflicts.get(key, ())):
            conflicts[key] = (*conflicts.get(key, ()), value)
    return kept, conflicts


def _validate_store(state: CatalogState, c: StoreArtifact) -> dict[str, Any]:
    _address(c.address, "address")
    if c.size < 0:
        raise Rejection(f"size must not be negative, got {c.size}")
    if not c.content_type.strip():
        raise Rejection("content_type must not be empty")
    if c.name is not None and not c.name.strip():
        raise Rejection("name must not be empty (leave it out for an unnamed artifact)")
    if any(not tag.strip() for tag in c.tags):
        raise Rejection("tags must not be empty")
    if c.node_id and not c.execution_id:
        raise Rejection(f"node {c.node_id!r} needs the execution_id that ran it")
    score = c.structure_score
    if score is not None and (math.isnan(score) or not 0.0 <= score <= 1.0):
        raise Rejection(f"structure_score must lie in [0, 1], got {score}")
    metadata = _metadata(c.metadata)
    existing = state.artifacts.get(c.address)
    if existing is not None and existing.size != c.size:
        raise Rejection(f"{c.address} is cataloged with size {existing.size}, not {c.size}: "
                        "the same content has one size")
    for parent in dict.fromkeys(c.derived_from):
        _no_cycle(state, c.address, parent)
        _cataloged_live(state, parent, "derived_from")
    return metadata


class _ThisStore(TypedDict):
    """The fields of a catalog event that come from this store, not from the entry."""
    address: str
    creator: str
    execution_id: str
    node_id: str


def _on_store(d: _Decision, c: StoreArtifact) -> None:
    metadata = _validate_store(d.state, c)
    existing = d.state.artifacts.get(c.address)
    tags = sorted(set(c.tags))
    this: _ThisStore = {"address": c.address, "creator": c.creator,
                        "execution_id": c.execution_id, "node_id": c.node_id}
    if existing is None:
        d.emit(ArtifactStored(
            **this, size=c.size, content_type=c.content_type, tags=tags,
            creators=[c.creator] if c.creator else [], metadata=canonical_json(metadata),
            structure_score=c.structure_score, structure_issues=list(c.structure_issues)))
    else:
        kept, conflicts = merge_metadata(existing.metadata, existing.metadata_conflicts,
                                         metadata)
        known = existing.structure is not None
        entry = dict(
            this, size=existing.size, content_type=existing.content_type,
            tags=sorted(set(existing.tags) | set(tags)),
            creators=list(dict.fromkeys([*existing.creators, *([c.creator] if c.creator
                                                                else [])])),
            metadata=canonical_json(kept), metadata_conflicts=canonical_json(conflicts),
            structure_score=existing.structure if known else c.structure_score,
            structure_issues=list(existing.structure_issues if known else c.structure_issues))
        if existing.removed:
            d.emit(ArtifactStored(**entry, newly_stored=False))
        else:
            d.emit(ArtifactDeduplicated(**entry, added_tags=sorted(set(tags) - set(existing.tags)),
                                        stores=existing.stores + 1))
    if c.name is not None:
        history = d.state.versions(c.name)
        if not history or history[-1].address != c.address:
            last = history[-1] if history else None
            d.emit(ArtifactVersioned(c.address, c.name, len(history) + 1, c.message,
                                     len(history), last.address if last else "", c.creator))
    linked = d.state.artifacts[c.address].parents
    parents = [p for p in dict.fromkeys(c.derived_from) if (p, DERIVED_FROM) not in linked]
    for parent in parents:
        d.emit(ArtifactLinked(c.address, parent, DERIVED_FROM))
    d.rescore([c.address, *parents])


def _on_link(d: _Decision, c: LinkArtifacts) -> None:
    if c.relation not in RELATIONS:
        raise Rejection(f"unknown relation {c.relation!r}; known: {', '.join(RELATIONS)}")
    child = _cataloged_live(d.state, c.child, "child")
    _cataloged_live(d.state, c.parent, "parent")
    _no_cycle(d.state, c.child, c.parent)
    if (c.parent, c.relation) in child.parents:
        return  # already linked: nothing changes
    d.emit(ArtifactLinked(c.child, c.parent, c.relation))
    if c.relation == DERIVED_FROM:
        d.rescore([c.parent])


def _on_access(d: _Decision, c: RecordArtifactAccess) -> None:
    if c.interval_start >= c.interval_end:
        raise Rejection(f"the interval [{c.interval_start}, {c.interval_end}) is empty")
    if not c.counts:
        raise Rejection("no access counts")
    for address, count in sorted(c.counts.items()):
        if count < 0:
            raise Rejection(f"access count of {address} must not be negative, got {count}")
        if _address(address, "counted address") not in d.state.artifacts:
            raise Rejection(f"counted address {address} is not in the catalog")
        if not fits_int64(d.state.artifacts[address].accesses + count):
            raise Rejection(f"{count} more accesses of {address} would overflow its count"
                            " (64 bits)")
    for address, count in sorted(c.counts.items()):
        if count:
            total = d.state.artifacts[address].accesses + count
            d.emit(ArtifactAccessRecorded(address, c.interval_start, c.interval_end, count,
                                          total))
            d.rescore([address])


def _on_remove(d: _Decision, c: RemoveArtifact) -> None:
    _cataloged_live(d.state, c.address, "artifact")
    d.emit(ArtifactRemoved(c.address, c.reason))


_RULES: Rules[_Decision] = Rules("the artifact catalog", "store_id", {
    StoreArtifact: _on_store,
    LinkArtifacts: _on_link,
    RecordArtifactAccess: _on_access,
    RemoveArtifact: _on_remove,
})


def decide(state: CatalogState, command: Message, now_ms: int) -> Decided:
    return _RULES.decide(_Decision(state, now_ms, evolve), command)


COMMANDS = _RULES.commands
EVENTS = (ArtifactStored, ArtifactDeduplicated, ArtifactVersioned, ArtifactLinked,
          ArtifactAccessRecorded, ArtifactQualityScored, ArtifactRemoved)

ARTIFACTS = Decider(
    name="artifacts",
    command_topic=ARTIFACT_COMMANDS,
    event_topic=ARTIFACT_EVENTS,
    commands=COMMANDS,
    events=EVENTS,
    initial_state=initial_state,
    decide=decide,
    evolve=evolve,
    entity_of=attrgetter("store_id"),  # every command is a _StoreCommand
)
