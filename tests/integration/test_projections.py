"""The projection runtime and the model views, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import struct
import time
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import OperationalError

from projections.api import make_app
from projections.models import ModelsView, lifecycle_of
from projections.runtime import Projector, View, live_tables, run
from streams.archive import AUDIT, audit_log
from streams.components import COMPONENTS, views
from streams.decider import from_record
from streams.errors import DatabaseUnavailableError
from streams.log import LogRecord
from streams.pool.lifecycle import LIFECYCLE, ModelState
from streams.pool.topics import POOL_EVENTS
from streams.sql import connect, positions
from streams.times import iso
from streams.topics import DEAD_LETTERS, SCHEMAS
from streams.waiting import until

T0 = 1_700_000_000_000


def tables() -> dict:
    return live_tables(ModelsView())


def models(engine: Engine) -> dict[str, dict]:
    table = tables()["models"]
    with engine.connect() as conn:
        return {row["model_id"]: dict(row) for row in conn.execute(select(table)).mappings()}


def transitions(engine: Engine) -> list[dict]:
    table = tables()["model_transitions"]
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(
            select(table).order_by(table.c.model_id, table.c.sequence)).mappings()]


def count(engine: Engine, table) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def all_positions(engine: Engine) -> dict:
    with engine.connect() as conn:
        return {(p, t, n): o for p, t, n, o in conn.execute(select(positions))}


def fold(records: list[LogRecord], codec, model_id: str):
    """The decider's own answer: evolve folded over the model's events."""
    state = LIFECYCLE.initial_state(model_id)
    for record in records:
        decoded = codec.decode(record.value)
        if decoded.record["model_id"] != model_id:
            continue
        event = from_record(LIFECYCLE.event_type(decoded.name), decoded.record)
        state = LIFECYCLE.evolve(state, event, decoded.record["envelope"]["occurred_at"])
    return state


def test_views_are_built_from_encoded_events(engine: Engine, story, codec) -> None:
    records = story
    result = Projector(engine, views()).apply_batch(records)
    assert result.archived == len(records)
    assert result.applied["models"] == len(records)

    rows = models(engine)
    alpha, beta = rows["m-alpha"], rows["m-beta"]
    assert alpha["state"] == "Cooling"
    assert alpha["entered_at_ms"] == T0 + 4_000
    assert (alpha["transition_count"], alpha["failure_count"], alpha["usage_count"]) == (3, 0, 5)
    assert alpha["last_used_ms"] == T0 + 2_500
    assert alpha["last_sequence"] == 7 and alpha["updated_at_ms"] == T0 + 4_000  # pool seq
    assert beta["state"] == "Cold"
    assert (beta["transition_count"], beta["failure_count"], beta["usage_count"]) == (3, 1, 0)
    # the rows are exactly the decider's fold of the events
    for model_id in ("m-alpha", "m-beta"):
        assert lifecycle_of(rows[model_id]) == fold(records, codec, model_id)

    history = transitions(engine)
    assert [(t["model_id"], t["from_state"], t["to_state"]) for t in history] == [
        ("m-alpha", "Cold", "Warming"), ("m-alpha", "Warming", "Hot"),
        ("m-alpha", "Hot", "Cooling"), ("m-beta", "Cold", "Warming"),
        ("m-beta", "Warming", "Failed"), ("m-beta", "Failed", "Cold")]
    failed = history[4]
    assert failed["reason"] == "HealthCheckFailure"
    assert failed["time_in_previous_ms"] == 1_995
    assert failed["occurred_at_ms"] == T0 + 2_000
    assert failed["causation_id"] == "cmd-m-beta-5" and failed["event_id"] == "m-beta:5"
    source = records[4]
    assert (failed["topic"], failed["partition"], failed["offset"]) == (
        source.topic, source.partition, source.offset)


def test_batches_split_anywhere_give_the_same_view(engine: Engine, story) -> None:
    records = story
    projector = Projector(engine, views())
    for record in records:  # one record per transaction: state carried through the table
        projector.apply_batch([record])
    assert lifecycle_of(models(engine)["m-alpha"]).usage_count == 5
    assert models(engine)["m-beta"]["failure_count"] == 1
    assert len(transitions(engine)) == 6


def test_redelivery_changes_nothing(engine: Engine, story) -> None:
    records = story
    projector = Projector(engine, views())
    projector.apply_batch(records[:5])
    projector.apply_batch(records[3:])   # overlaps: 3 and 4 come again
    before = (models(engine), transitions(engine), count(engine, audit_log),
              all_positions(engine))
    again = projector.apply_batch(records)           # the whole log redelivered
    twice = projector.apply_batch(records + records)  # and duplicated inside one batch
    assert again.archived == twice.archived == 0
    assert again.applied["models"] == twice.applied["models"] == 0
    after = (models(engine), transitions(engine), count(engine, audit_log),
             all_positions(engine))
    assert after == before
    assert before[0]["m-alpha"]["usage_count"] == 5


def test_a_duplicated_event_at_a_new_offset_is_applied_once(engine: Engine, log) -> None:
    first = log.transitioned("m-dup", "Cold", "Warming", T0)
    # the same event produced twice (a producer retry without idempotence): new offset
    copy = log.append(first.topic, "m-dup", first.value, T0 + 1)
    Projector(engine, views()).apply_batch([first, copy])
    assert models(engine)["m-dup"]["transition_count"] == 1
    assert len(transitions(engine)) == 1
    assert count(engine, audit_log) == 2  # the archive keeps both records of the log


def test_positions_and_rows_commit_atomically(engine: Engine, story, monkeypatch) -> None:
    import projections.runtime

    def unavailable(*_args):
        raise OperationalError("save positions", {}, Exception("database is locked"))

    records = story
    monkeypatch.setattr(projections.runtime, "save_positions", unavailable)
    with pytest.raises(DatabaseUnavailableError, match="database is locked"):
        Projector(engine, views()).apply_batch(records)
    # the views and the archive ran before the failure, but nothing of the batch was committed
    assert models(engine) == {}
    assert transitions(engine) == []
    assert count(engine, audit_log) == 0
    assert all_positions(engine) == {}

    monkeypatch.undo()
    Projector(engine, views()).apply_batch(records)
    assert models(engine)["m-alpha"]["state"] == "Cooling"
    assert all_positions(engine)[("models", POOL_EVENTS, records[0].partition)] >= 0


def test_a_failing_view_stops_neither_the_batch_nor_the_other_views(engine: Engine,
                                                                     story) -> None:
    class Exploding(View):
        name = "exploding"
        topics = (POOL_EVENTS,)
        table_names = ()

        def define(self, metadata, suffix="", token=""):
            return {}

        def apply_batch(self, conn, tables, events):
            raise RuntimeError("view failed mid-batch")

    records = story
    result = Projector(engine, [ModelsView(), Exploding()]).apply_batch(records)
    assert [(entry.record, view) for entry, view, _ in result.failed] == [
        (record, "exploding") for record in records]
    assert models(engine)["m-alpha"]["state"] == "Cooling"
    assert count(engine, audit_log) == len(records)
    last = records[-1].offset
    assert all_positions(engine)[("exploding", POOL_EVENTS, records[0].partition)] == last


def test_undecodable_records_are_archived_and_skipped(engine: Engine, log, codec) -> None:
    good = log.transitioned("m-ok", "Cold", "Warming", T0)
    garbage = log.append(POOL_EVENTS, "m-ok", b"\x07not avro at all", T0 + 1)
    unknown = log.append(POOL_EVENTS, "m-ok", struct.pack(">bI", 0, 424242) + b"\x02", T0 + 2)
    truncated = log.append(POOL_EVENTS, "m-ok", good.value[:12], T0 + 3)
    tombstone = log.append(POOL_EVENTS, "m-ok", None, T0 + 4)
    dead = log.append(DEAD_LETTERS, "pit.pool.commands/0/7", b"\xff\xfe", T0 + 5,
                      partition=0, headers=(("pit.error", b"bad magic byte"),))
    schema = log.append(SCHEMAS, "pit.pool.X/1", b'{"subject": "pit.pool.X", "id": 7}', T0 + 6,
                        partition=0)
    later = log.transitioned("m-ok", "Warming", "Hot", T0 + 10)
    records = [good, garbage, unknown, truncated, tombstone, dead, schema, later]

    result = Projector(engine, views()).apply_batch(records)
    assert result.archived == len(records)
    assert result.undecodable == 4  # garbage, unknown schema, truncated, dead letter
    assert models(engine)["m-ok"]["state"] == "Hot"
    assert models(engine)["m-ok"]["transition_count"] == 2

    with engine.connect() as conn:
        rows = {row["offset"] if row["topic"] == POOL_EVENTS else row["topic"]: row
                for row in conn.execute(select(audit_log)).mappings()}
    assert rows[garbage.offset]["payload_json"] is None
    assert "MalformedMessageError" in rows[garbage.offset]["error"]
    assert "UnknownSchemaError" in rows[unknown.offset]["error"]
    assert rows[truncated.offset]["error"]
    assert rows[garbage.offset]["value"] == garbage.value  # the original bytes are kept
    assert rows[tombstone.offset]["value"] is None and rows[tombstone.offset]["error"] is None
    assert rows[DEAD_LETTERS]["headers_json"] == '[["pit.error","bad magic byte"]]'
    assert rows[SCHEMAS]["error"] is None and '"subject"' in rows[SCHEMAS]["payload_json"]
    assert rows[good.offset]["event_type"] == "ModelTransitioned"
    assert (rows[good.offset]["entity_key"], rows[good.offset]["key"]) == ("default", "m-ok")
    # positions moved past every record, decodable or not
    stored = all_positions(engine)
    assert stored[("models", POOL_EVENTS, good.partition)] == later.offset
    assert stored[(AUDIT, DEAD_LETTERS, 0)] == dead.offset


def test_resume_positions_is_the_slowest_consumer(engine: Engine, log, story) -> None:
    projector = Projector(engine, views())
    assert projector.resume_positions() == {}
    records = story
    projector.apply_batch(records)
    outcome = log.outcome("cmd-1", "m-alpha", T0)
    projector.apply_batch([outcome])
    resume = projector.resume_positions()
    assert resume[(outcome.topic, outcome.partition)] == outcome.offset
    last = {}
    for r in records:
        last[(r.topic, r.partition)] = r.offset
    for tp, offset in last.items():
        assert resume[tp] == offset
    # a view without positions on a partition makes that partition start from the beginning
    with engine.begin() as conn:
        conn.execute(positions.delete().where(positions.c.projection == "models",
                                              positions.c.partition == records[0].partition))
    assert (POOL_EVENTS, records[0].partition) not in projector.resume_positions()


def test_connect_reports_an_unreachable_database_in_one_line(tmp_path) -> None:
    with pytest.raises(DatabaseUnavailableError) as info:
        connect("postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2")
    assert "\n" not in str(info.value) and "127.0.0.1:1" in str(info.value)
    with pytest.raises(DatabaseUnavailableError, match="invalid database URL"):
        connect("not a url")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DatabaseUnavailableError):
        connect(f"sqlite:///{blocker}/sub/pit.db")


def test_connect_creates_the_sqlite_directory(tmp_path) -> None:
    engine = connect(f"sqlite:///{tmp_path / 'deep' / 'er' / 'pit.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()
    assert (tmp_path / "deep" / "er" / "pit.db").exists()


# --- the read API -----------------------------------------------------------------------------

async def test_read_api(engine: Engine, log, story) -> None:
    records = story
    records.append(log.outcome("cmd-42", "m-alpha", T0 + 7))
    Projector(engine, views()).apply_batch(records)
    now = T0 + 10_000
    client = TestClient(TestServer(make_app(engine, COMPONENTS, clock=lambda: now)))
    await client.start_server()
    try:
        response = await client.get("/models")
        assert response.status == 200
        body = await response.json()
        assert [m["model_id"] for m in body["models"]] == ["m-alpha", "m-beta"]
        hot = await (await client.get("/models", params={"state": "Cooling"})).json()
        assert [m["model_id"] for m in hot["models"]] == ["m-alpha"]

        alpha = await (await client.get("/models/m-alpha")).json()
        assert alpha["state"] == "Cooling"
        assert alpha["time_in_state_ms"] == now - (T0 + 4_000)
        # people read ISO 8601: every epoch-ms moment has its ISO time beside it
        assert alpha["entered_at"] == iso(alpha["entered_at_ms"]) and "time_in_state" not in alpha

        missing = await client.get("/models/nope")
        assert missing.status == 404
        assert "nope" in (await missing.json())["error"]
        assert (await client.get("/models/nope/transitions")).status == 404

        history = await (await client.get("/models/m-beta/transitions")).json()
        assert [t["to_state"] for t in history["transitions"]] == ["Warming", "Failed", "Cold"]

        audit = await (await client.get("/audit/m-alpha")).json()
        assert [e["event_type"] for e in audit["events"]] == [
            "ModelTransitioned", "ModelTransitioned", "ModelUsageRecorded",
            "ModelUsageRecorded", "ModelTransitioned", "Outcome"]
        as_of = await (await client.get("/audit/m-alpha", params={"until": T0 + 2_000})).json()
        assert as_of["state"]["state"] == "Hot"
        assert as_of["state"]["usage_count"] == 3
        assert as_of["state"]["time_in_state_ms"] == 1_000
        bad = await client.get("/audit/m-alpha", params={"until": "yesterday"})
        assert bad.status == 400
        assert (await client.get("/audit/nobody")).status == 404
        by_query = await (await client.get("/audit", params={"key": "cmd-42"})).json()
        assert [e["topic"] for e in by_query["events"]] == ["pit.results"]

        verified = REGISTRY.get_sample_value("pit_audit_verifications_total", {"result": "ok"})
        verify = await (await client.get("/audit/verify")).json()
        assert verify["ok"] is True and verify["rows"] == len(records)
        assert REGISTRY.get_sample_value("pit_audit_verifications_total",  # for the alert
                                         {"result": "ok"}) == (verified or 0) + 1

        health = await (await client.get("/health")).json()
        assert health["status"] == "ok"
        assert health["positions"]["models"]
        assert (await client.get("/nowhere")).status == 404
    finally:
        await client.close()


# --- the Kafka side ---------------------------------------------------------------------------

class FakeMessage:
    def __init__(self, record: LogRecord) -> None:
        self.topic, self.partition, self.offset = record.topic, record.partition, record.offset
        self.timestamp, self.key, self.value = record.timestamp_ms, record.key, record.value
        self.headers = list(record.headers)


class FakeConsumer:
    """Just the aiokafka calls `run` makes, over an in-memory log."""

    def __init__(self, records: list[LogRecord], partitions: dict[str, int]) -> None:
        self.log = records
        self.partitions = partitions
        self.assigned: list = []
        self.fetch: dict[tuple[str, int], int] = {}
        # the fetch wait `pace_fetches` reads and sets (aiokafka keeps it in its fetcher)
        self._fetcher = SimpleNamespace(_fetch_max_wait_ms=20)

    def partitions_for_topic(self, topic: str):
        return set(range(self.partitions[topic])) if topic in self.partitions else None

    def assign(self, partitions) -> None:
        self.assigned = list(partitions)

    def seek(self, tp, offset: int) -> None:
        self.fetch[(tp.topic, tp.partition)] = offset

    def highwater(self, tp) -> None:
        return None  # getmany returns all there is: nothing more waits on a broker

    async def beginning_offsets(self, tps) -> dict:
        return {tp: 0 for tp in tps}

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None):
        out: dict = {}
        for record in self.log:
            tp = (record.topic, record.partition)
            if tp in self.fetch and record.offset >= self.fetch[tp] and \
                    sum(map(len, out.values())) < (max_records or 10**9):
                out.setdefault(tp, []).append(FakeMessage(record))
        for tp, messages in out.items():
            self.fetch[tp] = messages[-1].offset + 1
        if not out:
            await asyncio.sleep(timeout_ms / 1000)
        return out


async def test_run_seeks_to_positions_and_projects(engine: Engine, story) -> None:
    records = story
    projector = Projector(engine, views(), topics=[POOL_EVENTS])
    projector.apply_batch(records[:4])
    consumer = FakeConsumer(records, {POOL_EVENTS: 8})
    stop = asyncio.Event()
    task = asyncio.create_task(run(projector, consumer, stop, max_records=3))
    for _ in range(100):
        await asyncio.sleep(0.02)
        if models(engine).get("m-beta", {}).get("state") == "Cold":
            break
    stop.set()
    await asyncio.wait_for(task, 5)
    assert len(consumer.assigned) == 8
    assert models(engine)["m-alpha"]["usage_count"] == 5
    assert count(engine, audit_log) == len(records)


async def test_run_against_the_embedded_broker(engine: Engine, log, story_of) -> None:
    """Through a real Kafka protocol broker (librdkafka's mock cluster): produce encoded
    events, let `run` consume them with aiokafka, restart, and nothing is applied twice."""
    confluent_kafka = pytest.importorskip("confluent_kafka")
    from aiokafka import AIOKafkaConsumer

    producer = confluent_kafka.Producer({"test.mock.num.brokers": 1, "linger.ms": 0})
    broker = next(iter(producer.list_topics(timeout=10).brokers.values()))
    bootstrap = f"{broker.host}:{broker.port}"
    log.partitions = 4  # what the mock gives a topic it creates on first produce
    records = story_of(log)
    log.publish(producer, records)

    projector = Projector(engine, views(), topics=[POOL_EVENTS])
    for attempt in range(2):  # the second run resumes at the stored positions
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        stop = asyncio.Event()
        task = asyncio.create_task(run(projector, consumer, stop))
        try:
            for _ in range(200):
                await asyncio.sleep(0.05)
                if count(engine, audit_log) >= len(records):
                    break
            await asyncio.sleep(0.3 if attempt else 0)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            await consumer.stop()
        assert count(engine, audit_log) == len(records)
        assert models(engine)["m-alpha"]["usage_count"] == 5
        assert models(engine)["m-beta"]["state"] == ModelState.COLD.value


class NotingBatches(Projector):
    """The projector, noting each batch it applies: its size, and when it began and ended."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[tuple[int, float, float]] = []

    def apply_batch(self, records, dead_letters=None):
        began = time.monotonic()
        try:
            return super().apply_batch(records, dead_letters)
        finally:
            self.batches.append((len(records), began, time.monotonic()))


@contextlib.asynccontextmanager
async def running(projector: Projector, broker, **options):
    """`run` on the embedded broker, reading with a 5 ms fetch wait (as short as the Pit's
    own readers: a longer hold of an empty fetch batches records by itself)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap_servers,
                                enable_auto_commit=False, fetch_max_wait_ms=5)
    await consumer.start()
    stop = asyncio.Event()
    task = asyncio.create_task(run(projector, consumer, stop, **options))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await consumer.stop()


async def test_run_applies_records_that_keep_coming_together_after_lingering(
        engine: Engine, log, broker) -> None:
    """Records coming one by one, each 20 ms after the last: after each batch that was not
    full, `run` lingers a second, so they are applied in batches, not one per record, each a
    whole linger after the one before.

    How many batches is not bounded by the time the records took to come: the batch right
    after a linger holds what aiokafka had fetched when the linger began, and on a loaded
    machine its fetches take only part of what the broker holds (a CI run beside a soak:
    1, 1, 5, 1, 2, 2 for records published within 0.28 s; idle: 1, 1 and 10). README, "It
    lingers under load"."""
    confluent_kafka = pytest.importorskip("confluent_kafka")
    producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap_servers,
                                         "linger.ms": 0})
    records = [log.used("m-alpha", 1, 1_700_000_000_000 + n) for n in range(12)]
    projector = NotingBatches(engine, views(), topics=[POOL_EVENTS])
    async with running(projector, broker, linger_ms=1000):
        log.publish(producer, records[:1])
        await until(lambda: projector.batches, 10, "the first batch")
        for record in records[1:]:
            log.publish(producer, [record])
            await asyncio.sleep(0.02)  # the records' spacing, not a wait for a state
        await until(lambda: count(engine, audit_log) == len(records), 20, "every record")
    sizes = [size for size, _, _ in projector.batches]
    assert sizes[0] == 1 and sum(sizes) == len(records), sizes
    assert len(sizes) < len(records), sizes  # batched, not one per record
    for (_, _, ended), (_, began_next, _) in itertools.pairwise(projector.batches):
        assert began_next - ended >= 0.99  # it lingered (asyncio may wake a hair early)


