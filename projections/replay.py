"""Replay: rebuild a view from the log into fresh tables, then swap them in.

`rebuild(engine, view, source, progress)`:

1. creates shadow tables (`models__rebuild`, `model_transitions__rebuild`) and starts the
   projection `models@rebuild` with no positions;
2. projects every record of `source` into them, batch by batch, each batch in its own
   transaction with the shadow positions (so an interrupted rebuild is simply restarted);
3. swaps inside one writer transaction (SQLite `BEGIN IMMEDIATE`, PostgreSQL a lock on
   `projection_positions`, which every projector takes too): first catches up with
   whatever the live projector archived meanwhile (the archive is written in the same
   transaction as the live view, so it always holds everything the view has seen), then
   drops the old tables, renames the shadow tables to the live names and moves the shadow
   positions to the view's name.

The old tables serve queries until the swap, and the swap is atomic, so readers see either
the old view or the new one. The live projector keeps running throughout: after the swap
it reads the new positions in its next transaction and skips what the rebuild applied.

The source is any iterable of `LogRecord`s. `history_source` gives the usual one: the
archive (which holds the log from offset 0 even after Kafka dropped old segments, as the
embedded broker does beyond ~5 MiB per partition), then anything newer from Kafka.

The audit log is not a view: it IS the archive replays read from, so it is never rebuilt.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

from sqlalchemy import Engine, MetaData, delete, update

from projections.runtime import Binding, View, create_schema, project, view_by_name
from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry, SchemaRegistry
from streams.archive import AUDIT, archive_count, archived_records, decode_entry
from streams.errors import PitError
from streams.history import history_source, kafka_log_reader
from streams.log import LogRecord
from streams.sql import load_positions, positions, quote, write_transaction

if TYPE_CHECKING:
    from streams.config import Settings

log = logging.getLogger(__name__)

SUFFIX = "__rebuild"
Progress = Callable[[int, int], None]


class ReplayError(PitError):
    """A replay cannot run or cannot finish (unknown view, audit log, history gaps)."""


@dataclass(frozen=True)
class RebuildReport:
    view: str
    records: int        # records read from the source
    caught_up: int      # records applied from the archive at swap time
    seconds: float
    swapped: bool = True

    @property
    def events_per_s(self) -> float:
        return (self.records + self.caught_up) / self.seconds if self.seconds else 0.0


def replayable_view(view_name: str, views: Sequence[View]) -> View:
    """The view named `view_name` among `views` (the registry's), if it can be rebuilt."""
    if view_name in (AUDIT, "audit_log"):
        raise ReplayError("the audit log is the archive replays read from, not a view; it is "
                          "never rebuilt (check it with `pit audit verify`)")
    try:
        return view_by_name(view_name, views)
    except PitError as exc:
        raise ReplayError(str(exc)) from None


def rebuild(engine: Engine, view: View, source: Iterable[LogRecord] | None = None,
            progress: Progress | None = None, *, batch_size: int = 5000,
            total: int | None = None, registry: SchemaRegistry | None = None
            ) -> RebuildReport:
    """Rebuild `view` from `source` (default: `history_source` over the view's topics)
    into shadow tables and swap them in once they have caught up with the live view.
    `progress(done, total)` is called after every batch (total is an estimate: the archived
    record count of the view's topics, raised to `done` when Kafka adds more)."""
    started = time.perf_counter()
    create_schema(engine)
    if view.in_place:
        return _rebuild_in_place(engine, view, source, report_to=progress or (lambda d, t: None),
                                 batch_size=batch_size, registry=registry, started=started)
    shadow_name = f"{view.name}@rebuild"
    shadow = view.define(MetaData(), suffix=SUFFIX, token=uuid.uuid4().hex[:8])
    with write_transaction(engine) as conn:
        for table in shadow.values():
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {quote(conn, table.name)}")
        for table in shadow.values():
            table.create(conn)
        conn.execute(delete(positions).where(positions.c.projection == shadow_name))
    binding = Binding(shadow_name, view, shadow)
    codec = Codec(registry or EmbeddedRegistry())
    if source is None:
        source = history_source(engine, view.topics)
    if total is None:
        total = archive_count(engine, view.topics)
    report = progress or (lambda done, total: None)
    done = 0
    report(0, total)
    iterator = iter(source)
    while batch := list(islice(iterator, batch_size)):
        entries = [decode_entry(codec, r) for r in batch if r.topic in view.topics]
        with write_transaction(engine) as conn:
            project(conn, entries, [binding], archive=False)
        done += len(batch)
        total = max(total, done)
        report(done, total)

    with write_transaction(engine) as conn:
        stored = load_positions(conn, [view.name, shadow_name])
        live, mine = stored[view.name], stored[shadow_name]
        caught_up = 0
        if any(offset > mine.get(tp, -1) for tp, offset in live.items()):
            missing = list(archived_records(conn, list(view.topics), after=mine))
            for start in range(0, len(missing), batch_size):
                chunk = missing[start:start + batch_size]
                project(conn, [decode_entry(codec, r) for r in chunk], [binding],
                        archive=False)
            caught_up = len(missing)
            mine = load_positions(conn, [shadow_name])[shadow_name]
            behind = [f"{topic}[{partition}] live {offset} rebuilt {mine.get((topic, partition))}"
                      for (topic, partition), offset in sorted(live.items())
                      if offset > mine.get((topic, partition), -1)]
            if behind:
                raise ReplayError(f"cannot catch up with the live view {view.name}: "
                                  f"{'; '.join(behind)} (the archive lacks those records)")
        for table in shadow.values():
            live_name = table.name[:-len(SUFFIX)]
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {quote(conn, live_name)}")
            conn.exec_driver_sql(
                f"ALTER TABLE {quote(conn, table.name)} RENAME TO {quote(conn, live_name)}")
        conn.execute(delete(positions).where(positions.c.projection == view.name))
        conn.execute(update(positions).where(positions.c.projection == shadow_name)
                     .values(projection=view.name))
    if caught_up:
        report(done + caught_up, max(total, done + caught_up))
    return RebuildReport(view.name, done, caught_up, time.perf_counter() - started)




def _rebuild_in_place(engine: Engine, view: View, source: Iterable[LogRecord] | None, *,
                      report_to: Progress, batch_size: int, registry: SchemaRegistry | None,
                      started: float) -> RebuildReport:
    """One writer transaction: the view reset, its positions dropped, every record projected
    again. Readers keep the old contents until it commits; the live projector waits for it
    and then skips what it applied."""
    codec = Codec(registry or EmbeddedRegistry())
    binding = Binding(view.name, view, {})
    done = 0
    with write_transaction(engine) as conn:
        view.reset(conn)
        conn.execute(delete(positions).where(positions.c.projection == view.name))
        if source is None:  # the archive, read on this connection inside the transaction
            source = archived_records(conn, list(view.topics))
        total = archive_count(engine, view.topics)
        report_to(0, total)
        iterator = iter(source)
        while batch := list(islice(iterator, batch_size)):
            entries = [decode_entry(codec, r) for r in batch if r.topic in view.topics]
            project(conn, entries, [binding], archive=False)
            done += len(batch)
            report_to(done, max(total, done))
    return RebuildReport(view.name, done, 0, time.perf_counter() - started)


async def rebuild_view(engine: Engine, settings: Settings, view_name: str, views: Sequence[View],
                       progress: Progress | None = None, *, timeout_s: float = 5.0) -> int:
    """`pit replay <view>`: rebuild one of `views` from the archive, then whatever Kafka
    holds beyond it (when a broker answers), in a worker thread; returns the number of
    records replayed."""
    view = replayable_view(view_name, views)

    def work() -> int:
        reader = kafka_log_reader(settings, view.topics, timeout_s=timeout_s, optional=True)
        report = rebuild(engine, view, history_source(engine, view.topics, reader), progress)
        return report.records + report.caught_up

    return await asyncio.to_thread(work)
