"""Schema evolution: the compatibility checker, the lockfile check, old events, registries."""

from __future__ import annotations

import base64
import copy
import io
import json
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from fastavro import parse_schema, schemaless_writer
from fastavro.schema import fingerprint

from schemas.catalog import canonical, current_schemas, schema_json
from schemas.check import check_repository, record_versions
from schemas.codec import Codec
from schemas.compat import check_backward
from schemas.registry import (
    VERSIONS_FILE,
    ConfluentRegistry,
    EmbeddedRegistry,
    parse_recorded,
    rabin_fingerprint,
    recorded_versions,
    schema_id_for,
)
from streams.config import Settings
from streams.errors import (
    ConfigError,
    IncompatibleSchemaError,
    InvalidRecordError,
    MalformedMessageError,
    PitError,
    SchemaError,
    UnknownSchemaError,
)

MT = "pit.pool.ModelTransitioned"


def record(*fields: dict, name: str = "Thing", namespace: str = "test") -> dict:
    return {"type": "record", "name": name, "namespace": namespace, "fields": list(fields)}


def schemas_copy() -> dict[str, dict]:
    return copy.deepcopy(dict(current_schemas()))


def field_of(schema: dict, name: str) -> dict:
    return next(field for field in schema["fields"] if field["name"] == name)


def envelope(**overrides: object) -> dict:
    value = {"event_id": "e-1", "event_type": "ModelTransitioned", "entity_key": "model-a",
             "sequence": 3, "correlation_id": "c-1", "causation_id": "cmd-1",
             "occurred_at": 1_700_000_000_123, "producer": "test"}
    value.update(overrides)
    return value


def transitioned(**overrides: object) -> dict:
    value = {"envelope": envelope(), "model_id": "model-a", "from_state": "Cold",
             "to_state": "Warming", "reason": "UserRequest", "time_in_previous_ms": 42,
             "metadata": {"gpu": "a100"}}
    value.update(overrides)
    return value


# -- the CI check on the repository itself ---------------------------------------------------


def test_repository_schemas_pass_the_check():
    report = check_repository()
    assert report.ok, "\n".join(report.lines())
    assert not report.problems and not report.errors
    assert report.lines()[-1].endswith(": OK")


def test_lockfile_records_every_record_and_the_evolved_ones_twice():
    versions = recorded_versions()
    assert set(current_schemas()) <= set(versions)
    for name, texts in versions.items():
        assert canonical(json.loads(texts[-1])) == canonical(current_schemas()[name]), name
    v1, _ = (json.loads(text) for text in versions[MT])
    assert [f["name"] for f in v1["fields"]][-1] == "time_in_previous_ms"
    assert "metadata" not in {f["name"] for f in v1["fields"]}
    # pit.Outcome v2 added the command's position (partition and offset) with defaults
    outcome_v1, _ = (json.loads(text) for text in versions["pit.Outcome"])
    assert "command_offset" not in {f["name"] for f in outcome_v1["fields"]}
    # Issue 3 routed lifecycle commands by pool (pool_id), gave hosts an inference endpoint
    # and allocations a workflow id, all with defaults; issue 12 gave executions a tenant;
    # issue 15 gave prewarms the predictor's scores and evictions their reason; issue 13
    # gave a stale plan's items their value score
    assert {name: len(texts) for name, texts in versions.items() if len(texts) > 1} == {
        MT: 2, "pit.Outcome": 2, "pit.pool.TransitionModel": 2,
        "pit.pool.RecordModelUsage": 2, "pit.pool.RegisterHost": 2,
        "pit.pool.HostRegistered": 2, "pit.pool.AllocateModel": 2,
        "pit.pool.AllocationQueued": 2, "pit.pool.ModelAllocated": 2,
        "pit.dag.StartExecution": 2, "pit.dag.ExecutionStarted": 2,
        "pit.dag.NodeScheduled": 2, "pit.pool.WarmModel": 2, "pit.pool.ModelEvicted": 2,
        "pit.stale.PlanItem": 2, "pit.stale.PlanItemsListed": 2}


