"""The read API: JSON over HTTP (aiohttp), read-only, straight from the views.

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

Each component's routes come from its descriptor (`streams/component.py`), in the
component's own module here (`pool_api`, `dag_api`, `artifacts_api`, `arbitration_api`,
`stale_api`); this module holds
the kernel's routes (/health, /audit) and what every handler shares.

Errors are JSON too: {"error": "..."} with 400/404/503. Database calls run in worker
threads so a slow query never stalls the event loop the processors may share.
/audit/verify is routed before /audit/{key}, so an entity literally named "verify" is
read with `GET /audit?key=verify` (which accepts any key, for exactly that reason).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from projections.audit import history, state_as_of, verify
from streams import metrics
from streams.archive import AUDIT
from streams.component import Component, audit_deciders
from streams.decider import Decider
from streams.errors import PitError
from streams.sql import load_positions
from streams.times import readable

ENGINE = web.AppKey("engine", Engine)
CLOCK = web.AppKey("clock", Callable[[], int])
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


def int_param(request: web.Request, name: str, default: int) -> int:
    """A non-negative integer query parameter (PitError, a 400, otherwise)."""
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isdigit():
        raise PitError(f"{name} must be a non-negative integer, got {text!r}")
    return int(text)


@web.middleware
async def _errors(request: web.Request, handler: Callable) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return json_error(exc.status, exc.reason)
        raise
    except (DBAPIError, SQLAlchemyError) as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()
        return json_error(503, f"database error: {reason[0] if reason else type(exc).__name__}")
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
        try:
            until_ms = int(until)
        except ValueError:
            return json_error(400, f"until must be epoch milliseconds, got {until!r}")
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


OPEN_PATHS = frozenset({"/health", "/metrics"})  # probes and scrapers need no token


def bearer_auth(token: str) -> Callable:
    """With PIT_API_TOKEN set, every route but OPEN_PATHS wants `Authorization: Bearer
    <token>`; anything else is a 401 that reaches no handler (compared in constant time)."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Callable) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode()
        if request.path in OPEN_PATHS or hmac.compare_digest(given, expected):
            return await handler(request)
        return web.json_response(
            {"error": "this Pit wants its API token: Authorization: Bearer <PIT_API_TOKEN>"},
            status=401, headers={"WWW-Authenticate": 'Bearer realm="pit"'})

    return check


def make_app(engine: Engine, components: Sequence[Component], *,
             clock: Callable[[], int] | None = None, token: str | None = None
             ) -> web.Application:
    """The read API over `engine`'s views: the kernel's routes and each component's.
    `token`: PIT_API_TOKEN (see `bearer_auth`). `clock` (epoch ms) is for tests."""
    app = web.Application(middlewares=[*([bearer_auth(token)] if token else []), _errors])
    app[ENGINE] = engine
    app[CLOCK] = clock or _now_ms
    app[PROJECTIONS] = (*(view.name for component in components
                          for view in component.views(None)), AUDIT)
    app[REPLAYERS] = audit_deciders(components)
    app.router.add_get("/health", get_health)
    for component in components:
        for route in component.routes():
            app.router.add_get(route.path, route.handler)
    # /audit/verify before /audit/{key}: see the module's docstring.
    app.router.add_get("/audit/verify", get_verify)
    app.router.add_get("/audit", get_audit_query)
    app.router.add_get("/audit/{key}", get_audit_key)
    return app
