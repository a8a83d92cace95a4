"""`CommandClient.results` (`pit results`) through the embedded broker: `from_beginning`
reads every outcome already on pit.results even when the consumer's first offset reset is
answered late (the aiokafka race a `seek_to_beginning` lost, silently starting at the end);
without it, only the outcomes produced after it started."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import aclosing

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.broker import EmbeddedBroker
from streams.commands import CommandClient
from streams.config import Settings
from streams.kafka import make_producer, produce_all
from streams.processor import OUTCOME, Output
from streams.topics import RESULTS

LIST_OFFSETS = 2  # Kafka API key
PARTITIONS = 4  # of pit.results' 16, the outcomes go to these


@pytest.fixture
def client(broker: EmbeddedBroker) -> CommandClient:
    return CommandClient(Settings(bootstrap_servers=broker.bootstrap_servers),
                         codec=Codec(EmbeddedRegistry()))


def late(seek: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    async def seek_later(self: AIOKafkaConsumer, *partitions: TopicPartition) -> None:
        await asyncio.sleep(0.1)
        await seek(self, *partitions)

    return seek_later


async def produce_outcomes(client: CommandClient, ids: list[str]) -> None:
    outcome = {"command_type": "RegisterModel", "entity_key": "m", "status": "ACCEPTED",
               "duplicate": False, "reason": None, "event_ids": [], "decided_at": 1,
               "processor": "test", "command_offset": 0}
    await produce_all(make_producer(client.settings), [
        Output(RESULTS, n % PARTITIONS, command_id.encode(),
               client.codec.encode(OUTCOME, {**outcome, "command_id": command_id,
                                             "command_partition": n % PARTITIONS}),
               1_700_000_000_000 + n)
        for n, command_id in enumerate(ids)])


async def read(client: CommandClient, count: int, from_beginning: bool,
               more: bool = False) -> list[str]:
    """The first `count` outcomes' command ids; with `more`, new outcomes are produced
    until they have come (the reader's start is not observable from here, so no moment is
    assumed for it)."""
    seen: list[str] = []

    async def take() -> None:
        async with aclosing(client.results(from_beginning=from_beginning)) as outcomes:
            async for outcome in outcomes:
                seen.append(outcome.command_id)
                if len(seen) == count:
                    return

    reading = asyncio.create_task(take())
    batch = 0
    while more and not reading.done():
        await produce_outcomes(client, [f"after-{batch}"])
        batch += 1
        await asyncio.wait([reading], timeout=0.2)
    await asyncio.wait_for(reading, 20)
    return seen


async def test_from_the_beginning_even_with_an_offset_reset_in_flight(
        broker: EmbeddedBroker, client: CommandClient, monkeypatch) -> None:
    before = [f"before-{n}" for n in range(8)]
    await produce_outcomes(client, before)
    # A fresh assignment sends an offset reset ("latest"); answered late, it lands after
    # the consumer was positioned, and a seek_to_beginning then took the end. Whether the
    # reset is in flight by then depends on what runs between the assignment and the seek
    # (a busy loop, a metadata wait), so a seek_to_* here first lets it go out.
    broker.push_broker_request_errors(1, LIST_OFFSETS, [0] * 4, rtt_ms=500)
    for name in ("seek_to_beginning", "seek_to_end"):
        monkeypatch.setattr(AIOKafkaConsumer, name, late(getattr(AIOKafkaConsumer, name)))
    assert sorted(await read(client, len(before), from_beginning=True)) == sorted(before)


async def test_without_it_only_what_comes_after(client: CommandClient) -> None:
    await produce_outcomes(client, [f"before-{n}" for n in range(8)])
    seen = await read(client, 3, from_beginning=False, more=True)
    assert all(command_id.startswith("after-") for command_id in seen), seen