def test_report_lines_are_single_lines():
    schemas = schemas_copy()
    field_of(schemas[MT], "to_state")  # referenced by name; the definition is in from_state
    field_of(schemas[MT], "from_state")["type"]["symbols"].remove("Hot")
    schemas["test.Fresh"] = record({"name": "a", "type": "string"}, name="Fresh")
    report = check_repository(schemas)
    assert not report.ok
    assert all("\n" not in line for line in report.lines())
    assert report.lines()[-1].startswith(f"{len(schemas)} records:")
    assert "FAILED" in report.lines()[-1]


# -- incompatible changes are refused --------------------------------------------------------


def test_removing_an_enum_symbol_is_refused_where_the_enum_is_used():
    schemas = schemas_copy()
    field_of(schemas[MT], "from_state")["type"]["symbols"].remove("Hot")
    report = check_repository(schemas)
    assert not report.ok
    assert report.incompatible == [MT]
    assert f"{MT} cannot read its v1: {MT}.to_state: enum symbol 'Hot' removed" in report.problems
    assert f"{MT} cannot read its v2: {MT}.from_state: enum symbol 'Hot' removed" in report.problems
    assert f"incompatible: {MT} cannot read its v2: {MT}.to_state: enum symbol 'Hot' removed" \
        in report.lines()


def test_adding_a_field_without_default_is_refused():
    schemas = schemas_copy()
    schemas[MT]["fields"].append({"name": "gpu_count", "type": "int"})
    report = check_repository(schemas)
    assert not report.ok
    assert f"{MT} cannot read its v1: {MT}.gpu_count: field added without a default" \
        in report.problems


def test_changing_string_to_int_is_refused():
    schemas = schemas_copy()
    field_of(schemas[MT], "model_id")["type"] = "int"
    report = check_repository(schemas)
    assert not report.ok
    assert f"{MT} cannot read its v2: {MT}.model_id: type changed from string to int" \
        in report.problems


def test_changing_a_nested_record_field_names_the_whole_path():
    schemas = schemas_copy()
    field_of(field_of(schemas[MT], "envelope")["type"], "sequence")["type"] = "int"
    report = check_repository(schemas)
    assert f"{MT} cannot read its v1: {MT}.envelope.sequence: type changed from long to int" \
        in report.problems


def test_removing_a_union_branch_from_the_reader_is_refused():
    schemas = schemas_copy()
    field_of(schemas["pit.Outcome"], "reason")["type"] = "string"
    report = check_repository(schemas)
    assert not report.ok
    assert report.problems == [  # backward transitive: every recorded version is checked
        f"pit.Outcome cannot read its v{v}: pit.Outcome.reason: union branch 'null' of old type"
        " union [null, string] cannot be read as string" for v in (1, 2)
    ]
    writer = record({"name": "v", "type": ["null", "string", "long"]})
    reader = record({"name": "v", "type": ["null", "string"]})
    assert check_backward(reader, writer) == ["test.Thing.v: union branch 'long' removed"]


def test_an_incompatible_change_is_not_recorded(tmp_path):
    path = tmp_path / "versions.json"
    path.write_text(VERSIONS_FILE.read_text())
    schemas = schemas_copy()
    field_of(schemas[MT], "model_id")["type"] = "int"
    with pytest.raises(IncompatibleSchemaError, match="model_id: type changed from string"):
        record_versions(schemas, path)
    assert path.read_text() == VERSIONS_FILE.read_text()


# -- compatible changes pass -----------------------------------------------------------------


