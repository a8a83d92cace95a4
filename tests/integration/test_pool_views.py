"""The pool's views (`pool`, `pool_health`), its API, `pit pool status` and its live metrics,
on SQLite and PostgreSQL, fed with the events the pool decider really emits: commands are
encoded and decided by `Processor.handle`, exactly as the pool processor does over Kafka."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from sqlalchemy import Engine, select

from projections.api import make_app
from projections.models import ModelsView
from projections.pool import PoolHealthView, PoolView
from projections.pool_metrics import PoolMetrics
from projections.replay import rebuild
from projections.runtime import Projector, live_tables
from schemas.codec import Codec
from streams.components import COMPONENTS, views
from streams.decider import Message, from_record, to_record
from streams.log import LogRecord
from streams.pool.lifecycle import ModelState, TransitionReason
from streams.pool.pool import (
    HEALTH_FAILURE_THRESHOLD,
    POOL,
    AllocateModel,
    CoolModel,
    PoolState,
    RegisterHost,
    RegisterModel,
    ReleaseModel,
    ReportHealth,
    ReportHostDown,
    ReportModelLoaded,
    ReportModelLoadFailed,
    ReportModelUnloaded,
    WarmModel,
)
from streams.pool.topics import POOL_COMMANDS, POOL_EVENTS
from streams.processor import Processor

T0 = 1_700_000_000_000
COLD, WARMING, HOT, COOLING, FAILED = ModelState


@dataclass
class Pool:
    """The pool processor without Kafka: each command is encoded, decided by
    `Processor.handle`, and its events kept as the log records the projector reads."""

    codec: Codec
    processor: Processor = None  # type: ignore[assignment]
    records: list[LogRecord] = field(default_factory=list)
    now: int = T0
    commands: int = 0
    offsets: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.processor = Processor(POOL, self.codec)

    @property
    def state(self) -> PoolState:
        return self.processor.state("default")

    def send(self, command: Message, *, after_ms: int = 10) -> dict:
        self.now += after_ms
        self.commands += 1
        meta = {"command_id": f"cmd-{self.commands}", "issued_at": self.now,
                "issued_by": "test", "correlation_id": None}
        value = self.codec.encode(command.avro_name, {"meta": meta, **to_record(command)})
        outputs = self.processor.handle([LogRecord(POOL_COMMANDS, 0, self.commands, self.now,
                                                   b"default", value)])
        outcome = None
        for out in outputs:
            if out.topic == POOL_EVENTS:
                self.records.append(self.record(out.partition, out.key, out.value,
                                                out.timestamp_ms))
            else:
                outcome = self.codec.decode(out.value).record
        return outcome

    def record(self, partition: int, key: bytes | None, value: bytes, at_ms: int) -> LogRecord:
        offset = self.offsets[partition] = self.offsets.get(partition, -1) + 1
        return LogRecord(POOL_EVENTS, partition, offset, at_ms, key, value)

    def ok(self, command: Message, **options) -> dict:
        outcome = self.send(command, **options)
        assert outcome["status"] == "ACCEPTED", outcome["reason"]
        return outcome

    def events(self, since: int = 0) -> list[Message]:
        out = []
        for record in self.records[since:]:
            decoded = self.codec.decode(record.value)
            out.append(from_record(POOL.event_type(decoded.name), decoded.record))
        return out


@pytest.fixture
def pool(codec: Codec) -> Pool:
    return Pool(codec)


def story(pool: Pool) -> None:
    """Two hosts; hits, misses, a prewarm, a load failure, a model failing its health checks,
    a host lost with a model on it, allocations failing for them, a drain, an eviction."""
    pool.ok(RegisterHost("h1", 1000, 3, endpoint="http://127.0.0.1:9001"))
    pool.ok(RegisterHost("h2", 600, 2, endpoint="http://127.0.0.1:9002"))
    for model_id, mb in (("m1", 400), ("m2", 300), ("m3", 300), ("m4", 500), ("m5", 200)):
        pool.ok(RegisterModel(model_id, f"python:tests.models:{model_id}", mb, 100))
    pool.ok(AllocateModel("r1", "m1", "alice"))                     # miss: placed, loads
    host1 = pool.state.models["m1"].host
    pool.ok(ReportModelLoaded(host1, "m1", 120, 380), after_ms=150)  # measured smaller
    pool.ok(AllocateModel("r2", "m1", "bob"))                       # hit
    pool.ok(ReleaseModel("r1"))
    pool.ok(ReleaseModel("r2"))
    pool.ok(WarmModel("m2", 0.9, "workflow"))                       # prewarm
    pool.ok(ReportModelLoaded(pool.state.models["m2"].host, "m2", 80, 300), after_ms=90)
    pool.ok(AllocateModel("r3", "m2", "carol"))                     # a hit thanks to it
    pool.ok(AllocateModel("r4", "m3", "dave"))
    pool.ok(ReportModelLoadFailed(pool.state.models["m3"].host, "m3", "no such file"))
    pool.ok(AllocateModel("r5", "m4", "erin"))
    pool.ok(ReportModelLoaded(pool.state.models["m4"].host, "m4", 300, 500), after_ms=400)
    host2 = pool.state.models["m2"].host
    for _ in range(HEALTH_FAILURE_THRESHOLD):                       # m2 fails its checks
        pool.ok(ReportHealth(host2, "m2", False, 950.0, "timeout"))
    pool.ok(ReportModelUnloaded(host2, "m2"))
    pool.ok(AllocateModel("r6", "m5", "frank"))
    host5 = pool.state.models["m5"].host
    pool.ok(ReportModelLoaded(host5, "m5", 50, 200))
    pool.ok(ReportHealth(host5, "m5", True, 4.5, ""))
    pool.ok(ReportHealth(host5, "m5", False, 70.0, "slow"))
    pool.ok(AllocateModel("r7", "m5", "gina"))
    pool.ok(ReportHostDown(pool.state.models["m4"].host))           # m4's host is lost
    pool.ok(CoolModel("m5"))                                        # drains r6, r7
    pool.ok(AllocateModel("r8", "m3", "ivan"))                      # recovered, placed
    pool.ok(AllocateModel("r9", "m4", "judy"))                      # evicts idle m1
    pool.ok(ReportModelUnloaded(pool.state.models["m1"].host, "m1"))


def tables() -> dict:
    return {**live_tables(PoolView()), **live_tables(PoolHealthView())}


def rows(engine: Engine, name: str, *order: str) -> list[dict]:
    table = tables()[name]
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            select(table).order_by(*(table.c[c] for c in order))).mappings()]


def snapshot(engine: Engine) -> dict[str, list[dict]]:
    return {"pools": rows(engine, "pools", "pool_id"),
            "pool_allocation_failures": rows(engine, "pool_allocation_failures", "code"),
            "pool_models": rows(engine, "pool_models", "model_id"),
            "pool_hosts": rows(engine, "pool_hosts", "host_id"),
            "pool_health": rows(engine, "pool_health", "model_id"),
            "pool_health_checks": rows(engine, "pool_health_checks", "sequence")}


def assert_matches_decider(engine: Engine, state: PoolState) -> None:
    """The views say what the decider's own state says."""
    stats = state.stats
    (pool,) = rows(engine, "pools", "pool_id")
    assert {k: pool[k] for k in ("hits", "misses", "evictions", "loads", "load_failures",
                                 "load_time_total_ms", "prewarm_loads")} == {
        "hits": stats.hits, "misses": stats.misses, "evictions": stats.evictions,
        "loads": stats.loads, "load_failures": stats.load_failures,
        "load_time_total_ms": stats.load_time_total_ms, "prewarm_loads": stats.prewarm_loads}
    failures = {r["code"]: r["count"] for r in rows(engine, "pool_allocation_failures", "code")}
    assert failures == dict(stats.allocation_failures)
    models = {r["model_id"]: r for r in rows(engine, "pool_models", "model_id")}
    assert set(models) == set(state.models)
    for model_id, model in state.models.items():
        row = models[model_id]
        assert (row["state"], row["host_id"], row["memory_mb"], row["load_ms"],
                row["allocations"], row["queued"], row["uri"], row["declared_memory_mb"]) == (
            model.state.value, model.host, model.memory_mb, model.load_ms,
            len(model.allocations), len(model.queued), model.uri,
            model.declared_memory_mb), model_id
    hosts = {r["host_id"]: r for r in rows(engine, "pool_hosts", "host_id")}
    assert set(hosts) == set(state.hosts)
    for host_id, host in state.hosts.items():
        row = hosts[host_id]
        assert (row["resident_mb"], row["model_count"], row["committed_mb"], row["alive"],
                row["memory_budget_mb"], row["capacity"], row["endpoint"]) == (
            host.usage.resident_mb, host.usage.resident_count, host.usage.committed_mb,
            host.alive, host.memory_budget_mb, host.capacity, host.endpoint), host_id
    health = {r["model_id"]: r for r in rows(engine, "pool_health", "model_id")}
    for model_id, row in health.items():
        assert row["consecutive_failures"] == state.models[model_id].health_failures


