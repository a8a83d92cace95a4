"""The API: JSON over HTTP (aiohttp), reads straight from the views, and a few actions.

    GET /health                         database reachable, projection positions
    GET /models                         every model, registered ones never used too
                                        (?state=Hot filters)
    GET /models/{model_id}              one model, with time_in_state_ms at the current time
    GET /models/{model_id}/transitions  its transition history, oldest first
    GET /models/{model_id}/health       its current health and latest checks, newest first
                                        (?limit=50, ?pool=default)
    GET /pool                           the pool at a glance: hosts and their memory, models
                                        by state with their host, cache statistics, health
                                        failures (?pool=default)
    GET /pool/hosts                     the pool's hosts: budget, resident memory, models
    GET /executions                     workflow executions, newest first (?status=running,
                                        ?limit=100)
    GET /executions/{id}                one execution: status, node counts by state,
                                        progress, times, outputs or error
    GET /executions/{id}/nodes          its nodes with their state and attempts (runner,
                                        times, duration, error, retried/fallback/skipped)
                                        (?state=failed, ?node=<id>, ?limit=1000, ?offset=0)
    GET /executions/{id}/failures       its node and execution failures, in order
    GET /artifacts/{ref}                an artifact's catalog entry (ref: address, name or
                                        name@N)
    GET /artifacts/{name}/versions      a named artifact's versions, oldest first
    GET /artifacts/{ref}/lineage        its lineage graph (?direction=up|down|both)
    GET /artifacts/stats                deduplication statistics
    GET /arbitration                    queues by priority, tenants' shares, the Gini
                                        (also /arbitration/decisions, /arbitration/policy,
                                        /arbitration/requests/{id})
    GET /stale                          the Stale Manager: bytes per tier, trash, holds,
                                        runs (also /stale/plans, /stale/plans/{id}
                                        ?limit=&offset=, /stale/items/{address})
    GET /audit/verify                   the audit chain check (`pit audit verify`)
    GET /audit/{key}, /audit?key=...    an entity's full archived history
                                        (?until=<epoch ms> adds its replayed state then)
    GET /schemas/ids/{id}, /subjects/.. the embedded registry, as the Confluent Schema
                                        Registry serves it (projections/schema_api.py)
    GET /openapi.json                   an OpenAPI 3.1 document of every route
                                        (projections/openapi.py)

    Actions, each a command published through the API's PitClient (202 accepted, 400
    rejected with the reason, 404 unknown), and only with PIT_API_TOKEN (403 without):
    POST /executions/{id}/cancel        {"reason": "..."} optional
    POST /stale/plans/{id}/apply        confirm a cleanup plan
    POST /stale/restore                 {"target": "<item address or plan id>"}
    PUT  /stale/policy                  the retention policy, JSON or YAML
    PUT  /arbitration/policy            the arbitration policy, JSON or YAML

Each component's routes come from its descriptor (`streams/component.py`), in the
component's own module here (`pool_api`, `dag_api`, `artifacts_api`, `arbitration_api`,
`stale_api`); this module holds
the kernel's routes (/health, /audit), the token check and what every handler shares.

Errors are JSON too: {"error": "..."} with 400/401/403/404/503; a path or query value no
database takes (a NUL) is a 400 before any handler runs. Database calls run in worker
threads so a slow query never stalls the event loop the processors may share.
/audit/verify is routed before /audit/{key}, so an entity literally named "verify" is
read with `GET /audit?key=verify` (which accepts any key, for exactly that reason).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from aiohttp import web
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from projections.audit import history, state_as_of, verify
from projections.openapi import DESCRIBED, OPEN, get_openapi
from streams import metrics
from streams.archive import AUDIT
from streams.commands import CommandClient, Outcome
from streams.component import Component, Param, Route, audit_deciders
from streams.decider import Decider
from streams.errors import BrokerUnavailableError, CommandTimeoutError, PitError
from streams.sql import load_positions
from streams.times import readable

ENGINE = web.AppKey("engine", Engine)
CLOCK = web.AppKey[Callable[[], int]]("clock")  # no class to pass: the type is subscripted
PROJECTIONS = web.AppKey("projections", tuple[str, ...])  # the views', then the audit log
REPLAYERS = web.AppKey("replayers", dict[str, tuple[Decider, Decider]])


def _now_ms() -> int:
    return int(time.time() * 1000)


def json_response(body: Any, status: int = 200) -> web.Response:
    """Every answer: plain JSON (dataclasses, maps, enums), each epoch-ms moment with its ISO
    time beside it (`started_at` next to `started_at_ms`: streams/times.py)."""
    return web.json_response(readable(body), status=status)


def json_error(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status=status)


async def in_thread(request: web.Request, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(engine, *args)` in a worker thread."""
    return await asyncio.to_thread(fn, request.app[ENGINE], *args)


