"""The Stale Manager's read-API routes (`GET /stale/...`), answered from its views
(projections/stale.py): a store's status, its plans, one plan with a page of its items, one
item. `?store=` picks the store (default: "default")."""

from __future__ import annotations

from aiohttp import web

from projections.api import in_thread, int_param, json_error, json_response
from projections.stale import item, plan, plans, status
from streams.component import Route
from streams.stale.manager import DEFAULT_STORE

MAX_LIMIT = 10_000


def _store_id(req: web.Request) -> str:
    return req.query.get("store") or DEFAULT_STORE


async def get_status(req: web.Request) -> web.Response:
    store_id = _store_id(req)
    found = await in_thread(req, status, store_id)
    if not found["sequence"]:
        return json_error(404, f"no Stale Manager events yet for store {store_id}")
    return json_response(found)


async def get_plans(req: web.Request) -> web.Response:
    """?limit= (newest first, without their items)."""
    limit, store_id = min(int_param(req, "limit", 20), MAX_LIMIT), _store_id(req)
    rows = await in_thread(req, lambda engine: plans(engine, limit, store_id=store_id))
    return json_response({"plans": rows, "count": len(rows)})


async def get_plan(req: web.Request) -> web.Response:
    """?limit= &offset= : the page of its items, in plan order."""
    plan_id = req.match_info["plan_id"]
    limit = min(int_param(req, "limit", 50), MAX_LIMIT)
    offset, store_id = int_param(req, "offset", 0), _store_id(req)
    found = await in_thread(req, lambda engine: plan(engine, plan_id, store_id=store_id,
                                                     limit=limit, offset=offset))
    if found is None:
        return json_error(404, f"unknown plan {plan_id}")
    return json_response(found)


async def get_item(req: web.Request) -> web.Response:
    address, store_id = req.match_info["address"], _store_id(req)
    found = await in_thread(req, lambda engine: item(engine, address, store_id=store_id))
    if found is None:
        return json_error(404, f"unknown item {address}")
    return json_response(found)


ROUTES = (
    Route("/stale", get_status),
    Route("/stale/plans", get_plans),
    Route("/stale/plans/{plan_id}", get_plan),
    Route("/stale/items/{address}", get_item),
)