def test_adding_a_field_with_default_is_pending_then_recorded(tmp_path):
    path = tmp_path / "versions.json"
    path.write_text(VERSIONS_FILE.read_text())
    schemas = schemas_copy()
    schemas[MT]["fields"].append({"name": "gpu_count", "type": "int", "default": 0})
    report = check_repository(schemas, recorded_versions(path))
    assert report.ok
    assert report.pending == {MT: 3}
    assert f"pending: {MT} changed compatibly since v2" in "\n".join(report.lines())

    assert record_versions(schemas, path) == [f"recorded: {MT} v3"]
    recorded = recorded_versions(path)
    assert len(recorded[MT]) == 3
    assert recorded[MT][2] == schema_json(schemas[MT])
    again = check_repository(schemas, recorded)
    assert again.ok and not again.pending and again.unchanged[MT] == 3
    assert record_versions(schemas, path) == []


def test_a_new_record_is_reported_and_recorded_as_v1(tmp_path):
    path = tmp_path / "versions.json"
    schemas = {"test.Fresh": record({"name": "a", "type": "string"}, name="Fresh")}
    report = check_repository(schemas, {})
    assert report.ok and report.new == ["test.Fresh"]
    assert record_versions(schemas, path) == ["recorded: test.Fresh v1"]
    assert json.loads(path.read_text()) == {"test.Fresh": [schema_json(schemas["test.Fresh"])]}


def test_int_to_long_promotion_passes():
    schemas = schemas_copy()
    versions = recorded_versions()
    old = copy.deepcopy(schemas["pit.pool.ModelUsageRecorded"])
    field_of(old, "invocations")["type"] = "int"
    versions["pit.pool.ModelUsageRecorded"] = [schema_json(old)]
    report = check_repository(schemas, versions)
    assert report.ok, report.lines()
    assert report.pending == {"pit.pool.ModelUsageRecorded": 2}


def test_adding_an_enum_symbol_passes():
    schemas = schemas_copy()
    field_of(schemas[MT], "from_state")["type"]["symbols"].append("Evicted")
    report = check_repository(schemas)
    assert report.ok, report.lines()
    assert MT in report.pending


def test_doc_only_change_needs_no_new_version():
    schemas = schemas_copy()
    schemas[MT]["doc"] = "Reworded."
    report = check_repository(schemas)
    assert report.ok and MT in report.unchanged


@pytest.mark.parametrize(("writer", "reader"), [
    ("int", "long"), ("int", "float"), ("int", "double"), ("long", "float"), ("long", "double"),
    ("float", "double"), ("string", "bytes"), ("bytes", "string"),
    ({"type": "long", "logicalType": "timestamp-millis"}, "long"),
    ("long", {"type": "long", "logicalType": "timestamp-micros"}),
    ("string", ["null", "string"]), ("int", ["null", "long"]),
    (["null", "int"], ["null", "long", "string"]),
    ({"type": "array", "items": "int"}, {"type": "array", "items": "double"}),
    ({"type": "map", "values": "int"}, {"type": "map", "values": ["null", "long"]}),
    ({"type": "enum", "name": "E", "symbols": ["A"]}, {"type": "enum", "name": "E",
                                                      "symbols": ["B", "A"]}),
    ({"type": "enum", "name": "E", "symbols": ["A", "Z"]},
     {"type": "enum", "name": "E", "symbols": ["A", "X"], "default": "X"}),
    ({"type": "fixed", "name": "F", "size": 4}, {"type": "fixed", "name": "F", "size": 4}),
    ({"type": "enum", "name": "Old", "symbols": ["A"]},
     {"type": "enum", "name": "New", "aliases": ["Old"], "symbols": ["A"]}),
    ({"type": "enum", "name": "a.E", "symbols": ["A"]},
     {"type": "enum", "name": "b.E", "symbols": ["A"]}),
])
def test_compatible_types(writer, reader):
    assert check_backward(record({"name": "v", "type": reader}),
                          record({"name": "v", "type": writer})) == []


