"""The task dispatcher reads the tenants' weights from the arbitration policy in force: it
folds the default pool's `ArbitrationPolicySet` from pit.arbitration.events (another pool's
changes nothing) and shares PIT_DAG_MAX_RUNNING by them; and it fetches briefly only where the
broker makes that pay."""

from __future__ import annotations

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.arbitration.arbiter import ArbitrationPolicySet
from streams.arbitration.policy import parse_policy, policy_json
from streams.arbitration.topics import ARBITRATION_EVENTS
from streams.component import Runtime
from streams.config import Settings
from streams.dag.component import COMPONENT as DAG_COMPONENT
from streams.dag.dispatch import Task, TaskDispatcher
from streams.decider import Message, to_record
from streams.kafka import BUSY_FETCH_WAIT_MS, CLUSTER_FETCH_WAIT_MS
from streams.log import LogRecord
from streams.pool.lifecycle import DEFAULT_POOL
from streams.sql import connect


def policy_record(codec: Codec, document: str, pool: str, offset: int) -> LogRecord:
    event: Message = ArbitrationPolicySet(policy_json(parse_policy(document)))
    envelope = {"event_id": f"{pool}/{offset}", "event_type": event.type_name,
                "entity_key": pool, "sequence": offset, "correlation_id": "c",
                "causation_id": "c", "occurred_at": 0, "producer": "test"}
    value = codec.encode(event.avro_name, {"envelope": envelope, **to_record(event)})
    return LogRecord(ARBITRATION_EVENTS, 0, offset, 0, pool.encode(), value)


def test_the_dispatcher_shares_its_limit_by_the_default_pools_policy(tmp_path):
    codec = Codec(EmbeddedRegistry())
    dispatcher = TaskDispatcher(Settings(data_dir=tmp_path), codec, max_running=4)
    dispatcher.fold(policy_record(codec, '{"tenants": {"a": 1, "b": 3}}', DEFAULT_POOL, 0))
    dispatcher.fold(policy_record(codec, '{"tenants": {"a": 9, "b": 1}}', "other-pool", 1))
    assert dict(dispatcher.gate.weights) == {"a": 1.0, "b": 3.0}
    for tenant in ("a", "b"):
        for n in range(10):
            dispatcher.gate.scheduled(Task(f"{tenant}/n{n}/1", f"ex-{tenant}", tenant=tenant))
    assert sorted(t.tenant for t in dispatcher.gate.admit()) == ["a", "b", "b", "b"]


def test_the_dispatcher_polls_briefly_only_on_the_embedded_broker(tmp_path):
    """The embedded broker holds an empty fetch for its whole wait, so the dispatcher (on
    every hop) fetches every 2 ms there; a cluster answers as soon as a record arrives, and
    a short wait would only make empty fetches, which a librdkafka consumer never slows."""
    settings, codec = Settings(data_dir=tmp_path), Codec(EmbeddedRegistry())
    engine = connect(settings.db_url)
    try:
        waits = {embedded: DAG_COMPONENT.services(Runtime(settings, codec, engine, embedded))
                 ["task-dispatcher"].fetch_max_wait_ms for embedded in (True, False)}
    finally:
        engine.dispose()
    assert waits == {True: BUSY_FETCH_WAIT_MS, False: CLUSTER_FETCH_WAIT_MS}