MAX_INT = 2**63 - 1  # the largest integer a database column holds


def whole_number(text: str, name: str) -> int:
    """`text` as a non-negative integer a database takes (PitError, a 400, otherwise);
    ASCII digits only: str.isdigit() also takes "²", which int() refuses."""
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_INT:
        raise PitError(f"{name} must be a non-negative integer (at most {MAX_INT}),"
                       f" got {text!r}")
    return int(text)


def int_param(request: web.Request, name: str, default: int) -> int:
    """A non-negative integer query parameter (PitError, a 400, otherwise)."""
    text = request.query.get(name)
    return default if text is None else whole_number(text, name)


def valid_text(value: str) -> bool:
    """Text every store takes: no NUL (PostgreSQL refuses it) and no lone surrogate (a JSON
    "\\ud800", which UTF-8 cannot encode)."""
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def _bad_text(request: web.Request) -> str | None:
    """The first path or query value that is not `valid_text`, named; or None."""
    for where, values in (("path", request.match_info.items()),
                          ("query", request.query.items())):
        for name, value in values:
            if not valid_text(value):
                return f"{where} parameter {name} is not valid text: {value!r}"
    return None


@web.middleware
async def _errors(request: web.Request, handler: Callable) -> web.StreamResponse:
    if (bad := _bad_text(request)) is not None:
        return json_error(400, bad)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return json_error(exc.status, exc.reason)
        raise
    except (DBAPIError, SQLAlchemyError) as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()
        return json_error(503, f"database error: {reason[0] if reason else type(exc).__name__}")
    except (BrokerUnavailableError, CommandTimeoutError) as exc:
        return json_error(503, str(exc))
    except PitError as exc:
        return json_error(400, str(exc))


# --- handlers -----------------------------------------------------------------------------------

async def get_health(request: web.Request) -> web.Response:
    names: tuple[str, ...] = request.app[PROJECTIONS]

    def health(engine: Engine) -> dict[str, Any]:
        with engine.connect() as conn:
            stored = load_positions(conn, names)
        return {"status": "ok", "database": engine.dialect.name,
                "positions": {name: {f"{t}[{p}]": o for (t, p), o in sorted(offsets.items())}
                              for name, offsets in stored.items()}}

    try:
        return json_response(await in_thread(request, health))
    except (DBAPIError, SQLAlchemyError) as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()
        return json_response(
            {"status": "unavailable", "error": reason[0] if reason else type(exc).__name__},
            status=503)


async def get_verify(request: web.Request) -> web.Response:
    report = await in_thread(request, verify)
    metrics.AUDIT_VERIFICATIONS.labels("ok" if report.ok else "broken").inc()
    return json_response(report.to_dict(), status=200 if report.ok else 409)