async def test_run_follows_a_full_batch_at_once(engine: Engine, log, broker) -> None:
    """A backlog is applied batch after batch without lingering: 30 records in batches of
    10, with a linger far longer than the wait for them."""
    confluent_kafka = pytest.importorskip("confluent_kafka")
    producer = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap_servers,
                                         "linger.ms": 100})  # one producer batch
    log.publish(producer, [log.used("m-alpha", 1, 1_700_000_000_000 + n) for n in range(30)])
    projector = NotingBatches(engine, views(), topics=[POOL_EVENTS])
    async with running(projector, broker, max_records=10, linger_ms=60_000):
        await until(lambda: count(engine, audit_log) == 30, 20, "the backlog applied")
    assert [size for size, _, _ in projector.batches] == [10, 10, 10]


async def test_run_keeps_the_batch_while_the_database_is_away(engine: Engine, story) -> None:
    class Flaky(Projector):
        failures = 2

        def apply_batch(self, records, dead_letters=None):
            if self.failures:
                self.failures -= 1
                raise DatabaseUnavailableError("projection database unavailable: gone")
            return super().apply_batch(records, dead_letters)

    projector = Flaky(engine, views(), topics=[POOL_EVENTS])
    consumer = FakeConsumer(story, {POOL_EVENTS: 8})
    stop = asyncio.Event()
    task = asyncio.create_task(run(projector, consumer, stop))
    for _ in range(200):
        await asyncio.sleep(0.05)
        if count(engine, audit_log) == len(story):
            break
    stop.set()
    await asyncio.wait_for(task, 5)
    assert projector.failures == 0
    assert count(engine, audit_log) == len(story)
    assert models(engine)["m-alpha"]["usage_count"] == 5


