"""The Artifact Store as a client uses it (`PitClient.artifacts` and `pit artifact`).

Storing writes the content to the blob store first (streams/artifacts/storage.py: local
files or S3, encrypted when a keyring is configured), checks its structure while the bytes
are at hand (quality.py), then sends `StoreArtifact` with the address - events carry the
hash, never the bytes - and waits for the catalog's outcome and for the `artifacts` view to
show it, so a read right after a store finds it. Reads resolve a reference (an address,
"name" for the latest version, or "name@N") through the views, stream the content from the
blob store (verified against its address on the way) and count the access; counts are sent
aggregated per interval (`RecordArtifactAccess`), never one event per read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mimetypes
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from sqlalchemy import Engine

from projections import artifacts as views
from projections.search import SearchPage, SearchQuery
from streams.artifacts.catalog import (
    DEFAULT_CONTENT_TYPE,
    DEFAULT_STORE,
    LinkArtifacts,
    RecordArtifactAccess,
    RemoveArtifact,
    StoreArtifact,
    canonical_json,
)
from streams.artifacts.diff import metadata_diff, text_diff
from streams.artifacts.errors import ArtifactError, ArtifactNotFoundError
from streams.artifacts.quality import Structure, structure
from streams.artifacts.settings import ArtifactSettings
from streams.artifacts.storage import BlobBackend, Stored, artifact_store
from streams.errors import BrokerUnavailableError

if TYPE_CHECKING:
    from streams.commands import CommandClient
    from streams.config import Settings

STRUCTURE_LIMIT = 16 << 20  # content checked for structure up to this size (it is read whole)
VISIBLE_TIMEOUT_S = 10.0
ACCESS_INTERVAL_S = 60.0


@dataclass(frozen=True)
class StoredArtifact:
    address: str
    size: int
    newly_stored: bool  # False: the content was there already (deduplicated)
    name: str | None = None


def search_artifacts(settings: Settings, engine: Engine, query: SearchQuery) -> SearchPage:
    """`query` against the configured engine: OpenSearch when PIT_OPENSEARCH_URL names one,
    else the SQL view's own index (empty before the view exists)."""
    found = ArtifactSettings.of(settings)
    if found.opensearch_url:
        from projections.search.opensearch import OpenSearchSearch

        return OpenSearchSearch(found.opensearch_url, index=found.opensearch_index
                                ).search(query)
    if not views.projected(engine):
        return SearchPage(0, (), {"tags": {}, "content_types": {}})
    from projections.search.sql import sql_search  # numpy: only a search needs it

    return sql_search(engine).search(query)


@dataclass(frozen=True)
class _Entry:
    """A view row as diff.Described."""
    size: int
    content_type: str
    tags: tuple[str, ...]
    metadata: dict[str, Any]


@dataclass
class AccessCounter:
    """Reads per artifact since `started_ms`; sent as one command per interval."""
    interval_s: float = ACCESS_INTERVAL_S
    counts: Counter = field(default_factory=Counter)
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def due(self, now_ms: int) -> bool:
        return bool(self.counts) and now_ms - self.started_ms >= self.interval_s * 1000

    def take(self, now_ms: int) -> RecordArtifactAccess | None:
        if not self.counts:
            return None
        command = RecordArtifactAccess(dict(self.counts), self.started_ms, max(
            now_ms, self.started_ms + 1))
        self.counts, self.started_ms = Counter(), now_ms
        return command


