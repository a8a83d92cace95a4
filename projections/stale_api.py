"""The Stale Manager's API routes (`/stale/...`): reads answered from its views
(projections/stale.py) - a store's status, its plans, one plan with a page of its items, one
item - and the actions, commands through `PitClient.stale`: apply a plan, restore from the
trash, set the retention policy. `?store=` picks the store (default: "default")."""

from __future__ import annotations

from aiohttp import web

from projections.api import (
    accepted,
    document_body,
    in_thread,
    int_param,
    json_body,
    json_error,
    json_response,
    operations,
    text_field,
)
from projections.stale import item, plan, plans, status
from streams.component import Param, Route
from streams.stale.client import StaleError
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


async def apply_plan(req: web.Request) -> web.Response:
    """Confirm a plan: the Stale Manager carries it out; the plan as the views show it."""
    plan_id, store_id = req.match_info["plan_id"], _store_id(req)
    stale = await operations(req, "stale")
    try:
        found = await stale.apply(plan_id, store_id=store_id)
    except StaleError:
        if await in_thread(req, lambda engine: plan(engine, plan_id, store_id=store_id,
                                                    limit=0)) is None:
            return json_error(404, f"unknown plan {plan_id}")
        raise
    return accepted(plan=found)


async def restore(req: web.Request) -> web.Response:
    """{"target": "<item address or plan id>"}: bring it (every item of the plan) back from
    the trash."""
    target, store_id = text_field(await json_body(req), "target"), _store_id(req)
    stale = await operations(req, "stale")
    try:
        outcome = await stale.restore(target, store_id=store_id)
    except StaleError:
        known = await in_thread(req, lambda engine: item(engine, target, store_id=store_id)
                                or plan(engine, target, store_id=store_id, limit=0))
        if known is None:
            return json_error(404, f"no item or plan {target}")
        raise
    return accepted(outcome, target=target)


async def put_policy(req: web.Request) -> web.Response:
    """The retention document, as JSON or YAML; every problem listed in the 400."""
    stale = await operations(req, "stale")
    return accepted(await stale.set_policy(await document_body(req), store_id=_store_id(req)))


STORE = Param("store", 'the store (default: "default")')
ROUTES = (
    Route("/stale", get_status, query=(STORE,),
          summary="the Stale Manager: bytes per tier, trash, holds, runs"),
    Route("/stale/plans", get_plans, query=(STORE, Param("limit", "how many", "integer")),
          summary="cleanup plans, newest first, without their items"),
    Route("/stale/plans/{plan_id}", get_plan,
          query=(STORE, Param("limit", "items per page", "integer"),
                 Param("offset", "items to skip", "integer")),
          summary="one plan with a page of its items"),
    Route("/stale/items/{address}", get_item, query=(STORE,),
          summary="one item: tier, state, history"),
    Route("/stale/plans/{plan_id}/apply", apply_plan, method="POST", query=(STORE,),
          summary="confirm a cleanup plan (an action: needs the token)"),
    Route("/stale/restore", restore, method="POST", query=(STORE,),
          summary="restore an item, or every item of a plan, from the trash (an action)",
          body={"type": "object", "required": ["target"],
                "properties": {"target": {"type": "string",
                                          "description": "an item address or a plan id"}}}),
    Route("/stale/policy", put_policy, method="PUT", query=(STORE,),
          summary="set the retention policy, JSON or YAML (an action)",
          body={"type": "object", "description": "the retention document (README)"}),
)
