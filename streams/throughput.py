"""How many commands a decider's processor decides per second through the embedded broker,
as `pit up` runs it: consumed, decided, events produced (and archived first, with an
archive), outcomes produced, offsets committed. The `pit bench` parts of the components
measure with it; the figure is a report, not a test."""

from __future__ import annotations

import asyncio
import math
import tempfile
import time
import zlib
from collections.abc import Sequence
from typing import Any

from schemas.codec import Codec
from streams.archive import pending_engine
from streams.broker import catalog_broker
from streams.component import bench_note
from streams.config import Settings
from streams.decider import Decider, Message, to_record
from streams.kafka import make_producer, produce_all, topic_size
from streams.processor import ArchiveFirst, Output, Processor, Unarchived, run_processor
from streams.sql import connect, create_tables
from streams.topics import RESULTS, load_catalog


def command_outputs(decider: Decider[Any], codec: Codec, commands: Sequence[Message],
                    prefix: str = "bench") -> list[Output]:
    """The commands as records on the decider's command topic, each entity's on one
    partition, with command ids `<prefix>-<n>`."""
    partitions = load_catalog()[decider.command_topic].partitions
    now = int(time.time() * 1000)
    outputs = []
    for i, command in enumerate(commands):
        key = decider.entity_of(command).encode()
        meta = {"command_id": f"{prefix}-{i}", "issued_at": now, "issued_by": "bench",
                "correlation_id": None}
        outputs.append(Output(decider.command_topic, zlib.crc32(key) % partitions, key,
                              codec.encode(command.avro_name, {"meta": meta,
                                                               **to_record(command)}), now))
    return outputs


async def decided_per_second(decider: Decider[Any], codec: Codec, commands: Sequence[Message],
                             *, archive: bool = True) -> tuple[float, Processor]:
    """(commands decided per second, the processor, to check its state). `archive`: events
    go to a SQLite archive before they are published, as on the embedded default."""
    outputs = command_outputs(decider, codec, commands)
    with catalog_broker() as broker, tempfile.TemporaryDirectory() as scratch:
        settings = Settings(bootstrap_servers=broker.bootstrap_servers)
        bench_note(f"producing {len(outputs):,} {decider.name} commands")
        await produce_all(make_producer(settings, **{"linger.ms": 20}), outputs)
        processor = Processor(decider, codec)
        stop, ready = asyncio.Event(), asyncio.Event()
        engine = durable = None
        if archive:
            engine = connect(f"sqlite:///{scratch}/archive.db")
            create_tables(engine)
            # No projector runs here: nothing would ever be archived to wait for
            durable = ArchiveFirst(engine, pending_engine(engine),
                                   unarchived=Unarchived(limit=math.inf))
        task = asyncio.create_task(run_processor(processor, settings, engine, stop, ready,
                                                 archive_first=durable))
        await ready.wait()
        started = time.perf_counter()
        while await topic_size(settings, RESULTS) < len(outputs):
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        stop.set()
        await task
        if engine is not None and durable is not None:
            engine.dispose()
            durable.pending_db.dispose()
        bench_note(f"{decider.name} processor: {len(outputs):,} commands in {elapsed:.2f}s")
        return len(outputs) / elapsed, processor