async def test_health_reports_an_unreachable_database() -> None:
    from sqlalchemy import create_engine

    down = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2")
    client = TestClient(TestServer(make_app(down, COMPONENTS)))
    await client.start_server()
    try:
        health = await client.get("/health")
        assert health.status == 503
        assert (await health.json())["status"] == "unavailable"
        models_response = await client.get("/models")
        assert models_response.status == 503
        assert "database" in (await models_response.json())["error"]
    finally:
        await client.close()
        down.dispose()


def test_apply_batch_reports_an_unreachable_database(story) -> None:
    from sqlalchemy import create_engine

    down = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/test?connect_timeout=2")
    try:
        with pytest.raises(DatabaseUnavailableError, match=r"^projection database unavailable"):
            Projector(down, views()).apply_batch(story)
    finally:
        down.dispose()


def test_the_benchmark_measures_real_projection_work(engine: Engine) -> None:
    from projections.bench import measure_replay, measure_throughput

    assert measure_throughput(engine, views(), 2_000, batch_size=500) > 0
    assert count(engine, audit_log) == 2_000
    assert len(models(engine)) == 1_000 and len(transitions(engine)) == 2_000
    assert measure_replay(engine, views(), 2_000) > 0
    assert len(transitions(engine)) == 2_000


@pytest.mark.postgres
async def test_bench_projections_reports_the_pit_bench_keys(tmp_path) -> None:
    from projections.bench import bench_projections

    figures = await bench_projections(tmp_path, views(), n=1_000)
    assert set(figures) == {"projection_events_per_s_sqlite", "replay_events_per_s",
                            "projection_events_per_s_postgres"}
    assert figures["projection_events_per_s_sqlite"] > 0
    assert figures["projection_events_per_s_postgres"] > 0  # the test server is required
