"""Noticing hosts that die (issue 3, "If a host dies, its models go to Failed"). A killed
`pit host` cannot report itself, so `pit up` runs a HostMonitor: it learns the hosts from
pit.pool.events (HostRegistered with an endpoint: alive; HostDown: gone), polls each alive
host's `GET /health` every 0.25 s, and after 3 polls in a row that fail (connection refused,
no answer within 1 s, or not 200) sends ReportHostDown for it. The pool then fails what the
host held and places the queued allocations elsewhere.

A host registered without an endpoint (one that serves no HTTP) is not polled. A host that
comes back registers again (HostRegistered), which starts its polling afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
from sqlalchemy import Engine

from schemas.codec import Codec
from streams.commands import CommandClient
from streams.config import Settings
from streams.errors import PitError
from streams.follower import Follower
from streams.log import LogRecord
from streams.pool.health import CHECK_INTERVAL_S
from streams.pool.host import pool_events
from streams.pool.pool import POOL, HostDown, HostRegistered, ReportHostDown
from streams.pool.topics import POOL_EVENTS

log = logging.getLogger(__name__)

POLL_FAILURES = 3
POLL_TIMEOUT_S = 1.0

HostKey = tuple[str, str]  # (pool id, host id)


class HostMonitor:
    def __init__(self, settings: Settings, engine: Engine | None = None, *,
                 codec: Codec | None = None, interval_s: float = CHECK_INTERVAL_S,
                 failures: int = POLL_FAILURES, timeout_s: float = POLL_TIMEOUT_S) -> None:
        self.settings, self.engine = settings, engine
        self.interval_s, self.failures, self.timeout_s = interval_s, failures, timeout_s
        self.client = CommandClient(settings, "pit-host-monitor", codec, deciders=(POOL,))
        self.endpoints: dict[HostKey, str] = {}  # alive hosts with an endpoint
        self._polls: dict[HostKey, asyncio.Task] = {}
        self._follower = Follower(settings, [POOL_EVENTS], engine)
        self._stopping = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> HostMonitor:
        """Learn the hosts alive now from the whole history, then follow the log."""
        await self._follower.restore(self._learn, self._stopping)
        await self.client.start()
        self._http = aiohttp.ClientSession()
        await self._follower.start()
        for key, endpoint in self.endpoints.items():
            self._poll(key, endpoint)
        self._task = asyncio.create_task(self._follow(), name="pit-host-monitor")
        return self

    async def run(self, stop: asyncio.Event) -> None:
        """As a `pit up` service: start, follow until `stop` is set, stop."""
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    async def stop(self) -> None:
        self._stopping.set()
        tasks = [t for t in (self._task, *self._polls.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._follower.stop()
        if self._http is not None:
            await self._http.close()
        await self.client.close()

    def _learn(self, record: LogRecord) -> None:
        """A host event of the history: who is alive, and where."""
        for pool_id, event in pool_events(self.client.codec, [record]):
            self._apply(pool_id, event)

    def _apply(self, pool_id: str, event: object) -> bool:
        """Note a host event; True when it changed what is polled."""
        match event:
            case HostRegistered(host_id=host, endpoint=endpoint):
                key = (pool_id, host)
                if endpoint:
                    self.endpoints[key] = endpoint
                else:
                    self.endpoints.pop(key, None)
                return True
            case HostDown(host_id=host):
                self.endpoints.pop((pool_id, host), None)
                return True
        return False

    async def _follow(self) -> None:
        async for records in self._follower.batches(self._stopping, wait_ms=200):
            for pool_id, event in pool_events(self.client.codec, records):
                if self._apply(pool_id, event):
                    assert isinstance(event, HostRegistered | HostDown)  # the events _apply acts on
                    key = (pool_id, event.host_id)
                    old = self._polls.pop(key, None)
                    if old is not None:
                        old.cancel()
                    if key in self.endpoints:
                        self._poll(key, self.endpoints[key])

    def _poll(self, key: HostKey, endpoint: str) -> None:
        self._polls[key] = asyncio.create_task(self._watch(key, endpoint),
                                               name=f"pit-host-monitor {key[1]}")

    async def _healthy(self, endpoint: str) -> bool:
        http = self._http
        assert http is not None  # opened by start(), before any poll
        try:
            async with http.get(f"{endpoint}/health",
                                timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return False

    async def _watch(self, key: HostKey, endpoint: str) -> None:
        pool_id, host_id = key
        failures = 0
        while True:
            failures = 0 if await self._healthy(endpoint) else failures + 1
            if failures >= self.failures:
                try:
                    outcome = await self.client.send(ReportHostDown(host_id, pool_id))
                except PitError as exc:  # try again on the next round
                    log.warning("host %s at %s is unreachable, but reporting it failed: %s",
                                host_id, endpoint, exc)
                else:
                    if outcome.accepted:
                        log.warning("host %s at %s did not answer %d health polls in a row:"
                                    " reported it down", host_id, endpoint, failures)
                    return  # its HostDown (or a new registration) says what comes next
            await asyncio.sleep(self.interval_s)
