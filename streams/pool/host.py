"""`pit host`: a real model host process (issue 3, "Models and hosts", "Health monitoring",
"Graceful shutdown"). The pool decides; the host does, and reports back.

* It serves HTTP: `POST /models/{model_id}/infer` with `{"inputs": ...}` answers
  `{"outputs": ...}` (404 for a model it does not hold, 503 while draining for a call no
  allocation covers), and `GET /health`.
* It registers (RegisterHost with its endpoint). A host id the pool still has up is a
  previous life of this host that died unnoticed: the host reports it down first
  (ReportHostDown), so the pool recovers whatever that life held, then registers empty.
* It follows pit.pool.events from the end as it was just before registering and carries out
  the LoadRequested/UnloadRequested addressed to it: loads run through the loader registry
  in a thread (ReportModelLoaded with the measured load time and memory, or
  ReportModelLoadFailed with the loader's one-line error); unloads wait for calls in progress
  (ReportModelUnloaded). It follows the allocations granted on it, to know which calls are
  in flight during a drain.
* Health: each loaded model is checked on the FailureDetector schedule (every 0.25 s). Every
  failed check is reported (ReportHealth; the pool fails the model at 3 in a row), so is the
  first passing check after a failure (it resets the pool's count) and one passing check
  every 10 s for the history - not every passing check, which would flood the log. Each
  inference call's outcome feeds the model's error-rate window.
* SIGTERM/SIGINT drain it: CoolModel for each model it holds (the pool grants no new
  allocations and asks for the unload once those in flight are released), calls under
  allocations in flight are still answered, unloads happen as instructed, and finally the
  host reports itself down (it leaves the pool empty) and exits 0. The drain is bounded
  (`--drain-timeout`, 30 s): past it, or on a second signal, the host reports itself down
  anyway - the pool ends the allocations still in flight - and exits 1. The whole stop is
  bounded whatever `pit up` does meanwhile: the last report waits 3 s at most, and the
  process ends at the drain timeout plus 5 s, 2 s after a second signal (streams/process.py).
* Its `pit up`: with an embedded broker, a host waits for a `pit up` to run (one line), and
  when the one it serves is gone (stopped, killed, restarted at a new address) it says so in
  one line, drops what it held and waits for the next, then registers there afresh.
* If the pool records this host down while it runs (the HostMonitor could not reach it),
  its models are already Failed there: the host drops them and registers again.

Reports go out one at a time, in order (ReportModelLoaded before that model's health).
Progress and problems are one line each on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from schemas.codec import Codec
from streams.arbitration.arbiter import ARBITER
from streams.arbitration.utilisation import report_every_s, report_utilisation
from streams.commands import CommandClient, Outcome
from streams.config import Settings
from streams.decider import Message
from streams.errors import BrokerUnavailableError, CommandTimeoutError, PitError
from streams.follower import Follower, entity_events
from streams.pool.health import FailureDetector, HealthChecker, HealthResult
from streams.pool.lifecycle import (
    DEFAULT_POOL,
    ModelState,
    ModelTransitioned,
    TransitionReason,
)
from streams.pool.loaders import LoadedModel, LoaderRegistry, default_registry
from streams.pool.pool import (
    POOL,
    AllocationFailed,
    CoolModel,
    HostDown,
    LoadRequested,
    ModelAllocated,
    ModelReleased,
    RegisterHost,
    ReportHealth,
    ReportHostDown,
    ReportModelLoaded,
    ReportModelLoadFailed,
    ReportModelUnloaded,
    UnloadRequested,
)
from streams.pool.topics import POOL_EVENTS
from streams.process import (
    BROKER_POLL_S,
    Stopping,
    broker_address,
    close_all,
    gone_line,
    wait_for_broker,
)

__all__ = ["DRAIN_TIMEOUT_S", "BrokerGone", "HostError", "ModelHost", "pool_events",
           "run_host"]

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 30.0
HEALTH_REPORT_EVERY_S = 10.0  # a passing check is reported this often, for the history
CHECK_TIMEOUT_S = 0.25  # a test inference still running after this counts as a failed check
UNLOAD_WAIT_S = 10.0  # calls in progress get this long to finish before a model is closed
REPORT_WAIT_S = 2.0  # the last report of a stop waits this long for pit up's answer


class HostError(PitError):
    """The host cannot start or run (no broker, registration refused, port taken)."""


class BrokerGone(HostError):
    """The `pit up` whose embedded broker the host joined is gone."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# --- following pit.pool.events (the host and the HostMonitor) --------------------------------

