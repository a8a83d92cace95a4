"""The projector of `pit up`: a process of its own (the default), or a task on `pit up`'s event
loop (`PIT_PROJECTOR=inline`).

Why a process. The projector decodes, archives and applies every record the Pit writes;
under load it holds the GIL for much of a core. On `pit up`'s event loop it taxed every
command's round trip and every workflow hop (issue 15: the loop was busy 75% of the time
under DAG load, the projector's worker threads holding the GIL for much of the rest). In a
process of its own it shares nothing with `pit up` but the broker and the database, and
needs nothing more: a batch's rows and positions commit in one transaction
(projections/runtime.py), so a projector killed anywhere resumes where it stopped, as the
projectors of one group always could.

* `pit project` runs one (`serve`). As `pit up`'s child (`--parent`) it exits at once when its
  parent is gone - in embedded mode the broker went with it, and the next `pit up` starts a
  projector of its own. On SIGTERM it drains (archives everything the broker holds at that
  moment, `drain`), then exits.
* `ProjectorProcess` is `pit up`'s side: it starts the child and waits for its ready line
  (the address of its metrics), starts another when it exits unasked (with backoff: the
  positions are in the database, so nothing is lost; the group hands the partitions of the
  one that died to the new one when its session expires), and stops it on close, once
  `pit up` has drained it.
* Metrics: the observers' metrics (streams.metrics.PROJECTED) live where the projector runs.
  `pit up` scrapes the child's /metrics - on each scrape of its own /metrics, and every
  `SCRAPE_S` for the console - and shows them as its own (`PROJECTED_SOURCE`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import ClientError, ClientSession, ClientTimeout, web
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from schemas.codec import Codec
from streams import metrics
from streams.components import COMPONENTS, views
from streams.config import Settings
from streams.errors import PitError
from streams.kafka import (
    make_producer,
    partitions_of,
    start_consumer,
    stop_clients,
    stop_consumer,
)
from streams.process import Stopping, exit_now

if TYPE_CHECKING:
    from projections.runtime import Projector

log = logging.getLogger(__name__)

GROUP = "pit.projector"  # every projector's: they divide the partitions
DRAIN_TIMEOUT_S = 30.0   # the most a stop waits for the projector to archive the log's end
READY_TIMEOUT_S = 120.0  # a child's start: imports, schema, registry, joining the group
SCRAPE_S = 2.0           # how often `pit up` reads the child's metrics (for the console)
SCRAPE_TIMEOUT_S = 2.0
PARENT_POLL_S = 0.5      # how often a child looks for its parent
RESTART_FIRST_S, RESTART_MAX_S = 1.0, 30.0  # the backoff between starts of a child that died
READY = "projector is up: metrics at "  # the child's first line on stdout, then its address


def make_projector(settings: Settings, engine: Engine, codec: Codec, *, observers: bool = True
                   ) -> Projector:
    """The Pit's projector: every component's views and the audit log, and (`observers`)
    the metrics fed from them. `pit up` with a projector process keeps one without observers
    for its topics and positions (`drain`)."""
    from projections.runtime import Projector

    fed = [observer for component in COMPONENTS
           for observer in component.observers(engine)] if observers else []
    return Projector(engine, views(settings), codec=codec, observers=fed)


async def start_reader(settings: Settings) -> AIOKafkaConsumer:
    """The projector's consumer, in the projectors' group. A position the broker no longer
    holds goes to the oldest record it still has, not to the end (aiokafka's default), so a
    projector overtaken by a broker's own retention skips no more than that dropped."""
    return await start_consumer(settings, group_id=GROUP, fetch_max_wait_ms=20,
                                auto_offset_reset="earliest")


async def project(projector: Projector, consumer: AIOKafkaConsumer, settings: Settings,
                  stop: asyncio.Event) -> None:
    """Run `projector` on a started consumer until `stop`; records no view can apply go to
    the dead-letter topic."""
    from projections.runtime import run

    producer = make_producer(settings)
    try:
        await run(projector, consumer, stop, group=True, producer=producer)
    finally:
        await stop_clients(consumer, producer, failed=False)


async def drain(settings: Settings, projector: Projector, running: Callable[[], bool],
                timeout_s: float = DRAIN_TIMEOUT_S) -> bool:
    """Wait until everything the broker holds right now is archived (by whichever projector
    of the group holds each partition), while `running()`; False, and a warning, if that
    takes longer than `timeout_s`."""
    from streams.archive import AUDIT

    consumer = await start_consumer(settings)
    try:
        tps = [TopicPartition(topic, p) for topic in projector.topics
               for p in await partitions_of(consumer, topic)]
        ends = {(tp.topic, tp.partition): end
                for tp, end in (await consumer.end_offsets(tps)).items() if end > 0}
    finally:
        await stop_consumer(consumer)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline and running():
        archived = (await asyncio.to_thread(projector.positions)).get(AUDIT, {})
        if all(archived.get(tp, -1) >= end - 1 for tp, end in ends.items()):
            return True
        await asyncio.sleep(0.05)
    if running():
        log.warning("the projector did not catch up within %.0f s", timeout_s)
    return False


# --- the child: `pit project` ---------------------------------------------------------------

async def serve(settings: Settings, *, parent: int | None = None, metrics_port: int = 0) -> None:
    """`pit project`: one projector until SIGTERM/SIGINT (then it drains) or, with `parent`,
    until that process is gone (then it exits at once: see the module doc)."""
    from projections.runtime import create_schema
    from schemas.registry import EmbeddedRegistry
    from streams.commands import registry_for
    from streams.history import load_schemas
    from streams.sql import connect

    settings.bootstrap()  # no broker to read from: say so before creating anything
    engine = connect(settings.db_url)
    create_schema(engine, views(settings))
    registry = registry_for(settings)
    if isinstance(registry, EmbeddedRegistry):
        await load_schemas(settings, registry)  # `pit up` dead-letters the corrupt ones
    projector = make_projector(settings, engine, Codec(registry))
    stop = asyncio.Event()
    stopping = Stopping(DRAIN_TIMEOUT_S, stop.set, _say).install()
    consumer = await start_reader(settings)
    task = asyncio.create_task(project(projector, consumer, settings, stop), name="projector")
    site = await serve_metrics(metrics_port)
    print(f"{READY}{site}", flush=True)
    if parent is not None:
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # nobody reads the pipe any more
    waits = [asyncio.create_task(stopping.stop.wait()), task,
             *([asyncio.create_task(_parent_gone(parent))] if parent is not None else [])]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    if parent is not None and os.getppid() != parent:
        exit_now(0)  # its broker is gone with it: nothing more can be read
    if not task.done():
        await drain(settings, projector, lambda: not task.done())
        stop.set()
    await task  # raises what stopped it, if it failed
    engine.dispose()


async def serve_metrics(port: int) -> str:
    """GET /metrics of the projector-fed metrics on 127.0.0.1 (`port` 0: a free one); the
    address."""
    async def handle(_request: web.Request) -> web.Response:
        return metrics_response(metrics.PROJECTED)

    try:
        listening = socket.create_server(("127.0.0.1", port))
    except OSError as exc:
        raise PitError(f"cannot serve metrics on 127.0.0.1:{port}: {exc.strerror}") from None
    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, listening).start()
    return f"http://127.0.0.1:{listening.getsockname()[1]}/metrics"