# --- the views ------------------------------------------------------------------------------

def test_views_equal_the_deciders_state(engine: Engine, pool: Pool) -> None:
    story(pool)
    result = Projector(engine, views()).apply_batch(pool.records)
    assert result.applied["pool"] == result.applied["pool_health"] == len(pool.records)
    assert_matches_decider(engine, pool.state)

    stats = pool.state.stats  # the story did what it says, so the comparison means something
    assert (stats.hits, stats.misses, stats.loads, stats.load_failures, stats.prewarm_loads) \
        == (3, 6, 4, 1, 1)
    assert stats.evictions == 1 and stats.load_time_total_ms == 120 + 80 + 300 + 50
    assert dict(stats.allocation_failures) == {"health_check": 1, "host_down": 1,
                                               "load_failed": 1}
    models = {r["model_id"]: r for r in rows(engine, "pool_models", "model_id")}
    assert (models["m1"]["state"], models["m1"]["host_id"]) == ("Cold", None)
    assert models["m1"]["memory_mb"] == 380 and models["m1"]["load_ms"] == 120
    assert models["m2"]["state"] == "Failed" and models["m2"]["reason"] == "HealthCheckFailure"
    assert (models["m4"]["state"], models["m4"]["queued"]) == ("Warming", 1)
    assert (models["m5"]["state"], models["m5"]["allocations"]) == ("Cooling", 2)
    hosts = {r["host_id"]: r for r in rows(engine, "pool_hosts", "host_id")}
    assert (hosts["h1"]["resident_mb"], hosts["h1"]["model_count"]) == (1000, 3)
    assert (hosts["h2"]["alive"], hosts["h2"]["resident_mb"]) == (False, 0)


