"""The pool's read-API routes (`GET /models...`, `/pool...`), answered from its views."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import Engine, select

from projections.api import CLOCK, in_thread, int_param, json_error, json_response
from projections.models import ModelsView, model_row
from projections.pool import PoolView, model_health, pool_hosts, pool_status
from projections.runtime import live_tables
from streams.component import Param, Route
from streams.pool.lifecycle import DEFAULT_POOL


def _tables() -> dict:
    return {**live_tables(ModelsView()), **live_tables(PoolView())}


def _models(engine: Engine, state: str | None, now_ms: int,
            model_id: str | None = None) -> list[dict[str, Any]]:
    """Every model the Pit knows, one row each: its lifecycle row, or for a model registered
    and never transitioned (no lifecycle event yet) its registration, Cold. Each row also
    says in which pools it is registered and how many allocations it holds there now
    (`usage_count` counts the invocations recorded with RecordModelUsage)."""
    tables = _tables()
    models, registered = tables["models"], tables["pool_models"]
    lifecycle = select(models)
    pooled = select(registered)
    if model_id is not None:
        lifecycle = lifecycle.where(models.c.model_id == model_id)
        pooled = pooled.where(registered.c.model_id == model_id)
    with engine.connect() as conn:
        rows = {r["model_id"]: dict(r) for r in conn.execute(lifecycle).mappings()}
        in_pools: dict[str, list[dict[str, Any]]] = {}
        for pooled_row in conn.execute(pooled.order_by(registered.c.pool_id)).mappings():
            in_pools.setdefault(pooled_row["model_id"], []).append(dict(pooled_row))
    for found, pools in in_pools.items():
        first = pools[0]
        rows.setdefault(found, {
            "model_id": found, "state": first["state"], "entered_at_ms": first["entered_at_ms"],
            "last_used_ms": None, "transition_count": 0, "failure_count": 0, "usage_count": 0,
            "last_sequence": 0, "updated_at_ms": first["updated_at_ms"]})
    shown = []
    for found in sorted(rows):
        row = rows[found]
        if state and row["state"] != state:
            continue
        pools = in_pools.get(found, [])
        shown.append({**model_row(row, now_ms), "pools": [p["pool_id"] for p in pools],
                      "allocations_in_flight": sum(p["allocations"] for p in pools)})
    return shown


def _model(engine: Engine, model_id: str, now_ms: int) -> dict[str, Any] | None:
    found = _models(engine, None, now_ms, model_id)
    return found[0] if found else None


def _transitions(engine: Engine, model_id: str) -> list[dict[str, Any]] | None:
    """Its transitions, oldest first; None for a model the Pit does not know."""
    if _model(engine, model_id, 0) is None:
        return None
    transitions = _tables()["model_transitions"]
    with engine.connect() as conn:
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
    limit = int_param(request, "limit", 50)
    body = await in_thread(request, lambda engine: model_health(engine, model_id, pool_id,
                                                          limit=limit))
    if body is None:
        return json_error(404, f"unknown model {model_id} in pool {pool_id}")
    return json_response(body)


POOL = Param("pool", 'the pool (default: "default")')
ROUTES = (
    Route("/models", get_models, summary="every model the Pit knows",
          query=(Param("state", "only models in this state (Cold, Warming, Hot...)"),)),
    Route("/models/{model_id}", get_model, summary="one model, with its time in state"),
    Route("/models/{model_id}/transitions", get_transitions,
          summary="its transition history, oldest first"),
    Route("/models/{model_id}/health", get_model_health,
          summary="its current health and latest checks, newest first",
          query=(Param("limit", "how many checks", "integer"), POOL)),
    Route("/pool", get_pool, query=(POOL,),
          summary="the pool at a glance: hosts, models by state, cache, health failures"),
    Route("/pool/hosts", get_pool_hosts, query=(POOL,),
          summary="the pool's hosts: budget, resident memory, models"),
)
