"""The contract every registered component passes (streams/components.py). A new component
gets these checks by registering, plus one entry in CASES: a seeded run of its processor
and how its views are compared with its decider's state.

* every message type of its deciders round-trips through Avro, as records built from its
  schema and back through the message's dataclass;
* every topic its deciders use is in the catalog (infra/topics.yaml);
* replaying its events from initial state reproduces the state its processor decided;
* after the seeded run, its views equal the decider's state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from property.test_codec_properties import values_of
from sqlalchemy import Engine
from test_arbitration_views import assert_matches_arbiter, contention
from test_artifact_views import assert_matches_catalog, catalog
from test_dag_views import RETRY, Flow, chain
from test_dag_views import assert_matches_decider as assert_dag_matches
from test_pool_views import Pool, story
from test_pool_views import assert_matches_decider as assert_pool_matches
from test_stale_views import assert_matches_stale, stale_story

from projections.runtime import Projector
from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.component import Component
from streams.components import COMPONENTS, views
from streams.config import Settings
from streams.dag.execution import CancelExecution
from streams.decider import Decider, Message, from_record, to_record
from streams.topics import RESULTS, load_catalog

CODEC = Codec(EmbeddedRegistry())


# --- the per-component cases ------------------------------------------------------------------

def dag_run(codec: Codec, _decided: Any) -> Flow:
    """A completed chain, a retried node, a failure and a cancel."""
    flow = Flow(codec)
    flow.start("done", chain("two", "a", "b"))
    flow.complete("done", "a")
    flow.complete("done", "b")
    flow.start("retried", chain("retrying", "a", recovery=RETRY))
    flow.fail("retried", "a")
    flow.fire("retried", "a/retry/1")
    flow.complete("retried", "a")
    flow.start("failed", chain("failing", "a", "b"))
    flow.fail("failed", "a", retryable=False)
    flow.start("cancelled", chain("pair", "x", "y"))
    flow.begin("cancelled", "x")
    flow.ok(CancelExecution("cancelled", "enough"))
    return flow


@dataclass(frozen=True)
class Case:
    """`run(codec, decided)`: a seeded run (`decided`: the conftest's harness for any
    decider), returning a harness that holds its `processor` and the event `records` it
    wrote; `views_match(engine, harness)` asserts the views equal the processor's state."""

    run: Callable[[Codec, Any], Any]
    views_match: Callable[[Engine, Any], None]


def _pool_run(codec: Codec, _decided: Any) -> Pool:
    pool = Pool(codec)
    story(pool)
    return pool


CASES: dict[str, Case] = {
    "pool": Case(_pool_run, lambda engine, pool: assert_pool_matches(engine, pool.state)),
    "dag": Case(dag_run, assert_dag_matches),
    "artifacts": Case(
        lambda _codec, decided: catalog(decided),
        lambda engine, log: assert_matches_catalog(engine, log.processor.state("default"))),
    "arbitration": Case(
        lambda _codec, decided: contention(decided),
        lambda engine, log: assert_matches_arbiter(engine, log.processor.state("default"))),
    "stale": Case(
        lambda _codec, decided: stale_story(decided),
        lambda engine, log: assert_matches_stale(engine, log.processor.state("default"))),
}

COMPONENT_IDS = [component.name for component in COMPONENTS]


@pytest.fixture(params=COMPONENTS, ids=COMPONENT_IDS)
def component(request) -> Component:
    return request.param


def case_of(component: Component) -> Case:
    assert component.name in CASES, f"register a contract case for {component.name}"
    return CASES[component.name]


def deciders_of(component: Component) -> tuple[Decider, ...]:
    return component.deciders + component.subjects


# --- the contract -----------------------------------------------------------------------------

MESSAGE_TYPES = [(component.name, cls) for component in COMPONENTS
                 for decider in deciders_of(component)
                 for cls in (*decider.commands, *decider.events)]


@pytest.mark.parametrize("cls", [cls for _, cls in MESSAGE_TYPES],
                         ids=[f"{name}-{cls.__name__}" for name, cls in MESSAGE_TYPES])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_message_type_round_trips_through_avro(cls: type[Message], data) -> None:
    name = cls.avro_name
    assert name in CODEC.schemas, f"{cls.__name__} has no schema {name}"
    record = data.draw(values_of(CODEC.schemas[name]), label=name)
    decoded = CODEC.decode(CODEC.encode(name, record))
    assert decoded.name == name and decoded.record == record
    message = from_record(cls, decoded.record)
    extra = {k: v for k, v in record.items() if k in ("meta", "envelope")}
    again = CODEC.decode(CODEC.encode(name, {**extra, **to_record(message)}))
    assert from_record(cls, again.record) == message


def test_every_topic_is_in_the_catalog(component: Component) -> None:
    known = load_catalog()
    for decider in deciders_of(component):
        used = {decider.command_topic, decider.event_topic, RESULTS}
        if decider.checkpoint_topic is not None:
            used.add(decider.checkpoint_topic.topic)
        assert used <= set(known), f"{decider.name}: {sorted(used - set(known))} not in catalog"


def test_replaying_the_events_reproduces_the_state(component: Component, codec: Codec,
                                                   decided) -> None:
    harness = case_of(component).run(codec, decided)
    decider = harness.processor.decider
    folded: dict[str, Any] = {}
    for record in harness.records:
        decoded = codec.decode(record.value)
        envelope = decoded.record["envelope"]
        key = envelope["entity_key"]
        state = folded.get(key, decider.initial_state(key))
        event = from_record(decider.event_type(decoded.name), decoded.record)
        folded[key] = decider.evolve(state, event, envelope["occurred_at"])
    assert folded, f"the {component.name} case decided no events"
    assert set(folded) == set(harness.processor.entities)
    for key, state in folded.items():
        assert state == harness.processor.state(key), key


def test_after_a_seeded_run_the_views_equal_the_state(component: Component, codec: Codec,
                                                      decided, engine: Engine,
                                                      tmp_path) -> None:
    case = case_of(component)
    harness = case.run(codec, decided)
    Projector(engine, views(Settings(data_dir=tmp_path))).apply_batch(harness.records)
    case.views_match(engine, harness)