@pytest.mark.parametrize(("writer", "reader", "problem"), [
    ("long", "int", "test.Thing.v: type changed from long to int"),
    ("double", "float", "test.Thing.v: type changed from double to float"),
    ("string", "int", "test.Thing.v: type changed from string to int"),
    ("int", ["null", "string"], "test.Thing.v: type changed from int to union [null, string]"),
    (["null", "string"], ["string", "long"], "test.Thing.v: union branch 'null' removed"),
    ({"type": "array", "items": "string"}, {"type": "array", "items": "int"},
     "test.Thing.v[]: type changed from string to int"),
    ({"type": "map", "values": "long"}, {"type": "map", "values": "int"},
     "test.Thing.v{}: type changed from long to int"),
    ({"type": "array", "items": "string"}, {"type": "map", "values": "string"},
     "test.Thing.v: type changed from array<string> to map<string>"),
    ({"type": "fixed", "name": "F", "size": 4}, {"type": "fixed", "name": "F", "size": 8},
     "test.Thing.v: fixed size changed from 4 to 8"),
    ({"type": "fixed", "name": "F", "size": 4}, {"type": "fixed", "name": "G", "size": 4},
     "test.Thing.v: fixed renamed from test.F to test.G (add the alias 'test.F' to read old"
     " data)"),
    ({"type": "enum", "name": "E", "symbols": ["A", "B"]},
     {"type": "enum", "name": "E", "symbols": ["A"]}, "test.Thing.v: enum symbol 'B' removed"),
    ({"type": "enum", "name": "E", "symbols": ["A"]},
     {"type": "enum", "name": "Other", "symbols": ["A"]},
     "test.Thing.v: enum renamed from test.E to test.Other (add the alias 'test.E' to read old"
     " data)"),
])
def test_incompatible_types(writer, reader, problem):
    assert check_backward(record({"name": "v", "type": reader}),
                          record({"name": "v", "type": writer})) == [problem]


def test_record_fields_removed_renamed_with_alias_and_nested():
    inner_old = {"type": "record", "name": "Inner", "fields": [{"name": "n", "type": "int"}]}
    inner_new = {"type": "record", "name": "Inner", "fields": [
        {"name": "n", "type": "long"}, {"name": "m", "type": "string"}]}
    writer = record({"name": "gone", "type": "string"}, {"name": "old_name", "type": "int"},
                    {"name": "inner", "type": inner_old}, {"name": "again", "type": "Inner"})
    reader = record({"name": "new_name", "aliases": ["old_name"], "type": "long"},
                    {"name": "inner", "type": inner_new}, {"name": "again", "type": "test.Inner"})
    assert check_backward(reader, writer) == [
        "test.Thing.inner.m: field added without a default",
        "test.Thing.again.m: field added without a default",
    ]


def test_definitions_inside_fields_the_reader_dropped_still_resolve():
    enum = {"type": "enum", "name": "E", "symbols": ["A", "B"]}
    writer = record({"name": "dropped", "type": enum}, {"name": "kept", "type": "E"})
    reader = record({"name": "kept", "type": {"type": "enum", "name": "E", "symbols": ["A"]}})
    assert check_backward(reader, writer) == ["test.Thing.kept: enum symbol 'B' removed"]


def test_recursive_records_terminate():
    linked = {"type": "record", "name": "Node", "namespace": "test", "fields": [
        {"name": "value", "type": "int"}, {"name": "next", "type": ["null", "Node"]}]}
    newer = copy.deepcopy(linked)
    newer["fields"][0]["type"] = "long"
    assert check_backward(newer, linked) == []
    assert check_backward(linked, newer) == [
        "test.Node.value: type changed from long to int",
    ]


def test_every_current_schema_reads_itself_and_every_recorded_version():
    for name, schema in current_schemas().items():
        assert check_backward(schema, schema) == [], name
        for text in recorded_versions().get(name, []):
            assert check_backward(schema, json.loads(text)) == [], name