def test_health_history_and_status(engine: Engine, pool: Pool) -> None:
    story(pool)
    Projector(engine, views()).apply_batch(pool.records)
    checks = rows(engine, "pool_health_checks", "sequence")
    assert [(c["model_id"], c["ok"], c["consecutive_failures"], c["detail"]) for c in checks] \
        == [("m2", False, 1, "timeout"), ("m2", False, 2, "timeout"), ("m2", False, 3, "timeout"),
            ("m5", True, 0, ""), ("m5", False, 1, "slow")]
    assert checks[0]["latency_ms"] == 950.0 and checks[3]["latency_ms"] == 4.5
    assert all(c["occurred_at_ms"] > T0 and c["event_id"] for c in checks)
    current = {r["model_id"]: r for r in rows(engine, "pool_health", "model_id")}
    assert (current["m2"]["status"], current["m2"]["checks"], current["m2"]["failed_checks"]) \
        == ("failed", 3, 3)
    assert (current["m5"]["status"], current["m5"]["consecutive_failures"],
            current["m5"]["detail"]) == ("failing", 1, "slow")

    # m2 is recovered and loaded again: a fresh count, as the decider keeps it
    pool.ok(RegisterHost("h3", 400, 2))
    pool.ok(AllocateModel("r10", "m2", "hank"))
    pool.ok(ReportModelLoaded(pool.state.models["m2"].host, "m2", 70, 300))
    Projector(engine, views()).apply_batch(pool.records)
    m2 = {r["model_id"]: r for r in rows(engine, "pool_health", "model_id")}["m2"]
    assert (m2["status"], m2["consecutive_failures"], m2["checks"]) == ("unchecked", 0, 3)
    assert_matches_decider(engine, pool.state)


def test_batches_split_anywhere_and_duplicates_change_nothing(engine: Engine, pool: Pool) -> None:
    story(pool)
    projector = Projector(engine, views())
    for record in pool.records:  # one event per transaction: all state goes through the rows
        projector.apply_batch([record])
    one_by_one = snapshot(engine)
    assert_matches_decider(engine, pool.state)
    # the whole log redelivered, then every event again at a new offset (a producer retry)
    projector.apply_batch(pool.records)
    copies = [pool.record(r.partition, r.key, r.value, r.timestamp_ms) for r in pool.records]
    result = projector.apply_batch(copies)
    assert result.applied["pool"] == len(copies)  # read, and recognised as seen
    assert snapshot(engine) == one_by_one


