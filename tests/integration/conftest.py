"""Fixtures for the projection suites: every test runs on SQLite and on PostgreSQL; and
`broker`, an embedded broker with the catalog's topics, for the suites that need one.

PostgreSQL: `PIT_TEST_POSTGRES_URL` (default: the server on 127.0.0.1:5432, database
`test`). Each test gets a fresh schema (via search_path in the URL), dropped afterwards, so
runs never see each other's tables. An unreachable server FAILS the test: the same suite
must run on both databases.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest
from confluent_kafka import Producer
from sqlalchemy import Engine, text

from projections.runtime import create_schema
from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.broker import EmbeddedBroker, catalog_broker
from streams.components import views
from streams.errors import DatabaseUnavailableError
from streams.log import LogRecord
from streams.pool.lifecycle import DEFAULT_POOL as POOL
from streams.pool.topics import POOL_EVENTS
from streams.sql import connect
from streams.topics import RESULTS

POSTGRES_URL = os.environ.get("PIT_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _with_search_path(url: str, schema: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}"


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    """An embedded broker with the catalog's topics, for the test."""
    with catalog_broker() as broker:
        yield broker


@pytest.fixture(params=[pytest.param("sqlite", id="sqlite"),
                        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'pit.db'}"
        return
    try:
        admin = connect(POSTGRES_URL)
    except DatabaseUnavailableError as exc:
        pytest.fail(f"PostgreSQL tests cannot run (set PIT_TEST_POSTGRES_URL): {exc}")
    schema = f"pit_test_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _with_search_path(POSTGRES_URL, schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = connect(db_url)
    create_schema(engine, views())
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def codec() -> Codec:
    return Codec(EmbeddedRegistry())


@dataclass
class Log:
    """Builds encoded log records the way the processor writes them: real Avro, Confluent
    framing, per-entity sequences and per-partition offsets."""

    codec: Codec
    partitions: int = 8
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    sequences: dict[str, int] = field(default_factory=dict)

    def partition_of(self, key: str) -> int:
        return sum(key.encode()) % self.partitions

    def append(self, topic: str, key: str | bytes | None, value: bytes | None, at_ms: int,
               *, partition: int | None = None,
               headers: tuple[tuple[str, bytes], ...] = ()) -> LogRecord:
        key_bytes = key.encode() if isinstance(key, str) else key
        if partition is None and topic == POOL_EVENTS:
            partition = self.partition_of(POOL)  # all of a pool's events, on its partition
        elif partition is None:
            partition = self.partition_of(key) if isinstance(key, str) else 0
        offset = self.offsets.get((topic, partition), -1) + 1
        self.offsets[(topic, partition)] = offset
        return LogRecord(topic, partition, offset, at_ms, key_bytes, value, headers)

    def envelope(self, model_id: str, event_type: str, at_ms: int,
                 sequence: int | None = None) -> dict:
        """As the pool processor writes it: the pool is the entity, its sequence counts all
        the pool's events; the model is the event's subject (its Kafka key)."""
        if sequence is None:
            sequence = self.sequences[POOL] = self.sequences.get(POOL, 0) + 1
        return {"event_id": f"{model_id}:{sequence}", "event_type": event_type,
                "entity_key": POOL, "sequence": sequence,
                "correlation_id": f"corr-{model_id}-{sequence}",
                "causation_id": f"cmd-{model_id}-{sequence}", "occurred_at": at_ms,
                "producer": "test"}

    def transitioned(self, model_id: str, source: str, target: str, at_ms: int, *,
                     reason: str = "UserRequest", time_in_previous_ms: int = 0,
                     sequence: int | None = None) -> LogRecord:
        value = self.codec.encode("pit.pool.ModelTransitioned", {
            "envelope": self.envelope(model_id, "ModelTransitioned", at_ms, sequence),
            "model_id": model_id, "from_state": source, "to_state": target,
            "reason": reason, "time_in_previous_ms": time_in_previous_ms, "metadata": {},
        })
        return self.append(POOL_EVENTS, model_id, value, at_ms)

    def used(self, model_id: str, invocations: int, at_ms: int) -> LogRecord:
        value = self.codec.encode("pit.pool.ModelUsageRecorded", {
            "envelope": self.envelope(model_id, "ModelUsageRecorded", at_ms),
            "model_id": model_id, "invocations": invocations,
        })
        return self.append(POOL_EVENTS, model_id, value, at_ms)

    def outcome(self, command_id: str, model_id: str, at_ms: int) -> LogRecord:
        value = self.codec.encode("pit.Outcome", {
            "command_id": command_id, "command_type": "pit.pool.TransitionModel",
            "entity_key": model_id, "status": "ACCEPTED", "duplicate": False,
            "reason": None, "event_ids": [f"{model_id}:1"], "decided_at": at_ms,
            "processor": "test",
        })
        return self.append(RESULTS, command_id, value, at_ms)

    @staticmethod
    def publish(producer: Producer, records: Sequence[LogRecord]) -> None:
        """Produce `records` to a broker, each to its own topic and partition, every one
        acknowledged."""
        for record in records:
            producer.produce(record.topic, record.value, record.key, partition=record.partition,
                             timestamp=record.timestamp_ms)
        assert producer.flush(10) == 0


@pytest.fixture
def log(codec: Codec) -> Log:
    return Log(codec)


def lifecycle_story(log: Log, start_ms: int = 1_700_000_000_000) -> list[LogRecord]:
    """Two models: m-alpha goes Cold -> Warming -> Hot, serves, cools down; m-beta fails
    while warming and recovers."""
    t = start_ms
    return [
        log.transitioned("m-alpha", "Cold", "Warming", t + 0),
        log.transitioned("m-beta", "Cold", "Warming", t + 5, reason="PredictivePrewarm"),
        log.transitioned("m-alpha", "Warming", "Hot", t + 1_000, time_in_previous_ms=1_000),
        log.used("m-alpha", 3, t + 1_500),
        log.transitioned("m-beta", "Warming", "Failed", t + 2_000,
                         reason="HealthCheckFailure", time_in_previous_ms=1_995),
        log.used("m-alpha", 2, t + 2_500),
        log.transitioned("m-alpha", "Hot", "Cooling", t + 4_000, reason="ScheduledCooldown",
                         time_in_previous_ms=3_000),
        log.transitioned("m-beta", "Failed", "Cold", t + 6_000, reason="ErrorRecovery",
                         time_in_previous_ms=4_000),
    ]


@pytest.fixture
def story(log: Log) -> list[LogRecord]:
    """`lifecycle_story` on this test's log (test modules use fixtures, not imports)."""
    return lifecycle_story(log)


@pytest.fixture
def story_of():
    """`lifecycle_story` itself, for tests that shape their own log first."""
    return lifecycle_story


class Decided:
    """A component's processor without Kafka: each command is encoded, decided by
    `Processor.handle`, and its events kept as the log records a projector reads (on the
    command's partition, as the processor writes them)."""

    def __init__(self, decider, codec: Codec, partitions: int = 8,
                 now_ms: int = 1_700_000_000_000) -> None:
        from streams.processor import Processor

        self.decider, self.codec, self.partitions = decider, codec, partitions
        self.processor = Processor(decider, codec)
        self.records: list[LogRecord] = []
        self.now, self.commands = now_ms, 0
        self.offsets: dict[int, int] = {}

    def send(self, command, *, after_ms: int = 10) -> dict:
        """Decide `command`; returns its outcome record."""
        from streams.decider import to_record

        self.now += after_ms
        self.commands += 1
        meta = {"command_id": f"cmd-{self.commands}", "issued_at": self.now,
                "issued_by": "test", "correlation_id": None}
        value = self.codec.encode(command.avro_name, {"meta": meta, **to_record(command)})
        key = self.decider.entity_of(command).encode()
        partition = sum(key) % self.partitions
        outcome = None
        for out in self.processor.handle([LogRecord(self.decider.command_topic, partition,
                                                    self.commands, self.now, key, value)]):
            if out.topic == self.decider.event_topic:
                offset = self.offsets[out.partition] = self.offsets.get(out.partition, -1) + 1
                self.records.append(LogRecord(out.topic, out.partition, offset,
                                              out.timestamp_ms, out.key, out.value))
            elif out.topic == RESULTS:
                outcome = self.codec.decode(out.value).record
        return outcome

    def ok(self, command, **options) -> dict:
        outcome = self.send(command, **options)
        assert outcome["status"] == "ACCEPTED", outcome["reason"]
        return outcome


@pytest.fixture
def decided(codec: Codec):
    """`decided(decider)`: a `Decided` log for that decider."""
    return lambda decider, **options: Decided(decider, codec, **options)
