"""A topic's whole history: the audit archive first, then whatever Kafka holds beyond it.

Kafka may no longer hold the beginning (retention, or the embedded broker's 5 MiB window);
the archive does. Reading both, in offset order per partition, gives every record once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from sqlalchemy import Engine

from streams.config import Settings
from streams.errors import PitError
from streams.kafka import log_start_offsets, read_partitions
from streams.log import LogRecord

BATCH = 5000


async def read_history(settings: Settings, engine: Engine | None, topic: str,
                       partitions: Iterable[int]) -> AsyncIterator[list[LogRecord]]:
    partitions = sorted(partitions)
    wanted = set(partitions)
    archived_up_to: dict[int, int] = {}
    if engine is not None:
        from projections.audit import archived_records

        batch: list[LogRecord] = []
        for record in archived_records(engine, [topic]):
            if record.partition in wanted:
                batch.append(record)
                archived_up_to[record.partition] = record.offset
                if len(batch) >= BATCH:
                    yield batch
                    batch = []
        if batch:
            yield batch
    log_starts = await log_start_offsets(settings, topic, partitions)
    for partition, log_start in log_starts.items():
        next_needed = archived_up_to.get(partition, -1) + 1
        if next_needed < log_start:
            raise PitError(
                f"history of {topic}[{partition}] is incomplete: the log starts at offset "
                f"{log_start} and the archive ends before {next_needed}")
    start = {p: archived_up_to[p] + 1 for p in archived_up_to}
    async for records in read_partitions(settings, topic, partitions, start):
        yield records
