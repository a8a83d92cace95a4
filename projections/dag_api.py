"""The DAG's read-API routes (`GET /executions...`), answered from its view."""

from __future__ import annotations

from aiohttp import web

from projections.api import (
    accepted,
    in_thread,
    int_param,
    json_body,
    json_error,
    json_response,
    operations,
    text_field,
)
from projections.dag import (
    EXECUTION_STATUSES,
    NODE_STATES,
    execution,
    execution_failures,
    execution_nodes,
    list_executions,
)
from streams.component import Param, Route
from streams.dag.errors import WorkflowError


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
        engine, execution_id, state=state, node_id=node, limit=limit, offset=offset))
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


async def cancel_execution(request: web.Request) -> web.Response:
    """An optional JSON body {"reason": "..."}."""
    execution_id = request.match_info["execution_id"]
    reason = text_field(await json_body(request, required=False), "reason", "")
    dag = await operations(request, "dag")
    try:
        outcome = await dag.cancel_workflow(execution_id, reason or "cancelled through the API")
    except WorkflowError:
        if await in_thread(request, execution, execution_id) is None:
            return json_error(404, f"unknown execution {execution_id}")
        raise
    return accepted(outcome, execution_id=execution_id)


LIMIT = Param("limit", "how many at most", "integer")
ROUTES = (
    Route("/executions", get_executions, summary="workflow executions, newest first",
          query=(Param("status", "only those in this status", enum=EXECUTION_STATUSES),
                 LIMIT)),
    Route("/executions/{execution_id}", get_execution,
          summary="one execution: status, node counts, progress, times, outputs or error"),
    Route("/executions/{execution_id}/nodes", get_execution_nodes,
          summary="its nodes with their state and attempts",
          query=(Param("state", "only nodes in this state", enum=NODE_STATES),
                 Param("node", "only this node"), LIMIT,
                 Param("offset", "nodes to skip", "integer"))),
    Route("/executions/{execution_id}/failures", get_execution_failures,
          summary="its node and execution failures, in order"),
    Route("/executions/{execution_id}/cancel", cancel_execution, method="POST",
          summary="cancel a running execution (an action: needs the token)",
          body={"type": "object", "properties": {"reason": {"type": "string"}}},
          body_required=False),
)