def test_random_commands_keep_the_views_equal_to_the_decider(engine: Engine,
                                                             pool: Pool) -> None:
    rng = random.Random(7)
    hosts, models = ["h1", "h2", "h3"], [f"m{i}" for i in range(8)]
    for host_id in hosts:
        pool.ok(RegisterHost(host_id, rng.choice([500, 900, 1300]), rng.randint(1, 3)))
    for model_id in models:
        pool.ok(RegisterModel(model_id, f"python:x:{model_id}", rng.choice([100, 250, 400]), 50))
    projector, projected, requests = Projector(engine, views()), 0, 0
    accepted = 0
    for step in range(400):
        state = pool.state
        placed = sorted((m, x.host) for m, x in state.models.items() if x.host is not None)
        pick = rng.randrange(12)
        if pick <= 3:
            requests += 1
            command: Message = AllocateModel(f"r{requests}", rng.choice(models), "who")
        elif pick <= 5 and state.requests:
            command = ReleaseModel(rng.choice(sorted(state.requests)))
        elif pick == 6:
            command = WarmModel(rng.choice(models), 0.8, "test")
        elif pick == 7:
            command = CoolModel(rng.choice(models), TransitionReason.SCHEDULED_COOLDOWN)
        elif pick == 8:
            host_id = rng.choice(hosts)
            host = state.hosts[host_id]
            command = (ReportHostDown(host_id) if host.alive and rng.random() < 0.3 else
                       RegisterHost(host_id, host.memory_budget_mb, host.capacity))
        elif placed:
            model_id, host_id = rng.choice(placed)
            model = state.models[model_id]
            if model.state is WARMING:
                command = (ReportModelLoadFailed(host_id, model_id, "boom") if rng.random() < 0.15
                           else ReportModelLoaded(host_id, model_id, rng.randint(5, 900),
                                                  max(1, model.need_mb - rng.randint(0, 50))))
            elif model.state in (COOLING, FAILED) and not model.allocations:
                command = ReportModelUnloaded(host_id, model_id)
            else:
                command = ReportHealth(host_id, model_id, rng.random() < 0.6, 12.5, "probe")
        else:
            continue
        accepted += pool.send(command, after_ms=rng.randint(0, 500))["status"] == "ACCEPTED"
        if step % 37 == 0:  # project in uneven batches and compare as it goes
            projector.apply_batch(pool.records[projected:])
            projected = len(pool.records)
            assert_matches_decider(engine, pool.state)
    projector.apply_batch(pool.records[projected:])
    assert_matches_decider(engine, pool.state)
    stats = pool.state.stats
    assert accepted > 200 and stats.hits and stats.misses and stats.evictions and stats.loads
    assert any(not h.alive for h in pool.state.hosts.values()) or stats.allocation_failures


def test_replay_reproduces_the_views(engine: Engine, pool: Pool) -> None:
    story(pool)
    projector = Projector(engine, views())
    for start in range(0, len(pool.records), 7):
        projector.apply_batch(pool.records[start:start + 7])
    live = snapshot(engine)
    for view in (PoolView(), PoolHealthView()):
        report = rebuild(engine, view, batch_size=11)
        assert report.swapped and report.records == len(pool.records)
    assert snapshot(engine) == live
    assert_matches_decider(engine, pool.state)


def test_lifecycle_events_from_before_the_pool_decider_are_left_to_models(
        engine: Engine, story_of, log) -> None:
    """Old logs hold ModelTransitioned events whose entity is the model: the models view
    takes them, the pool views do not invent a pool for them."""
    Projector(engine, views()).apply_batch(story_of(log))
    assert snapshot(engine) == {name: [] for name in snapshot(engine)}
    with engine.connect() as conn:
        assert len(conn.execute(select(live_tables(ModelsView())["models"])).all()) == 2


def test_the_models_view_still_follows_pool_events(engine: Engine, pool: Pool) -> None:
    story(pool)
    Projector(engine, views()).apply_batch(pool.records)
    table = live_tables(ModelsView())["models"]
    with engine.connect() as conn:
        states = dict(conn.execute(select(table.c.model_id, table.c.state)).all())
    assert states == {m: x.state.value for m, x in pool.state.models.items()
                      if x.lifecycle.transition_count}


