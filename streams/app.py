"""`pit up`: the whole Pit - embedded broker (unless a cluster is configured), every
registered component's processors and services (streams/components.py), the timer service,
the projector (a child process of its own by default: streams/projector.py), and the read
API with /metrics. Several `pit up` share one cluster:
processors and projectors split the partitions in their groups, and the services that must
run once (the timer service, the components' singletons) run on the elected leader
(streams/leader.py). `pit up --join` does the same on the embedded broker of another.

Start-up order matters: the broker is restored from the archive before anything reads it,
so offsets, state and views after a restart are what they were before it. Shutdown is the
reverse: processors finish their batch, then the projector drains to the end of the log,
so a graceful stop loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, TextIO

from aiohttp import web

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams import metrics
from streams.archive import pending_engine
from streams.broker import EmbeddedBroker
from streams.commands import registry_for
from streams.component import Runtime, Service
from streams.components import COMPONENTS, DECIDERS, views
from streams.config import BROKER_FILE, Settings
from streams.errors import PitError
from streams.history import load_schemas
from streams.kafka import make_producer, path_fetch_wait_ms, produce_all
from streams.leader import LeaderGate
from streams.log import LogRecord, source_of
from streams.memory import trim_broker, trim_heap_every
from streams.processor import (
    ArchiveFirst,
    Output,
    Processor,
    dead_letter,
    processor_group,
    run_processor,
)
from streams.projector import (
    DRAIN_TIMEOUT_S,
    ProjectorProcess,
    drain,
    make_projector,
    metrics_response,
    project,
    start_reader,
)
from streams.timers import TimerService, timer_topics
from streams.topics import SCHEMAS, TopicSpec, load_catalog

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy import Engine

log = logging.getLogger(__name__)

# "1": a chaos campaign's `pit up` (streams/campaigns/chaos.py): three embedded brokers, so a
# broker can go down or lose a partition's leadership, and POST /faults to make it so.
FAULTS = "PIT_FAULTS"


def progress_printer(label: str, stream: TextIO = sys.stderr
                     ) -> Callable[[int, int | None], None]:
    """A progress callback(done, total) that redraws one line."""
    def report(done: int, total: int | None) -> None:
        shown = f"{done:,}/{total:,}" if total else f"{done:,}"
        end = "\n" if total is not None and done >= total else ""
        print(f"\r{label}: {shown}", end=end, file=stream, flush=True)
    return report


@dataclass
class Stack:
    settings: Settings = field(default_factory=Settings.from_env)
    http_port: int | None = None
    progress: bool = True
    # Component services not to run, by name (`host-monitor`: tests without model hosts).
    without: Collection[str] = ()
    timers: bool = True  # run the timer service (tests that drive their own turn it off)
    # Join the embedded broker of the `pit up` already running on this data directory
    # (`pit up --join`) instead of starting one.
    join: bool = False
    leader_session_ms: int | None = None  # the leader group's session (default: its setting)
    say: Callable[[str], None] | None = None  # where leadership changes are told (`pit up`)
    # The projector in a process of its own (`pit up`'s default, PIT_PROJECTOR), not here.
    projector_process: bool = False

    def __post_init__(self) -> None:
        self.catalog = load_catalog()
        self.broker: EmbeddedBroker | None = None
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task] = []
        self._runner: web.AppRunner | None = None
        self.services: dict[str, Service] = {}
        self.processors: dict[str, Processor] = {}  # by decider name

    async def start(self) -> Stack:
        try:
            return await self._start()
        except BaseException:
            if (child := getattr(self, "projector_child", None)) is not None:
                child.kill()  # a start that failed leaves no projector behind
            raise

    async def _start(self) -> Stack:
        from projections.runtime import create_schema
        from streams.sql import connect

        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.engine = connect(self.settings.db_url)
        self.views = views(self.settings)
        create_schema(self.engine, self.views)
        self.pending_db = pending_engine(self.engine)
        embedded = self.settings.embedded  # false once it names the broker started here
        if embedded and not self.join:
            self.broker = EmbeddedBroker(3 if self.faults else 1)
            self.broker.apply(self.catalog)
            self.settings = replace(self.settings, bootstrap_servers=self.broker.bootstrap_servers)
            await self.restore_from_archive()
            for component in COMPONENTS:
                if component.prepare is not None:
                    await component.prepare(self.settings, self.engine)
        self.registry = registry_for(self.settings)
        if isinstance(self.registry, EmbeddedRegistry):
            await self.sync_registry(self.registry)
        self.codec = Codec(self.registry)
        if self.projector_process:  # it starts (imports, schema, group) beside ours
            self.projector_child = ProjectorProcess(self.settings)
            await self.projector_child.spawn()
        # The embedded broker keeps nothing over a restart: processors make their events
        # durable before their outcomes, one at a time (streams/processor.py); a joined
        # `pit up` too, since the broker it writes to is as volatile.
        self.archive_first = ArchiveFirst(self.engine, self.pending_db) if embedded else None
        readies = []
        for component in COMPONENTS:
            for decider in component.running_deciders(self.settings):
                processor = Processor(decider, self.codec)
                self.processors[decider.name] = processor
                readies.append(ready := asyncio.Event())
                self.tasks.append(asyncio.create_task(
                    run_processor(processor, self.settings, self.engine, self.stop, ready,
                                  archive_first=self.archive_first,
                                  fetch_max_wait_ms=path_fetch_wait_ms(embedded)),
                    name=processor.name))
        for ready in readies:  # they join their groups and restore side by side
            await self._until(ready)
        runtime = Runtime(self.settings, self.codec, self.engine, embedded)
        for name, service in self._services(runtime, shared=True).items():
            self.services[name] = service
            self.tasks.append(asyncio.create_task(service.run(self.stop), name=name))
        # The singleton services run on the elected leader only (streams/leader.py).
        self.leader = LeaderGate(self.settings, lambda: self._services(runtime, shared=False),
                                 services=self.services,
                                 session_timeout_ms=self.leader_session_ms, say=self.say)
        self.tasks.append(asyncio.create_task(self.leader.run(self.stop), name="leader"))
        await self._until(self.leader.decided)
        self.tasks.append(asyncio.create_task(trim_heap_every(self.stop), name="heap-trim"))
        if self.broker is not None:
            self.tasks.append(asyncio.create_task(trim_broker(
                self.broker, self.settings, self.engine, self.catalog,
                consumer_groups(self.settings), self.stop), name="broker-trim"))
        await self.start_projector()
        if self.http_port is not None:
            await self.start_http(self.http_port)
        if self.broker is not None:
            self.broker_file.write_text(json.dumps({
                "bootstrap_servers": self.settings.bootstrap_servers, "pid": os.getpid(),
                "http_port": self.http_port}))
        return self

    def _services(self, runtime: Runtime, *, shared: bool) -> dict[str, Service]:
        """The components' services that run in every `pit up` (`shared`), or those that run
        on the leader: made afresh for each of its terms."""
        found: dict[str, Service] = {}
        for component in COMPONENTS:
            for name, service in component.services(runtime).items():
                if name not in self.without and (name in component.shared) == shared:
                    found[name] = service
        if not shared and self.timers:
            self.timer_service = TimerService(self.settings, self.codec, self.engine,
                                              topics=timer_topics(DECIDERS))
            found["timers"] = self.timer_service
        return found

    @property
    def faults(self) -> bool:
        return self.settings.env.get(FAULTS) == "1"

    @property
    def broker_file(self) -> Path:
        return self.settings.data_dir / BROKER_FILE

    async def _until(self, ready: asyncio.Event) -> None:
        """Wait for a task to be ready, surfacing its failure instead of hanging."""
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait([waiter, *self.tasks], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is not waiter:
                waiter.cancel()
                task.result()  # raises the task's error
                raise RuntimeError(f"{task.get_name()} stopped during start-up")

    async def restore_from_archive(self) -> None:
        restored = await restore_broker(self.engine, self.pending_db, self.settings,
                                        self.catalog,
                                        progress_printer("restoring the embedded broker")
                                        if self.progress else None)
        log.info("restored %d records into the embedded broker", restored)

    async def sync_registry(self, registry: EmbeddedRegistry) -> None:
        """Load schemas others registered, then publish ours to the compacted topic. A
        corrupt record is skipped, dead-lettered and reported in one line, never fatal (the
        repository's schemas are known anyway; ours are published again)."""
        corrupt = [dead_letter(record, type(exc).__name__, str(exc), "registry")
                   for record, exc in await load_schemas(self.settings, registry)]
        if corrupt:
            first = dict(corrupt[0].headers)
            log.warning("%s: skipped %d corrupt record(s), dead-lettered (first at offset %s:"
                        " %s)", SCHEMAS, len(corrupt), first["pit.source.offset"].decode(),
                        first["pit.error"].decode())
        outputs = corrupt + [Output(SCHEMAS, 0, key, value, 0)
                             for key, value in registry.take_unpublished()]
        # Not idempotent: a new idempotent producer's first delivery waits 0.5-1 s for its
        # producer id, on every start. One request in flight keeps the order a retry could
        # change; a record written twice is loaded once (`EmbeddedRegistry.load_record`).
        await produce_all(make_producer(self.settings, **{
            "enable.idempotence": False, "max.in.flight.requests.per.connection": 1}), outputs)

    async def start_projector(self) -> None:
        """The projector: in a process of its own (`projector_process`), or a task here
        (streams/projector.py says why the first is `pit up`'s default)."""
        self.projector_stop = asyncio.Event()
        if self.projector_process:
            # Not run here: its topics and the positions it stores tell `drain_projector`.
            self.projector = make_projector(self.settings, self.engine, self.codec,
                                            observers=False)
            await self.projector_child.ready()
            running = self.projector_child.supervise(self.projector_stop)
        else:
            self.projector = make_projector(self.settings, self.engine, self.codec)
            self.projector_consumer = await start_reader(self.settings)
            running = project(self.projector, self.projector_consumer, self.settings,
                              self.projector_stop)
        self.projector_task = asyncio.create_task(running, name="projector")

    async def drain_projector(self, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Wait until everything the broker holds right now is archived (by whichever
        projector of the group holds each partition: in embedded mode the broker goes away
        with this process, so all of it)."""
        await drain(self.settings, self.projector, lambda: not self.projector_task.done(),
                    timeout_s)

    async def start_http(self, port: int) -> None:
        from projections.api import make_app
        from streams.client import PitClient

        settings, codec = self.settings, self.codec
        app = make_app(self.engine, COMPONENTS,
                       token=self.settings.env.get("PIT_API_TOKEN") or None,
                       commands=lambda: PitClient(settings, "pit-api", codec))
        app.router.add_get("/metrics", self.metrics_handler)
        if isinstance(self.registry, EmbeddedRegistry):  # for tools that decode our Avro
            from projections.schema_api import add_registry_routes

            add_registry_routes(app, self.registry)
        from projections.console import add_console_routes

        add_console_routes(app, self.settings, broker={
            "kind": "embedded" if self.broker is not None else "cluster",
            "bootstrap_servers": self.settings.bootstrap_servers},
            components=tuple(component.name for component in COMPONENTS))
        if self.faults and self.broker is not None:
            app.router.add_post("/faults", fault_handler(self.broker))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()

    async def metrics_handler(self, _request: web.Request) -> web.Response:
        if self.projector_process and hasattr(self, "projector_child"):
            await self.projector_child.scrape()  # its figures as of now
        return metrics_response()

    async def close(self) -> None:
        """Processors and services finish their batch, the projector drains, then everything
        stops."""
        self.stop.set()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if hasattr(self, "projector_task"):
            await self.drain_projector()
            self.projector_stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self.projector_task
        if self._runner is not None:
            await self._runner.cleanup()
        if self.broker is not None:
            with contextlib.suppress(FileNotFoundError):
                self.broker_file.unlink()
            self.broker.close()
        self.dispose()

    async def abort(self) -> None:
        """Stop at once, draining nothing: for a joined process whose broker went away
        (nothing can be delivered; what was not acknowledged is redelivered to others)."""
        tasks = [*self.tasks, *([self.projector_task] if hasattr(self, "projector_task")
                                else [])]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)
        if self._runner is not None:
            await self._runner.cleanup()
        self.dispose()

    def dispose(self) -> None:
        self.engine.dispose()
        if self.pending_db is not self.engine:
            self.pending_db.dispose()

    async def __aenter__(self) -> Stack:
        return await self.start()

    async def __aexit__(self, *_: object) -> None:
        await self.close()


RESTORE_PLACEHOLDER_KEY = b"__pit.restore.placeholder__"


async def restore_broker(engine: Engine, pending_db: Engine, settings: Settings,
                         catalog: Mapping[str, TopicSpec],
                         progress: Callable[[int, int | None], None] | None = None) -> int:
    """Replay the archive into an empty broker so every record gets back its original offset.

    Records go back partition by partition in offset order: the archived ones, then the
    pending ones beyond them (events a processor made durable before the projector archived
    them: streams/archive.py). An offset the archive does not hold (the broker dropped it
    before it was archived), on a compacted topic a record superseded by a later one with the
    same key, and a derived record whose source is not durable (a task whose NodeScheduled
    was lost: `streams.log.source_of`) are restored as a tombstone of a placeholder key: the
    topic then holds each key's latest value only - restored compacted - and no effect
    without its cause, while every offset stays where consumer positions and the archive
    expect it."""
    from streams.archive import compacted_positions, durable_ends, durable_records

    kept = {spec.name: compacted_positions(engine, pending_db, spec.name)
            for spec in catalog.values() if spec.compacted}
    durable = durable_ends(engine, pending_db)
    producer = make_producer(settings, **{"linger.ms": 20})
    next_offset: dict[tuple[str, int], int] = {}
    restored, batch = 0, list[Output | LogRecord]()
    orphans: Counter[str] = Counter()

    def placeholder(record: LogRecord) -> Output:
        return Output(record.topic, record.partition, RESTORE_PLACEHOLDER_KEY, None,
                      record.timestamp_ms)

    for record in durable_records(engine, pending_db):
        position = (record.topic, record.partition)
        batch.extend(placeholder(record) for _ in range(next_offset.get(position, 0),
                                                        record.offset))
        superseded = record.topic in kept and (record.partition, record.offset) not in kept[
            record.topic]
        source = source_of(record.headers) if record.headers else None
        orphan = source is not None and source[2] > durable.get(source[:2], -1)
        if orphan:
            orphans[record.topic] += 1
            metrics.RESTORE_ORPHANS.labels(record.topic).inc()
        batch.append(placeholder(record) if superseded or orphan else record)
        next_offset[position] = record.offset + 1
        if len(batch) >= 20_000:
            restored += await produce_all(producer, batch)
            batch.clear()
            if progress:
                progress(restored, None)
    restored += await produce_all(producer, batch)
    if progress and restored:
        progress(restored, restored)
    if orphans:
        log.warning("restore: %s restored as placeholders: their source is not in the archive",
                    ", ".join(f"{n} records of {topic}" for topic, n in sorted(orphans.items())))
    return restored


def consumer_groups(settings: Settings) -> dict[str, tuple[str, ...]]:
    """The consumer groups the Pit's processes read with, and their topics: the embedded
    broker keeps what they have not committed (streams/memory.py). The output cataloger's
    group counts only when the cataloger runs: a group that never commits would hold
    pit.dag.events in memory for good."""
    from streams.artifacts.dag_outputs import GROUP as DAG_OUTPUTS
    from streams.artifacts.settings import ArtifactSettings
    from streams.dag.runner import GROUP as RUNNERS
    from streams.dag.topics import DAG_EVENTS, DAG_TASKS

    # Runners of some pools only (their own groups) leave the tasks topic untrimmed: the
    # runners' group of every pool holds it until it commits.
    groups: dict[str, tuple[str, ...]] = {
        processor_group(decider): (decider.command_topic,) for decider in DECIDERS}
    groups[RUNNERS] = (DAG_TASKS,)
    if ArtifactSettings.of(settings).dag_output_artifacts:
        groups[DAG_OUTPUTS] = (DAG_EVENTS,)
    return groups


def running_pit(settings: Settings) -> bool:
    """True when a `pit up` owns this data directory (its broker file names a live pid)."""
    try:
        pid = json.loads((settings.data_dir / BROKER_FILE).read_text())["pid"]
        os.kill(pid, 0)
        return True
    except (OSError, ValueError, KeyError):
        return False


def fault_handler(broker: EmbeddedBroker
                  ) -> Callable[[web.Request], Awaitable[web.Response]]:
    """POST /faults, the mock cluster's fault injection (only with PIT_FAULTS=1), one of
    {"fault": "down" | "up", "broker": id}, {"fault": "errors", "api_key": k, "errors": [code,
    ...]} (the next requests of that API fail so) or {"fault": "leader", "topic": t,
    "partition": p, "broker": id}."""
    async def handle(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            fault = body["fault"]
            if fault in ("down", "up"):
                (broker.broker_down if fault == "down" else broker.broker_up)(int(body["broker"]))
            elif fault == "errors":
                broker.push_request_errors(int(body["api_key"]), [int(e) for e in body["errors"]])
            elif fault == "leader":
                broker.set_leader(str(body["topic"]), int(body["partition"]), int(body["broker"]))
            else:
                raise ValueError(f"unknown fault {fault!r}")
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": f"bad fault: {exc}"}, status=400)
        return web.json_response({"ok": True})

    return handle


async def serve(settings: Settings, *, join: bool = False) -> None:
    """`pit up`: run until SIGINT/SIGTERM, then stop gracefully.

    `join` (`pit up --join`): add this process to the `pit up` running on the same data
    directory, on its embedded broker and database. The two share the work (processors and
    projectors by partition, the singleton services on the elected leader). The embedded
    broker lives in the first process: while it is down this one waits, and joins again
    when it is back. Against a cluster every `pit up` joins the others; `join` changes
    nothing there."""
    where = settings.data_dir.resolve()
    if settings.embedded and running_pit(settings) and not join:
        raise PitError(f"pit up is already running on {where}"
                       " (`pit up --join` adds a process to it)")
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    if not (join and settings.embedded):
        await _serve(Stack(settings, http_port=settings.http_port, say=_say,
                           projector_process=settings.projector_process), stopping)
        return
    # A joined process serves the read API only where asked (the first one serves it).
    port = settings.http_port if "PIT_HTTP_PORT" in settings.env else None
    while not stopping.is_set():
        if not running_pit(settings):
            print(f"pit up --join: waiting for pit up on {where} to start", flush=True)
            while not (running_pit(settings) or stopping.is_set()):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), 0.5)
            continue
        await _serve(Stack(settings, http_port=port, join=True, say=_say,
                           projector_process=settings.projector_process), stopping,
                     broker_gone=lambda: not running_pit(settings))


async def _serve(stack: Stack, stopping: asyncio.Event,
                 broker_gone: Callable[[], bool] | None = None) -> None:
    """Run `stack` until `stopping`, a failure, or (joined) its broker's process is gone."""
    await stack.start()
    settings = stack.settings
    api = f"http://127.0.0.1:{stack.http_port}" if stack.http_port is not None else "none here"
    print(f"pit is up: kafka {settings.bootstrap()}, api {api} (/models, /metrics), "
          f"state in {settings.data_dir.resolve()}"
          + (" (joined)" if stack.join else ""), flush=True)
    waits = [asyncio.create_task(stopping.wait()),
             asyncio.create_task(asyncio.wait([*stack.tasks, stack.projector_task],
                                              return_when=asyncio.FIRST_EXCEPTION))]
    if broker_gone is not None:
        waits.append(asyncio.create_task(_until_true(broker_gone)))
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for wait in waits:
        wait.cancel()
    if broker_gone is not None and broker_gone():
        print("pit up --join: the pit up holding the embedded broker is gone;"
              " waiting for it to restart", flush=True)
        await stack.abort()
        return
    print("pit is stopping: draining processors and projections", flush=True)
    await stack.close()
    print("pit stopped", flush=True)


def _say(line: str) -> None:
    print(line, flush=True)


async def _until_true(check: Callable[[], bool], every_s: float = 0.5) -> None:
    while not check():
        await asyncio.sleep(every_s)
