"""`pit host` as real processes against an in-process Stack (embedded broker, the pool
processor, the HostMonitor): a host killed mid-load and one killed mid-inference, the pool
recovering on another host; a model that starts failing detected within 1 s (measured); a
graceful drain on SIGTERM; an npz model that really computes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from streams.app import Stack
from streams.client import PitClient
from streams.config import Settings
from streams.decider import Message
from streams.follower import Follower
from streams.pool.client import Allocation
from streams.pool.errors import AllocationError, InferenceError
from streams.pool.host import pool_events
from streams.pool.lifecycle import ModelTransitioned
from streams.pool.loaders import load, write_mlp
from streams.pool.monitor import HostMonitor
from streams.pool.pool import (
    AllocationFailed,
    HealthRecorded,
    HostDown,
    HostRegistered,
    LoadRequested,
    ModelLoaded,
    ModelUnloaded,
    ReportHostDown,
)
from streams.pool.topics import POOL_EVENTS
from streams.waiting import until

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
ECHO = "python:host_models:echo"  # tests/fixtures/host_models.py


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Events:
    """Every pool event from the moment it starts, with the monotonic time it arrived."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, Message]] = []

    async def start(self, settings: Settings, codec) -> Events:
        follower = Follower(settings, [POOL_EVENTS])
        await follower.start(at_end=True)

        async def follow() -> None:
            try:
                async for records in follower.batches(asyncio.Event()):
                    now = time.monotonic()
                    self.seen.extend((now, e) for _, e in pool_events(codec, records))
            finally:
                await follower.stop()

        self.task = asyncio.create_task(follow())
        return self

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    def find(self, kind: type, **fields: object) -> list[tuple[float, Message]]:
        return [(at, e) for at, e in self.seen if isinstance(e, kind)
                and all(getattr(e, k) == v for k, v in fields.items())]

    async def wait(self, kind: type, timeout: float = 20.0, **fields: object):
        """The first such event (waiting for it), with when it arrived."""
        found = await until(lambda: self.find(kind, **fields), timeout,
                            f"{kind.__name__} {fields}")
        return found[0]


@dataclass
class Host:
    host_id: str
    process: subprocess.Popen
    log_path: Path
    endpoint: str = ""

    def log(self) -> str:
        return self.log_path.read_text()

    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.endpoint}/health", timeout=2) as reply:
            return json.loads(reply.read())

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)


@dataclass
class Pit:
    stack: Stack
    client: PitClient
    events: Events
    data_dir: Path
    hosts: list[Host] = field(default_factory=list)

    async def host(self, host_id: str, memory_mb: int = 512, capacity: int = 4,
                   args: tuple[str, ...] = (), **env: str) -> Host:
        """Start `pit host` and wait until the pool has registered it."""
        log_path = self.data_dir / f"{host_id}-{len(self.hosts)}.log"
        earlier = len(self.events.find(HostRegistered, host_id=host_id))
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "host", "--id", host_id,
                 "--memory-mb", str(memory_mb), "--capacity", str(capacity), *args],
                env={**os.environ, "PIT_DATA_DIR": str(self.data_dir),
                     "PYTHONPATH": os.pathsep.join([str(FIXTURES),
                                                    os.environ.get("PYTHONPATH", "")]),
                     **env},
                stdout=subprocess.DEVNULL, stderr=log)
        host = Host(host_id, process, log_path)
        self.hosts.append(host)

        def registered():
            if process.poll() is not None:
                raise AssertionError(f"pit host exited {process.returncode}: {host.log()}")
            return self.events.find(HostRegistered, host_id=host_id)[earlier:]

        (_, event), = await until(registered, 30, f"{host_id} registered")
        host.endpoint = event.endpoint
        return host

    async def allocate(self, model_id: str, **options) -> Allocation:
        return await self.client.pool.allocate_model(model_id, "test-host", **options)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pit(tmp_path_factory) -> AsyncIterator[Pit]:
    data_dir = tmp_path_factory.mktemp("pit-host")
    async with Stack(Settings(data_dir=data_dir), progress=False) as stack:
        events = await Events().start(stack.settings, stack.codec)
        client = await PitClient(stack.settings, issued_by="test-host").start()
        try:
            yield Pit(stack, client, events, data_dir)
        finally:
            await client.close()
            await events.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def hosts(pit: Pit) -> AsyncIterator[Pit]:
    """The pit, and afterwards no host of this test left in the pool: later tests place
    models on their own hosts only."""
    yield pit
    for host in pit.hosts:
        if host.process.poll() is None:
            host.kill()
        await pit.client.send(ReportHostDown(host.host_id))  # rejected if already down
    pit.hosts.clear()


