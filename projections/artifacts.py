"""The Artifact Store's views (issue 5), from pit.artifacts.events alone, and the readers of
them (the client, `pit artifact ...` and the API query these).

`artifacts` (tables `artifacts`, `artifact_versions`, `artifact_links`, `artifact_access`):
* artifacts: one row per cataloged content address - size, content type, tags, creators,
  metadata (first value per key) and its conflicts, producers (DAG execution and node),
  how often it was stored, accesses, quality (score and components), removed or not;
* artifact_versions: every version of every named artifact (name, version, address, message,
  parent), immutable;
* artifact_links: the lineage graph, edges parent -> child with their relation;
* artifact_access: access counts per artifact per interval (as the clients aggregated them).

Every event applies idempotently (a stored entry carries the whole catalog entry; a version,
link or access interval is keyed by what identifies it; access totals are absolute), so a
duplicated event in the log changes nothing and `pit replay artifacts` rebuilds the tables.
Search has its own view (`artifact_search`, projections/search/).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    and_,
    func,
    inspect,
    select,
)

from projections.runtime import View, constraint_name, index_name, live_tables
from schemas.codec import Decoded
from streams.artifacts.errors import ArtifactNotFoundError, SearchError
from streams.artifacts.topics import ARTIFACT_EVENTS
from streams.errors import DatabaseUnavailableError, PitError
from streams.log import LogRecord
from streams.sql import Long

if TYPE_CHECKING:  # opened lazily, in _text and mirror
    from projections.search.opensearch import OpenSearchSearch
    from projections.search.sql import SqlSearch
    from streams.artifacts.storage import BlobBackend

log = logging.getLogger(__name__)

_ADDRESS = String(80)
_NAME = String(255)
CATALOGED = ("pit.artifacts.ArtifactStored", "pit.artifacts.ArtifactDeduplicated")


def _insert_once(conn: Connection, table: Table, row: dict[str, Any], key: Sequence[str]
                 ) -> None:
    condition = and_(*(table.c[name] == row[name] for name in key))
    if conn.execute(select(func.count()).select_from(table).where(condition)).scalar() == 0:
        conn.execute(table.insert().values(**row))


class ArtifactsView(View):
    name = "artifacts"
    topics = (ARTIFACT_EVENTS,)
    table_names = ("artifacts", "artifact_versions", "artifact_links", "artifact_access")

    def define(self, metadata: MetaData, suffix: str = "", token: str = "") -> dict[str, Table]:
        artifacts = Table(
            "artifacts" + suffix, metadata,
            Column("address", _ADDRESS, nullable=False),
            Column("store_id", _NAME, nullable=False),
            Column("size", Long, nullable=False),
            Column("content_type", _NAME, nullable=False),
            Column("tags", Text, nullable=False),            # JSON list, sorted
            Column("creators", Text, nullable=False),        # JSON list, first seen first
            Column("metadata", Text, nullable=False),        # JSON object
            Column("metadata_conflicts", Text, nullable=False),
            Column("producers", Text, nullable=False),       # JSON [[execution, node], ...]
            Column("stores", Integer, nullable=False),
            Column("accesses", Long, nullable=False),
            Column("structure", Float),
            Column("structure_issues", Text, nullable=False),
            Column("quality", Float),
            Column("utility", Float),
            Column("derivations", Integer, nullable=False),
            Column("removed", Boolean, nullable=False),
            Column("removed_reason", Text, nullable=False),
            Column("stored_at_ms", Long, nullable=False),
            Column("updated_at_ms", Long, nullable=False),
            PrimaryKeyConstraint("address", name=constraint_name("pk", "artifacts", token)),
        )
        versions = Table(
            "artifact_versions" + suffix, metadata,
            Column("store_id", _NAME, nullable=False),
            Column("name", _NAME, nullable=False),
            Column("version", Integer, nullable=False),
            Column("address", _ADDRESS, nullable=False),
            Column("message", Text, nullable=False),
            Column("parent_version", Integer, nullable=False),
            Column("parent_address", _ADDRESS, nullable=False),
            Column("creator", _NAME, nullable=False),
            Column("created_at_ms", Long, nullable=False),
            PrimaryKeyConstraint("store_id", "name", "version",
                                 name=constraint_name("pk", "artifact_versions", token)),
        )
        links = Table(
            "artifact_links" + suffix, metadata,
            Column("parent", _ADDRESS, nullable=False),
            Column("child", _ADDRESS, nullable=False),
            Column("relation", String(32), nullable=False),
            Column("linked_at_ms", Long, nullable=False),
            PrimaryKeyConstraint("parent", "child", "relation",
                                 name=constraint_name("pk", "artifact_links", token)),
            Index(index_name("artifact_links", "child", token), "child"),
        )
        access = Table(
            "artifact_access" + suffix, metadata,
            Column("address", _ADDRESS, nullable=False),
            Column("interval_start_ms", Long, nullable=False),
            Column("interval_end_ms", Long, nullable=False),
            Column("count", Long, nullable=False),
            PrimaryKeyConstraint("address", "interval_start_ms", "interval_end_ms",
                                 name=constraint_name("pk", "artifact_access", token)),
        )
        return {"artifacts": artifacts, "artifact_versions": versions,
                "artifact_links": links, "artifact_access": access}

    def apply(self, conn: Connection, tables: dict[str, Table], decoded: Decoded,
              record: LogRecord) -> None:
        event, name = decoded.record, decoded.name
        at = event["envelope"]["occurred_at"]
        artifacts = tables["artifacts"]
        if name in CATALOGED:
            entry = {
                "store_id": event["envelope"]["entity_key"], "size": event["size"],
                "content_type": event["content_type"], "tags": json.dumps(event["tags"]),
                "creators": json.dumps(event["creators"]), "metadata": event["metadata"],
                "metadata_conflicts": event["metadata_conflicts"],
                "structure": event["structure_score"],
                "structure_issues": json.dumps(event["structure_issues"]),
                "removed": False, "removed_reason": "", "updated_at_ms": at,
            }
            if "stores" in event:  # a deduplicated store counts them; a first store is 1
                entry["stores"] = event["stores"]
            known = conn.execute(select(artifacts.c.producers).where(
                artifacts.c.address == event["address"])).first()
            producers = json.loads(known.producers) if known else []
            if event["execution_id"] and [event["execution_id"], event["node_id"]] \
                    not in producers:
                producers.append([event["execution_id"], event["node_id"]])
            entry["producers"] = json.dumps(producers)
            if known is None:
                conn.execute(artifacts.insert().values(**{
                    "address": event["address"], "accesses": 0, "derivations": 0,
                    "stored_at_ms": at, "stores": 1, **entry}))
            else:
                conn.execute(artifacts.update().where(
                    artifacts.c.address == event["address"]).values(**entry))
        elif name == "pit.artifacts.ArtifactVersioned":
            _insert_once(conn, tables["artifact_versions"], {
                "store_id": event["envelope"]["entity_key"], "name": event["name"],
                "version": event["version"], "address": event["address"],
                "message": event["message"], "parent_version": event["parent_version"],
                "parent_address": event["parent_address"], "creator": event["creator"],
                "created_at_ms": at}, ("store_id", "name", "version"))
        elif name == "pit.artifacts.ArtifactLinked":
            _insert_once(conn, tables["artifact_links"], {
                "parent": event["parent"], "child": event["child"],
                "relation": event["relation"], "linked_at_ms": at},
                ("parent", "child", "relation"))
        elif name == "pit.artifacts.ArtifactAccessRecorded":
            _insert_once(conn, tables["artifact_access"], {
                "address": event["address"], "interval_start_ms": event["interval_start"],
                "interval_end_ms": event["interval_end"], "count": event["count"]},
                ("address", "interval_start_ms", "interval_end_ms"))
            conn.execute(artifacts.update().where(artifacts.c.address == event["address"])
                         .values(accesses=event["total"], updated_at_ms=at))
        elif name == "pit.artifacts.ArtifactQualityScored":
            conn.execute(artifacts.update().where(artifacts.c.address == event["address"])
                         .values(quality=event["score"], utility=event["utility"],
                                 derivations=event["derivations"], updated_at_ms=at))
        elif name == "pit.artifacts.ArtifactRemoved":
            conn.execute(artifacts.update().where(artifacts.c.address == event["address"])
                         .values(removed=True, removed_reason=event["reason"],
                                 updated_at_ms=at))


# --- readers --------------------------------------------------------------------------------

def _row(row: Any) -> dict[str, Any]:
    found = dict(row._mapping)
    for name in ("tags", "creators", "metadata", "metadata_conflicts", "producers",
                 "structure_issues"):
        found[name] = json.loads(found[name])
    return found


def projected(engine: Engine) -> bool:
    """Whether the views exist yet (a Pit whose projector never ran has none): every reader
    below answers "nothing" without them."""
    return inspect(engine).has_table("artifacts")


def artifact(engine: Engine, address: str) -> dict[str, Any] | None:
    if not projected(engine):
        return None
    table = live_tables(ArtifactsView())["artifacts"]
    with engine.connect() as conn:
        row = conn.execute(select(table).where(table.c.address == address)).first()
    return None if row is None else _row(row)


def versions(engine: Engine, name: str, store_id: str = "default") -> list[dict[str, Any]]:
    """A named artifact's versions, oldest first."""
    if not projected(engine):
        return []
    table = live_tables(ArtifactsView())["artifact_versions"]
    with engine.connect() as conn:
        rows = conn.execute(select(table).where(table.c.store_id == store_id,
                                                table.c.name == name)
                            .order_by(table.c.version)).all()
    return [dict(row._mapping) for row in rows]


