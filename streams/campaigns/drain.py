"""`pit campaign drain`: a `pit host` or `pit runner` asked to stop exits within its drain
timeout plus a few seconds, whatever `pit up` does meanwhile (issue 11, "Drain").

Real processes in a fresh data directory: `pit up`, then per round one `pit host` or
`pit runner` with work in flight that outlasts the drain - a runner running a node that
sleeps for minutes, a host holding a model under an allocation nobody releases. The process
gets SIGTERM and, at that moment, `pit up` is left alone, stopped (SIGTERM), killed
(SIGKILL) or restarted; in a "twice" round a second SIGTERM follows half a second later.
Measured: seconds from the first signal to the exit, against the bound (drain timeout +
streams/process.py GRACE_S, or FORCE_S after a second signal, each + 1 s for the process to
end). Prints a table; exits 1 when a process overran its bound or never exited.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streams.client import PitClient
from streams.config import Settings
from streams.dag.definition import WorkflowBuilder
from streams.errors import PitError
from streams.process import FORCE_S, GRACE_S, broker_address
from streams.waiting import until

TARGETS = ("runner", "host")
ACTIONS = ("none", "stop", "kill", "restart")  # what `pit up` does as the process drains
SENTIMENT = "python:streams.pool.examples:sentiment"  # a model any `pit host` can load
LONG_MS = 600_000  # a node that outlasts every drain
EXIT_SLACK_S = 1.0  # for the process to end once it decided to


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Pit:
    """`pit up` and the processes of one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir, self.port = data_dir, _free_port()
        self.env = {**os.environ, "PIT_DATA_DIR": str(data_dir),
                    "PIT_HTTP_PORT": str(self.port)}
        for name in ("PIT_KAFKA_BOOTSTRAP_SERVERS", "PIT_DATABASE_URL"):
            self.env.pop(name, None)
        self.settings = Settings.from_env(self.env)
        self.up: subprocess.Popen | None = None
        self.logs = itertools.count()

    def spawn(self, name: str, *args: str) -> tuple[subprocess.Popen, Path]:
        log = self.data_dir / f"{name}-{next(self.logs)}.log"
        with log.open("w") as stderr:  # the child writes to its own copy
            process = subprocess.Popen([sys.executable, "-m", "streams.cli", *args],
                                       env=self.env, stdout=subprocess.DEVNULL, stderr=stderr)
        return process, log

    async def start(self, timeout_s: float = 120.0) -> None:
        up = self.up = self.spawn("pit-up", "up")[0]

        def running() -> bool:
            if up.poll() is not None:
                raise RuntimeError(f"pit up exited {up.returncode}")
            return broker_address(self.settings) is not None and self._answers()
        await until(running, timeout_s, "pit up")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/executions",
                                        timeout=2):
                return True
        except OSError:
            return False

    def alive(self) -> bool:
        return self.up is not None and self.up.poll() is None

    def signal(self, sig: int) -> None:
        if self.up is not None and self.up.poll() is None:
            self.up.send_signal(sig)

    async def ended(self, timeout_s: float = 60.0) -> None:
        await until(lambda: not self.alive(), timeout_s, "pit up to end")

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as reply:
            return json.loads(reply.read())

    def client(self) -> PitClient:
        return PitClient(self.settings, issued_by="pit-campaign-drain")


@dataclass
class Round:
    target: str
    action: str
    twice: bool
    drain_timeout_s: float
    exit_s: float | None = None  # None: it never exited
    returncode: int | None = None
    error: str = ""

    @property
    def bound_s(self) -> float:
        return (0.5 + FORCE_S if self.twice else self.drain_timeout_s + GRACE_S) + EXIT_SLACK_S

    @property
    def ok(self) -> bool:
        return not self.error and self.exit_s is not None and self.exit_s <= self.bound_s


async def runner_busy(pit: Pit, drain_timeout_s: float) -> subprocess.Popen:
    """A runner running a node that outlasts its drain."""
    process, _ = pit.spawn("runner", "runner", "--drain-timeout", str(drain_timeout_s),
                           "--session-timeout", "3")
    workflow = (WorkflowBuilder(f"drain-{uuid.uuid4().hex[:8]}")
                .operator("sleepy", "sleep_then_return",
                          constants={"value": 1, "ms": LONG_MS}).build())
    async with pit.client() as client:
        execution = await client.dag.execute_workflow(workflow, timeout=60)

    def running() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the runner exited {process.returncode}")
        try:
            return pit.get(f"/executions/{execution}")["counts"]["running"] == 1
        except OSError:
            return False
    await until(running, 90, "node running on the runner")
    return process