def metrics_response(registry: CollectorRegistry = REGISTRY) -> web.Response:
    """A /metrics answer: `registry` in Prometheus's text format."""
    response = web.Response(body=generate_latest(registry))
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


async def _parent_gone(parent: int) -> None:
    while os.getppid() == parent:
        await asyncio.sleep(PARENT_POLL_S)


def _say(line: str) -> None:
    print(f"pit project: {line}", file=sys.stderr, flush=True)


# --- `pit up`'s side -------------------------------------------------------------------------

class ProjectorProcess:
    """`pit up`'s projector process (see the module doc): `start`, then `supervise`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.process: asyncio.subprocess.Process | None = None
        self.metrics_url: str | None = None
        self.restarts = 0
        self.started_at = 0.0
        self._families: list[Metric] = []

    def command(self) -> list[str]:
        return [sys.executable, "-m", "streams.cli", "project", "--parent", str(os.getpid())]

    def environment(self) -> dict[str, str]:
        """The child's environment: this one without its `PIT_*` variables, plus this Pit's
        settings as `PIT_*` variables (its broker, its database)."""
        settings = self.settings
        env = {name: value for name, value in os.environ.items()
               if not name.startswith("PIT_")}
        env.update(settings.env)
        env["PIT_DATA_DIR"] = str(Path(settings.data_dir).resolve())
        env["PIT_KAFKA_BOOTSTRAP_SERVERS"] = settings.bootstrap()
        if settings.database_url:
            env["PIT_DATABASE_URL"] = settings.database_url
        if settings.schema_registry_url:
            env["PIT_SCHEMA_REGISTRY_URL"] = settings.schema_registry_url
        return env

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def start(self) -> None:
        """Start a child and wait until it is ready (`spawn`, `ready`)."""
        await self.spawn()
        await self.ready()

    async def spawn(self) -> None:
        """Start a child; `ready` waits for it."""
        # A session of its own: Ctrl-C in a terminal reaches `pit up` only, which stops the
        # child once it has drained it. Its stderr is ours: its errors show.
        self.process = await asyncio.create_subprocess_exec(
            *self.command(), env=self.environment(), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, start_new_session=True)
        self.started_at = time.monotonic()

    async def ready(self) -> None:
        """Wait for the child's ready line; `PitError` if it exits or stays silent."""
        assert self.process is not None
        try:
            line = await asyncio.wait_for(self._ready_line(), READY_TIMEOUT_S)
        except TimeoutError:
            self.kill()
            raise PitError(f"the projector process did not start within {READY_TIMEOUT_S:g} s"
                           ) from None
        if line is None:
            raise PitError(f"the projector process exited during start-up (code"
                           f" {await self.process.wait()}); its error is above")
        self.metrics_url = line.removeprefix(READY)
        metrics.PROJECTED_SOURCE.attach(lambda: self._families)
        await self.scrape()

    async def _ready_line(self) -> str | None:
        """The child's ready line; None if its stdout ends first (it exited)."""
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            if line.startswith(READY.encode()):
                return line.decode().strip()
            sys.stdout.write(line.decode(errors="backslashreplace"))  # not ours: pass it on
        return None

    async def supervise(self, stop: asyncio.Event) -> None:
        """Keep a child running until `stop`, then stop it (SIGTERM: it drains) and wait for
        it. A child that exits unasked is started again after 1 s, doubling to 30 s while
        they keep dying young; one that cannot start stops this (`PitError`)."""
        delay = RESTART_FIRST_S
        stopped = asyncio.ensure_future(stop.wait())
        try:
            while True:
                assert self.process is not None
                exited = asyncio.ensure_future(self.process.wait())
                while not (exited.done() or stop.is_set()):
                    await asyncio.wait([exited, stopped], timeout=SCRAPE_S,
                                       return_when=asyncio.FIRST_COMPLETED)
                    await self.scrape()
                if stop.is_set():
                    exited.cancel()
                    await self.stop(DRAIN_TIMEOUT_S)
                    return
                self.restarts += 1
                if time.monotonic() - self.started_at > RESTART_MAX_S:
                    delay = RESTART_FIRST_S  # it had been running well: not a crash loop
                log.warning("the projector process exited unasked (code %s); starting another"
                            " in %.0f s", exited.result(), delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(stopped), delay)
                if stop.is_set():
                    return
                await self.start()
                delay = min(delay * 2, RESTART_MAX_S)
        finally:
            stopped.cancel()
            self.kill()  # cancelled (`pit up` aborts), or failed: leave no child behind
            metrics.PROJECTED_SOURCE.attach(None)

    async def stop(self, timeout_s: float) -> None:
        """SIGTERM (the child drains, then exits), SIGKILL after `timeout_s` and its grace."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout_s + 5)
        except TimeoutError:
            log.warning("the projector process did not stop within %.0f s; killing it",
                        timeout_s + 5)
            self.kill()
            await process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    async def scrape(self) -> None:
        """Read the child's metrics; on failure keep the last ones (it may be restarting)."""
        if self.metrics_url is None:
            return
        try:
            async with ClientSession(timeout=ClientTimeout(total=SCRAPE_TIMEOUT_S)) as session, \
                    session.get(self.metrics_url) as response:
                text = await response.text()
        except (ClientError, TimeoutError, OSError) as exc:
            log.debug("projector metrics unavailable: %s", exc)
            return
        self._families = list(text_string_to_metric_families(text))