def resolve(engine: Engine, ref: str, store_id: str = "default") -> str:
    """The address `ref` names: an address itself, "name" (its latest version) or
    "name@N"."""
    if ref.startswith("sha256:"):
        return ref
    name, _, number = ref.rpartition("@") if "@" in ref else (ref, "", "")
    found = versions(engine, name, store_id)
    if not found:
        raise ArtifactNotFoundError(f"no artifact named {name!r}")
    if not number:
        return found[-1]["address"]
    if not number.isdigit():
        raise ArtifactNotFoundError(f"{ref!r}: a version is a number (name@3)")
    for version in found:
        if version["version"] == int(number):
            return version["address"]
    raise ArtifactNotFoundError(f"{name!r} has versions 1..{found[-1]['version']}, not "
                                f"{number}")


def lineage(engine: Engine, address: str, direction: str = "both"
            ) -> dict[str, list[str] | list[dict[str, str]]]:
    """The lineage graph around `address`: its ancestors ("up"), descendants ("down") or
    both, as {"nodes": [...addresses], "edges": [{parent, child, relation}]}."""
    table = live_tables(ArtifactsView())["artifact_links"]
    nodes, edges, seen = {address}, set(), set()
    if not projected(engine):
        return {"nodes": [address], "edges": []}
    frontier = [(address, way) for way in (("up", "down") if direction == "both"
                                             else (direction,))]
    with engine.connect() as conn:
        while frontier:
            current, way = frontier.pop()
            if (current, way) in seen:
                continue
            seen.add((current, way))
            column = table.c.child if way == "up" else table.c.parent
            for row in conn.execute(select(table).where(column == current)):
                edges.add((row.parent, row.child, row.relation))
                other = row.parent if way == "up" else row.child
                nodes.add(other)
                frontier.append((other, way))
    return {"nodes": sorted(nodes),
            "edges": [{"parent": p, "child": c, "relation": r} for p, c, r in sorted(edges)]}


