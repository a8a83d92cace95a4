"""`pit up` as a real process: commands in, views and audit out, and a restart (SIGTERM,
then `pit up` again on the same data directory) loses nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from streams.client import SyncPitClient
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
