"""Avro on the wire in the Confluent framing: magic byte 0, 4-byte schema id, Avro body.

Decoding resolves the writer's schema (by id, from the registry) against the reader's
(the repository's current schema of the same name), so old events read with new code.
"""

from __future__ import annotations

import ast
import io
import re
import struct
from dataclasses import dataclass

import fastavro.read
from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.types import Schema
from fastavro.validation import ValidationError, validate

from schemas.catalog import canonical, current_schemas, fullname
from schemas.registry import SchemaRegistry
from streams.errors import InvalidRecordError, MalformedMessageError, SchemaError

# The Pit works in epoch milliseconds: deciders compute with them and writers accept them.
# So timestamp-millis decodes to the int on the wire, not a datetime (fastavro's hook).
fastavro.read.LOGICAL_READERS["long-timestamp-millis"] = lambda value, *_: value

MAGIC = 0
_HEADER = struct.Struct(">bI")


_EXPECTED = re.compile(r"(?: of type <class '\w+'>)? expected (\{.*\})$")


def _expected(match: re.Match) -> str:
    """`expected {...schema...}` -> a short phrase a CLI user can act on."""
    try:
        schema = ast.literal_eval(match.group(1))
    except (ValueError, SyntaxError):
        return f", expected {match.group(1)}"
    if isinstance(schema, dict) and schema.get("type") == "enum":
        return f", expected one of {', '.join(schema['symbols'])}"
    if isinstance(schema, dict) and "name" in schema:
        return f", expected {schema.get('type')} {schema['name']}"
    return f", expected {schema}"


@dataclass(frozen=True)
class Decoded:
    name: str
    record: dict
    schema_id: int


class Codec:
    def __init__(self, registry: SchemaRegistry, schemas: dict[str, dict] | None = None) -> None:
        self.registry = registry
        self.schemas = current_schemas() if schemas is None else schemas
        self._writers: dict[str, tuple[bytes, Schema]] = {}
        self._readers: dict[int, tuple[str, Schema, Schema | None]] = {}
        self._names: dict[bytes, str] = {}  # framing header -> record name

    def _writer(self, name: str) -> tuple[bytes, Schema]:
        if name not in self._writers:
            try:
                schema = self.schemas[name]
            except KeyError:
                raise SchemaError(f"no schema named {name}") from None
            schema_id = self.registry.register(name, schema)
            self._writers[name] = (_HEADER.pack(MAGIC, schema_id), parse_schema(schema))
        return self._writers[name]

    def encode(self, name: str, record: dict) -> bytes:
        header, parsed = self._writer(name)
        buffer = io.BytesIO()
        buffer.write(header)
        try:
            schemaless_writer(buffer, parsed, record)
        except UnicodeEncodeError as exc:  # a lone surrogate: Avro strings are UTF-8
            bad = exc.object[exc.start:exc.end].encode("unicode_escape").decode()
            raise InvalidRecordError(f"{name}: text that is not valid UTF-8 ({bad} at"
                                     f" position {exc.start} of {exc.object!a})") from None
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
            raise InvalidRecordError(f"{name}: {exc!r}") from None
        return buffer.getvalue()

    def validate(self, name: str, record: dict) -> None:
        """Raise `InvalidRecordError` naming the first problem with a record."""
        _, parsed = self._writer(name)
        try:
            validate(record, parsed, raise_errors=True)
        except ValidationError as exc:  # one entry per failing field, schema dumps included
            problems = [_EXPECTED.sub(_expected, str(problem)) for problem in exc.errors]
            raise InvalidRecordError("; ".join(problems)) from None

    def _reader(self, schema_id: int) -> tuple[str, Schema, Schema | None]:
        if schema_id not in self._readers:
            writer = self.registry.schema_by_id(schema_id)
            name = fullname(writer)
            reader = self.schemas.get(name, writer)
            # Same canonical form: no resolution needed, and fastavro skips it (faster).
            resolved = None if canonical(reader) == canonical(writer) else parse_schema(reader)
            self._readers[schema_id] = (name, parse_schema(writer), resolved)
        return self._readers[schema_id]

    def name_of(self, data: bytes) -> str:
        """The record name a framed value was written with, from its header alone: a reader
        that folds a few record types of a busy topic skips the rest without decoding them.
        Raises SchemaError (MalformedMessageError, UnknownSchemaError) as `decode` would."""
        header = data[:_HEADER.size]
        name = self._names.get(header)
        if name is None:
            if len(header) < _HEADER.size or header[0] != MAGIC:
                raise MalformedMessageError("not a Confluent-framed Avro message")
            name = self._names[header] = self._reader(_HEADER.unpack(header)[1])[0]
        return name

    def decode(self, data: bytes) -> Decoded:
        if not data or data[0] != MAGIC:
            raise MalformedMessageError("not a Confluent-framed Avro message (bad magic byte)")
        if len(data) < _HEADER.size:
            raise MalformedMessageError(f"message of {len(data)} bytes is shorter than its header")
        _, schema_id = _HEADER.unpack_from(data)
        name, writer, reader = self._reader(schema_id)
        body = io.BytesIO(data)
        body.seek(_HEADER.size)
        try:
            record = schemaless_reader(body, writer, reader)
        except Exception as exc:  # truncated or corrupt bodies raise assorted errors
            raise MalformedMessageError(f"{name} (schema {schema_id}): {exc!r}") from None
        if body.tell() != len(data):
            raise MalformedMessageError(
                f"{name} (schema {schema_id}): {len(data) - body.tell()} bytes after the record")
        if not isinstance(record, dict):  # every schema the Pit frames is a record
            raise MalformedMessageError(f"{name} (schema {schema_id}): not a record")
        return Decoded(name, record, schema_id)

    def schema_id(self, name: str) -> int:
        return _HEADER.unpack(self._writer(name)[0])[1]