async def test_host_killed_mid_load_the_queued_allocation_is_granted_elsewhere(hosts: Pit):
    pit, model, request = hosts, unique("m-load"), unique("req")
    # The bigger budget makes the slow host the pool's first choice.
    slow = await pit.host("load-slow", memory_mb=1024, HOST_MODELS_LOAD_DELAY_S="60")
    spare = await pit.host("load-spare", memory_mb=512)
    assert (await pit.client.pool.register_model(model, ECHO, 64, 100)).accepted
    allocation = asyncio.create_task(pit.allocate(model, request_id=request, timeout=30))

    await pit.events.wait(LoadRequested, model_id=model, host_id=slow.host_id)
    await until(lambda: f"loading {model}" in slow.log(), what="the slow load under way")
    slow.kill()

    granted = await allocation
    assert (granted.host_id, granted.cache_hit, granted.endpoint) == (
        spare.host_id, False, spare.endpoint)
    _, down = await pit.events.wait(HostDown, host_id=slow.host_id)
    assert down.models == [model]
    _, failed = await pit.events.wait(ModelTransitioned, model_id=model, to_state="Failed")
    assert failed.from_state == "Warming" and failed.reason == "HealthCheckFailure"
    assert not pit.events.find(AllocationFailed, request_id=request)  # not lost
    assert (await pit.client.pool.infer(granted, {"x": 1}))["echo"] == {"x": 1}
    assert (await pit.client.pool.release_model(request)).accepted


async def test_host_killed_mid_inference_fails_the_allocation_and_recovers(hosts: Pit):
    pit, model = hosts, unique("m-infer")
    doomed = await pit.host("infer-doomed", memory_mb=1024)
    spare = await pit.host("infer-spare", memory_mb=512)
    assert (await pit.client.pool.register_model(model, ECHO, 64, 100)).accepted
    first = await pit.allocate(model)
    assert first.host_id == doomed.host_id

    call = asyncio.create_task(pit.client.pool.infer(first, {"sleep": 30}))
    await until(lambda: doomed.health()["models"][model]["calls"] == 1,
                what="the call running on the host")
    doomed.kill()
    with pytest.raises(InferenceError):
        await call
    _, ended = await pit.events.wait(AllocationFailed, request_id=first.request_id)
    assert (ended.in_flight, ended.code) == (True, "host_down")

    second = await pit.allocate(model)  # the Failed model is recovered on the spare host
    assert (second.host_id, second.cache_hit) == (spare.host_id, False)
    # the allocation's outcome can reach the client before this test's reader of the pool's
    # events has the transition: wait for it rather than look once
    await pit.events.wait(ModelTransitioned, model_id=model, from_state="Failed",
                          to_state="Cold", reason="ErrorRecovery")
    reply = await pit.client.pool.infer(second, {"x": 2})
    assert reply == {"echo": {"x": 2}, "pid": spare.process.pid}
    assert (await pit.client.pool.release_model(second.request_id)).accepted


async def test_a_model_that_starts_failing_is_detected_within_a_second(hosts: Pit, tmp_path):
    pit, model, flag = hosts, unique("m-fail"), tmp_path / "fail"
    host = await pit.host("health", HOST_MODELS_FAIL_FLAG=str(flag))
    assert (await pit.client.pool.register_model(model, ECHO, 64, 100)).accepted
    allocation = await pit.allocate(model)
    await pit.events.wait(HealthRecorded, model_id=model, ok=True)  # checked, and healthy
    await asyncio.sleep(0.6)  # two more passing checks, which say nothing new: not reported
    assert len(pit.events.find(HealthRecorded, model_id=model)) == 1
    # A blip (exactly one failed check): the next passing check is reported, and resets
    # the pool's count; the model stays Hot.
    blip_flag = tmp_path / "blip"
    blip_flag.write_text("1")
    blip_flag.replace(flag)  # whole: the host never reads it half written
    await until(lambda: len(pit.events.find(HealthRecorded, model_id=model, ok=True)) == 2,
                what="the passing check after the blip")
    blip = [e for _, e in pit.events.find(HealthRecorded, model_id=model)]
    assert [e.ok for e in blip] == [True, False, True]
    assert blip[-1].consecutive_failures == 0
    assert not pit.events.find(ModelTransitioned, model_id=model, to_state="Failed")

    flag.touch()
    started = time.monotonic()
    at, failed = await pit.events.wait(ModelTransitioned, model_id=model, to_state="Failed")
    detect_s = at - started
    print(f"\nhealth_detect_s (model starts failing -> its Failed event arrives): "
          f"{detect_s:.3f}")
    assert failed.reason == "HealthCheckFailure"
    bad = [e for _, e in pit.events.find(HealthRecorded, model_id=model, ok=False)]
    assert [e.consecutive_failures for e in bad[-3:]] == [1, 2, 3]
    assert "the fail flag is set" in bad[-1].detail
    # Passing checks are reported only when they say something: the first, the reset.
    assert len(pit.events.find(HealthRecorded, model_id=model, ok=True)) == 2
    # The one second is the detector's (tests/unit/test_health.py, on its own clock); here
    # the wall clock also counts a loaded machine's delays in the host, the pool and Kafka.
    assert detect_s < 5.0
    _, ended = await pit.events.wait(AllocationFailed, request_id=allocation.request_id)
    assert (ended.in_flight, ended.code) == (True, "health_check")
    await pit.events.wait(ModelUnloaded, model_id=model, host_id=host.host_id)

    flag.unlink()  # healthy again: the next allocation recovers it (Failed -> Cold -> Hot)
    again = await pit.allocate(model)
    assert again.host_id == host.host_id
    assert (await pit.client.pool.infer(again, {"x": 3}))["echo"] == {"x": 3}
    assert (await pit.client.pool.release_model(again.request_id)).accepted