class ArtifactOps:
    """Per client: its blob backend, its views engine, its access counts."""

    def __init__(self, client: CommandClient, backend: BlobBackend | None = None) -> None:
        self.client = client
        self._backend = backend
        self.access = AccessCounter()
        self._engine: Engine | None = None
        client.at_close(self.close)

    @property
    def backend(self) -> BlobBackend:
        """Opened on first use: a read of the views (`pit artifact info`) needs no blob store
        (with S3, a boto3 client)."""
        if self._backend is None:
            self._backend = artifact_store(self.client.settings)
        return self._backend

    async def close(self) -> None:
        """Send the access counts still held, when the client can."""
        if self.client.connected:
            from aiokafka.errors import KafkaError

            with contextlib.suppress(KafkaError, BrokerUnavailableError):
                await self.flush_access()

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from streams.sql import connect

            self._engine = connect(self.client.settings.db_url)
        return self._engine

    # --- writing ---------------------------------------------------------------------------

    async def store(self, content: bytes | str | os.PathLike, *, name: str | None = None,
                    content_type: str | None = None, tags: list[str] | tuple[str, ...] = (),
                    creator: str | None = None, metadata: dict[str, Any] | None = None,
                    message: str = "", derived_from: list[str] | tuple[str, ...] = (),
                    schema: dict[str, Any] | None = None, execution_id: str = "",
                    node_id: str = "", store_id: str = DEFAULT_STORE,
                    timeout: float = 30.0) -> StoredArtifact:
        """Store `content` (bytes, or a file path: streamed) with its metadata."""
        source = content if isinstance(content, bytes) else Path(content)
        if isinstance(source, Path) and not source.is_file():
            raise ArtifactError(f"no such file: {source}")
        if content_type is None:
            guessed = mimetypes.guess_type(source.name)[0] if isinstance(source, Path) else None
            content_type = guessed or DEFAULT_CONTENT_TYPE
        parents = [await self.resolve(ref, store_id) for ref in derived_from]
        stored, checked = await asyncio.to_thread(self._write, source, content_type, schema)
        command = StoreArtifact(
            stored.address, stored.size, content_type, name, message, list(tags),
            creator if creator is not None else self.client.issued_by,
            canonical_json(metadata or {}), parents, execution_id, node_id,
            None if checked is None else checked.score,
            [] if checked is None else list(checked.issues), store_id)
        outcome = await self.client.send(command, timeout=timeout)
        if not outcome.accepted:
            raise ArtifactError(f"artifact {stored.address} not cataloged: {outcome.reason}")
        await self._visible(stored.address, outcome.decided_at)
        return StoredArtifact(stored.address, stored.size, stored.newly_stored, name)

    def _write(self, source: bytes | Path, content_type: str, schema: dict[str, Any] | None
               ) -> tuple[Stored, Structure | None]:
        if isinstance(source, Path) and source.stat().st_size <= STRUCTURE_LIMIT:
            source = source.read_bytes()  # read once: checked and stored from memory
        elif isinstance(source, Path):  # too large to check: streamed, never whole in memory
            with source.open("rb") as f:
                return self.backend.store(f), None
        return self.backend.store(source), structure(source, content_type, schema)

    async def _visible(self, address: str, decided_at: int) -> None:
        """Until the `artifacts` view shows the store decided at `decided_at` (so a read
        right after it finds it); gives up quietly after VISIBLE_TIMEOUT_S (the views
        may be elsewhere or behind: the store itself has succeeded)."""
        def shown() -> bool:
            entry = views.artifact(self.engine, address)
            return bool(entry and entry["updated_at_ms"] >= decided_at)

        deadline = time.monotonic() + VISIBLE_TIMEOUT_S
        while time.monotonic() < deadline and not await asyncio.to_thread(shown):
            await asyncio.sleep(0.02)

    async def link(self, child: str, parent: str, relation: str = "derived_from",
                   store_id: str = DEFAULT_STORE) -> None:
        child, parent = await self.resolve(child, store_id), await self.resolve(parent,
                                                                                store_id)
        outcome = await self.client.send(LinkArtifacts(child, parent, relation, store_id))
        if not outcome.accepted:
            raise ArtifactError(f"cannot link {child} to {parent}: {outcome.reason}")

    async def remove(self, ref: str, reason: str = "", store_id: str = DEFAULT_STORE) -> None:
        address = await self.resolve(ref, store_id)
        outcome = await self.client.send(RemoveArtifact(address, reason, store_id))
        if not outcome.accepted:
            raise ArtifactError(f"cannot remove {address}: {outcome.reason}")

    # --- reading ---------------------------------------------------------------------------

    async def resolve(self, ref: str, store_id: str = DEFAULT_STORE) -> str:
        if ref.startswith("sha256:"):
            return ref
        return await asyncio.to_thread(views.resolve, self.engine, ref, store_id)

    @overload
    async def retrieve(self, ref: str, *, to: None = None,
                       store_id: str = DEFAULT_STORE) -> bytes: ...
    @overload
    async def retrieve(self, ref: str, *, to: str | os.PathLike,
                       store_id: str = DEFAULT_STORE) -> Path: ...

    async def retrieve(self, ref: str, *, to: str | os.PathLike | None = None,
                       store_id: str = DEFAULT_STORE) -> bytes | Path:
        """The content `ref` names, verified; written to the file `to` (streamed, atomic)
        when given, and then its path is returned."""
        address = await self.resolve(ref, store_id)
        data: bytes | Path
        if to is None:
            data = await asyncio.to_thread(self.backend.get, address)
        else:
            data = await asyncio.to_thread(self._stream_to, address, Path(to))
        await self._count(address)
        return data

    def _stream_to(self, address: str, target: Path) -> Path:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in self.backend.stream(address):  # raises before the rename
                    f.write(chunk)
            os.replace(name, target)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return target

    async def _count(self, address: str) -> None:
        self.access.counts[address] += 1
        if self.access.due(int(time.time() * 1000)):
            await self.flush_access()

    async def flush_access(self) -> None:
        """Send the access counts gathered so far (closing the client does this too)."""
        command = self.access.take(int(time.time() * 1000))
        if command is not None:
            await self.client.publish(command)

    async def search(self, text: str = "", **filters: Any) -> SearchPage:
        """Full text over content and metadata; filters: tags, content_types,
        created_from_ms, created_to_ms, limit, offset."""
        query = SearchQuery(text=text, **filters)
        return await asyncio.to_thread(search_artifacts, self.client.settings, self.engine,
                                       query)

    async def info(self, ref: str, store_id: str = DEFAULT_STORE) -> dict[str, Any]:
        address = await self.resolve(ref, store_id)
        found = await asyncio.to_thread(views.artifact, self.engine, address)
        if found is None:
            raise ArtifactNotFoundError(f"unknown artifact {address}")
        return found

    async def versions(self, name: str, store_id: str = DEFAULT_STORE) -> list[dict[str, Any]]:
        found = await asyncio.to_thread(views.versions, self.engine, name, store_id)
        if not found:
            raise ArtifactNotFoundError(f"no artifact named {name!r}")
        return found

    async def diff(self, old: str, new: str, *, metadata: bool = False,
                   store_id: str = DEFAULT_STORE) -> str:
        """The unified diff from `old` to `new` (text artifacts), or with `metadata` the
        differences of their metadata, tags, content type and size, one per line."""
        if metadata:
            before, after = await self.info(old, store_id), await self.info(new, store_id)
            entries = [_Entry(e["size"], e["content_type"], tuple(e["tags"]), e["metadata"])
                       for e in (before, after)]
            return "".join(line + "\n" for line in metadata_diff(*entries).lines())
        a, b = await self.resolve(old, store_id), await self.resolve(new, store_id)
        contents = await asyncio.gather(asyncio.to_thread(self.backend.get, a),
                                        asyncio.to_thread(self.backend.get, b))
        return text_diff(*contents, old_label=old, new_label=new)

    async def lineage(self, ref: str, direction: str = "both",
                      store_id: str = DEFAULT_STORE) -> dict[str, Any]:
        if direction not in ("up", "down", "both"):
            raise ArtifactError(f"direction is up, down or both, not {direction!r}")
        address = await self.resolve(ref, store_id)
        return await asyncio.to_thread(views.lineage, self.engine, address, direction)

    async def stats(self, store_id: str = DEFAULT_STORE) -> dict[str, Any]:
        return await asyncio.to_thread(views.store_stats, self.engine, store_id)


def describe(entry: dict[str, Any]) -> list[str]:
    """An artifact's catalog entry as lines for `pit artifact info`."""
    quality = "unscored" if entry["quality"] is None else (
        f"{entry['quality']:.2f} (structure {entry['structure']}, utility {entry['utility']})")
    return [f"{entry['address']}  {entry['size']:,} bytes  {entry['content_type']}",
            f"  tags: {', '.join(entry['tags']) or '-'}",
            f"  creators: {', '.join(entry['creators']) or '-'}",
            f"  metadata: {json.dumps(entry['metadata'], sort_keys=True)}",
            f"  stored {entry['stores']}x, accessed {entry['accesses']}x, quality {quality}"
            + (f"  REMOVED: {entry['removed_reason']}" if entry["removed"] else "")]


__all__ = ["AccessCounter", "ArtifactOps", "Stored", "StoredArtifact", "describe"]
