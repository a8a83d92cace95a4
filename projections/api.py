"""The read API: JSON over HTTP (aiohttp), read-only, straight from the views.

    GET /health                         database reachable, projection positions
    GET /models                         every model (?state=Hot filters)
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
                                        (?state=failed, ?limit=1000, ?offset=0)
    GET /executions/{id}/failures       its node and execution failures, in order
    GET /artifacts/{ref}                an artifact's catalog entry (ref: address, name or
                                        name@N)
    GET /artifacts/{name}/versions      a named artifact's versions, oldest first
    GET /artifacts/{ref}/lineage        its lineage graph (?direction=up|down|both)
    GET /artifacts/stats                deduplication statistics
    GET /audit/verify                   the audit chain check (`pit audit verify`)
    GET /audit/{key}, /audit?key=...    an entity's full archived history
                                        (?until=<epoch ms> adds its replayed state then)

Errors are JSON too: {"error": "..."} with 400/404/503. Database calls run in worker
threads so a slow query never stalls the event loop the processors may share.
/audit/verify is routed before /audit/{key}, so an entity literally named "verify" is
read with `GET /audit?key=verify` (which accepts any key, for exactly that reason).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from projections import artifacts
from projections.audit import history, state_as_of, verify
from projections.dag import execution, execution_failures, execution_nodes, list_executions
from projections.models import model_row
from projections.pool import model_health, pool_hosts, pool_status
from projections.runtime import default_views, live_tables, load_positions
from streams.artifacts.errors import ArtifactNotFoundError
from streams.errors import PitError
from streams.pool.lifecycle import DEFAULT_POOL

ENGINE = web.AppKey("engine", Engine)
CLOCK = web.AppKey("clock", Callable[[], int])


def _now_ms() -> int:
    return int(time.time() * 1000)


def _json_ready(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _json_ready(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    return value


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _tables() -> dict:
    view = next(v for v in default_views() if v.name == "models")
    return live_tables(view)


async def _db(request: web.Request, fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, request.app[ENGINE], *args)


@web.middleware
async def _errors(request: web.Request, handler: Callable) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return _error(exc.status, exc.reason)
        raise
    except (DBAPIError, SQLAlchemyError) as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()
        return _error(503, f"database error: {reason[0] if reason else type(exc).__name__}")
    except PitError as exc:
        return _error(400, str(exc))


# --- queries (sync, run in threads) -------------------------------------------------------------

def _models(engine: Engine, state: str | None, now_ms: int) -> list[dict[str, Any]]:
    models = _tables()["models"]
    stmt = select(models).order_by(models.c.model_id)
    if state:
        stmt = stmt.where(models.c.state == state)
    with engine.connect() as conn:
        return [model_row(row, now_ms) for row in conn.execute(stmt).mappings()]


def _model(engine: Engine, model_id: str, now_ms: int) -> dict[str, Any] | None:
    models = _tables()["models"]
    with engine.connect() as conn:
        row = conn.execute(select(models).where(models.c.model_id == model_id)).mappings().first()
    return None if row is None else model_row(row, now_ms)


def _transitions(engine: Engine, model_id: str) -> list[dict[str, Any]] | None:
    tables = _tables()
    models, transitions = tables["models"], tables["model_transitions"]
    with engine.connect() as conn:
        if conn.execute(select(models.c.model_id).where(models.c.model_id == model_id)).first() \
                is None:
            return None
        stmt = (select(transitions).where(transitions.c.model_id == model_id)
                .order_by(transitions.c.sequence))
        return [dict(row) for row in conn.execute(stmt).mappings()]


def _health(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        names = [v.name for v in default_views()] + ["audit"]
        stored = load_positions(conn, names)
    return {"status": "ok", "database": engine.dialect.name,
            "positions": {name: {f"{t}[{p}]": o for (t, p), o in sorted(offsets.items())}
                          for name, offsets in stored.items()}}


# --- handlers -----------------------------------------------------------------------------------

async def get_health(request: web.Request) -> web.Response:
    try:
        return web.json_response(await _db(request, _health))
    except (DBAPIError, SQLAlchemyError) as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()
        return web.json_response(
            {"status": "unavailable", "error": reason[0] if reason else type(exc).__name__},
            status=503)


async def get_models(request: web.Request) -> web.Response:
    rows = await _db(request, _models, request.query.get("state"), request.app[CLOCK]())
    return web.json_response({"models": rows, "count": len(rows)})


async def get_model(request: web.Request) -> web.Response:
    model_id = request.match_info["model_id"]
    row = await _db(request, _model, model_id, request.app[CLOCK]())
    if row is None:
        return _error(404, f"unknown model {model_id}")
    return web.json_response(row)


async def get_transitions(request: web.Request) -> web.Response:
    model_id = request.match_info["model_id"]
    rows = await _db(request, _transitions, model_id)
    if rows is None:
        return _error(404, f"unknown model {model_id}")
    return web.json_response({"model_id": model_id, "transitions": rows})


def _pool_id(request: web.Request) -> str:
    return request.query.get("pool") or DEFAULT_POOL


async def get_pool(request: web.Request) -> web.Response:
    pool_id = _pool_id(request)
    status = await _db(request, pool_status, pool_id)
    if status is None:
        return _error(404, f"no pool data yet for pool {pool_id}: no host or model registered")
    return web.json_response(status)


async def get_pool_hosts(request: web.Request) -> web.Response:
    pool_id = _pool_id(request)
    return web.json_response({"pool_id": pool_id,
                              "hosts": await _db(request, pool_hosts, pool_id)})


async def get_model_health(request: web.Request) -> web.Response:
    model_id, pool_id = request.match_info["model_id"], _pool_id(request)
    try:
        limit = int(request.query.get("limit", "50"))
    except ValueError:
        return _error(400, f"limit must be an integer, got {request.query['limit']!r}")
    body = await _db(request, lambda engine: model_health(engine, model_id, pool_id,
                                                          limit=max(0, limit)))
    if body is None:
        return _error(404, f"unknown model {model_id} in pool {pool_id}")
    return web.json_response(body)


def _int(request: web.Request, name: str, default: int) -> int:
    """A non-negative integer query parameter (PitError, a 400, otherwise)."""
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isdigit():
        raise PitError(f"{name} must be a non-negative integer, got {text!r}")
    return int(text)


async def get_executions(request: web.Request) -> web.Response:
    status, limit = request.query.get("status"), _int(request, "limit", 100)
    rows = await _db(request, lambda engine: list_executions(engine, status, limit))
    return web.json_response({"executions": rows, "count": len(rows)})


async def get_execution(request: web.Request) -> web.Response:
    execution_id = request.match_info["execution_id"]
    body = await _db(request, execution, execution_id)
    if body is None:
        return _error(404, f"unknown execution {execution_id}")
    return web.json_response(body)


async def get_execution_nodes(request: web.Request) -> web.Response:
    execution_id = request.match_info["execution_id"]
    state = request.query.get("state")
    limit, offset = _int(request, "limit", 1000), _int(request, "offset", 0)
    body = await _db(request, lambda engine: execution_nodes(
        engine, execution_id, state=state, limit=limit, offset=offset))
    if body is None:
        return _error(404, f"unknown execution {execution_id}")
    return web.json_response(body)


async def get_execution_failures(request: web.Request) -> web.Response:
    execution_id = request.match_info["execution_id"]
    rows = await _db(request, execution_failures, execution_id)
    if rows is None:
        return _error(404, f"unknown execution {execution_id}")
    return web.json_response({"execution_id": execution_id, "failures": rows,
                              "count": len(rows)})


def _artifact(engine: Engine, ref: str) -> dict[str, Any] | None:
    try:
        return artifacts.artifact(engine, artifacts.resolve(engine, ref))
    except ArtifactNotFoundError:
        return None


async def get_artifact(request: web.Request) -> web.Response:
    ref = request.match_info["ref"]
    body = await _db(request, _artifact, ref)
    if body is None:
        return _error(404, f"unknown artifact {ref}")
    return web.json_response(body)


async def get_artifact_versions(request: web.Request) -> web.Response:
    name = request.match_info["ref"]
    rows = await _db(request, artifacts.versions, name)
    if not rows:
        return _error(404, f"no artifact named {name}")
    return web.json_response({"name": name, "versions": rows})


async def get_artifact_lineage(request: web.Request) -> web.Response:
    ref, direction = request.match_info["ref"], request.query.get("direction", "both")
    if direction not in ("up", "down", "both"):
        return _error(400, f"direction is up, down or both, not {direction!r}")
    found = await _db(request, _artifact, ref)
    if found is None:
        return _error(404, f"unknown artifact {ref}")
    return web.json_response(await _db(request, artifacts.lineage, found["address"],
                                       direction))


async def get_artifact_stats(request: web.Request) -> web.Response:
    return web.json_response(await _db(request, artifacts.store_stats))


async def get_verify(request: web.Request) -> web.Response:
    report = await _db(request, verify)
    return web.json_response(report.to_dict(), status=200 if report.ok else 409)


async def _audit(request: web.Request, key: str) -> web.Response:
    until = request.query.get("until")
    events = await _db(request, history, key)
    body: dict[str, Any] = {"key": key, "events": events, "count": len(events)}
    if until is not None:
        try:
            until_ms = int(until)
        except ValueError:
            return _error(400, f"until must be epoch milliseconds, got {until!r}")
        state = await _db(request, state_as_of, key, until_ms)
        body["until_ms"] = until_ms
        body["state"] = _json_ready(state)
        if state is not None and hasattr(state, "time_in_state_ms"):
            body["state"]["time_in_state_ms"] = state.time_in_state_ms(until_ms)
    if not events:
        body["error"] = f"no archived records for {key}"
        return web.json_response(body, status=404)
    return web.json_response(body)


async def get_audit_key(request: web.Request) -> web.Response:
    return await _audit(request, request.match_info["key"])


async def get_audit_query(request: web.Request) -> web.Response:
    key = request.query.get("key")
    if not key:
        return _error(400, "give the entity key: /audit/{key} or /audit?key=...")
    return await _audit(request, key)


def make_app(engine: Engine, *, clock: Callable[[], int] | None = None) -> web.Application:
    """The read API over `engine`'s views. `clock` (epoch ms) is for tests."""
    app = web.Application(middlewares=[_errors])
    app[ENGINE] = engine
    app[CLOCK] = clock or _now_ms
    app.router.add_get("/health", get_health)
    app.router.add_get("/models", get_models)
    app.router.add_get("/models/{model_id}", get_model)
    app.router.add_get("/models/{model_id}/transitions", get_transitions)
    app.router.add_get("/models/{model_id}/health", get_model_health)
    app.router.add_get("/pool", get_pool)
    app.router.add_get("/pool/hosts", get_pool_hosts)
    app.router.add_get("/executions", get_executions)
    app.router.add_get("/executions/{execution_id}", get_execution)
    app.router.add_get("/executions/{execution_id}/nodes", get_execution_nodes)
    app.router.add_get("/executions/{execution_id}/failures", get_execution_failures)
    app.router.add_get("/artifacts/stats", get_artifact_stats)
    app.router.add_get("/artifacts/{ref}", get_artifact)
    app.router.add_get("/artifacts/{ref}/versions", get_artifact_versions)
    app.router.add_get("/artifacts/{ref}/lineage", get_artifact_lineage)
    app.router.add_get("/audit/verify", get_verify)
    app.router.add_get("/audit", get_audit_query)
    app.router.add_get("/audit/{key}", get_audit_key)
    return app
