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
from collections.abc import Iterator

import aiohttp
from aiokafka import AIOKafkaConsumer
from sqlalchemy import Engine

from schemas.codec import Codec
from streams.client import PitClient
from streams.config import Settings
from streams.errors import PitError
from streams.history import history_source, kafka_log_reader
from streams.log import LogRecord
from streams.pool.health import CHECK_INTERVAL_S
from streams.pool.host import pool_events, tail_pool_events
from streams.pool.pool import HostDown, HostRegistered, ReportHostDown
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
        self.client = PitClient(settings, issued_by="pit-host-monitor", codec=codec)
        self.endpoints: dict[HostKey, str] = {}  # alive hosts with an endpoint
        self._polls: dict[HostKey, asyncio.Task] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> HostMonitor:
        """Learn the hosts alive now from the whole history, then follow the log."""
        starts = await asyncio.to_thread(self._learn_history)
        await self.client.start()
        self._http = aiohttp.ClientSession()
        self._consumer = await tail_pool_events(self.settings, starts)
        for key, endpoint in self.endpoints.items():
            self._poll(key, endpoint)
        self._task = asyncio.create_task(self._follow(), name="pit-host-monitor")
        return self

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._polls.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._consumer is not None:
            await self._consumer.stop()
        if self._http is not None:
            await self._http.close()
        await self.client.close()

    def _learn_history(self) -> dict[int, int]:
        """Fold the host events of the whole history (archive, then Kafka); returns where
        to follow on from (partition -> next offset)."""
        starts: dict[int, int] = {}

        def positions(records: Iterator[LogRecord]) -> Iterator[LogRecord]:
            for record in records:
                starts[record.partition] = record.offset + 1
                yield record

        records = history_source(self.engine, [POOL_EVENTS],
                                 kafka_log_reader(self.settings, [POOL_EVENTS]))
        for pool_id, event in pool_events(self.client.codec, positions(records)):
            self._apply(pool_id, event)
        return starts

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
        while True:
            batch = await self._consumer.getmany(timeout_ms=200)
            for messages in batch.values():
                for pool_id, event in pool_events(self.client.codec, messages):
                    if self._apply(pool_id, event):
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
        try:
            async with self._http.get(f"{endpoint}/health",
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
