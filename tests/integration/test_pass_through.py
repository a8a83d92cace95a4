"""`pit bench backbone`'s ceiling for the processor (`streams.bench.pass_through`): the
processor's I/O without its decision, so it must do all of that I/O - two records written
for each command read, and every command committed."""

from __future__ import annotations

from aiokafka import TopicPartition

from streams.bench import PASS_THROUGH_GROUP, commands_waiting, pass_through
from streams.kafka import partitions_of, start_consumer, topic_size
from streams.pool.topics import POOL_COMMANDS, POOL_EVENTS
from streams.topics import RESULTS


async def test_the_pass_through_writes_an_event_and_an_outcome_per_command_and_commits() -> None:
    n = 3_000
    async with commands_waiting(n) as settings:
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
