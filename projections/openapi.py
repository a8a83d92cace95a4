"""GET /openapi.json: an OpenAPI 3.1 document of every route the app has, made from its
router when asked, so routes other modules add (/metrics, the schema registry's, the
console's) are in it too.

A route added through a `Route` (streams/component.py) carries its summary, query
parameters and request body; any other route is still there, with its path parameters
(each `{name}` of its path). HEAD is left out: aiohttp answers it for every GET.
"""

from __future__ import annotations

import re
from importlib.metadata import version
from typing import Any

from aiohttp import web

from streams.component import Param, Route

# (method, path) -> the Route it was added from, and the paths that need no token (None: the
# API has no token, so no route needs one).
DESCRIBED: web.AppKey[dict[tuple[str, str], Route]] = web.AppKey("described")
OPEN: web.AppKey[frozenset[str] | None] = web.AppKey("open")

ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
ANSWERS = {
    "400": "invalid input, or a command the Pit rejected (the reason)",
    "401": "a missing or wrong token",
    "403": "an action on a read-only Pit (no PIT_API_TOKEN), or a cookie without"
           " X-Pit-Action: 1",
    "404": "nothing known by that name",
    "503": "the database or the broker is unreachable",
}
_PATH_PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")


def openapi_path(resource: web.AbstractResource) -> str:
    info = resource.get_info()
    if "prefix" in info:  # a static folder: its files' names follow the prefix
        return f"{info['prefix'].rstrip('/')}/{{filename}}"
    return _PATH_PARAM.sub(r"{\1}", info.get("formatter") or info.get("path") or "")


def _query(param: Param) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": param.type}
    if param.enum:
        schema["enum"] = list(param.enum)
    if param.type == "integer":
        schema["minimum"] = 0
    return {"name": param.name, "in": "query", "required": False, "schema": schema,
            **({"description": param.description} if param.description else {})}


def _operation(method: str, path: str, route: Route | None, secured: bool) -> dict[str, Any]:
    parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in _PATH_PARAM.findall(path)]
    ok = "200" if method == "GET" else "202"
    operation: dict[str, Any] = {
        "operationId": f"{method.lower()} {path}",
        "responses": {ok: {"description": "the answer"},
                      **{status: {"description": text, "content": {"application/json": {
                          "schema": {"$ref": "#/components/schemas/Error"}}}}
                         for status, text in ANSWERS.items()
                         if status != "401" or secured}}}
    if not secured:
        operation["security"] = []
    if route is None:
        operation["parameters"] = parameters
        return operation
    if route.summary:
        operation["summary"] = route.summary
    operation["parameters"] = parameters + [_query(p) for p in route.query]
    if route.body is not None:
        operation["requestBody"] = {"required": route.body_required,
                                    "content": {"application/json": {"schema": route.body}}}
    return operation


def document(app: web.Application) -> dict[str, Any]:
    described = app.get(DESCRIBED, {})
    open_paths = app.get(OPEN)
    paths: dict[str, dict[str, Any]] = {}
    for resource in app.router.resources():
        path = openapi_path(resource)
        for route in resource:
            if route.method in ("HEAD", "*"):
                continue
            secured = open_paths is not None and path not in open_paths
            paths.setdefault(path, {})[route.method.lower()] = _operation(
                route.method, path, described.get((route.method, path)), secured)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Symphony Pit", "version": version("symphony-pit"),
                 "description": "The Pit's views, actions and schema registry (README.md)."},
        "paths": paths,
        "components": {"schemas": {"Error": ERROR}, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "PIT_API_TOKEN"},
            "cookie": {"type": "apiKey", "in": "cookie", "name": "pit_token",
                       "description": "PIT_API_TOKEN, as /login sets it; actions also"
                                      " want the header X-Pit-Action: 1"}}},
    }
    if open_paths is not None:
        doc["security"] = [{"bearer": []}, {"cookie": []}]
    return doc


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(document(request.app))
