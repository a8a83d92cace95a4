"""The Arbitration Engine's read-API routes (`GET /arbitration/...`), answered from its
views (projections/arbitration.py)."""

from __future__ import annotations

import json

from aiohttp import web

from projections.api import CLOCK, in_thread, int_param, json_error, json_response
from projections.arbitration import decisions, policy_of, request, status
from streams.component import Route
from streams.pool.lifecycle import DEFAULT_POOL


def _pool_id(req: web.Request) -> str:
    return req.query.get("pool") or DEFAULT_POOL


async def get_status(req: web.Request) -> web.Response:
    found = await in_thread(req, status, _pool_id(req), req.app[CLOCK]())
    if found is None:
        return json_error(404, f"no arbitration requests yet in pool {_pool_id(req)}")
    return json_response(found)


async def get_request(req: web.Request) -> web.Response:
    request_id = req.match_info["request_id"]
    found = await in_thread(req, request, request_id, _pool_id(req))
    if found is None:
        return json_error(404, f"unknown request {request_id}")
    return json_response(found)


async def get_decisions(req: web.Request) -> web.Response:
    """?request= &tenant= &outcome= &since_ms= &until_ms= &limit= (newest first)."""
    since, until = int_param(req, "since_ms", 0), int_param(req, "until_ms", 0)
    limit = min(int_param(req, "limit", 100), 10_000)
    rows = await in_thread(req, lambda engine: decisions(
        engine, _pool_id(req), request_id=req.query.get("request"),
        tenant=req.query.get("tenant"), outcome=req.query.get("outcome"),
        since_ms=since or None, until_ms=until or None, limit=limit))
    return json_response({"decisions": rows, "count": len(rows)})


async def get_policy(req: web.Request) -> web.Response:
    text, set_at = await in_thread(req, policy_of, _pool_id(req))
    return json_response({"policy": json.loads(text), "set_at_ms": set_at})


ROUTES = (
    Route("/arbitration", get_status),
    Route("/arbitration/decisions", get_decisions),
    Route("/arbitration/policy", get_policy),
    Route("/arbitration/requests/{request_id}", get_request),
)