# --- the API and `pit pool status` ----------------------------------------------------------

async def test_pool_api(engine: Engine, pool: Pool) -> None:
    client = TestClient(TestServer(make_app(engine, COMPONENTS)))
    await client.start_server()
    try:
        empty = await client.get("/pool")
        assert empty.status == 404 and "no pool data yet" in (await empty.json())["error"]
        story(pool)
        Projector(engine, views()).apply_batch(pool.records)

        status = await (await client.get("/pool")).json()
        assert status["pool_id"] == "default" and status["sequence"] == len(pool.records)
        assert status["models"]["count"] == 5
        assert status["models"]["by_state"] == {"Cold": 1, "Warming": 2, "Hot": 0,
                                                "Cooling": 1, "Failed": 1}
        assert {m["model_id"]: (m["state"], m["host_id"])
                for m in status["models"]["placed"]} == {
            "m2": ("Failed", None), "m3": ("Warming", "h1"), "m4": ("Warming", "h1"),
            "m5": ("Cooling", "h1")}
        cache = status["cache"]
        assert (cache["hits"], cache["misses"], cache["evictions"]) == (3, 6, 1)
        assert cache["hit_rate"] == pytest.approx(3 / 9)
        assert cache["mean_load_ms"] == pytest.approx((120 + 80 + 300 + 50) / 4)
        assert cache["allocation_failures"] == {"health_check": 1, "host_down": 1,
                                                "load_failed": 1}
        assert [(h["model_id"], h["status"]) for h in status["health"]["unhealthy"]] == [
            ("m2", "failed"), ("m5", "failing")]
        assert [c["detail"] for c in status["health"]["recent_failures"]] == [
            "slow", "timeout", "timeout", "timeout"]

        hosts = await (await client.get("/pool/hosts")).json()
        by_id = {h["host_id"]: h for h in hosts["hosts"]}
        for host_id, host in pool.state.hosts.items():
            assert by_id[host_id]["resident_mb"] == host.usage.resident_mb
            assert sorted(by_id[host_id]["models"]) == sorted(host.models)
        assert by_id["h1"]["endpoint"] == "http://127.0.0.1:9001"

        health = await (await client.get("/models/m2/health")).json()
        assert health["state"] == "Failed" and health["health"]["status"] == "failed"
        assert [c["consecutive_failures"] for c in health["checks"]] == [3, 2, 1]
        limited = await (await client.get("/models/m2/health", params={"limit": 1})).json()
        assert len(limited["checks"]) == 1
        m1 = await (await client.get("/models/m1/health")).json()
        assert (m1["state"], m1["health"], m1["checks"]) == ("Cold", None, [])
        assert (await client.get("/models/nope/health")).status == 404
        assert (await client.get("/models/m1/health", params={"limit": "x"})).status == 400
        assert (await client.get("/pool", params={"pool": "other"})).status == 404

        # one model, one truth: a model registered and never used is a model of /models too
        seen = len(pool.records)
        pool.ok(RegisterModel("m6", "python:tests.models:m6", 100, 100))
        Projector(engine, views()).apply_batch(pool.records[seen:])
        listed = await (await client.get("/models")).json()
        status = await (await client.get("/pool")).json()
        assert listed["count"] == status["models"]["count"] == 6
        m6 = await (await client.get("/models/m6")).json()
        assert (m6["state"], m6["pools"], m6["allocations_in_flight"],
                m6["transition_count"]) == (
            "Cold", ["default"], 0, 0)
        assert (await (await client.get("/models/m6/transitions")).json())["transitions"] == []
        by_model = {m["model_id"]: m for m in listed["models"]}
        assert by_model["m1"]["allocations_in_flight"] == 0  # r1 and r2 were released
        assert by_model["m3"]["allocations_in_flight"] == len(pool.state.models["m3"].allocations)
        cold = await (await client.get("/models", params={"state": "Cold"})).json()
        assert {m["model_id"] for m in cold["models"]} == {"m1", "m6"}
    finally:
        await client.close()


def pit(db_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIT_DATABASE_URL": db_url}
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True,
                          text=True, env=env, timeout=60)