async def _audit(request: web.Request, key: str) -> web.Response:
    until = request.query.get("until")
    events = await in_thread(request, history, key)
    body: dict[str, Any] = {"key": key, "events": events, "count": len(events)}
    if until is not None:
        until_ms = whole_number(until, "until (epoch milliseconds)")
        state = await in_thread(request, state_as_of, key, until_ms, request.app[REPLAYERS])
        body["until_ms"] = until_ms
        body["state"] = readable(state)
        if state is not None and hasattr(state, "time_in_state_ms"):
            body["state"]["time_in_state_ms"] = state.time_in_state_ms(until_ms)
    if not events:
        body["error"] = f"no archived records for {key}"
        return json_response(body, status=404)
    return json_response(body)


async def get_audit_key(request: web.Request) -> web.Response:
    return await _audit(request, request.match_info["key"])


async def get_audit_query(request: web.Request) -> web.Response:
    key = request.query.get("key")
    if not key:
        return json_error(400, "give the entity key: /audit/{key} or /audit?key=...")
    return await _audit(request, key)


# Probes and scrapers need no token; nor does the page where a browser gives it.
OPEN_PATHS = frozenset({"/health", "/metrics", "/login"})
OPEN_PREFIX = "/console/static/"  # the console's script and style: the same in every install
COOKIE = "pit_token"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def bearer_auth(token: str) -> Callable:
    """With PIT_API_TOKEN set, every route but OPEN_PATHS wants the token, as `Authorization:
    Bearer <token>` or as the cookie `pit_token` (a browser's EventSource and links send no
    headers); anything else is a 401 that reaches no handler (compared in constant time).
    An action authenticated by the cookie also wants `X-Pit-Action: 1`: no other site's page
    can send that header without CORS, which the Pit does not grant (a CSRF guard)."""
    expected, secret = f"Bearer {token}".encode(), token.encode()

    @web.middleware
    async def check(request: web.Request, handler: Callable) -> web.StreamResponse:
        if (request.path in OPEN_PATHS or request.path.startswith(OPEN_PREFIX)
                or hmac.compare_digest(request.headers.get("Authorization", "").encode(),
                                       expected)):
            return await handler(request)
        if hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), secret):
            if request.method in UNSAFE and request.headers.get("X-Pit-Action") != "1":
                return json_error(403, "an action authenticated by the cookie needs the"
                                       " header X-Pit-Action: 1")
            return await handler(request)
        if request.path == "/":  # the console, in a browser: its login form
            raise web.HTTPFound("/login")
        return web.json_response(
            {"error": "this Pit wants its API token: Authorization: Bearer <PIT_API_TOKEN>"},
            status=401, headers={"WWW-Authenticate": 'Bearer realm="pit"'})

    return check


# --- actions: commands published through the API's own client ----------------------------------

class Commands:
    """The API's command client, made by `factory` (a PitClient) and started on the first
    action - a read-only API never connects a producer - then closed with the app."""

    def __init__(self, factory: Callable[[], CommandClient]) -> None:
        self._factory = factory
        self._client: CommandClient | None = None
        self._starting = asyncio.Lock()

    async def client(self) -> CommandClient:
        async with self._starting:
            if self._client is None:
                client = self._factory()
                await client.start()
                self._client = client
        return self._client

    async def close(self, _app: web.Application) -> None:
        if self._client is not None:
            await self._client.close()


COMMANDS = web.AppKey("commands", Commands)


async def operations(request: web.Request, component: str) -> Any:
    """A component's client operations (`PitClient.<component>`)."""
    return getattr(await request.app[COMMANDS].client(), component)


async def body_text(request: web.Request) -> str:
    """The request's body as `valid_text` (PitError, a 400, otherwise)."""
    try:
        text = (await request.read()).decode()
    except UnicodeDecodeError:
        raise PitError("the body is not UTF-8 text") from None
    if not valid_text(text):
        raise PitError("the body holds a NUL character")
    return text


