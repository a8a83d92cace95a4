"""The embedded schema registry over HTTP: the reads of the Confluent Schema Registry REST
API, so tools we did not write (Kafka UI, kcat -s avro, Flink, Kafka Connect, ksqlDB,
confluent-kafka's `AvroDeserializer`) can decode the Avro on our topics with `pit up`'s
address as their registry URL.

    GET /schemas/ids/{id}                 {"schema": "<Avro JSON>"}
    GET /subjects                         every subject (a record's full name:
                                          RecordNameStrategy)
    GET /subjects/{subject}/versions      its version numbers, oldest first
    GET /subjects/{subject}/versions/{v}  {"subject", "version", "id", "schema"};
                                          v may be "latest"

Errors are the registry's own: {"error_code": 40401, "message": ...} for an unknown
subject, 40402 for an unknown version, 40403 for an unknown schema id, all with 404 (422,
42202, for a version that is not a number). Writes are not served: the Pit registers its
schemas itself (`_pit.schemas`). With `PIT_SCHEMA_REGISTRY_URL` the registry is that
server, and these routes are not there.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from aiohttp import web

from schemas.catalog import schema_json
from streams.errors import UnknownSchemaError

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class BrowsableRegistry(Protocol):
    def schema_by_id(self, schema_id: int) -> dict: ...

    def subjects(self) -> dict[str, list[int]]: ...


REGISTRY = web.AppKey("registry", BrowsableRegistry)


def _reply(body: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type=CONTENT_TYPE)


def _error(status: int, code: int, message: str) -> web.Response:
    return _reply({"error_code": code, "message": message}, status)


async def get_schema(request: web.Request) -> web.Response:
    text = request.match_info["id"]
    try:
        schema = request.app[REGISTRY].schema_by_id(int(text))
    except (ValueError, UnknownSchemaError):
        return _error(404, 40403, f"Schema {text} not found")
    return _reply({"schema": schema_json(schema)})


async def get_subjects(request: web.Request) -> web.Response:
    return _reply(sorted(request.app[REGISTRY].subjects()))


def _versions(request: web.Request) -> list[int] | web.Response:
    subject = request.match_info["subject"]
    ids = request.app[REGISTRY].subjects().get(subject)
    if ids is None:
        return _error(404, 40401, f"Subject '{subject}' not found.")
    return ids


async def get_versions(request: web.Request) -> web.Response:
    ids = _versions(request)
    return ids if isinstance(ids, web.Response) else _reply(list(range(1, len(ids) + 1)))


async def get_version(request: web.Request) -> web.Response:
    ids = _versions(request)
    if isinstance(ids, web.Response):
        return ids
    text = request.match_info["version"]
    if text in ("latest", "-1"):
        version = len(ids)
    elif text.isdigit() and int(text) > 0:
        version = int(text)
    else:
        return _error(422, 42202, f"The specified version '{text}' is not a valid version id."
                                  " Allowed values are between [1, 2^31-1] and the string"
                                  " \"latest\"")
    if version > len(ids):
        return _error(404, 40402, f"Version {version} not found.")
    schema_id = ids[version - 1]
    return _reply({"subject": request.match_info["subject"], "version": version,
                   "id": schema_id,
                   "schema": schema_json(request.app[REGISTRY].schema_by_id(schema_id))})


def add_registry_routes(app: web.Application, registry: BrowsableRegistry) -> None:
    app[REGISTRY] = registry
    app.router.add_get("/schemas/ids/{id}", get_schema)
    app.router.add_get("/subjects", get_subjects)
    app.router.add_get("/subjects/{subject}/versions", get_versions)
    app.router.add_get("/subjects/{subject}/versions/{version}", get_version)
