"""The pool's read-API routes (`GET /models...`, `/pool...`), answered from its views."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import Engine, select

from projections.api import CLOCK, in_thread, json_error, json_response
from projections.models import ModelsView, model_row
from projections.pool import model_health, pool_hosts, pool_status
from projections.runtime import live_tables
from streams.component import Route
from streams.pool.lifecycle import DEFAULT_POOL


def _pool_tables() -> dict:
    return live_tables(ModelsView())


def _models(engine: Engine, state: str | None, now_ms: int) -> list[dict[str, Any]]:
    models = _pool_tables()["models"]
    stmt = select(models).order_by(models.c.model_id)
    if state:
        stmt = stmt.where(models.c.state == state)
    with engine.connect() as conn:
        return [model_row(row, now_ms) for row in conn.execute(stmt).mappings()]


def _model(engine: Engine, model_id: str, now_ms: int) -> dict[str, Any] | None:
    models = _pool_tables()["models"]
    with engine.connect() as conn:
        row = conn.execute(select(models).where(models.c.model_id == model_id)).mappings().first()
    return None if row is None else model_row(row, now_ms)


def _transitions(engine: Engine, model_id: str) -> list[dict[str, Any]] | None:
    tables = _pool_tables()
    models, transitions = tables["models"], tables["model_transitions"]
    with engine.connect() as conn:
        if conn.execute(select(models.c.model_id).where(models.c.model_id == model_id)).first() \
                is None:
            return None
        stmt = (select(transitions).where(transitions.c.model_id == model_id)
                .order_by(transitions.c.sequence))
        return [dict(row) for row in conn.execute(stmt).mappings()]


async def get_models(request: web.Request) -> web.Response:
    rows = await in_thread(request, _models, request.query.get("state"), request.app[CLOCK]())
    return json_response({"models": rows, "count": len(rows)})


async def get_model(request: web.Request) -> web.Response:
    model_id = request.match_info["model_id"]
    row = await in_thread(request, _model, model_id, request.app[CLOCK]())
    if row is None:
        return json_error(404, f"unknown model {model_id}")
    return json_response(row)


async def get_transitions(request: web.Request) -> web.Response:
    model_id = request.match_info["model_id"]
    rows = await in_thread(request, _transitions, model_id)
    if rows is None:
        return json_error(404, f"unknown model {model_id}")
    return json_response({"model_id": model_id, "transitions": rows})


def _pool_id(request: web.Request) -> str:
    return request.query.get("pool") or DEFAULT_POOL


async def get_pool(request: web.Request) -> web.Response:
    pool_id = _pool_id(request)
    status = await in_thread(request, pool_status, pool_id)
    if status is None:
        return json_error(404, f"no pool data yet for pool {pool_id}: no host or model registered")
    return json_response(status)


async def get_pool_hosts(request: web.Request) -> web.Response:
    pool_id = _pool_id(request)
    return json_response({"pool_id": pool_id,
                              "hosts": await in_thread(request, pool_hosts, pool_id)})


async def get_model_health(request: web.Request) -> web.Response:
    model_id, pool_id = request.match_info["model_id"], _pool_id(request)
    try:
        limit = int(request.query.get("limit", "50"))
    except ValueError:
        return json_error(400, f"limit must be an integer, got {request.query['limit']!r}")
    body = await in_thread(request, lambda engine: model_health(engine, model_id, pool_id,
                                                          limit=max(0, limit)))
    if body is None:
        return json_error(404, f"unknown model {model_id} in pool {pool_id}")
    return json_response(body)


ROUTES = (
    Route("/models", get_models),
    Route("/models/{model_id}", get_model),
    Route("/models/{model_id}/transitions", get_transitions),
    Route("/models/{model_id}/health", get_model_health),
    Route("/pool", get_pool),
    Route("/pool/hosts", get_pool_hosts),
)
