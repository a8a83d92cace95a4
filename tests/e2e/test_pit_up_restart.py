"""`pit up` as a real process: commands in, views and audit out, and a restart (SIGTERM,
then `pit up` again on the same data directory) loses nothing; nor does a `kill -9` with
commands in flight lose one it acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from streams.client import PitClient, SyncPitClient
from streams.commands import Outcome
from streams.config import Settings
from streams.pool.pool import ReportModelLoaded

pytestmark = pytest.mark.slow



class PitUp:
    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir, self.port = data_dir, port
        self.env = {**os.environ, "PIT_DATA_DIR": str(data_dir), "PIT_HTTP_PORT": str(port)}
        self.env.pop("PIT_KAFKA_BOOTSTRAP_SERVERS", None)
        self.env.pop("PIT_DATABASE_URL", None)

    def start(self) -> PitUp:
        self.process = subprocess.Popen([sys.executable, "-m", "streams.cli", "up"],
                                        env=self.env, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"pit up exited: {self.process.communicate()}")
            line = self.process.stdout.readline()
            if line.startswith("pit is up"):
                return self
        raise AssertionError("pit up did not come up within 60 s")

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        out, err = self.process.communicate(timeout=60)
        assert self.process.returncode == 0, err
        assert not (self.data_dir / "broker.json").exists()
        return out

    def get(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as reply:
            body = reply.read()
            return json.loads(body) if path != "/metrics" else body.decode()

    def registered(self) -> set[str]:
        """The models in the pool's view (pool_models), read from its database."""
        with contextlib.closing(sqlite3.connect(self.data_dir / "pit.db")) as db:
            return {row[0] for row in db.execute("SELECT model_id FROM pool_models")}

    def client(self) -> SyncPitClient:
        return SyncPitClient(Settings.from_env(self.env))

    def pit(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=self.env,
                              capture_output=True, text=True, timeout=120)


def wait_for(check, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
        except (OSError, KeyError, AssertionError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.1)


def test_pit_up_survives_a_restart(tmp_path: Path, free_port) -> None:
    pit = PitUp(tmp_path / "pit", free_port()).start()
    try:
        with pit.client() as client:
            assert client.pool.register_host("h1", 1000, 4).accepted
            assert client.pool.register_model("llama", "python:math:sqrt", 100, 10).accepted
            assert client.pool.warm_model("llama", command_id="c1").accepted  # placed and loading
            # what the host reports once it loaded the model (no host process in this test)
            assert client.send(ReportModelLoaded("h1", "llama", 12, 90), command_id="c2").accepted
            assert client.pool.record_usage("llama", 5, command_id="c3").accepted
            assert not client.pool.warm_model("llama", command_id="c4").accepted
        before = wait_for(lambda: (m := pit.get("/models/llama"))["usage_count"] == 5 and m)
        transitions = pit.get("/models/llama/transitions")
        assert "pit_events_in_total" in pit.get("/metrics")
        second = pit.pit("up")
        assert second.returncode == 1 and "already running" in second.stderr
    finally:
        pit.stop()

    pit.start()
    try:
        after = pit.get("/models/llama")
        for field in ("state", "transition_count", "usage_count", "entered_at_ms",
                      "last_sequence"):
            assert after[field] == before[field], field
        assert pit.get("/models/llama/transitions") == transitions
        with pit.client() as client:
            again = client.pool.record_usage("llama", 5, command_id="c3")
            assert again.accepted and again.duplicate  # the ledger survived the restart
            assert client.pool.cool_model("llama", command_id="c5").accepted  # state did too
        wait_for(lambda: pit.get("/models/llama")["state"] == "Cooling")
        assert pit.get("/models/llama")["last_sequence"] == before["last_sequence"] + 1
        assert pit.get("/audit/verify")["ok"]

        published = pit.pit("publish", "ReportModelUnloaded",
                            '{"host_id": "h1", "model_id": "llama"}',
                            "--command-id", "from-the-shell")
        assert published.returncode == 0, published.stderr
        assert "from-the-shell: accepted" in published.stdout
        refused = pit.pit("publish", "RecordModelUsage", '{"model_id": "llama"}')
        assert refused.returncode == 2 and "usage requires Hot" in refused.stdout
        results = pit.pit("results", "--from-beginning")
        assert results.returncode == 0 and results.stdout.count("\n") == 1
        assert pit.pit("topics", "apply").stdout.strip() == "all topics exist"
    finally:
        pit.stop()

    verify = pit.pit("audit", "verify")
    assert verify.returncode == 0, verify.stderr
    history = pit.pit("audit", "llama")
    assert history.returncode == 0 and "ModelTransitioned" in history.stdout


KILL_AFTER = 800  # accepted outcomes received before the kill
IN_FLIGHT = 200


async def _stream_until_killed(pit: PitUp) -> tuple[set[int], set[int]]:
    """Register models m-0, m-1, ... with IN_FLIGHT commands outstanding; SIGKILL `pit up` as
    an accepted outcome arrives, once KILL_AFTER did, with others outstanding. Returns the
    models whose registration was answered accepted, and those sent but not answered."""
    accepted: set[int] = set()
    sent: set[int] = set()
    killed = asyncio.Event()
    slots = asyncio.Semaphore(IN_FLIGHT)
    client = PitClient(Settings.from_env(pit.env))
    await client.start()

    async def register(n: int) -> None:
        async with slots:
            if killed.is_set():
                return
            sent.add(n)
            outcome = await client.pool.register_model(f"m-{n}", "python:math:sqrt", 1, 1,
                                                       command_id=f"reg-{n}", timeout=120)
            if killed.is_set():
                return
            assert outcome.accepted, outcome
            accepted.add(n)
            if len(accepted) >= KILL_AFTER and len(sent) > len(accepted):
                pit.process.kill()
                killed.set()

    tasks = [asyncio.create_task(register(n)) for n in range(KILL_AFTER * 4)]
    await asyncio.wait_for(killed.wait(), 300)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), 10)
    pit.process.communicate(timeout=30)  # its end, and its pipes closed
    return accepted, sent - accepted


