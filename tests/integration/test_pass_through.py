"""`pit bench backbone`'s ceiling for the processor (`streams.bench.pass_through`): the
processor's I/O without its decision, so it must do all of that I/O - two records written
for each command read, and every command committed."""

from __future__ import annotations

from aiokafka import TopicPartition

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.bench import PASS_THROUGH_GROUP, lifecycle_commands, pass_through
from streams.broker import EmbeddedBroker
from streams.config import Settings
from streams.kafka import make_producer, partitions_of, produce_all, start_consumer, topic_size
from streams.pool.topics import POOL_COMMANDS, POOL_EVENTS
from streams.topics import RESULTS, load_catalog


async def test_the_pass_through_writes_an_event_and_an_outcome_per_command_and_commits() -> None:
    n = 3_000
    with EmbeddedBroker(1) as broker:
        broker.apply(load_catalog())
        settings = Settings(bootstrap_servers=broker.bootstrap_servers)
        commands = lifecycle_commands(Codec(EmbeddedRegistry()), n)
        await produce_all(make_producer(settings), commands)

        assert await pass_through(settings, n) > 0

        assert await topic_size(settings, POOL_EVENTS) == n
        assert await topic_size(settings, RESULTS) == n
        group = await start_consumer(settings, group_id=PASS_THROUGH_GROUP)
        try:
            tps = [TopicPartition(POOL_COMMANDS, p)
                   for p in await partitions_of(group, POOL_COMMANDS)]
            ends = await group.end_offsets(tps)
            assert {tp: await group.committed(tp) or 0 for tp in tps} == ends
        finally:
            await group.stop()
