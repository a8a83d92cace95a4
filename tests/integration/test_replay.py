"""Replay: rebuild a view into shadow tables from the archive (and Kafka), then swap."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, inspect, select, update

from projections.models import ModelsView
from projections.replay import (
    ReplayError,
    rebuild,
    rebuild_view,
    replayable_view,
)
from projections.runtime import Projector, live_tables
from streams.archive import audit_log
from streams.components import views
from streams.config import Settings
from streams.history import history_source, kafka_log_reader
from streams.log import LogRecord
from streams.pool.topics import POOL_EVENTS
from streams.sql import positions

T0 = 1_700_000_000_000


def snapshot(engine: Engine) -> tuple[list, list]:
    tables = live_tables(ModelsView())
    models, transitions = tables["models"], tables["model_transitions"]
    with engine.connect() as conn:
        return ([dict(r) for r in conn.execute(select(models).order_by(models.c.model_id))
                 .mappings()],
                [dict(r) for r in conn.execute(select(transitions)
                                               .order_by(transitions.c.event_id)).mappings()])


def stored_positions(engine: Engine, projection: str) -> dict:
    with engine.connect() as conn:
        return {(t, p): o for _, t, p, o in conn.execute(
            select(positions).where(positions.c.projection == projection))}


def table_names(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def many_events(log, n_models: int = 30, start: int = T0) -> list[LogRecord]:
    cycle = [("Cold", "Warming"), ("Warming", "Hot"), ("Hot", "Cooling"), ("Cooling", "Cold")]
    records = []
    for step in range(8):
        for m in range(n_models):
            source, target = cycle[step % 4]
            at = start + step * 1_000 + m
            records.append(log.transitioned(f"m-{m:03d}", source, target, at))
            if target == "Hot":
                records.append(log.used(f"m-{m:03d}", m + 1, at + 1))
    return records


def test_rebuild_equals_the_live_view_and_swaps(engine: Engine, log) -> None:
    records = many_events(log)
    projector = Projector(engine, views())
    for start in range(0, len(records), 100):
        projector.apply_batch(records[start:start + 100])
    live = snapshot(engine)
    live_positions = stored_positions(engine, "models")
    assert len(live[0]) == 30 and len(live[1]) == 240

    calls: list[tuple[int, int]] = []
    report = rebuild(engine, ModelsView(), progress=lambda done, total: calls.append((done, total)),
                     batch_size=64)
    assert report.swapped and report.records == len(records) and report.caught_up == 0
    assert snapshot(engine) == live
    assert stored_positions(engine, "models") == live_positions
    assert stored_positions(engine, "models@rebuild") == {}
    assert not {"models__rebuild", "model_transitions__rebuild"} & table_names(engine)
    # progress: from 0 to the total, monotonic, every batch
    assert calls[0] == (0, len(records)) and calls[-1] == (len(records), len(records))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert len(calls) == 1 + -(-len(records) // 64)

    # the live projector carries on with the new tables, and redelivery is still a no-op
    projector.apply_batch(records)
    assert snapshot(engine) == live
    more = [log.transitioned("m-000", "Cold", "Warming", T0 + 99_000)]
    projector.apply_batch(more)
    assert next(m for m in snapshot(engine)[0] if m["model_id"] == "m-000")["state"] == "Warming"

    # and a second rebuild works too (index and constraint names never collide)
    expected = snapshot(engine)
    rebuild(engine, ModelsView())
    assert snapshot(engine) == expected


def test_old_view_serves_queries_during_the_rebuild(engine: Engine, log) -> None:
    records = many_events(log, n_models=10)
    projector = Projector(engine, views())
    projector.apply_batch(records)
    truth = snapshot(engine)
    # damage the live view, as a bug in an old view version would have: rebuild repairs it
    tables = live_tables(ModelsView())
    with engine.begin() as conn:
        conn.execute(update(tables["models"]).values(usage_count=999))
    damaged = snapshot(engine)

    seen_during: list = []
    extra = [log.transitioned("m-late", "Cold", "Warming", T0 + 50_000),
             log.transitioned("m-late", "Warming", "Hot", T0 + 50_001)]

    def progress(done: int, total: int) -> None:
        if 0 < done < total and not seen_during:
            seen_during.append(snapshot(engine))  # readers see the old tables
            assert {"models__rebuild", "model_transitions__rebuild"} <= table_names(engine)
            projector.apply_batch(extra)  # the live projector keeps going meanwhile

    report = rebuild(engine, ModelsView(), progress=progress, batch_size=16)
    assert seen_during and seen_during[0] == damaged
    assert report.caught_up == len(extra)  # picked up from the archive inside the swap
    models, transitions = snapshot(engine)
    assert [m for m in models if m["model_id"] != "m-late"] == truth[0]
    late = next(m for m in models if m["model_id"] == "m-late")
    assert late["state"] == "Hot" and late["transition_count"] == 2
    assert len(transitions) == len(truth[1]) + 2


def test_rebuild_from_the_archive_then_kafka(engine: Engine, log) -> None:
    records = many_events(log, n_models=5)
    Projector(engine, views()).apply_batch(records[:30])  # the archive has the first 30
    asked: list[dict] = []

    def kafka(after: dict, archived: bool) -> list[LogRecord]:
        assert archived  # read after an archive: Kafka continues exactly where it stops
        asked.append(after)
        return records[20:]  # Kafka still holds a little of what the archive has, and more

    source = list(history_source(engine, [POOL_EVENTS], kafka))
    assert sorted((r.partition, r.offset) for r in source) == sorted(
        (r.partition, r.offset) for r in records)  # each record once, none missing
    assert asked[0] == {(POOL_EVENTS, p): max(r.offset for r in records[:30] if r.partition == p)
                        for p in {r.partition for r in records[:30]}}

    report = rebuild(engine, ModelsView(), iter(source))
    assert report.records == len(records)
    rebuilt = snapshot(engine)
    assert len(rebuilt[1]) == 40  # every transition of the whole log, not just the archive's
    last = {}
    for r in records:
        last[(r.topic, r.partition)] = r.offset
    assert stored_positions(engine, "models") == last  # ahead of the archive: that is fine

    # the live projector then archives the rest and skips it for the view
    Projector(engine, views()).apply_batch(records)
    assert snapshot(engine) == rebuilt
    assert len(list(history_source(engine, [POOL_EVENTS]))) == len(records)


def test_the_audit_log_and_unknown_views_are_refused(engine: Engine) -> None:
    with pytest.raises(ReplayError, match="audit log"):
        replayable_view("audit", views())
    with pytest.raises(ReplayError, match="audit log"):
        replayable_view("audit_log", views())
    with pytest.raises(ReplayError, match="unknown view 'nope'; views: arbitration, "
                                          "artifact_search, artifacts, dag, models"):
        replayable_view("nope", views())


def test_rebuild_of_an_empty_log(engine: Engine) -> None:
    calls: list = []
    report = rebuild(engine, ModelsView(), progress=lambda d, t: calls.append((d, t)))
    assert report.records == 0 and calls == [(0, 0)]
    assert snapshot(engine) == ([], [])


def test_kafka_log_reader_reads_what_the_archive_lacks(log) -> None:
    """Against a real Kafka protocol broker (librdkafka's mock cluster)."""
    confluent_kafka = pytest.importorskip("confluent_kafka")
    producer = confluent_kafka.Producer({"test.mock.num.brokers": 1, "linger.ms": 0})
    broker = next(iter(producer.list_topics(timeout=10).brokers.values()))
    log.partitions = 4  # the mock creates topics with 4 partitions
    records = many_events(log, n_models=4)
    log.publish(producer, records)

    reader = kafka_log_reader(Settings(bootstrap_servers=f"{broker.host}:{broker.port}"),
                              [POOL_EVENTS], timeout_s=10)
    everything = list(reader({}, False))
    key = lambda r: (r.partition, r.offset)  # noqa: E731
    assert sorted(map(key, everything)) == sorted(map(key, records))
    by_position = {key(r): r for r in records}
    assert all(r.value == by_position[key(r)].value and r.key == by_position[key(r)].key
               for r in everything)
    after = {(POOL_EVENTS, p): 1 for p in range(4)}
    tail = list(reader(after, True))
    assert sorted(map(key, tail)) == sorted(k for k in map(key, records) if k[1] > 1)


async def test_rebuild_view_uses_the_archive_and_kafka_when_it_answers(engine: Engine, log,
                                                                      tmp_path) -> None:
    from streams.config import Settings

    records = many_events(log, n_models=4)
    Projector(engine, views()).apply_batch(records)
    live = snapshot(engine)
    calls: list = []
    # no broker anywhere: the archive alone
    done = await rebuild_view(engine, Settings(data_dir=tmp_path), "models", views(),
                              lambda d, t: calls.append((d, t)))
    assert done == len(records) and snapshot(engine) == live and calls[-1][0] == len(records)
    # a stale broker address: a warning, then the archive alone
    stale = Settings(data_dir=tmp_path, bootstrap_servers="127.0.0.1:1")
    assert await rebuild_view(engine, stale, "models", views(), timeout_s=1) == len(records)
    with pytest.raises(ReplayError, match="audit log"):
        await rebuild_view(engine, stale, "audit", views())

    # a broker holding more than the archive: those records are replayed too
    confluent_kafka = pytest.importorskip("confluent_kafka")
    producer = confluent_kafka.Producer({"test.mock.num.brokers": 1, "linger.ms": 0})
    broker = next(iter(producer.list_topics(timeout=10).brokers.values()))
    kafka_log = many_events(type(log)(log.codec, partitions=4), n_models=4)
    log.publish(producer, kafka_log)
    with engine.begin() as conn:  # an archive that lags: only offsets 0..1 of each partition
        conn.execute(audit_log.delete())
        conn.execute(positions.delete())
    Projector(engine, views()).apply_batch([r for r in kafka_log if r.offset <= 1])
    settings = Settings(data_dir=tmp_path, bootstrap_servers=f"{broker.host}:{broker.port}")
    assert await rebuild_view(engine, settings, "models", views()) == len(kafka_log)
    transitions = [r for r in kafka_log if b"ModelTransitioned" in r.value]
    assert len(snapshot(engine)[1]) == len(transitions)  # the whole log, not the archive's