# -- old events decode with the current reader -----------------------------------------------


def test_an_event_written_with_v1_decodes_with_metadata_defaulted():
    v1 = json.loads(recorded_versions()[MT][0])
    v1_id = schema_id_for(v1)
    registry = EmbeddedRegistry()  # a fresh process: knows v1 from versions.json
    assert registry.subjects()[MT] == [v1_id, schema_id_for(current_schemas()[MT])]
    body = io.BytesIO()
    old_event = transitioned()
    del old_event["metadata"]
    schemaless_writer(body, parse_schema(v1), old_event)
    data = struct.pack(">bI", 0, v1_id) + body.getvalue()

    decoded = Codec(registry).decode(data)
    assert decoded.name == MT
    assert decoded.schema_id == v1_id
    assert decoded.record == {**old_event, "metadata": {}}
    assert decoded.record["envelope"]["occurred_at"] == 1_700_000_000_123


def test_embedded_registry_publishes_versions_in_lockfile_order():
    published = dict(EmbeddedRegistry().take_unpublished())
    first = json.loads(published[f"{MT}/1".encode()])
    second = json.loads(published[f"{MT}/2".encode()])
    assert "metadata" not in first["schema"] and "metadata" in second["schema"]
    reloaded = EmbeddedRegistry(versions={})
    reloaded.load_record(json.dumps(first).encode())
    assert canonical(reloaded.schema_by_id(first["id"])) == canonical(json.loads(first["schema"]))


def test_a_schema_record_read_twice_is_loaded_once():
    """`pit up` publishes its schemas without idempotence (streams/app.py,
    `Stack.sync_registry`): a retried record lands twice and must change nothing."""
    published = EmbeddedRegistry().take_unpublished()
    once, twice = EmbeddedRegistry(versions={}), EmbeddedRegistry(versions={})
    for _, value in published:
        once.load_record(value)
    for _, value in published + published:
        twice.load_record(value)
    assert twice.subjects() == once.subjects()
    assert len(twice.subjects()[MT]) == 2  # v1 and the current one, each once


def test_a_broken_lockfile_entry_is_a_schema_error():
    with pytest.raises(SchemaError, match=r"versions.json: pit.Envelope v1 is named pit.Outcome"):
        EmbeddedRegistry(versions={"pit.Envelope": [schema_json(current_schemas()["pit.Outcome"])]})
    report = check_repository(versions={"pit.Envelope": ["not json"]})
    assert not report.ok and report.errors[0].startswith("versions.json: pit.Envelope v1")


# -- malformed input -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec(EmbeddedRegistry())


def test_bad_magic_byte(codec):
    good = codec.encode(MT, transitioned())
    for data in (b"\x01" + good[1:], b"", b'{"json": true}'):
        with pytest.raises(MalformedMessageError, match="magic byte"):
            codec.decode(data)


def test_truncated_body(codec):
    good = codec.encode(MT, transitioned())
    assert codec.decode(good).record == transitioned()
    with pytest.raises(MalformedMessageError, match=MT):
        codec.decode(good[:-3])


def test_schema_ids_are_the_fingerprints_fastavro_computes():
    """Our own CRC-64-AVRO (its table made once) gives fastavro's fingerprint of every
    schema the registry knows, so no id changes."""
    known = [parse_recorded(name, number, text) for name, texts in recorded_versions().items()
             for number, text in enumerate(texts, 1)] + list(current_schemas().values())
    for schema in known:
        form = canonical(schema)
        assert rabin_fingerprint(form.encode()) == int(fingerprint(form, "CRC-64-AVRO"), 16)
    assert rabin_fingerprint(b"") == int(fingerprint("", "CRC-64-AVRO"), 16)


