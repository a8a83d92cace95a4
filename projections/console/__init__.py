"""The web console `pit up` serves at `/`: static pages (`static/`, no build step: the
libraries are committed, minified, with their licences) over the read API, kept live by
server-sent events.

    GET  /                              the console (one page, a section per component)
    GET  /console/static/...            its script, style and vendored libraries
    GET  /console/events                server-sent events: `change` with the topics whose
                                        views moved, each time the projector commits
    GET  /console/config                whether actions are on (a PIT_API_TOKEN is set)
    GET  /console/overview              each component's processor: records in and out,
                                        their rate, consumer lag, dead letters, restarts;
                                        the broker and the database
    GET  /console/series                the same figures over time, with the pool's hit rate,
                                        prewarm accuracy and each pool's Gini
    GET  /console/executions/{id}/graph an execution's DAG to draw (console/graph.py)
    GET  /console/artifacts/search      search with facets and highlights (?q=, ?tag=,
                                        ?content_type=, ?limit=, ?offset=)
    GET  /console/artifacts/diff        two versions side by side (?old=ref&new=ref)
    GET  /login, POST /login            with a token configured: a form that sets the
                                        `pit_token` cookie the browser then sends

Why the page learns of changes from committed positions rather than from the log: a view
is only worth re-reading once its rows are committed, and the positions table says exactly
that, for every projector of the group (several `pit up` share a cluster). One poller per
process reads it every `PIT_CONSOLE_POLL_MS` (200) while at least one page listens.

The series are sampled from this process's Prometheus metrics every
`PIT_CONSOLE_SAMPLE_S` seconds (5) and kept for an hour: the console shows the recent past;
Prometheus and Grafana (infra/) keep the long one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections import deque
from functools import lru_cache
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import REGISTRY
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from projections.api import ENGINE, PROJECTIONS, in_thread, int_param, json_error, json_response
from projections.audit import latest_payload
from projections.console.graph import NodeRow, execution_graph
from projections.dag import execution, node_states
from streams.config import Settings
from streams.dag.definition import Workflow, workflow_from_dict
from streams.dag.definition_store import FileDefinitionStore
from streams.sql import load_positions

STATIC = Path(__file__).parent / "static"
SETTINGS = web.AppKey("console_settings", Settings)
BROKER = web.AppKey("console_broker", dict)
COMPONENT_NAMES = web.AppKey("console_components", tuple)
HOUR_S = 3600
IDLE = {"in": 0.0, "out": 0.0, "lag": 0.0, "dead_letters": 0.0, "restarts": 0.0}  # per component


class Changes:
    """Which topics' views moved: the projection positions, polled while anyone listens.
    Each listener is a queue of topic sets; a slow page gets the union of what it missed."""

    def __init__(self, engine: Engine, names: tuple[str, ...], interval_s: float) -> None:
        self.engine, self.names, self.interval_s = engine, names, interval_s
        self.listeners: set[asyncio.Queue[set[str] | None]] = set()
        self._last: dict[tuple[str, int], int] | None = None
        self._task: asyncio.Task[None] | None = None

    def _positions(self) -> dict[tuple[str, int], int]:
        with self.engine.connect() as conn:
            stored = load_positions(conn, self.names)
        merged: dict[tuple[str, int], int] = {}
        for offsets in stored.values():
            for tp, offset in offsets.items():
                merged[tp] = max(merged.get(tp, -1), offset)
        return merged

    async def _poll(self) -> None:
        while self.listeners:
            with contextlib.suppress(Exception):  # a database hiccup: try again next tick
                now = await asyncio.to_thread(self._positions)
                if self._last is not None:
                    moved = {topic for tp, offset in now.items()
                             if self._last.get(tp) != offset for topic in (tp[0],)}
                    if moved:
                        for queue in self.listeners:
                            queue.put_nowait(moved)
                self._last = now
            await asyncio.sleep(self.interval_s)
        self._task = None

    def listen(self) -> asyncio.Queue[set[str] | None]:
        queue: asyncio.Queue[set[str] | None] = asyncio.Queue()
        self.listeners.add(queue)
        if self._task is None:
            self._last = None
            self._task = asyncio.create_task(self._poll(), name="console-changes")
        return queue

    def leave(self, queue: asyncio.Queue[set[str] | None]) -> None:
        self.listeners.discard(queue)

    def close(self) -> None:
        """Ends every open stream (the server is stopping)."""
        for queue in self.listeners:
            queue.put_nowait(None)


def _component_of_group(group: str) -> str:
    return group.split(".")[1] if group.count(".") >= 2 else group  # pit.<component>.processor


def sample_metrics(registry: Any = REGISTRY) -> dict[str, Any]:
    """The figures the console charts, read from this process's metrics."""
    per: dict[str, dict[str, float]] = {}
    hits = misses = 0.0
    accuracy: float | None = None
    gini: dict[str, float] = {}

    def add(component: str, key: str, value: float) -> None:
        figures = per.setdefault(component, dict(IDLE))
        figures[key] += value

    for metric in registry.collect():
        for s in metric.samples:
            match s.name:
                case "pit_events_in_total":
                    add(s.labels["component"], "in", s.value)
                case "pit_events_out_total":
                    add(s.labels["component"], "out", s.value)
                case "pit_dead_letters_total":
                    add(s.labels["component"], "dead_letters", s.value)
                case "pit_processor_restarts_total":
                    add(s.labels["component"], "restarts", s.value)
                case "pit_consumer_lag_records":
                    add(_component_of_group(s.labels["group"]), "lag", s.value)
                case "pit_pool_cache_hits_total":
                    hits += s.value
                case "pit_pool_cache_misses_total":
                    misses += s.value
                case "pit_pool_prewarm_accuracy":
                    accuracy = s.value
                case "pit_arbitration_gini":
                    gini[s.labels["pool"]] = s.value
    return {"at_ms": int(time.time() * 1000), "components": per,
            "hit_rate": hits / (hits + misses) if hits + misses else None,
            "prewarm_accuracy": accuracy, "gini": gini}


