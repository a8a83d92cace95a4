"""The DAG's read-API routes (`GET /executions...`), answered from its view."""

from __future__ import annotations

from aiohttp import web

from projections.api import in_thread, int_param, json_error, json_response
from projections.dag import execution, execution_failures, execution_nodes, list_executions
from streams.component import Route


async def get_executions(request: web.Request) -> web.Response:
    status, limit = request.query.get("status"), int_param(request, "limit", 100)
    rows = await in_thread(request, lambda engine: list_executions(engine, status, limit))
    return json_response({"executions": rows, "count": len(rows)})


async def get_execution(request: web.Request) -> web.Response:
    execution_id = request.match_info["execution_id"]
    body = await in_thread(request, execution, execution_id)
    if body is None:
        return json_error(404, f"unknown execution {execution_id}")
    return json_response(body)


async def get_execution_nodes(request: web.Request) -> web.Response:
    execution_id = request.match_info["execution_id"]
    state, node = request.query.get("state"), request.query.get("node")
    limit, offset = int_param(request, "limit", 1000), int_param(request, "offset", 0)
    body = await in_thread(request, lambda engine: execution_nodes(
        engine, execution_id, state=state, node=node, limit=limit, offset=offset))
    if body is None:
        return json_error(404, f"unknown execution {execution_id}")
    return json_response(body)


async def get_execution_failures(request: web.Request) -> web.Response:
    execution_id = request.match_info["execution_id"]
    rows = await in_thread(request, execution_failures, execution_id)
    if rows is None:
        return json_error(404, f"unknown execution {execution_id}")
    return json_response({"execution_id": execution_id, "failures": rows,
                              "count": len(rows)})


ROUTES = (
    Route("/executions", get_executions),
    Route("/executions/{execution_id}", get_execution),
    Route("/executions/{execution_id}/nodes", get_execution_nodes),
    Route("/executions/{execution_id}/failures", get_execution_failures),
)
