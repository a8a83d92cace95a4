"""Schema registries: ids for schemas, schemas for ids.

* `EmbeddedRegistry` derives each id from the schema's fingerprint, so every process agrees
  on ids without coordination and compaction can never renumber anything. Its state is kept
  in the compacted topic `_pit.schemas` (key = subject/version) so other processes and
  standard tooling can look schemas up.
* `ConfluentRegistry` talks to a Confluent-compatible registry (`PIT_SCHEMA_REGISTRY_URL`).
Subjects follow the RecordNameStrategy: the subject is the record's full name.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Protocol

from fastavro.schema import fingerprint

from schemas.catalog import canonical, current_schemas, fullname, schema_json
from streams.errors import SchemaError, UnknownSchemaError

# The lockfile of released versions: {fullname: [schema_json of each version, oldest first]}.
VERSIONS_FILE = Path(str(resources.files("schemas").joinpath("versions.json")))


class SchemaRegistry(Protocol):
    def register(self, subject: str, schema: dict) -> int: ...

    def schema_by_id(self, schema_id: int) -> dict: ...


def schema_id_for(schema: dict) -> int:
    """A positive 31-bit id from the CRC-64-AVRO fingerprint of the canonical form."""
    return int(fingerprint(canonical(schema), "CRC-64-AVRO"), 16) & 0x7FFFFFFF or 1


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


class EmbeddedRegistry:
    """Knows every schema of the repository from the start, so any process can decode.

    That is every released version recorded in `versions.json` (oldest first, so version
    numbers follow the lockfile) and then the current schemas.
    """

    def __init__(self, versions: dict[str, list[str]] | None = None) -> None:
        self._by_id: dict[int, dict] = {}
        self._versions: dict[str, list[int]] = {}
        self._unpublished: list[tuple[str, int]] = []
        recorded = recorded_versions() if versions is None else versions
        for name, texts in recorded.items():
            for number, text in enumerate(texts, 1):
                self.register(name, parse_recorded(name, number, text))
        for name, schema in current_schemas().items():
            self.register(name, schema)

    def register(self, subject: str, schema: dict) -> int:
        schema_id = schema_id_for(schema)
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
        """Apply one record read from the schemas topic (tombstones carry nothing)."""
        if value is None:
            return
        entry = json.loads(value)
        schema = json.loads(entry["schema"])
        self._by_id[entry["id"]] = schema
        versions = self._versions.setdefault(entry["subject"], [])
        if entry["id"] not in versions:
            versions.append(entry["id"])
        published = (entry["subject"], entry["id"])
        if published in self._unpublished:
            self._unpublished.remove(published)


class ConfluentRegistry:
    """Client of the Confluent Schema Registry REST API, with caches both ways."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._by_id: dict[int, dict] = {}
        self._ids: dict[tuple[str, str], int] = {}

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:200]
            if exc.code == 404 and path.startswith("/schemas/ids/"):
                raise UnknownSchemaError(f"unknown schema id {path.rsplit('/', 1)[1]}") from None
            raise SchemaError(
                f"schema registry {method} {path}: HTTP {exc.code} {detail}"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            raise SchemaError(f"schema registry unreachable at {self.url}: {exc}") from None

    def register(self, subject: str, schema: dict) -> int:
        key = (subject, canonical(schema))
        if key not in self._ids:
            answer = self._call("POST", f"/subjects/{subject}/versions",
                                {"schema": schema_json(schema)})
            self._ids[key] = answer["id"]
            self._by_id[answer["id"]] = schema
        return self._ids[key]

    def schema_by_id(self, schema_id: int) -> dict:
        if schema_id not in self._by_id:
            answer = self._call("GET", f"/schemas/ids/{schema_id}")
            self._by_id[schema_id] = json.loads(answer["schema"])
        return self._by_id[schema_id]