def test_unknown_schema_id(codec):
    good = codec.encode(MT, transitioned())
    known = set(EmbeddedRegistry()._by_id)
    unknown = next(i for i in range(1, 100) if i not in known)
    with pytest.raises(UnknownSchemaError, match=f"unknown schema id {unknown}"):
        codec.decode(struct.pack(">bI", 0, unknown) + good[5:])


def test_the_record_name_is_read_from_the_header_alone(codec):
    good = codec.encode(MT, transitioned())
    assert codec.name_of(good) == codec.name_of(good[:5]) == MT  # the body is not read
    for data in (b"\x01" + good[1:], b"", good[:4]):
        with pytest.raises(MalformedMessageError, match="Confluent-framed"):
            codec.name_of(data)
    known = set(EmbeddedRegistry()._by_id)
    unknown = next(i for i in range(1, 100) if i not in known)
    with pytest.raises(UnknownSchemaError, match=f"unknown schema id {unknown}"):
        codec.name_of(struct.pack(">bI", 0, unknown))


def test_invalid_record_and_unknown_name(codec):
    with pytest.raises(InvalidRecordError):
        codec.encode(MT, transitioned(to_state="Lukewarm"))
    with pytest.raises(SchemaError, match=r"no schema named pit\.Nope"):
        codec.encode("pit.Nope", {})
    assert issubclass(MalformedMessageError, PitError)


# -- ConfluentRegistry against a real HTTP server --------------------------------------------


