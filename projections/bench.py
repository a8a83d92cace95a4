"""Projection benchmarks for `pit bench`: events/s through the projector and through a replay.

The records are real: ModelTransitioned events encoded by the Codec in the Confluent
framing, cycling models through Cold -> Warming -> Hot -> Cooling -> Cold, spread over the
8 partitions of pit.pool.events. Only applying them is timed (decode, audit chain, views,
positions, commit), in batches of `batch_size` like `run` reads them from Kafka.

Every view the caller passes (`pit bench`: all of the registry's) is applied, as in
`pit up`; the replay rebuilds the models view among them.

The benchmark writes into the database it is given: use a throwaway one (`bench_sqlite`
makes a temporary file, `bench_postgres` a temporary schema it drops afterwards).
`bench_projections` is what `pit bench` calls.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, text

from projections.runtime import Projector, View, create_schema, view_by_name
from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.errors import DatabaseUnavailableError
from streams.log import LogRecord
from streams.pool.topics import POOL_EVENTS
from streams.sql import connect

if TYPE_CHECKING:
    from streams.config import Settings

log = logging.getLogger(__name__)

_CYCLE = [("Cold", "Warming", "UserRequest"), ("Warming", "Hot", "UserRequest"),
          ("Hot", "Cooling", "ScheduledCooldown"), ("Cooling", "Cold", "AutomaticTimeout")]


def transition_records(n: int, *, models: int = 1000, partitions: int = 8,
                       start_ms: int = 1_700_000_000_000, codec: Codec | None = None
                       ) -> list[LogRecord]:
    """`n` encoded ModelTransitioned records as they would sit in pit.pool.events."""
    codec = codec or Codec(EmbeddedRegistry())
    offsets = [0] * partitions
    sequences: dict[str, int] = {}
    records = []
    for i in range(n):
        model_id = f"model-{i % models:05d}"
        sequence = sequences[model_id] = sequences.get(model_id, 0) + 1
        source, target, reason = _CYCLE[(sequence - 1) % len(_CYCLE)]
        at_ms = start_ms + i
        value = codec.encode("pit.pool.ModelTransitioned", {
            "envelope": {
                "event_id": f"{model_id}-{sequence}", "event_type": "ModelTransitioned",
                "entity_key": model_id, "sequence": sequence, "correlation_id": f"c-{i}",
                "causation_id": f"cmd-{i}", "occurred_at": at_ms, "producer": "bench",
            },
            "model_id": model_id, "from_state": source, "to_state": target, "reason": reason,
            "time_in_previous_ms": 0 if sequence == 1 else models, "metadata": {},
        })
        partition = zlib.crc32(model_id.encode()) % partitions
        records.append(LogRecord(POOL_EVENTS, partition, offsets[partition], at_ms,
                                 model_id.encode(), value))
        offsets[partition] += 1
    return records


def _batches(records: list[LogRecord], size: int) -> Iterator[list[LogRecord]]:
    for start in range(0, len(records), size):
        yield records[start:start + size]


def measure_throughput(engine: Engine, views: Sequence[View], n: int = 50_000, *,
                       batch_size: int = 5000) -> float:
    """Events/s of `Projector.apply_batch` over `n` fresh ModelTransitioned records."""
    create_schema(engine)
    records = transition_records(n)
    projector = Projector(engine, views)
    started = time.perf_counter()
    for batch in _batches(records, batch_size):
        projector.apply_batch(batch)
    return n / (time.perf_counter() - started)


def measure_replay(engine: Engine, views: Sequence[View], n: int = 50_000) -> float:
    """Events/s of `rebuild('models')` from the archive (after projecting `n` records)."""
    from projections.replay import rebuild
    from streams.archive import archive_positions
    from streams.history import history_source

    if not archive_positions(engine):
        measure_throughput(engine, views, n)
    started = time.perf_counter()
    models = view_by_name("models", views)
    report = rebuild(engine, models, history_source(engine, [POOL_EVENTS]))
    return report.records / (time.perf_counter() - started)


def bench_sqlite(views: Sequence[View], n: int = 50_000) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="pit-bench-") as tmp:
        engine = connect(f"sqlite:///{Path(tmp) / 'bench.db'}")
        try:
            return {"projection_events_per_s_sqlite": measure_throughput(engine, views, n),
                    "replay_events_per_s": measure_replay(engine, views, n)}
        finally:
            engine.dispose()


def bench_postgres(url: str, views: Sequence[View], n: int = 50_000) -> dict[str, float]:
    """In a temporary schema of the database at `url`, dropped afterwards."""
    schema = f"pit_bench_{uuid.uuid4().hex[:10]}"
    admin = connect(url)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        separator = "&" if "?" in url else "?"
        engine = connect(f"{url}{separator}options=-csearch_path%3D{schema}")
        try:
            return {"projection_events_per_s_postgres": measure_throughput(engine, views, n)}
        finally:
            engine.dispose()
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def postgres_bench_url(settings: Settings | None = None) -> str:
    """Where the PostgreSQL figure is measured: PIT_BENCH_POSTGRES_URL, else the configured
    database when it is PostgreSQL, else PIT_TEST_POSTGRES_URL, else the local test server."""
    configured = getattr(settings, "database_url", None) or ""
    return (os.environ.get("PIT_BENCH_POSTGRES_URL")
            or (configured if configured.startswith("postgresql") else "")
            or os.environ.get("PIT_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL)


async def bench_projections(scratch: Path, views: Sequence[View],
                            settings: Settings | None = None,
                            n: int = 50_000) -> dict[str, float | None]:
    """`pit bench` keys projection_events_per_s_sqlite, projection_events_per_s_postgres
    (None when no PostgreSQL answers) and replay_events_per_s, measured in worker threads
    on a SQLite file under `scratch` and in a temporary PostgreSQL schema."""
    import asyncio

    def sqlite() -> dict[str, float]:
        engine = connect(f"sqlite:///{Path(scratch) / 'bench-projections.db'}")
        try:
            return {"projection_events_per_s_sqlite": round(measure_throughput(engine, views, n)),
                    "replay_events_per_s": round(measure_replay(engine, views, n))}
        finally:
            engine.dispose()

    def postgres() -> dict[str, float | None]:
        try:
            figure = bench_postgres(postgres_bench_url(settings), views, n)
        except DatabaseUnavailableError as exc:
            log.warning("no PostgreSQL projection figure: %s", exc)
            return {"projection_events_per_s_postgres": None}
        return {key: round(value) for key, value in figure.items()}

    figures: dict[str, float | None] = {}
    figures |= await asyncio.to_thread(sqlite)
    figures |= await asyncio.to_thread(postgres)
    return figures