async def _send_again(pit: PitUp, numbers: set[int]) -> dict[int, Outcome]:
    slots = asyncio.Semaphore(IN_FLIGHT)
    async with PitClient(Settings.from_env(pit.env)) as client:
        async def register(n: int) -> Outcome:
            async with slots:
                return await client.pool.register_model(
                    f"m-{n}", "python:math:sqrt", 1, 1, command_id=f"reg-{n}", timeout=120)

        outcomes = await asyncio.gather(*[register(n) for n in sorted(numbers)])
    return dict(zip(sorted(numbers), outcomes, strict=True))


def test_a_killed_pit_up_keeps_every_command_it_acknowledged(tmp_path: Path,
                                                             free_port) -> None:
    """`kill -9` of `pit up` with commands in flight: after a restart on the same directory,
    every registration answered *accepted* has its effect (the model is in the views), and
    sent again it is a duplicate; the audit chain verifies."""
    pit = PitUp(tmp_path / "pit", free_port()).start()
    accepted, unanswered = asyncio.run(_stream_until_killed(pit))
    assert len(accepted) >= KILL_AFTER and unanswered  # killed with commands in flight

    pit.start()
    try:
        again = asyncio.run(_send_again(pit, accepted | unanswered))
        for n in accepted:
            assert again[n].accepted and again[n].duplicate, (n, again[n])
        for n in unanswered:  # lost or kept: decided once either way
            assert again[n].accepted, (n, again[n])
        wanted = {f"m-{n}" for n in accepted | unanswered}
        try:
            wait_for(lambda: pit.registered() >= wanted, 120)
        except AssertionError:
            missing = wanted - pit.registered()
            raise AssertionError(f"not in the pool's view: {sorted(missing)[:20]}"
                                 f" ({len(missing)} of {len(wanted)})") from None
        assert pit.get("/audit/verify")["ok"]
    finally:
        pit.stop()
    verify = pit.pit("audit", "verify")
    assert verify.returncode == 0, verify.stderr