class FakeConfluent(ThreadingHTTPServer):
    """The subset of the Confluent Schema Registry REST contract the Pit uses.

    `requests` holds (method, path without the query, headers, JSON body)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.ids: dict[str, int] = {}
        self.schemas: dict[int, str] = {}
        self.requests: list[tuple[str, str, dict[str, str], object]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class _Handler(BaseHTTPRequestHandler):
    server: FakeConfluent

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            path = urlsplit(self.path).path
            self.server.requests.append(("POST", path, dict(self.headers), body))
            parts = path.strip("/").split("/")
            if len(parts) != 3 or parts[0] != "subjects" or parts[2] != "versions":
                return self._answer(404, {"error_code": 404, "message": "HTTP 404 Not Found"})
            if parts[1] == "refused":
                return self._answer(409, {"error_code": 409, "message": "incompatible schema"})
            text = body["schema"]
            if text not in self.server.ids:
                self.server.ids[text] = len(self.server.ids) + 1
                self.server.schemas[self.server.ids[text]] = text
            self._answer(200, {"id": self.server.ids[text]})

    def do_GET(self) -> None:
        with self.server.lock:
            path = urlsplit(self.path).path
            self.server.requests.append(("GET", path, dict(self.headers), None))
            prefix = "/schemas/ids/"
            tail = path[len(prefix):]
            if path.startswith(prefix) and tail.isdigit() and int(tail) in self.server.schemas:
                return self._answer(200, {"schema": self.server.schemas[int(tail)]})
            self._answer(404, {"error_code": 40403, "message": "Schema not found"})


@pytest.fixture
def confluent():
    server = FakeConfluent()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_confluent_register_posts_once_per_schema(confluent):
    registry = ConfluentRegistry(confluent.url)
    schema = current_schemas()[MT]
    first = registry.register(MT, schema)
    assert registry.register(MT, schema) == first
    assert registry.register(MT, copy.deepcopy(schema)) == first
    other = registry.register("pit.Envelope", current_schemas()["pit.Envelope"])
    assert other != first
    posts = [r for r in confluent.requests if r[0] == "POST"]
    assert [r[1] for r in posts] == [f"/subjects/{MT}/versions", "/subjects/pit.Envelope/versions"]
    assert all(r[2]["Content-Type"] == "application/vnd.schemaregistry.v1+json" for r in posts)
    assert posts[0][3]["schema"] == schema_json(schema)
    assert posts[0][3].get("schemaType", "AVRO") == "AVRO"
    assert registry.schema_by_id(first) == schema  # cached from registering: no GET
    assert not [r for r in confluent.requests if r[0] == "GET"]


def test_confluent_codec_round_trip_fetches_each_id_once(confluent):
    data = Codec(ConfluentRegistry(confluent.url)).encode(MT, transitioned())
    reader = Codec(ConfluentRegistry(confluent.url))
    assert reader.decode(data).record == transitioned()
    assert reader.decode(data).record == transitioned()
    gets = [r for r in confluent.requests if r[0] == "GET"]
    schema_id = confluent.ids[schema_json(current_schemas()[MT])]
    assert [r[1] for r in gets] == [f"/schemas/ids/{schema_id}"]
    assert "application/vnd.schemaregistry.v1+json" in gets[0][2]["Accept"]


def test_confluent_unknown_id_and_refusal(confluent):
    registry = ConfluentRegistry(confluent.url)
    with pytest.raises(UnknownSchemaError, match="unknown schema id 999"):
        registry.schema_by_id(999)
    with pytest.raises(SchemaError, match="HTTP 409") as refused:
        registry.register("refused", current_schemas()[MT])
    assert "\n" not in str(refused.value)


def test_confluent_basic_auth_and_bearer_credentials_arrive(confluent):
    settings = Settings.from_env({"PIT_SCHEMA_REGISTRY_URL": confluent.url,
                                  "PIT_SCHEMA_REGISTRY_BASIC_AUTH": "pit:s3:cret"})
    assert "s3:cret" not in repr(settings)
    ConfluentRegistry(confluent.url, options=settings.schema_registry_options).register(
        MT, current_schemas()[MT])
    expected = "Basic " + base64.b64encode(b"pit:s3:cret").decode()
    assert confluent.requests[-1][2]["Authorization"] == expected

    settings = Settings.from_env({"PIT_SCHEMA_REGISTRY_BEARER_TOKEN": "tok-1",
                                  "PIT_SCHEMA_REGISTRY_LOGICAL_CLUSTER": "lsrc-1"})
    ConfluentRegistry(confluent.url, options=settings.schema_registry_options).schema_by_id(1)
    headers = confluent.requests[-1][2]
    assert (headers["Authorization"], headers["target-sr-cluster"]) == ("Bearer tok-1", "lsrc-1")


def test_confluent_settings_are_checked():
    for env, problem in (({"PIT_SCHEMA_REGISTRY_BASIC_AUTH": "nocolon"}, "user:password"),
                         ({"PIT_SCHEMA_REGISTRY_BEARER_TOKEN": "t"}, "LOGICAL_CLUSTER")):
        with pytest.raises(ConfigError, match=problem):
            Settings.from_env(env)
    options = Settings.from_env({"PIT_SCHEMA_REGISTRY_SSL_CAFILE": "/nonexistent/ca.pem"})
    with pytest.raises(ConfigError, match=r"schema registry at https://registry\.example"):
        ConfluentRegistry("https://registry.example", options=options.schema_registry_options)


def test_confluent_unreachable_is_a_one_line_schema_error():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    registry = ConfluentRegistry(f"http://127.0.0.1:{port}", timeout_s=2,
                                 options={"retries.wait.ms": 10})  # retried, quickly
    calls = (lambda: registry.schema_by_id(1),
             lambda: registry.register(MT, current_schemas()[MT]))
    for call in calls:
        with pytest.raises(SchemaError) as caught:
            call()
        message = str(caught.value)
        assert message.startswith(f"schema registry unreachable at http://127.0.0.1:{port}")
        assert "\n" not in message
        assert not isinstance(caught.value, UnknownSchemaError)


def test_short_and_overlong_messages_are_malformed(codec):
    good = codec.encode(MT, transitioned())
    with pytest.raises(MalformedMessageError, match="shorter than its header"):
        codec.decode(b"\x00\x00")
    with pytest.raises(MalformedMessageError, match="3 bytes after the record"):
        codec.decode(good + b"xyz")
