"""Schema registries: ids for schemas, schemas for ids.

* `EmbeddedRegistry` derives each id from the schema's fingerprint, so every process agrees
  on ids without coordination and compaction can never renumber anything. Its state is kept
  in the compacted topic `_pit.schemas` (key = subject/version) so other processes and
  standard tooling can look schemas up.
* `ConfluentRegistry` talks to a Confluent-compatible registry (`PIT_SCHEMA_REGISTRY_URL`,
  with the `PIT_SCHEMA_REGISTRY_*` auth and TLS settings).
Subjects follow the RecordNameStrategy: the subject is the record's full name.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Protocol, TypeVar

from fastavro import parse_schema
from fastavro.schema import SchemaParseException

from schemas.catalog import canonical, current_schemas, fullname, schema_json
from streams.errors import ConfigError, SchemaError, UnknownSchemaError

T = TypeVar("T")

# The lockfile of released versions: {fullname: [schema_json of each version, oldest first]}.
VERSIONS_FILE = Path(str(resources.files("schemas").joinpath("versions.json")))


class SchemaRegistry(Protocol):
    def register(self, subject: str, schema: dict) -> int: ...

    def schema_by_id(self, schema_id: int) -> dict: ...


EMPTY_64 = 0xC15D213AA4D7A795  # the Avro specification's CRC-64-AVRO of no bytes


def _rabin_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        fp = byte
        for _ in range(8):
            fp = (fp >> 1) ^ (EMPTY_64 & -(fp & 1))
        table.append(fp)
    return tuple(table)


# Made once: fastavro's fingerprint() makes it again on every call, which was 0.1 s of the
# start of every process that opens a registry (~260 schemas).
_RABIN = _rabin_table()


def rabin_fingerprint(data: bytes) -> int:
    """The CRC-64-AVRO (Rabin) fingerprint of `data`, as fastavro and Java read it: its
    bytes in little-endian order, taken as a big-endian number."""
    result = EMPTY_64
    for byte in data:
        result = (result >> 8) ^ _RABIN[(result ^ byte) & 0xFF]
    return int.from_bytes(result.to_bytes(8, "little"), "big")


def schema_id_for(schema: dict) -> int:
    """A positive 31-bit id from the CRC-64-AVRO fingerprint of the canonical form."""
    return rabin_fingerprint(canonical(schema).encode()) & 0x7FFFFFFF or 1


def recorded_versions(path: Path | None = None) -> dict[str, list[str]]:
    """The lockfile `schemas/versions.json`; empty when there is none yet."""
    path = VERSIONS_FILE if path is None else path
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise SchemaError(f"{path.name}: unreadable: {exc}") from None
    if not isinstance(data, dict) or not all(
        isinstance(texts, list) and all(isinstance(text, str) for text in texts)
        for texts in data.values()
    ):
        raise SchemaError(f"{path.name}: expected {{fullname: [schema JSON strings]}}")
    return data


def parse_recorded(subject: str, version: int, text: str) -> dict:
    """One recorded version of a lockfile entry, as a schema dict."""
    try:
        schema = json.loads(text)
        name = fullname(schema)
    except (ValueError, TypeError, KeyError) as exc:
        raise SchemaError(f"versions.json: {subject} v{version} is not a schema: {exc}") from None
    if name != subject:
        raise SchemaError(f"versions.json: {subject} v{version} is named {name}")
    return schema


def _schemas_of(versions: dict[str, list[str]]) -> tuple[tuple[str, dict, int], ...]:
    """(subject, schema, id) for every recorded version, oldest first, then the current
    schemas: what an embedded registry knows from the start."""
    known = [(name, parse_recorded(name, number, text)) for name, texts in versions.items()
             for number, text in enumerate(texts, 1)]
    known += current_schemas().items()
    return tuple((name, schema, schema_id_for(schema)) for name, schema in known)


@cache
def _repository_schemas() -> tuple[tuple[str, dict, int], ...]:
    """The repository's schemas with their ids, computed once per process: fingerprinting
    the ~800 of them took 0.4 s, paid by every client and `pit up` that opened a registry."""
    return _schemas_of(recorded_versions())


def registry_record(value: bytes) -> dict:
    """A record of the schemas topic, checked: {subject, version, id, schema} where schema is
    the JSON of a schema named `subject` whose fingerprint is `id`; else `SchemaError`."""
    try:
        entry = json.loads(value)
        schema = json.loads(entry["schema"])
        name, schema_id, version = fullname(schema), entry["id"], entry["version"]
        parse_schema(schema)
        expected = schema_id_for(schema)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError,
            SchemaParseException) as exc:
        raise SchemaError(f"not a schema record: {type(exc).__name__}: {exc}"[:500]) from None
    if name != entry["subject"] or not isinstance(version, int) or isinstance(version, bool):
        raise SchemaError(f"not a schema record: {entry['subject']!r} v{version!r} holds {name}")
    if schema_id != expected:
        raise SchemaError(f"{name}: id {schema_id!r} is not its schema's fingerprint"
                          f" ({expected})")
    return entry


class EmbeddedRegistry:
    """Knows every schema of the repository from the start, so any process can decode.

    That is every released version recorded in `versions.json` (oldest first, so version
    numbers follow the lockfile) and then the current schemas.
    """

    def __init__(self, versions: dict[str, list[str]] | None = None) -> None:
        self._by_id: dict[int, dict] = {}
        self._versions: dict[str, list[int]] = {}
        self._unpublished: list[tuple[str, int]] = []
        known = _repository_schemas() if versions is None else _schemas_of(versions)
        for name, schema, schema_id in known:
            self._add(name, schema, schema_id)

    def register(self, subject: str, schema: dict) -> int:
        return self._add(subject, schema, schema_id_for(schema))

    def _add(self, subject: str, schema: dict, schema_id: int) -> int:
        known = self._by_id.get(schema_id)
        if known is not None and canonical(known) != canonical(schema):
            raise SchemaError(f"schema id collision for {subject}: rename or reorder a field")
        self._by_id[schema_id] = schema
        versions = self._versions.setdefault(subject, [])
        if schema_id not in versions:
            versions.append(schema_id)
            self._unpublished.append((subject, schema_id))
        return schema_id

    def schema_by_id(self, schema_id: int) -> dict:
        try:
            return self._by_id[schema_id]
        except KeyError:
            raise UnknownSchemaError(f"unknown schema id {schema_id}") from None

    def subjects(self) -> dict[str, list[int]]:
        return {subject: list(ids) for subject, ids in self._versions.items()}

    # The compacted topic: one record per subject version.
    def take_unpublished(self) -> list[tuple[bytes, bytes]]:
        """Key/value records for the schemas topic that have not been written yet."""
        records = []
        for subject, schema_id in self._unpublished:
            version = self._versions[subject].index(schema_id) + 1
            value = {"subject": subject, "version": version, "id": schema_id,
                     "schema": schema_json(self._by_id[schema_id])}
            records.append((f"{subject}/{version}".encode(), json.dumps(value).encode()))
        self._unpublished.clear()
        return records

    def load_record(self, value: bytes | None) -> None:
        """Apply one record read from the schemas topic (tombstones carry nothing).

        A record that is not a schema whose id is its fingerprint raises `SchemaError` and
        changes nothing: one corrupt record must not stop a start, nor rebind an id."""
        if value is None:
            return
        entry = registry_record(value)
        schema = json.loads(entry["schema"])
        self._by_id[entry["id"]] = schema
        versions = self._versions.setdefault(entry["subject"], [])
        if entry["id"] not in versions:
            versions.append(entry["id"])
        published = (entry["subject"], entry["id"])
        if published in self._unpublished:
            self._unpublished.remove(published)


class ConfluentRegistry:
    """A Confluent-compatible registry through confluent-kafka's `SchemaRegistryClient`,
    which caches both ways and brings basic/bearer auth, TLS and retries (`options`: its
    configuration names, from `Settings.schema_registry_options`)."""

    def __init__(self, url: str, timeout_s: float = 10.0,
                 options: Mapping[str, object] | None = None) -> None:
        # Imported here, not at the top: every process frames Avro through this module, few
        # talk to a registry server, and the client's imports (httpx, authlib) take 0.14 s.
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self.url = url.rstrip("/")
        try:
            self._client = SchemaRegistryClient(
                {"url": self.url, "timeout": timeout_s, **(options or {})})
        except (ValueError, TypeError, OSError) as exc:  # bad options or certificate files
            raise ConfigError(f"schema registry at {self.url}: {exc}") from None
        # The client's id cache is per subject and `schema_by_id` has none to give: what this
        # process registered is kept here, so it decodes its own writes without a GET.
        self._registered: dict[int, dict] = {}

    def _call(self, what: str, call: Callable[[], T],
              not_found: SchemaError | None = None) -> T:
        # The HTTP library the client raises from (httpx2, or httpx on older installs).
        from confluent_kafka.schema_registry.common._httpx_compat import httpx
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            return call()
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404 and not_found is not None:
                raise not_found from None
            detail = " ".join(str(exc.error_message).split())[:200]
            raise SchemaError(f"schema registry {what}: HTTP {exc.http_status_code} {detail}"
                              ) from None
        except httpx.HTTPError as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise SchemaError(f"schema registry unreachable at {self.url}: {reason}") from None

    def register(self, subject: str, schema: dict) -> int:
        from confluent_kafka.schema_registry import Schema

        schema_id = self._call(f"register {subject}", lambda: self._client.register_schema(
            subject, Schema(schema_json(schema), "AVRO")))
        self._registered[schema_id] = schema
        return schema_id

    def schema_by_id(self, schema_id: int) -> dict:
        if schema_id in self._registered:
            return self._registered[schema_id]
        found = self._call(f"schema {schema_id}", lambda: self._client.get_schema(schema_id),
                           UnknownSchemaError(f"unknown schema id {schema_id}"))
        return json.loads(found.schema_str or "null")
