"""Properties of the codec and the compatibility checker, with records built from the schemas."""

from __future__ import annotations

import io
import json
import struct

import pytest
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.catalog import current_schemas
from schemas.codec import Codec
from schemas.compat import check_backward
from schemas.registry import EmbeddedRegistry, recorded_versions, schema_id_for
from streams.errors import MalformedMessageError, SchemaError

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
PRIMITIVES = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": st.integers(*INT32),
    "long": st.integers(*INT64),
    "float": st.floats(width=32, allow_nan=False),
    "double": st.floats(allow_nan=False),
    # UTF-8 bytes: Avro lets a string reader read bytes, which only works for text
    "bytes": st.text(max_size=16).map(str.encode),
    "string": st.text(max_size=32),
}


def _qualify(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def values_of(schema: object) -> st.SearchStrategy:
    """Valid Avro values of a schema; timestamp-millis as int milliseconds, as the Pit uses."""
    return _values(schema, {}, "")


def _values(schema: object, named: dict[str, st.SearchStrategy], namespace: str):
    if isinstance(schema, list):
        return st.one_of([_values(branch, named, namespace) for branch in schema])
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return PRIMITIVES[schema]
        qualified = _qualify(schema, namespace)
        return named[qualified] if qualified in named else named[schema]
    kind = schema["type"]
    if isinstance(kind, (dict, list)) or (kind not in PRIMITIVES and kind not in (
            "record", "error", "enum", "fixed", "array", "map")):
        return _values(kind, named, namespace)
    if kind in PRIMITIVES:  # logical types (timestamp-millis included) take the underlying type
        return PRIMITIVES[kind]
    if kind == "array":
        return st.lists(_values(schema["items"], named, namespace), max_size=4)
    if kind == "map":
        return st.dictionaries(st.text(max_size=8), _values(schema["values"], named, namespace),
                               max_size=4)
    name = _qualify(schema["name"], schema.get("namespace", namespace))
    if kind == "enum":
        strategy = st.sampled_from(schema["symbols"])
    elif kind == "fixed":
        strategy = st.binary(min_size=schema["size"], max_size=schema["size"])
    else:
        built: dict[str, st.SearchStrategy] = {}
        named[name] = st.deferred(lambda: built["record"])  # recursive records
        inner = name.rpartition(".")[0]
        built["record"] = st.fixed_dictionaries(
            {field["name"]: _values(field["type"], named, inner) for field in schema["fields"]})
        strategy = built["record"]
    named[name] = strategy
    return strategy


CODEC = Codec(EmbeddedRegistry())
NAMES = sorted(current_schemas())
MT = "pit.pool.ModelTransitioned"


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_record_round_trips(name, data):
    record = data.draw(values_of(current_schemas()[name]), label=name)
    encoded = CODEC.encode(name, record)
    assert encoded[0] == 0
    assert struct.unpack(">I", encoded[1:5])[0] == CODEC.schema_id(name)
    decoded = CODEC.decode(encoded)
    assert decoded.name == name
    assert decoded.schema_id == CODEC.schema_id(name)
    assert decoded.record == record


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_every_strict_prefix_is_malformed(name, data):
    encoded = CODEC.encode(name, data.draw(values_of(current_schemas()[name])))
    cut = data.draw(st.integers(0, len(encoded) - 1), label="cut")
    with pytest.raises(MalformedMessageError):
        CODEC.decode(encoded[:cut])


@settings(max_examples=50, deadline=None)
@given(data=st.binary(min_size=1, max_size=40).filter(lambda b: b[0] != 0))
def test_anything_without_the_magic_byte_is_malformed(data):
    with pytest.raises(MalformedMessageError, match="magic byte"):
        CODEC.decode(data)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_recorded_version_decodes_with_the_current_reader(data):
    """Old events: written with any recorded version, read as the current schema."""
    name = data.draw(st.sampled_from(NAMES), label="name")
    texts = recorded_versions()[name]
    writer = json.loads(data.draw(st.sampled_from(texts), label="version"))
    old = data.draw(values_of(writer), label="record")
    body = io.BytesIO()
    schemaless_writer(body, parse_schema(writer), old)
    decoded = CODEC.decode(struct.pack(">bI", 0, schema_id_for(writer)) + body.getvalue())
    assert decoded.name == name
    current_fields = {field["name"]: field for field in current_schemas()[name]["fields"]}
    for field_name, value in decoded.record.items():
        expected = old[field_name] if field_name in old else current_fields[field_name]["default"]
        assert value == expected, field_name
    if name == MT and len(texts) > 1 and "metadata" not in old:
        assert decoded.record["metadata"] == {}


# -- the checker agrees with the resolver that reads the bytes --------------------------------

ENUM_SYMBOLS = ["A", "B", "C"]


def _small_types(depth: int = 2) -> st.SearchStrategy:
    """Field types to evolve between: primitives, enums, unions, arrays, maps, nested records."""
    leaves = st.one_of(
        st.sampled_from(["null", "boolean", "int", "long", "float", "double", "bytes", "string"]),
        st.lists(st.sampled_from(ENUM_SYMBOLS), min_size=1, unique=True).map(
            lambda symbols: {"type": "enum", "name": "E", "symbols": symbols}),
    )
    if depth == 0:
        return leaves
    inner = _small_types(depth - 1)
    return st.one_of(
        leaves,
        st.lists(st.sampled_from(["null", "int", "long", "string", "double"]), min_size=1,
                 max_size=3, unique=True),
        inner.filter(lambda t: not isinstance(t, list)).map(
            lambda t: {"type": "array", "items": t}),
        inner.filter(lambda t: not isinstance(t, list)).map(
            lambda t: {"type": "map", "values": t}),
    )


def _wrap(field_type: object, extra: list[dict]) -> dict:
    return {"type": "record", "name": "R", "namespace": "prop",
            "fields": [{"name": "v", "type": field_type}, *extra]}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_what_the_checker_accepts_fastavro_can_read(data):
    writer_type = data.draw(_small_types(), label="writer")
    reader_type = data.draw(_small_types(), label="reader")
    extra = data.draw(st.sampled_from([[], [{"name": "added", "type": "long", "default": 7}]]))
    writer, reader = _wrap(writer_type, []), _wrap(reader_type, extra)
    try:
        parsed_writer, parsed_reader = parse_schema(writer), parse_schema(reader)
    except Exception:  # e.g. a union with two enums: not a valid schema, nothing to check
        return
    problems = check_backward(reader, writer)
    value = data.draw(values_of(writer), label="value")
    body = io.BytesIO()
    schemaless_writer(body, parsed_writer, value)
    if not problems:
        read = schemaless_reader(io.BytesIO(body.getvalue()), parsed_writer, parsed_reader)
        assert set(read) == {"v"} | {field["name"] for field in extra}
        if extra:
            assert read["added"] == 7
    else:
        assert all(problem.startswith("prop.R.v") for problem in problems)


@given(st.sampled_from(NAMES))
def test_every_current_schema_is_compatible_with_itself(name):
    schema = current_schemas()[name]
    assert check_backward(schema, schema) == []
    with pytest.raises(SchemaError):
        CODEC.encode("pit.NoSuchRecord", {})