async def test_sigterm_drains_in_flight_work_then_leaves_the_pool(hosts: Pit):
    pit, busy, idle = hosts, unique("m-drain"), unique("m-idle")
    host = await pit.host("drain")
    for model in (busy, idle):
        assert (await pit.client.pool.register_model(model, ECHO, 64, 100)).accepted
    allocation = await pit.allocate(busy)
    done = await pit.allocate(idle)
    assert (await pit.client.pool.release_model(done.request_id)).accepted

    host.process.send_signal(signal.SIGTERM)
    await pit.events.wait(ModelTransitioned, model_id=busy, to_state="Cooling")
    # The idle model goes at once; the allocation in flight is still served; a new one is
    # refused while Cooling, and a call no allocation covers is turned away.
    await pit.events.wait(ModelUnloaded, model_id=idle, host_id=host.host_id)
    assert (await pit.client.pool.infer(allocation, {"x": 4}))["echo"] == {"x": 4}
    with pytest.raises(AllocationError, match="Cooling"):
        await pit.allocate(busy)
    uncovered = Allocation("none", idle, host.host_id, host.endpoint, False)
    with pytest.raises(InferenceError, match="HTTP 503: host drain is draining"):
        await pit.client.pool.infer(uncovered, {"x": 5})
    await asyncio.sleep(0.3)
    assert host.process.poll() is None, "the host left before the allocation was released"
    assert not pit.events.find(ModelUnloaded, model_id=busy)

    assert (await pit.client.pool.release_model(allocation.request_id)).accepted
    unloaded_at, _ = await pit.events.wait(ModelUnloaded, model_id=busy, host_id=host.host_id)
    down_at, down = await pit.events.wait(HostDown, host_id=host.host_id)
    assert down.models == [] and unloaded_at <= down_at
    assert await asyncio.to_thread(host.process.wait, 15) == 0, host.log()
    assert "drained" in host.log()
    assert not pit.events.find(AllocationFailed, request_id=allocation.request_id)
    await pit.events.wait(ModelTransitioned, model_id=busy, from_state="Cooling",
                          to_state="Cold")


async def test_drain_timeout_bounds_the_drain(hosts: Pit):
    pit, model = hosts, unique("m-stuck")
    host = await pit.host("stuck", args=("--drain-timeout", "1"))
    assert (await pit.client.pool.register_model(model, ECHO, 64, 100)).accepted
    allocation = await pit.allocate(model)  # never released

    started = time.monotonic()
    host.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(host.process.wait, 15) == 1, host.log()
    assert 1.0 <= time.monotonic() - started < 5.0
    assert "drain timed out after 1 s" in host.log()
    _, ended = await pit.events.wait(AllocationFailed, request_id=allocation.request_id)
    assert (ended.in_flight, ended.code) == (True, "host_down")
    _, down = await pit.events.wait(HostDown, host_id=host.host_id)
    assert down.models == [model]


