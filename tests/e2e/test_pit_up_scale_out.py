"""Scale-out as real processes (issue 11): two `pit up` processes against one cluster (a broker
of their own here, as a real cluster would be, and one shared database) elect one leader
for the singleton services; `kill -9` of the leader moves them to the other within the
measured bound, and commands keep being accepted. And on the embedded default: `pit up
--join` adds a second process to the first one's broker; killing it loses nothing, and it
waits for, then joins again, a first process that restarts."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from streams.broker import catalog_broker
from streams.client import SyncPitClient
from streams.config import Settings

pytestmark = pytest.mark.slow

SESSION_MS = 6000  # the default leader session: the figure the README reports
# A command to a partition that is moving waits for the processors' group: its session for
# a killed member, and the mock's rebalance wait (session - 1 s).
REBALANCE_S = 60


class Process:
    """A `pit up` process whose stdout lines are read as they come."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 - lives with the process
        self.process = subprocess.Popen([sys.executable, "-m", "streams.cli", "up", *args],
                                        env=env, stdout=subprocess.PIPE, stderr=self.stderr,
                                        text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with self.process.stdout:  # closed at its end
            for line in self.process.stdout:
                self.lines.put(line.rstrip("\n"))

    def wait_for(self, text: str, timeout_s: float = 90.0) -> float:
        """Wait for a line containing `text`; returns when it was read (monotonic)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None:
                    self.stderr.seek(0)
                    raise AssertionError(f"pit up exited: {self.seen}, "
                                         f"{self.stderr.read()[-2000:]}") from None
                continue
            self.seen.append(line)
            if text in line:
                return time.monotonic()
        raise AssertionError(f"no line with {text!r} within {timeout_s:.0f} s: {self.seen}")

    def leads(self) -> bool:
        return any("this process leads" in line for line in self.seen)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.stderr.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
        self.stderr.close()


def registered(data_dir: Path) -> int:
    """ModelRegistered events in the archive (what the projectors wrote, both of them)."""
    with contextlib.closing(sqlite3.connect(data_dir / "pit.db", timeout=30)) as db:
        return db.execute("SELECT count(*) FROM audit_log"
                          " WHERE event_type = 'ModelRegistered'").fetchone()[0]


def wait_until(check, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s:.0f} s")
        time.sleep(0.2)


def env_for(data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PIT_DATA_DIR": str(data_dir), "PIT_HTTP_PORT": str(port), **extra}
    for name in ("PIT_KAFKA_BOOTSTRAP_SERVERS", "PIT_DATABASE_URL"):
        if name not in extra:
            env.pop(name, None)
    return env


def test_kill_9_of_the_leader_moves_the_singletons_to_the_other_pit_up(tmp_path,
                                                                      free_port) -> None:
    with catalog_broker() as broker:
        shared = {"PIT_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                  "PIT_DATABASE_URL": f"sqlite:///{tmp_path / 'pit.db'}"}
        first = Process(env_for(tmp_path / "a", free_port(), **shared))
        second = None
        try:
            first.wait_for("pit is up")
            second_env = env_for(tmp_path / "b", free_port(), **shared)
            second = Process(second_env)
            second.wait_for("pit is up")
            assert first.leads() and not second.leads()
            killed_at = time.monotonic()
            first.kill()
            led_at = second.wait_for("this process leads (term 2)", timeout_s=60)
            took = led_at - killed_at
            print(f"fail-over after kill -9: {took:.1f} s (session {SESSION_MS} ms)")
            assert took < SESSION_MS / 1000 * 3 + 10
            with SyncPitClient(Settings.from_env(second_env)) as client:
                assert client.pool.register_host("h1", 1000, 4).accepted
        finally:
            first.stop()
            if second is not None:
                second.stop()


def test_pit_up_join_shares_the_embedded_broker_and_waits_out_a_restart(tmp_path,
                                                                        free_port) -> None:
    data_dir, port = tmp_path / "pit", free_port()
    fast = {"PIT_GROUP_SESSION_TIMEOUT_MS": "3000", "PIT_LEADER_SESSION_TIMEOUT_MS": "3000"}
    joiner_env = env_for(data_dir, port, **fast)
    del joiner_env["PIT_HTTP_PORT"]  # the first process serves the read API
    first = Process(env_for(data_dir, port, **fast))
    joined = None
    try:
        first.wait_for("pit is up")
        joined = Process(joiner_env, "--join")
        joined.wait_for("(joined)")
        settings = Settings.from_env(joiner_env)
        with SyncPitClient(settings) as client:
            for i in range(8):
                assert client.pool.register_model(f"m{i}", "python:math:sqrt", 100, 10,
                                                 timeout=REBALANCE_S).accepted
        joined.kill()  # what it held goes back to the first process
        with SyncPitClient(settings) as client:
            for i in range(8, 16):
                assert client.pool.register_model(f"m{i}", "python:math:sqrt", 100, 10,
                                                 timeout=REBALANCE_S).accepted
        wait_until(lambda: registered(data_dir) == 16)

        joined = Process(joiner_env, "--join")
        joined.wait_for("(joined)")
        first.stop()
        joined.wait_for("waiting for it to restart")
        first = Process(env_for(data_dir, port, **fast))
        first.wait_for("pit is up")
        joined.wait_for("(joined)")
        assert registered(data_dir) == 16
    finally:
        first.stop()
        if joined is not None:
            joined.stop()