async def host_busy(pit: Pit, drain_timeout_s: float) -> subprocess.Popen:
    """A host holding a model under an allocation nobody releases (in a pool of its own:
    hosts of earlier rounds a stopped `pit up` could not hear leave are no candidates)."""
    host_id = pool = f"drain-{uuid.uuid4().hex[:8]}"
    model = f"m-{uuid.uuid4().hex[:8]}"
    process, _ = pit.spawn("host", "host", "--id", host_id, "--memory-mb", "512",
                           "--capacity", "2", "--pool", pool,
                           "--drain-timeout", str(drain_timeout_s))
    async with pit.client() as client:
        assert (await client.pool.register_model(model, SENTIMENT, 64, 100,
                                                 pool_id=pool)).accepted
        deadline = time.monotonic() + 90
        while True:  # refused until the host has registered
            try:
                allocation = await client.pool.allocate_model(model, "pit-campaign-drain",
                                                              pool_id=pool, timeout=20)
                break
            except PitError:  # no host registered yet: the pool refuses; try again
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the host took no model") from None
                await asyncio.sleep(0.5)
    if allocation.host_id != host_id:
        raise RuntimeError(f"the model went to {allocation.host_id}, not {host_id}")
    return process


async def one_round(pit: Pit, target: str, action: str, twice: bool,
                    drain_timeout_s: float) -> Round:
    result = Round(target, action, twice, drain_timeout_s)
    if not pit.alive():
        await pit.start()
    busy = runner_busy if target == "runner" else host_busy
    try:
        process = await busy(pit, drain_timeout_s)
    except (RuntimeError, TimeoutError, AssertionError) as exc:
        result.error = f"setup: {exc}"
        return result
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    if action == "kill":
        pit.signal(signal.SIGKILL)
    elif action in ("stop", "restart"):
        pit.signal(signal.SIGTERM)
    if twice:
        await asyncio.sleep(0.5)
        process.send_signal(signal.SIGTERM)
    try:
        await until(lambda: process.poll() is not None, result.bound_s + 30, "exit")
        result.exit_s, result.returncode = time.monotonic() - signalled, process.returncode
    except TimeoutError:
        process.kill()
    if action == "restart":
        await pit.ended()
        await pit.start()
    elif action in ("stop", "kill"):
        await pit.ended()
    return result


def plan(rounds: int) -> list[tuple[str, str, bool]]:
    """Every target with every action, then a second signal for each target; cycled."""
    every = [(t, a, False) for a in ACTIONS for t in TARGETS] + [(t, "none", True)
                                                               for t in TARGETS]
    return [every[i % len(every)] for i in range(rounds)]


async def campaign(data_dir: Path, steps: list[tuple[str, str, bool]],
                   drain_timeout_s: float, say: Callable[[str], None] = print) -> list[Round]:
    data_dir.mkdir(parents=True, exist_ok=True)
    pit = Pit(data_dir)
    results = []
    try:
        for target, action, twice in steps:
            found = await one_round(pit, target, action, twice, drain_timeout_s)
            say(line(found))
            results.append(found)
    finally:
        if pit.alive():
            pit.signal(signal.SIGTERM)
            await pit.ended()
    return results


HEADER = (f"{'target':<7} {'pit up':<8} {'signals':<7} {'drain s':>7} {'exit s':>7}"
          f" {'bound s':>7} {'code':>4}  verdict")


def line(r: Round) -> str:
    exit_s = f"{r.exit_s:7.2f}" if r.exit_s is not None else "  never"
    code = "" if r.returncode is None else str(r.returncode)
    verdict = "ok" if r.ok else f"VIOLATION {r.error}".strip()
    return (f"{r.target:<7} {r.action:<8} {2 if r.twice else 1:<7} {r.drain_timeout_s:7g}"
            f" {exit_s} {r.bound_s:7.2f} {code:>4}  {verdict}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=10,
                        help="rounds (each target with each pit up action, then a second"
                             " signal each; cycled)")
    parser.add_argument("--drain-timeout", type=float, default=5.0,
                        help="the drain timeout the hosts and runners get")
    parser.add_argument("--data-dir", help="where to keep the pit (default: a new temporary"
                                           " directory)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="pit-drain-"))
    print(f"drain campaign: {args.rounds} rounds, drain timeout {args.drain_timeout:g} s,"
          f" in {data_dir}")
    print(HEADER)
    results = asyncio.run(campaign(data_dir, plan(args.rounds), args.drain_timeout))
    bad = [r for r in results if not r.ok]
    worst = max((r.exit_s - r.drain_timeout_s for r in results
                 if r.exit_s is not None and not r.twice), default=0.0)
    print(f"{len(results) - len(bad)}/{len(results)} rounds within bounds; slowest exit"
          f" {worst:.2f} s past the drain timeout")
    return 1 if bad else 0
