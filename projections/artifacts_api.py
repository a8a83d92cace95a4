"""The Artifact Store's read-API routes (`GET /artifacts...`), answered from its views."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import Engine

from projections import artifacts
from projections.api import in_thread, json_error, json_response
from streams.artifacts.errors import ArtifactNotFoundError
from streams.component import Param, Route


def _artifact(engine: Engine, ref: str) -> dict[str, Any] | None:
    try:
        return artifacts.artifact(engine, artifacts.resolve(engine, ref))
    except ArtifactNotFoundError:
        return None


async def get_artifact(request: web.Request) -> web.Response:
    ref = request.match_info["ref"]
    body = await in_thread(request, _artifact, ref)
    if body is None:
        return json_error(404, f"unknown artifact {ref}")
    return json_response(body)


async def get_artifact_versions(request: web.Request) -> web.Response:
    name = request.match_info["ref"]
    rows = await in_thread(request, artifacts.versions, name)
    if not rows:
        return json_error(404, f"no artifact named {name}")
    return json_response({"name": name, "versions": rows})


async def get_artifact_lineage(request: web.Request) -> web.Response:
    ref, direction = request.match_info["ref"], request.query.get("direction", "both")
    if direction not in ("up", "down", "both"):
        return json_error(400, f"direction is up, down or both, not {direction!r}")
    found = await in_thread(request, _artifact, ref)
    if found is None:
        return json_error(404, f"unknown artifact {ref}")
    return json_response(await in_thread(request, artifacts.lineage, found["address"],
                                       direction))


async def get_artifact_stats(request: web.Request) -> web.Response:
    return json_response(await in_thread(request, artifacts.store_stats))


# /artifacts/stats before /artifacts/{ref}: "stats" is no artifact reference.
ROUTES = (
    Route("/artifacts/stats", get_artifact_stats, summary="deduplication statistics"),
    Route("/artifacts/{ref}", get_artifact,
          summary="an artifact's catalog entry (ref: address, name or name@N)"),
    Route("/artifacts/{ref}/versions", get_artifact_versions,
          summary="a named artifact's versions, oldest first"),
    Route("/artifacts/{ref}/lineage", get_artifact_lineage, summary="its lineage graph",
          query=(Param("direction", "up, down or both", enum=("up", "down", "both")),)),
)