async def test_a_host_wrongly_reported_down_registers_again(hosts: Pit):
    pit, model = hosts, unique("m-frozen")
    host = await pit.host("frozen")
    assert (await pit.client.pool.register_model(model, ECHO, 64, 100)).accepted
    allocation = await pit.allocate(model)

    host.process.send_signal(signal.SIGSTOP)  # unreachable, but not dead
    try:
        await pit.events.wait(HostDown, host_id=host.host_id)
    finally:
        host.process.send_signal(signal.SIGCONT)
    _, ended = await pit.events.wait(AllocationFailed, request_id=allocation.request_id)
    assert (ended.in_flight, ended.code) == (True, "host_down")
    await until(lambda: len(pit.events.find(HostRegistered, host_id=host.host_id)) == 2,
                what="the host registering again")
    assert "registering again" in host.log()

    again = await pit.allocate(model)  # recovered onto the same, living host
    assert again.host_id == host.host_id
    assert (await pit.client.pool.infer(again, {"x": 6}))["pid"] == host.process.pid
    assert (await pit.client.pool.release_model(again.request_id)).accepted


async def test_a_restarted_host_reports_its_earlier_run_down(hosts: Pit):
    """A host that died while no monitor watched comes back under the same id: its start
    reports the earlier run down, so the pool recovers that run's models."""
    pit, model, stack = hosts, unique("m-again"), hosts.stack
    await stack.services["host-monitor"].stop()
    try:
        first = await pit.host("again")
        assert (await pit.client.pool.register_model(model, ECHO, 64, 100)).accepted
        allocation = await pit.allocate(model)
        first.kill()
        second = await pit.host("again")
        _, down = await pit.events.wait(HostDown, host_id="again")
        assert down.models == [model]
        _, ended = await pit.events.wait(AllocationFailed, request_id=allocation.request_id)
        assert (ended.in_flight, ended.code) == (True, "host_down")
        assert second.endpoint != first.endpoint
    finally:  # a new monitor, run by the stack as its own was
        monitor = HostMonitor(stack.settings, stack.engine, codec=stack.codec)
        stack.services["host-monitor"] = monitor
        stack.tasks.append(asyncio.create_task(monitor.run(stack.stop), name="host-monitor"))
    # A new monitor learns from the log which hosts are alive, and where.
    await until(lambda: monitor.endpoints.get(("default", "again")) == second.endpoint,
                what="the new monitor learning the host from the log")
    again = await pit.allocate(model)
    assert (await pit.client.pool.infer(again, {"x": 7}))["pid"] == second.process.pid
    assert (await pit.client.pool.release_model(again.request_id)).accepted


async def test_npz_model_computes_on_a_real_host(hosts: Pit, tmp_path):
    pit, model = hosts, unique("m-npz")
    uri = f"npz:{write_mlp(tmp_path / 'mlp.npz', inputs=8, hidden=16, outputs=3, seed=3)}"
    host = await pit.host("npz")
    assert (await pit.client.pool.register_model(model, uri, 1, 50)).accepted
    allocation = await pit.allocate(model)

    rng = np.random.default_rng(5)
    one, batch = rng.standard_normal(8).tolist(), rng.standard_normal((4, 8)).tolist()
    reference = load(uri)
    assert np.allclose(await pit.client.pool.infer(allocation, one), reference.infer(one))
    outputs = np.asarray(await pit.client.pool.infer(allocation, batch))
    assert outputs.shape == (4, 3) and np.allclose(outputs, reference.infer(batch))
    assert np.allclose(outputs.sum(axis=1), 1.0)

    _, loaded = await pit.events.wait(ModelLoaded, model_id=model)
    assert loaded.host_id == host.host_id and loaded.load_ms >= 1 and loaded.memory_mb >= 1
    elsewhere = Allocation("none", "not-here", host.host_id, host.endpoint, False)
    with pytest.raises(InferenceError, match=r"HTTP 404: host npz does not hold model not-here"):
        await pit.client.pool.infer(elsewhere, one)
    assert (await pit.client.pool.release_model(allocation.request_id)).accepted


async def test_a_host_whose_pit_up_is_gone_says_so_and_serves_the_next(hosts: Pit):
    """The embedded broker lives and dies with `pit up`; a host left behind says so in one
    line, waits rather than serve a pool that can no longer instruct it, and registers
    again with the next `pit up` (here: the broker file names the live one again)."""
    host = await hosts.host("orphan")
    registered = len(hosts.events.find(HostRegistered, host_id="orphan"))
    broker_file = hosts.data_dir / "broker.json"
    joined = broker_file.read_text()
    broker_file.write_text(json.dumps({**json.loads(joined), "bootstrap_servers": "127.0.0.1:1"}))
    try:
        await until(lambda: "pit up is gone" in host.log(), 15, "the host to notice")
    finally:
        broker_file.write_text(joined)
    await until(lambda: len(hosts.events.find(HostRegistered, host_id="orphan")) > registered,
                60, "the host to register again")
    assert host.process.poll() is None
    log = host.log()
    assert log.count("pit up is gone") == 1 and "Traceback" not in log, log
