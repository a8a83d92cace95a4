"""The same round trip on a real Kafka cluster: `PIT_TEST_KAFKA` (bootstrap servers), or a
testcontainers Kafka when a Docker engine answers. Skipped when neither exists (this
machine has no Docker engine; the embedded broker covers the protocol here)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.client import PitClient
from streams.config import Settings
from streams.pool.lifecycle import LIFECYCLE
from streams.processor import Processor, run_processor
from streams.topics import apply_to_cluster, load_catalog


@contextlib.contextmanager
def real_kafka() -> Iterator[str]:
    if os.environ.get("PIT_TEST_KAFKA"):
        yield os.environ["PIT_TEST_KAFKA"]
        return
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        pytest.skip("no PIT_TEST_KAFKA and no Docker engine for testcontainers Kafka")
    from testcontainers.kafka import KafkaContainer

    with KafkaContainer() as kafka:
        yield kafka.get_bootstrap_server()


async def test_round_trip_on_a_real_cluster() -> None:
    with real_kafka() as bootstrap:
        settings = Settings(bootstrap_servers=bootstrap)
        await apply_to_cluster(settings.kafka_client_options(), load_catalog())
        processor = Processor(LIFECYCLE, Codec(EmbeddedRegistry()))
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_processor(processor, settings, None, stop, ready))
        await asyncio.wait_for(ready.wait(), 60)
        try:
            async with PitClient(settings) as client:
                model = f"real-{uuid.uuid4().hex[:8]}"
                assert (await client.pool.warm_model(model, timeout=30)).accepted
                assert not (await client.pool.warm_model(model, timeout=30)).accepted
        finally:
            stop.set()
            await task