class Series:
    """Samples of `sample_metrics` every `interval_s`, the last hour of them."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.samples: deque[dict[str, Any]] = deque(maxlen=max(int(HOUR_S / interval_s), 2))
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.samples.append(sample_metrics())
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="console-series")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


CHANGES = web.AppKey("console_changes", Changes)
SERIES = web.AppKey("console_series", Series)


# --- pages and streams -------------------------------------------------------------------------

async def get_index(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


async def get_events(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    await response.write(b"retry: 2000\n\n")
    changes = request.app[CHANGES]
    queue = changes.listen()
    try:
        while True:
            try:
                moved = await asyncio.wait_for(queue.get(), 15)
            except TimeoutError:
                await response.write(b": still here\n\n")  # proxies close silent streams
                continue
            if moved is None:
                break
            while not queue.empty():
                more = queue.get_nowait()
                if more is None:
                    return response
                moved |= more
            data = json.dumps({"topics": sorted(moved), "at_ms": int(time.time() * 1000)})
            await response.write(f"event: change\ndata: {data}\n\n".encode())
    except ConnectionResetError:
        pass  # the page went away
    finally:
        changes.leave(queue)
    return response


def _token(request: web.Request) -> str | None:
    return request.app[SETTINGS].env.get("PIT_API_TOKEN") or None


async def get_config(request: web.Request) -> web.Response:
    return json_response({"actions": _token(request) is not None})


LOGIN_PAGE = """<!doctype html><html lang="en"><meta charset="utf-8">
<title>Symphony Pit: sign in</title><link rel="stylesheet" href="/console/static/console.css">
<body class="login"><form method="post" action="/login"><h1>Symphony Pit</h1>
<p>This Pit wants its API token (<code>PIT_API_TOKEN</code>).</p>{error}
<input type="password" name="token" placeholder="API token" autofocus required>
<button type="submit">Sign in</button></form></body></html>"""


async def get_login(request: web.Request) -> web.StreamResponse:
    if _token(request) is None:
        raise web.HTTPFound("/")
    return web.Response(text=LOGIN_PAGE.format(error=""), content_type="text/html")


async def post_login(request: web.Request) -> web.StreamResponse:
    token = _token(request)
    if token is None:
        raise web.HTTPFound("/")
    try:
        given = str((await request.post()).get("token", ""))
    except ValueError:  # a multipart body without its boundary (schemathesis found it: a 500)
        raise web.HTTPBadRequest(reason="the sign-in form did not parse") from None
    if not hmac.compare_digest(given.encode(), token.encode()):
        return web.Response(status=401, content_type="text/html", text=LOGIN_PAGE.format(
            error='<p class="error">That is not this Pit\'s token.</p>'))
    response = web.HTTPFound("/")
    response.set_cookie("pit_token", token, httponly=True, samesite="Strict", path="/")
    raise response


# --- what the views do not answer alone ------------------------------------------------------

async def get_overview(request: web.Request) -> web.Response:
    series: Series = request.app[SERIES]
    now = sample_metrics()
    before = next((s for s in reversed(series.samples)
                   if now["at_ms"] - s["at_ms"] >= 1000), None)
    components = []
    names = sorted({*request.app[COMPONENT_NAMES], *now["components"]})
    for name, figures in ((n, now["components"].get(n, IDLE)) for n in names):
        entry: dict[str, Any] = {"component": name, **figures}
        if before is not None and name in before["components"]:
            span_s = (now["at_ms"] - before["at_ms"]) / 1000
            for key in ("in", "out"):
                entry[f"{key}_per_s"] = round(
                    (figures[key] - before["components"][name][key]) / span_s, 2)
        components.append(entry)
    db = make_url(str(request.app[ENGINE].url))
    return json_response({
        "broker": request.app[BROKER],
        "database": {"dialect": db.get_backend_name(),
                     "url": db.render_as_string(hide_password=True)},
        "components": components, "hit_rate": now["hit_rate"],
        "prewarm_accuracy": now["prewarm_accuracy"], "gini": now["gini"]})


async def get_series(request: web.Request) -> web.Response:
    series: Series = request.app[SERIES]
    return json_response({"interval_s": series.interval_s, "samples": list(series.samples)})


@lru_cache(maxsize=32)  # a 10,000-node definition takes a while to read and validate
def _stored_definition(data_dir: Path, definition_hash: str) -> Workflow:
    return FileDefinitionStore(data_dir / "definitions").get(definition_hash)


def _definition(engine: Engine, settings: Settings, execution_id: str, definition_hash: str
                ) -> Workflow:
    """An execution's workflow: inline in its ExecutionStarted, else (a large one) in the
    definition store by hash."""
    started = latest_payload(engine, execution_id, "ExecutionStarted")
    if started and started.get("definition"):
        return workflow_from_dict(json.loads(started["definition"]))
    return _stored_definition(settings.data_dir, definition_hash)


async def get_graph(request: web.Request) -> web.Response:
    execution_id = request.match_info["execution_id"]
    settings = request.app[SETTINGS]

    def graph(engine: Engine) -> dict[str, Any] | None:
        found = execution(engine, execution_id)
        if found is None:
            return None
        workflow = _definition(engine, settings, execution_id, found["definition_hash"])
        rows = {node_id: NodeRow(row["state"], row["kind"], row["duration_ms"],
                                 row["started_at_ms"])
                for node_id, row in node_states(engine, execution_id).items()}
        body = execution_graph(workflow, rows, now_ms=int(time.time() * 1000),
                               max_concurrency=found["max_concurrency"] or 1)
        if found["status"] != "running":
            body["eta_ms"] = 0
        return {"execution_id": execution_id, "status": found["status"], **body}

    body = await in_thread(request, graph)
    if body is None:
        return json_error(404, f"unknown execution {execution_id}")
    return json_response(body)


async def get_search(request: web.Request) -> web.Response:
    from projections.search import SearchQuery
    from streams.artifacts.client import search_artifacts

    query = SearchQuery(text=request.query.get("q", ""),
                        tags=tuple(request.query.getall("tag", ())),
                        content_types=tuple(request.query.getall("content_type", ())),
                        limit=int_param(request, "limit", 20),
                        offset=int_param(request, "offset", 0))
    settings = request.app[SETTINGS]
    page = await in_thread(request, lambda engine: search_artifacts(settings, engine, query))
    return json_response({"total": page.total, "facets": page.facets, "hits": [
        {"address": hit.address, "name": hit.name, "content_type": hit.content_type,
         "tags": list(hit.tags), "created_at_ms": hit.created_at_ms, "score": hit.score,
         "highlights": hit.highlights} for hit in page.hits]})


async def get_diff(request: web.Request) -> web.Response:
    from projections.artifacts import resolve
    from streams.artifacts.diff import side_by_side
    from streams.artifacts.storage import artifact_store

    old, new = request.query.get("old"), request.query.get("new")
    if not old or not new:
        return json_error(400, "give both versions: ?old=<ref>&new=<ref>")
    settings = request.app[SETTINGS]

    def diff(engine: Engine) -> list[dict[str, Any]]:
        blobs = artifact_store(settings)
        a, b = resolve(engine, old), resolve(engine, new)
        return side_by_side(blobs.get(a), blobs.get(b), old_label=old, new_label=new)

    rows = await in_thread(request, diff)
    return json_response({"old": old, "new": new, "rows": rows,
                          "changed": sum(row["op"] != "equal" for row in rows)})


def add_console_routes(app: web.Application, settings: Settings, *,
                       broker: dict[str, Any], components: tuple[str, ...]) -> None:
    """The console on `app` (made by projections.api.make_app): pages, streams, and the
    reads that combine views with the definitions, blobs and metrics of this process."""
    def env(name: str, default: str) -> str:
        return settings.env.get(name) or default

    app[SETTINGS] = settings
    app[BROKER] = broker
    app[COMPONENT_NAMES] = components
    app[CHANGES] = Changes(app[ENGINE], app[PROJECTIONS],
                           int(env("PIT_CONSOLE_POLL_MS", "200")) / 1000)
    app[SERIES] = Series(float(env("PIT_CONSOLE_SAMPLE_S", "5")))

    async def start(app: web.Application) -> None:
        app[SERIES].start()

    async def shutdown(app: web.Application) -> None:
        app[CHANGES].close()
        await app[SERIES].stop()

    app.on_startup.append(start)
    app.on_shutdown.append(shutdown)
    app.router.add_get("/", get_index)
    app.router.add_static("/console/static", STATIC)
    app.router.add_get("/console/events", get_events)
    app.router.add_get("/console/config", get_config)
    app.router.add_get("/console/overview", get_overview)
    app.router.add_get("/console/series", get_series)
    app.router.add_get("/console/executions/{execution_id}/graph", get_graph)
    app.router.add_get("/console/artifacts/search", get_search)
    app.router.add_get("/console/artifacts/diff", get_diff)
    app.router.add_get("/login", get_login)
    app.router.add_post("/login", post_login)