def pool_events(codec: Codec, records: Iterable[Any]) -> Iterator[tuple[str, Message]]:
    """(pool id, event) for each pool event among `records`."""
    return entity_events(codec, POOL, records)


# --- the host --------------------------------------------------------------------------------

@dataclass(eq=False)
class _Held:
    """A model this host holds."""

    model_id: str
    model: LoadedModel
    checker: HealthChecker
    calls: int = 0  # inference calls in progress
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set while calls == 0
    retired: bool = False  # the log shows the pool took it out of service (Cooling, Failed)
    unloading: bool = False
    watch: asyncio.Task | None = None

    def __post_init__(self) -> None:
        self.idle.set()


@dataclass(eq=False)
class _Loading:
    life: int
    unload: bool = False  # the pool asked for the unload while it was loading


def _infer_json(model: LoadedModel, inputs: Any) -> str:
    """Run the model and serialize its answer (in a worker thread: both may take time)."""
    def plain(value: Any) -> Any:
        if hasattr(value, "tolist"):  # NumPy arrays and scalars
            return value.tolist()
        raise TypeError(f"the model returned a {type(value).__name__}, not JSON")

    return json.dumps({"outputs": model.infer(inputs)}, default=plain)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": _one_line(message)}, status=status)


class ModelHost:
    def __init__(self, settings: Settings, host_id: str, memory_mb: int, capacity: int, *,
                 port: int = 0, bind: str = "127.0.0.1", advertise: str = "",
                 pool_id: str = DEFAULT_POOL, drain_timeout_s: float = DRAIN_TIMEOUT_S,
                 registry: LoaderRegistry | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        self.settings, self.host_id, self.pool_id = settings, host_id, pool_id
        self.memory_mb, self.capacity = memory_mb, capacity
        self.port, self.bind, self.drain_timeout_s = port, bind, drain_timeout_s
        self.advertise = advertise  # the URL others call it at, when not http://<bind>:<port>
        self.registry = registry or default_registry
        self._say = say or (lambda line: print(f"pit host {host_id}: {line}", file=sys.stderr,
                                               flush=True))
        self.endpoint = ""
        self.held: dict[str, _Held] = {}
        self.loading: dict[str, _Loading] = {}
        self.allocations: dict[str, str] = {}  # request id -> model id, granted on this host
        self.draining = False
        self.broker_gone = False
        # Bumped when the pool records this host down: work of an earlier life is dropped.
        self.life = 0
        self._down = asyncio.Event()  # the pool recorded this host down during the drain
        self._forced = asyncio.Event()
        self._reports: asyncio.Queue[tuple[Message, asyncio.Future]] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._jobs: set[asyncio.Task] = set()
        self._runner: web.AppRunner | None = None
        self._follower = Follower(settings, [POOL_EVENTS])
        self._closing = asyncio.Event()
        self.client: CommandClient | None = None
        self._work = ThreadPoolExecutor(32, thread_name_prefix="pit-host-work")
        self._loads = ThreadPoolExecutor(max(1, capacity), thread_name_prefix="pit-host-load")

    # --- start and stop --------------------------------------------------------------------

    async def start(self) -> ModelHost:
        app = web.Application()
        app.router.add_post("/models/{model_id}/infer", self._infer)
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self.bind, self.port).start()
        except OSError as exc:
            raise HostError(f"cannot listen on {self.bind}:{self.port}: "
                            f"{exc.strerror or exc}") from None
        self.endpoint = (self.advertise.rstrip("/") or
                         f"http://{self.bind}:{self._runner.addresses[0][1]}")
        # The broker this host joins, read once: the watch compares the broker file with it
        # (read when the watch first ran, a file rewritten meanwhile was taken for the joined)
        joined = self.settings.bootstrap()
        self.client = CommandClient(self.settings, f"pit-host/{self.host_id}",
                                    deciders=(POOL, ARBITER))
        await self.client.start()
        earlier = await self.client.send(ReportHostDown(self.host_id, self.pool_id))
        if earlier.accepted:
            self._say("the pool still had this host up from an earlier run: reported that run"
                      " down, so the pool recovers its models")
        # Pinned before registering: the instructions that follow it are never missed.
        await self._follower.start(at_end=True)
        registered = await self.client.send(self._registration())
        if not registered.accepted:
            raise HostError(f"host {self.host_id}: registration rejected: {registered.reason}")
        self._tasks = [asyncio.create_task(self._follow(), name="pit-host-events"),
                       asyncio.create_task(self._send_reports(), name="pit-host-reports")]
        if self.settings.embedded:
            self._tasks.append(asyncio.create_task(self._watch_broker(joined),
                                                   name="pit-host-broker"))
        if every_s := report_every_s(self.settings):  # CPU saturation, for arbitration
            self._tasks.append(asyncio.create_task(report_utilisation(
                self.client.send, self.host_id, every_s, pool_id=self.pool_id),
                name="pit-host-utilisation"))
        self._say(f"serving on {self.endpoint}; registered in pool {self.pool_id}"
                  f" ({self.memory_mb} MB, capacity {self.capacity})")
        return self

    def _registration(self) -> RegisterHost:
        return RegisterHost(self.host_id, self.memory_mb, self.capacity, self.pool_id,
                            self.endpoint)

    async def close(self) -> None:
        self._closing.set()
        for task in [*self._tasks, *self._jobs,
                     *(h.watch for h in self.held.values() if h.watch)]:
            task.cancel()
        for task in [*self._tasks, *self._jobs]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for held in self.held.values():
            held.model.close()
        self.held.clear()
        await close_all([self._follower.stop, *([self.client.close] if self.client else []),
                         *([self._runner.cleanup] if self._runner else [])])
        for pool in (self._work, self._loads):
            pool.shutdown(wait=False, cancel_futures=True)

    async def failed(self) -> None:
        """Returns (raising its error) when a background task of the host stops."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            error = task.exception()
            if isinstance(error, PitError):
                raise error
            raise HostError(f"host {self.host_id}: {task.get_name()} stopped: "
                            f"{_one_line(error) if error else 'without an error'}")

    async def _watch_broker(self, joined: str) -> None:
        """An embedded broker lives and dies with its `pit up`. Once the one this host
        joined (`joined`: its address) is gone (stopped, killed, or restarted at another
        address) no instruction can reach the host: it stops serving this pool (`run_host`
        waits for the next one)."""
        while broker_address(self.settings) == joined:
            await asyncio.sleep(BROKER_POLL_S)
        self.broker_gone = True
        raise BrokerGone(gone_line(joined))

    # --- reports: one at a time, in order ---------------------------------------------------

    def report(self, command: Message) -> asyncio.Future:
        """Queue a command for the pool; the future gets its Outcome (None if unsent)."""
        done = asyncio.get_running_loop().create_future()
        self._reports.put_nowait((command, done))
        return done

    async def _send_reports(self) -> None:
        client = self.client
        assert client is not None  # started in start(), before this task
        while True:
            command, done = await self._reports.get()
            outcome: Outcome | None = None
            try:
                outcome = await client.send(command)
            except PitError as exc:
                self._say(f"could not report {command.type_name}: {exc}")
            else:
                if not outcome.accepted:
                    # Health reports racing the pool's own decision to fail a model are
                    # expected to bounce; anything else is worth a line.
                    note = log.debug if isinstance(command, ReportHealth) else self._say
                    note(f"{command.type_name} {getattr(command, 'model_id', self.host_id)}"
                         f" rejected: {outcome.reason}")
            if not done.done():
                done.set_result(outcome)

    # --- instructions from the pool ---------------------------------------------------------

    async def _follow(self) -> None:
        client = self.client
        assert client is not None  # started in start(), before this task
        async for records in self._follower.batches(self._closing, wait_ms=200):
            for pool_id, event in pool_events(client.codec, records):
                if pool_id == self.pool_id:
                    self._on_event(event)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    def _on_event(self, event: Message) -> None:
        me = self.host_id
        match event:
            case LoadRequested(host_id=host, model_id=model_id, uri=uri) if host == me:
                if model_id not in self.held and model_id not in self.loading:
                    self.loading[model_id] = _Loading(self.life)
                    self._spawn(self._load(model_id, uri, self.life))
            case UnloadRequested(host_id=host, model_id=model_id) if host == me:
                self._spawn(self._unload(model_id))
            case ModelAllocated(host_id=host, request_id=request, model_id=model_id) \
                    if host == me:
                self.allocations[request] = model_id
            case ModelReleased(request_id=request) | AllocationFailed(request_id=request):
                self.allocations.pop(request, None)
            case ModelTransitioned(model_id=model_id, to_state=state, metadata=metadata) \
                    if model_id in self.held and metadata.get("host") == me:
                if state in (ModelState.COOLING, ModelState.FAILED):
                    self.held[model_id].retired = True
            case HostDown(host_id=host) if host == me:
                self._on_host_down()

    async def _load(self, model_id: str, uri: str, life: int) -> None:
        self._say(f"loading {model_id} ({uri})")
        loop = asyncio.get_running_loop()
        try:
            model = await loop.run_in_executor(self._loads, self.registry.load, uri)
        except Exception as exc:  # a LoaderError, or a factory raising past the loader
            if life == self.life:
                self.loading.pop(model_id, None)
                self._say(f"load of {model_id} failed: {exc}")
                self.report(ReportModelLoadFailed(self.host_id, model_id, _one_line(exc)[:500],
                                                  self.pool_id))
            return
        if life != self.life:  # the pool recorded this host down meanwhile: not ours now
            await loop.run_in_executor(self._work, model.close)
            return
        if self.loading.pop(model_id).unload:
            await loop.run_in_executor(self._work, model.close)
            self._say(f"unloaded {model_id} (unload requested while loading)")
            self.report(ReportModelUnloaded(self.host_id, model_id, self.pool_id))
            return
        held = _Held(model_id, model, HealthChecker(model, memory_limit_mb=self.memory_mb))
        self.held[model_id] = held
        self.report(ReportModelLoaded(self.host_id, model_id, model.report_load_ms,
                                      model.report_memory_mb, self.pool_id))
        held.watch = asyncio.create_task(self._watch(held))
        self._say(f"loaded {model_id} in {model.load_ms:.0f} ms, {model.memory_mb:.1f} MB")
        if self.draining:
            self.report(CoolModel(model_id, TransitionReason.USER_REQUEST, self.pool_id))

    async def _unload(self, model_id: str) -> None:
        loading = self.loading.get(model_id)
        if loading is not None:
            loading.unload = True  # reported once the load is done
            return
        held, life = self.held.get(model_id), self.life
        if held is not None:
            if held.unloading:
                return
            held.unloading = True
            await self._close(held)
            if life != self.life:
                return
            self.held.pop(model_id, None)
            self._say(f"unloaded {model_id}")
        # Not held (its load failed, or it was dropped): the report lets the pool free it.
        self.report(ReportModelUnloaded(self.host_id, model_id, self.pool_id))

    async def _close(self, held: _Held) -> None:
        """Stop checking the model, let its calls in progress finish, close it."""
        if held.watch is not None:
            held.watch.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(held.idle.wait(), UNLOAD_WAIT_S)
        await asyncio.get_running_loop().run_in_executor(self._work, held.model.close)

    def _on_host_down(self) -> None:
        """The pool recorded this host down: what it held is Failed there, not ours now."""
        self.life += 1
        dropped, self.held = list(self.held.values()), {}
        self.loading.clear()
        self.allocations.clear()
        for held in dropped:
            self._spawn(self._close(held))
        if self.draining:
            self._down.set()
            return
        self._say("the pool recorded this host down (unreachable, or reported down):"
                  f" dropped {len(dropped)} model(s), registering again")
        self.report(self._registration())

    # --- serving ----------------------------------------------------------------------------

    def _in_flight(self, model_id: str) -> int:
        return sum(1 for m in self.allocations.values() if m == model_id)

    async def _infer(self, request: web.Request) -> web.Response:
        model_id = request.match_info["model_id"]
        held = self.held.get(model_id)
        if self.draining and (held is None or held.unloading
                              or (held.retired and not self._in_flight(model_id))):
            return _error(503, f"host {self.host_id} is draining: {model_id} takes no new"
                               " calls")
        if held is None or held.unloading:
            return _error(404, f"host {self.host_id} does not hold model {model_id}")
        try:
            inputs = (await request.json())["inputs"]
        except (ValueError, KeyError, TypeError):
            return _error(400, 'expected a JSON object {"inputs": ...}')
        held.calls += 1
        held.idle.clear()
        try:
            body = await asyncio.get_running_loop().run_in_executor(
                self._work, _infer_json, held.model, inputs)
        except Exception as exc:
            held.checker.record_call(False)
            return _error(500, f"{model_id} failed on host {self.host_id}:"
                               f" {type(exc).__name__}: {exc}")
        finally:
            held.calls -= 1
            if not held.calls:
                held.idle.set()
        held.checker.record_call(True)
        return web.Response(text=body, content_type="application/json")

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({
            "host_id": self.host_id, "pool_id": self.pool_id,
            "status": "draining" if self.draining else "serving",
            "models": {m: {"calls": h.calls, "allocations": self._in_flight(m)}
                       for m, h in sorted(self.held.items())},
            "loading": sorted(self.loading)})

    # --- health -----------------------------------------------------------------------------

    def _watching(self, held: _Held) -> bool:
        """Whether `held` is still this host's to check. Asked besides cancelling its watch:
        Python 3.11's `asyncio.wait_for` can swallow a cancel that comes as the check ends,
        and a watch that outlived its model reported it failing ('model is closed'), then
        ran a check on the executor the host had shut down."""
        return (not self._closing.is_set() and not held.unloading
                and self.held.get(held.model_id) is held)

    async def _watch(self, held: _Held) -> None:
        detector = FailureDetector()
        last_report, previous_ok = -math.inf, True
        while self._watching(held):
            await asyncio.sleep(max(0.0, detector.next_due() - time.perf_counter()))
            if not self._watching(held):
                return
            result = await self._check(held)
            if not self._watching(held):
                return
            now = time.perf_counter()
            if detector.observe(result.ok, now):
                self._say(f"{held.model_id} failed {detector.threshold} health checks in a"
                          f" row: {result.detail}")
            if not result.ok or not previous_ok or now - last_report >= HEALTH_REPORT_EVERY_S:
                self.report(result.to_report(self.host_id, held.model_id, self.pool_id))
                last_report = now
            previous_ok = result.ok

    async def _check(self, held: _Held) -> HealthResult:
        started = time.perf_counter()
        try:
            return await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(
                self._work, held.checker.check), CHECK_TIMEOUT_S)
        except TimeoutError:
            return HealthResult(False, (time.perf_counter() - started) * 1000.0,
                                f"test inference did not answer within {CHECK_TIMEOUT_S:g} s")

    # --- graceful shutdown ------------------------------------------------------------------

    def force(self) -> None:
        """Stop draining now (a second signal): in-flight allocations end."""
        self._forced.set()

    async def drain(self) -> bool:
        """Cool every model, serve the allocations in flight until released, unload as told,
        then report the host down. True when everything drained before the timeout."""
        self.draining = True
        loop = asyncio.get_running_loop()
        self._say(f"draining: cooling {len(self.held)} model(s) with {len(self.allocations)}"
                  f" allocation(s) in flight, {len(self.loading)} load(s) in progress"
                  f" (at most {self.drain_timeout_s:g} s)")
        for model_id, held in self.held.items():
            if not held.unloading:
                self.report(CoolModel(model_id, TransitionReason.USER_REQUEST, self.pool_id))
        deadline = loop.time() + self.drain_timeout_s
        next_note = loop.time() + 5.0
        while ((self.held or self.loading) and not self._down.is_set()
               and not self._forced.is_set() and not self.broker_gone
               and loop.time() < deadline):
            await asyncio.sleep(0.05)
            if loop.time() >= next_note:
                next_note += 5.0
                self._say(f"draining: waiting for {', '.join(sorted(self.held))}"
                          f" ({len(self.allocations)} allocation(s) in flight)")
        drained = not self.held and not self.loading
        if not drained:
            why = ("stopped by a second signal" if self._forced.is_set()
                   else "cut short: pit up is gone" if self.broker_gone
                   else f"timed out after {self.drain_timeout_s:g} s")
            self._say(f"drain {why}: {', '.join(sorted([*self.held, *self.loading]))} still"
                      f" held, {len(self.allocations)} allocation(s) in flight end now")
        if self._down.is_set():
            self._say("the pool recorded this host down during the drain")
            return drained
        if self.broker_gone or broker_address(self.settings) is None:
            return False  # nobody to tell: the pool recovers the host's models on restart
        try:  # bounded: a `pit up` that stops now never answers
            outcome = await asyncio.wait_for(self.report(ReportHostDown(self.host_id,
                                                                        self.pool_id)),
                                             0.1 if self._forced.is_set() else REPORT_WAIT_S)
        except TimeoutError:
            self._say(f"could not report this host down within {REPORT_WAIT_S:g} s (is pit up"
                      " running?); the pool will find it unreachable")
            return False
        if outcome is not None and outcome.accepted:
            self._say("drained" if drained else "reported down")
        return drained


async def run_host(settings: Settings, host_id: str, memory_mb: int, capacity: int, *,
                   port: int = 0, bind: str = "127.0.0.1", advertise: str = "",
                   pool_id: str = DEFAULT_POOL, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> int:
    """`pit host`: serve until SIGTERM/SIGINT, then drain. 0 when it drained in time. It
    exits within its drain timeout and a few seconds whatever `pit up` does meanwhile, at
    once on a second signal (streams/process.py `Stopping`). While no `pit up` runs it waits
    for one, and when its `pit up` is gone it says so and serves the next one."""
    if memory_mb <= 0 or capacity <= 0:
        raise HostError(f"--memory-mb and --capacity must be positive (got {memory_mb},"
                        f" {capacity})")
    if drain_timeout_s < 0:
        raise HostError(f"--drain-timeout must not be negative (got {drain_timeout_s:g})")

    def say(line: str) -> None:
        print(f"pit host {host_id}: {line}", file=sys.stderr, flush=True)

    hosts: list[ModelHost] = []  # the current life, for the second signal

    def force() -> None:
        for host in hosts:
            host.force()

    stopping = Stopping(drain_timeout_s, force, say).install()
    refused = False  # said so once until the host registers again
    gone = False  # said so already: waiting for the next pit up needs no second line
    while await wait_for_broker(settings, stopping.stop, say, said=gone) is not None:
        host = ModelHost(settings, host_id, memory_mb, capacity, port=port, bind=bind,
                         advertise=advertise, pool_id=pool_id,
                         drain_timeout_s=drain_timeout_s, say=say)
        hosts[:] = [host]
        try:
            try:
                await host.start()
            except (BrokerUnavailableError, CommandTimeoutError) as exc:
                if not refused:
                    say(f"could not register ({_one_line(exc)}); trying again")
                refused = True
                await asyncio.sleep(BROKER_POLL_S)
                continue
            refused = False
            stop = asyncio.create_task(stopping.stop.wait())
            failed = asyncio.create_task(host.failed())
            await asyncio.wait([stop, failed], return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if not failed.done():
                failed.cancel()
                return 0 if await host.drain() else 1
            if not isinstance(failed.exception(), BrokerGone):
                failed.result()  # raises why the host cannot go on
            say(str(failed.exception()))
            gone = True
        finally:
            await host.close()
    return 0