def test_pit_pool_status(engine: Engine, db_url: str, pool: Pool) -> None:
    empty = pit(db_url, "pool", "status")
    assert empty.returncode == 0 and empty.stderr == ""
    assert empty.stdout.strip().splitlines() == [empty.stdout.strip()]
    assert "no data yet" in empty.stdout

    story(pool)
    Projector(engine, views()).apply_batch(pool.records)
    shown = pit(db_url, "pool", "status")
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert text.startswith("pool default: 2 hosts (1 alive), 5 models")
    h1 = next(line for line in text.splitlines() if line.strip().startswith("h1 "))
    host1 = pool.state.hosts["h1"]
    assert f"{host1.usage.resident_mb}/1000 MB" in h1 and "http://127.0.0.1:9001" in h1
    assert "m3, m4, m5" in h1 and "3/3 models" in h1
    assert "DOWN" in next(line for line in text.splitlines() if line.strip().startswith("h2 "))
    assert "models: 1 Cold, 2 Warming, 0 Hot, 1 Cooling, 1 Failed" in text
    m5 = next(line for line in text.splitlines() if line.strip().startswith("m5 "))
    assert "Cooling" in m5 and "on h1" in m5 and "2 allocations" in m5
    assert "cache: hit rate 33.3% (3 hits, 6 misses), 1 eviction, 4 loads (mean 138 ms)" in text
    assert "allocation failures: health_check 1, host_down 1, load_failed 1" in text
    assert "health: 2 unhealthy" in text and "m2 on" in text and "timeout" in text

    as_json = pit(db_url, "pool", "status", "--json")
    assert as_json.returncode == 0, as_json.stderr
    status = json.loads(as_json.stdout)
    assert status["cache"]["hits"] == 3 and len(status["hosts"]) == 2


# --- live metrics ---------------------------------------------------------------------------

def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_follow_the_events_once(engine: Engine, pool: Pool) -> None:
    metrics_names = [("pit_pool_cache_hits_total", {}), ("pit_pool_cache_misses_total", {}),
                     ("pit_pool_evictions_total", {}),
                     ("pit_pool_load_seconds_count", {}), ("pit_pool_load_seconds_sum", {}),
                     ("pit_pool_allocation_seconds_count", {"cache_hit": "true"}),
                     ("pit_pool_allocation_seconds_count", {"cache_hit": "false"}),
                     ("pit_pool_allocation_seconds_sum", {"cache_hit": "false"}),
                     ("pit_pool_transitions_total",
                      {"from": "Hot", "to": "Failed", "reason": "HealthCheckFailure"})]
    before = {(n, tuple(sorted(labels.items()))): sample(n, **labels)
              for n, labels in metrics_names}

    def grown() -> dict[str, float]:
        return {f"{n}{dict(labels) or ''}": round(sample(n, **dict(labels)) - value, 6)
                for (n, labels), value in before.items()}

    story(pool)
    projector = Projector(engine, views(), observers=[PoolMetrics(engine)])
    projector.apply_batch(pool.records[:len(pool.records) // 2])
    projector.apply_batch(pool.records)  # overlaps: the first half is not observed twice
    # m1, m4 and m5 were misses allocated after their loads (150 + 400 + 10 ms); m3's first
    # miss failed, the last two are still queued: not timed
    assert grown() == {
        "pit_pool_cache_hits_total": 3, "pit_pool_cache_misses_total": 6,
        "pit_pool_evictions_total": 1,
        "pit_pool_load_seconds_count": 4, "pit_pool_load_seconds_sum": 0.55,
        "pit_pool_allocation_seconds_count{'cache_hit': 'true'}": 3,
        "pit_pool_allocation_seconds_count{'cache_hit': 'false'}": 3,
        "pit_pool_allocation_seconds_sum{'cache_hit': 'false'}": 0.56,
        "pit_pool_transitions_total{'from': 'Hot', 'reason': 'HealthCheckFailure', "
        "'to': 'Failed'}": 2,
    }
    for host_id, host in pool.state.hosts.items():
        assert sample("pit_pool_host_memory_mb", pool="default", host=host_id) == \
            host.usage.resident_mb
        assert sample("pit_pool_host_memory_budget_mb", pool="default", host=host_id) == \
            host.memory_budget_mb

    again = grown()
    copies = [pool.record(r.partition, r.key, r.value, r.timestamp_ms) for r in pool.records]
    projector.apply_batch(copies)  # the same events at new offsets: archived, not observed
    assert grown() == again
    rebuild(engine, PoolView())  # a replay is not live traffic
    assert grown() == again
