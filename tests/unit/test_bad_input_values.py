"""Values no store can hold are refused by the deciders with the field named, whatever the
component (streams.decider.check_values and the components' own bounds); a command's unknown
fields are named, not dropped; the processor answers bad command ids and unencodable events
instead of stopping; a corrupt registry record changes nothing (issue 11)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_pool import Pool

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry, registry_record
from streams.artifacts.catalog import RecordArtifactAccess, StoreArtifact
from streams.dag.execution import StartExecution, TimerFired
from streams.decider import (
    INT64_MAX,
    MAX_ID_CHARS,
    MAX_ITEMS,
    Message,
    Rejection,
    check_values,
    from_record,
    to_record,
)
from streams.errors import InvalidRecordError, SchemaError
from streams.log import LogRecord
from streams.pool.lifecycle import RecordModelUsage, TransitionModel
from streams.pool.pool import (
    POOL,
    HostRegistered,
    RegisterHost,
    RegisterModel,
    ReportHealth,
    WarmModel,
)
from streams.processor import Processor
from streams.topics import DEAD_LETTERS, RESULTS

CODEC = Codec(EmbeddedRegistry())
T0 = 1_700_000_000_000


def problem(message: Message) -> str:
    with pytest.raises(Rejection) as caught:
        check_values(message)
    return caught.value.reason


@pytest.mark.parametrize(("message", "reason"), [
    (ReportHealth("h", "m", True, float("nan")), "ReportHealth.latency_ms: nan is not a finite"),
    (WarmModel("m", float("inf"), "r"), "WarmModel.probability: inf is not a finite number"),
    (RegisterModel("m\x00", "py://m", 1, 1), "RegisterModel.model_id: contains a NUL"),
    (RegisterModel("m" * 256, "py://m", 1, 1), "RegisterModel.model_id: 256 characters, more"
     " than 255"),
    (RegisterHost("h", 1 << 63, 1), "RegisterHost.memory_budget_mb: 9223372036854775808 does"
     " not fit in 64 bits"),
    (TransitionModel("m", "Warming", "UserRequest", {"k": "v\x00"}),  # type: ignore[arg-type]
     "TransitionModel.metadata: a key or value: contains a NUL"),
    (StoreArtifact("a", 1, tags=["t"] * (MAX_ITEMS + 1)), "StoreArtifact.tags: 10,001 entries"),
    (StartExecution("x", capacity_cpu={"cpu": float("-inf")}),
     "StartExecution.capacity_cpu: a key or value: -inf is not a finite number"),
])
def test_a_value_no_store_can_hold_is_refused_with_the_field_named(message, reason) -> None:
    assert problem(message).startswith(reason)


def test_composite_ids_and_documents_may_be_longer_than_an_id() -> None:
    check_values(TimerFired("x", "x" * 200 + "/" + "n" * 200 + "/timeout/1"))
    check_values(StartExecution("x", definition="{" + " " * 100_000 + "}"))


@given(st.text(max_size=MAX_ID_CHARS + 40))
def test_an_id_is_refused_exactly_when_too_long_or_holding_a_nul(model_id: str) -> None:
    command = RecordModelUsage(model_id, 1)
    bad = len(model_id) > MAX_ID_CHARS or "\x00" in model_id
    if bad:
        assert problem(command).startswith("RecordModelUsage.model_id: ")
    else:
        check_values(command)


@given(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(1 << 70), 1 << 70))
def test_floats_must_be_finite_and_ints_fit_64_bits(latency: float, invocations: int) -> None:
    for message, bad in ((ReportHealth("h", "m", True, latency), latency != latency or abs(
            latency) == float("inf")), (RecordModelUsage("m", invocations),
                                        not -(1 << 63) <= invocations < 1 << 63)):
        if bad:
            problem(message)
        else:
            check_values(message)


def test_the_issues_case_a_usage_count_that_would_overflow_is_refused() -> None:
    pool = Pool(("h1", 1000, 4), m=100)
    pool.hot("m")
    used = pool.model("m").lifecycle.usage_count
    assert pool.send(RecordModelUsage("m", INT64_MAX - used))
    assert "would overflow its usage count" in pool.reject(RecordModelUsage("m", 1))


def test_sizes_beyond_32_bits_are_refused_by_the_pool() -> None:
    pool = Pool(("h1", 1000, 4))
    assert "memory_mb must lie in 1..2147483647" in pool.reject(
        RegisterModel("m", "py://m", 1 << 31, 1))
    assert "capacity must lie in" in pool.reject(RegisterHost("h2", 100, 1 << 40))


def test_an_access_count_that_would_overflow_is_refused() -> None:
    from test_artifact_catalog import A, Catalog

    catalog = Catalog()
    catalog.send(StoreArtifact(A, 1))
    catalog.send(RecordArtifactAccess({A: INT64_MAX}, T0, T0 + 1))
    assert "would overflow its count" in catalog.reject(RecordArtifactAccess({A: 1}, T0,
                                                                             T0 + 1))


def test_unknown_fields_are_named_not_dropped() -> None:
    record = {"model_id": "m", "invocations": 1, "pool_id": "default", "invocatoins": 2}
    with pytest.raises(InvalidRecordError, match="unknown field 'invocatoins' for"
                       " RecordModelUsage \\(known: model_id, invocations, pool_id\\)"):
        from_record(RecordModelUsage, record)
    del record["invocatoins"]
    assert from_record(RecordModelUsage, {**record, "meta": {}}) == RecordModelUsage("m", 1)


# --- the processor ---------------------------------------------------------------------------

def command_record(command: Message, command_id: str, offset: int = 0) -> LogRecord:
    meta = {"command_id": command_id, "issued_at": T0, "issued_by": "test",
            "correlation_id": None}
    value = CODEC.encode(command.avro_name, {"meta": meta, **to_record(command)})
    return LogRecord(POOL.command_topic, 0, offset, T0, b"default", value)


def outcome_of(outputs) -> dict:
    return CODEC.decode(next(o for o in outputs if o.topic == RESULTS).value).record


@pytest.mark.parametrize("command_id", ["", "c" * 248, "nul\x00"])
def test_a_bad_command_id_is_rejected(command_id: str) -> None:
    outputs = Processor(POOL, CODEC).handle(
        [command_record(RegisterHost("h", 100, 1), command_id)])
    assert [o.topic for o in outputs] == [RESULTS]
    assert "a command id has 1 to 247 characters" in outcome_of(outputs)["reason"]


def test_an_event_the_codec_cannot_encode_is_dead_lettered_not_applied() -> None:
    """A decider that lets a value through its events cannot hold: the command is rejected
    as an internal error and dead-lettered, the state is untouched, the processor goes on."""
    careless = dataclasses.replace(POOL, decide=lambda state, command, now: [
        HostRegistered("h", 100, 1), HostRegistered("h", 1 << 64, 1)])
    processor = Processor(careless, CODEC)
    outputs = processor.handle([command_record(RegisterHost("h", 100, 1), "c1")])
    assert [o.topic for o in outputs] == [DEAD_LETTERS, RESULTS]
    assert outcome_of(outputs)["reason"].startswith("internal error: pit.pool.HostRegistered")
    assert processor.entities == {}  # not even the first event was applied
    processor.decider = POOL
    outputs = processor.handle([command_record(RegisterHost("h", 100, 1), "c2", 1)])
    assert outcome_of(outputs)["status"] == "ACCEPTED"


# --- the registry ----------------------------------------------------------------------------

def test_a_corrupt_registry_record_changes_nothing() -> None:
    registry = EmbeddedRegistry()
    name = "pit.pool.RegisterHost"
    real_id = CODEC.schema_id(name)
    good = {"subject": name, "version": 1, "id": real_id,
            "schema": json.dumps(CODEC.schemas[name])}
    assert registry_record(json.dumps(good).encode())["id"] == real_id
    other = json.dumps(CODEC.schemas["pit.pool.RegisterModel"])
    for value in (b"\x92garbage", b"[]", b"{}", b"[" * 5000 + b"]" * 5000,
                  json.dumps({**good, "id": 7}).encode(),
                  json.dumps({**good, "schema": other}).encode()):
        with pytest.raises(SchemaError):
            registry.load_record(value)
    assert registry.schema_by_id(real_id) == CODEC.schemas[name]


def test_a_lone_surrogate_is_one_clear_line_not_an_encoder_repr() -> None:
    from streams.decider import to_record
    from streams.errors import InvalidRecordError
    from streams.pool.pool import RegisterModel

    command = RegisterModel("m\udc80", "python:streams.pool.examples:sentiment", 5, 5)
    envelope = {"command_id": "c", "correlation_id": "c", "issued_at": 0, "issued_by": "t"}
    with pytest.raises(InvalidRecordError) as raised:
        Codec(EmbeddedRegistry()).encode(command.avro_name, {"meta": envelope,
                                                             **to_record(command)})
    assert str(raised.value) == ("pit.pool.RegisterModel: text that is not valid UTF-8"
                                 " (\\udc80 at position 1 of 'm\\udc80')")
