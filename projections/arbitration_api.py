"""The Arbitration Engine's API routes (`/arbitration/...`): reads answered from its views
(projections/arbitration.py), and setting the policy (a command through
`PitClient.arbitration`). `?pool=` picks the pool (default: "default")."""

from __future__ import annotations

import json

from aiohttp import web

from projections.api import (
    CLOCK,
    accepted,
    document_body,
    in_thread,
    int_param,
    json_error,
    json_response,
    operations,
)
from projections.arbitration import decisions, policy_of, request, status
from streams.component import Param, Route
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


async def put_policy(req: web.Request) -> web.Response:
    """The policy, as JSON or YAML; every problem listed in the 400."""
    arbitration = await operations(req, "arbitration")
    outcome = await arbitration.set_policy(await document_body(req), pool_id=_pool_id(req))
    if not outcome.accepted:
        return json_error(400, f"cannot set the arbitration policy: {outcome.reason}")
    return accepted(outcome)


POOL = Param("pool", 'the pool (default: "default")')
ROUTES = (
    Route("/arbitration", get_status, query=(POOL,),
          summary="queues by priority, tenants' shares, the Gini"),
    Route("/arbitration/decisions", get_decisions, summary="decisions, newest first",
          query=(POOL, Param("request", "one request's"), Param("tenant", "one tenant's"),
                 Param("outcome", "granted, queued, deferred, denied..."),
                 Param("since_ms", "from this epoch ms", "integer"),
                 Param("until_ms", "until this epoch ms", "integer"),
                 Param("limit", "how many (at most 10,000)", "integer"))),
    Route("/arbitration/policy", get_policy, query=(POOL,), summary="the policy in force"),
    Route("/arbitration/requests/{request_id}", get_request, query=(POOL,),
          summary="one request: its state and every decision, explained"),
    Route("/arbitration/policy", put_policy, method="PUT", query=(POOL,),
          summary="set the policy, JSON or YAML (an action: needs the token)",
          body={"type": "object", "description": "the arbitration policy (README)"}),
)