async def json_body(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    """The request's JSON object with `valid_text` in it (PitError, a 400, for anything
    else); {} for no body when it is optional."""
    text = await body_text(request)
    if not text.strip() and not required:
        return {}
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        raise PitError(f"the body must be a JSON object, got {text[:80]!r}") from None
    if not isinstance(body, dict):
        raise PitError(f"the body must be a JSON object, got {type(body).__name__}")
    if not all(valid_text(text) for text in _texts(body)):  # "\\u0000" or "\\ud800"
        raise PitError("the body holds text that is not valid (a NUL or a lone surrogate)")
    return body


def _texts(value: Any) -> Iterator[str]:
    """Every string in a parsed JSON value, keys too (no recursion: any depth json.loads
    took)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


async def document_body(request: web.Request) -> str:
    """A policy document: the body, JSON or YAML, not blank (which would reset it)."""
    text = await body_text(request)
    if not text.strip():
        raise PitError("the body must be the policy, as JSON or YAML")
    return text


def text_field(body: dict[str, Any], name: str, default: str | None = None) -> str:
    """A string field of a JSON body (PitError, a 400, when it is missing or no string)."""
    value = body.get(name, default)
    if not isinstance(value, str) or (default is None and not value):
        raise PitError(f"the body's {name!r} must be a non-empty string, got {value!r}")
    return value


def accepted(outcome: Outcome | None = None, **fields: Any) -> web.Response:
    """202: the command was accepted (and its events are on their way to the views)."""
    found = {} if outcome is None else {
        "command_id": outcome.command_id, "command_type": outcome.command_type,
        "entity_key": outcome.entity_key, "event_ids": outcome.event_ids,
        "duplicate": outcome.duplicate}
    return json_response({"accepted": True, **found, **fields}, status=202)


async def _read_only(_request: web.Request) -> web.Response:
    return json_error(403, "this Pit is read-only: actions need PIT_API_TOKEN set on pit up")


KERNEL_ROUTES = (
    Route("/health", get_health, summary="database reachable, projection positions"),
)
# /audit/verify before /audit/{key}: see the module's docstring.
AUDIT_ROUTES = (
    Route("/audit/verify", get_verify, summary="the audit hash chain's check"),
    Route("/audit", get_audit_query, summary="an entity's archived history, any key",
          query=(Param("key", "the entity's key"),
                 Param("until", "epoch ms: add its replayed state then", "integer"))),
    Route("/audit/{key}", get_audit_key, summary="an entity's archived history",
          query=(Param("until", "epoch ms: add its replayed state then", "integer"),)),
)


def make_app(engine: Engine, components: Sequence[Component], *,
             clock: Callable[[], int] | None = None, token: str | None = None,
             commands: Callable[[], CommandClient] | None = None) -> web.Application:
    """The API over `engine`'s views: the kernel's routes, each component's, /openapi.json.
    `token`: PIT_API_TOKEN (see `bearer_auth`); without one, every action answers 403.
    `commands` makes the client actions publish with (`pit up` gives a PitClient's
    factory); a token needs it. `clock` (epoch ms) is for tests."""
    if token and commands is None:
        raise ValueError("a token enables actions, which need `commands`")
    app = web.Application(middlewares=[*([bearer_auth(token)] if token else []), _errors])
    app[ENGINE] = engine
    app[CLOCK] = clock or _now_ms
    app[PROJECTIONS] = (*(view.name for component in components
                          for view in component.views(None)), AUDIT)
    app[REPLAYERS] = audit_deciders(components)
    # as /openapi.json names them: the static folder's files are "{prefix}{filename}"
    app[OPEN] = OPEN_PATHS | {f"{OPEN_PREFIX}{{filename}}"} if token else None
    if token and commands is not None:
        app[COMMANDS] = Commands(commands)
        app.on_cleanup.append(app[COMMANDS].close)
    routes = [*KERNEL_ROUTES, *(r for c in components for r in c.routes()), *AUDIT_ROUTES]
    for route in routes:
        if route.method == "GET":
            app.router.add_get(route.path, route.handler)
        else:
            app.router.add_route(route.method, route.path,
                                 route.handler if token else _read_only)
    app[DESCRIBED] = {(route.method, route.path): route for route in routes}
    app.router.add_get("/openapi.json", get_openapi)
    return app