def store_stats(engine: Engine, store_id: str = "default") -> dict[str, Any]:
    """Deduplication statistics: total stored, unique stored, bytes saved, dedup ratio."""
    if not projected(engine):
        return {"total_stored": 0, "unique_stored": 0, "bytes_saved": 0, "dedup_ratio": 1.0}
    table = live_tables(ArtifactsView())["artifacts"]
    with engine.connect() as conn:
        total, unique, logical, unique_bytes = conn.execute(select(
            func.coalesce(func.sum(table.c.stores), 0), func.count(),
            func.coalesce(func.sum(table.c.stores * table.c.size), 0),
            func.coalesce(func.sum(table.c.size), 0)).where(table.c.store_id == store_id)).one()
    # PostgreSQL's SUM of integers is a Decimal, which JSON cannot hold: ints first
    logical, unique_bytes = int(logical), int(unique_bytes)
    return {"total_stored": int(total), "unique_stored": int(unique),
            "bytes_saved": logical - unique_bytes,
            "dedup_ratio": round(logical / unique_bytes, 4) if unique_bytes else 1.0}


# --- search -----------------------------------------------------------------------------------

class ArtifactSearchView(View):
    """`artifact_search`: the artifact search index (projections/search/: SQLite FTS5, or
    PostgreSQL full text when the views live there), written in the projector's transaction
    so index rows commit with its positions, and mirrored to OpenSearch when
    PIT_OPENSEARCH_URL is set (searches then go there). A cataloged artifact is (re)indexed with its
    name (the latest it was versioned under), tags, creators, metadata and, for text-like
    content, the text of its blob (the first TEXT_LIMIT characters); a removed one leaves the
    index. Its tables are the search backend's own (an FTS5 table is no SQLAlchemy Table),
    so `pit replay artifact_search` rebuilds it in place: reset and re-indexed in one
    transaction, the old index served until it commits."""

    name = "artifact_search"
    topics = (ARTIFACT_EVENTS,)
    table_names = ()
    in_place = True
    TEXT_BYTES = 1 << 20  # read from a blob for its text at most

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings
        self._blobs: BlobBackend | None = None  # opened by the first text read
        self._opensearch: OpenSearchSearch | None = None

    def define(self, metadata: MetaData, suffix: str = "", token: str = "") -> dict[str, Table]:
        return {}

    def backend(self, conn: Connection) -> SqlSearch:
        from projections.search import sql_search

        search = sql_search(conn)
        # Checked in every transaction: one that created the index may have rolled back.
        if not inspect(conn).has_table(search.facets.name):
            search.ensure()
        return search

    def mirror(self) -> OpenSearchSearch | None:
        """OpenSearch, when configured: every write of the embedded index is repeated there
        (bulk upserts by address, so a redelivered batch changes nothing)."""
        from streams.artifacts.settings import ArtifactSettings
        from streams.config import Settings

        settings = ArtifactSettings.of(self.settings or Settings.from_env())
        if settings.opensearch_url and self._opensearch is None:
            from projections.search.opensearch import OpenSearchSearch

            self._opensearch = OpenSearchSearch(settings.opensearch_url,
                                                index=settings.opensearch_index)
            self._mirrored(self._opensearch.ensure)
        return self._opensearch

    @staticmethod
    def _mirrored(write: Callable[..., object], *args: object) -> None:
        """An unreachable OpenSearch holds the projector back (it keeps the batch and tries
        again), so no index update is lost."""
        try:
            write(*args)
        except SearchError as exc:
            raise DatabaseUnavailableError(str(exc)) from None

    def reset(self, conn: Connection) -> None:
        self.backend(conn).reset()
        if (mirror := self.mirror()) is not None:
            self._mirrored(mirror.reset)

    def _text(self, address: str, content_type: str) -> str:
        from streams.artifacts.quality import content_kind
        from streams.artifacts.storage import artifact_store
        from streams.config import Settings

        if content_kind(content_type) == "unknown":
            return ""
        if self._blobs is None:
            self._blobs = artifact_store(self.settings or Settings.from_env())
        taken, size = [], 0
        try:
            for chunk in self._blobs.stream(address):
                taken.append(chunk)
                size += len(chunk)
                if size >= self.TEXT_BYTES:
                    break
        except PitError as exc:  # not here (another machine's store) or unreadable
            log.warning("search: %s indexed without its text: %s", address, exc)
        return b"".join(taken)[:self.TEXT_BYTES].decode("utf-8", errors="replace")

    def apply_batch(self, conn: Connection, tables: dict[str, Table],
                    events: Sequence[tuple[Decoded, LogRecord]]) -> None:
        from projections.search import SearchDoc

        search = self.backend(conn)
        docs: dict[str, SearchDoc] = {}
        removed: set[str] = set()

        def current(address: str) -> SearchDoc | None:
            if address in docs:
                return docs[address]
            row = conn.execute(select(search.docs).where(
                search.docs.c.address == address)).first()
            if row is None:
                return None
            return SearchDoc(address, row.name, row.content_type, tuple(json.loads(row.tags)),
                             row.created_at_ms, self._text(address, row.content_type),
                             json.loads(row.metadata_json), tuple(json.loads(row.creators)))

        for decoded, _record in events:
            event, kind = decoded.record, decoded.name
            if kind in CATALOGED:
                known = current(event["address"])
                metadata = {key: value if isinstance(value, str) else json.dumps(value)
                            for key, value in json.loads(event["metadata"]).items()}
                docs[event["address"]] = SearchDoc(
                    event["address"], known.name if known else "", event["content_type"],
                    tuple(event["tags"]),
                    known.created_at_ms if known else event["envelope"]["occurred_at"],
                    known.text if known else self._text(event["address"],
                                                        event["content_type"]),
                    metadata, tuple(event["creators"]))
                removed.discard(event["address"])
            elif kind == "pit.artifacts.ArtifactVersioned":
                known = current(event["address"])
                if known is not None:
                    docs[event["address"]] = dataclasses.replace(known, name=event["name"])
            elif kind == "pit.artifacts.ArtifactRemoved":
                docs.pop(event["address"], None)
                removed.add(event["address"])
        mirror = self.mirror()
        if docs:
            search.index(list(docs.values()))
            if mirror is not None:
                self._mirrored(mirror.index, list(docs.values()))
        if removed:
            search.remove(removed)
            if mirror is not None:
                self._mirrored(mirror.remove, removed)
