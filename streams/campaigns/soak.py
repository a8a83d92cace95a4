"""`pit campaign soak`: steady mixed load against a `pit up` process, its memory sampled.

`pit up` runs as a subprocess on a scratch data directory (the embedded default), with a
`pit runner` and a `pit host` beside it. Three loads run side by side for `--minutes`:
* workflows: `--workflows` loops, each running 20-node chains back to back to their end;
* the pool: allocate a model on the host, call it, release it, record its usage;
* artifacts: store one of a fixed set of small contents under one of a fixed set of names.
Every `--sample-s` seconds the campaign reads `pit up`'s resident memory (VmRSS in
/proc/<pid>/status) and, from /metrics, the entities and command ids its processors hold,
and prints a line. At the end it prints the growth of RSS after the warm-up (the median of
the last three samples against the median of the first three after it) and exits 1 when that
is above `--max-growth` percent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from streams.config import Settings

WORKFLOW_NODES = 20
POOL_MODEL = "soak-sentiment"
ARTIFACT_CONTENTS = 20  # distinct contents stored over and over (deduplicated)
WINDOW_S = 180.0  # growth: the peak of the last three minutes against the first three


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=60.0, help="how long the load runs")
    parser.add_argument("--warmup-minutes", type=float, default=None,
                        help="samples before this are not counted (default: a sixth of the"
                             " run, at most 10)")
    parser.add_argument("--sample-s", type=float, default=30.0,
                        help="seconds between RSS samples")
    parser.add_argument("--workflows", type=int, default=2,
                        help="workflow loops running at once")
    parser.add_argument("--max-growth", type=float, default=5.0,
                        help="percent RSS may grow after the warm-up (exit 1 beyond it)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="scratch data directory (default: a temporary one, removed)")


@dataclass
class Sample:
    at: float            # time.time()
    rss_mb: float
    done: Counter[str]   # what the loads finished so far
    held: dict[str, float]  # from /metrics: pit_processor_entities / _ledger_commands


@dataclass
class SoakReport:
    samples: list[Sample] = field(default_factory=list)
    warmup_s: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def measured(self) -> list[Sample]:
        start = self.samples[0].at + self.warmup_s if self.samples else 0.0
        return [s for s in self.samples if s.at >= start]

    @property
    def growth_pct(self) -> float | None:
        """RSS growth after the warm-up, in percent: the peak of the last WINDOW_S against
        the peak of the first (at least three samples each; None: too few samples). Peaks,
        not medians: `pit up` hands free heap back every minute, so samples swing between a
        trough and a peak (~15% apart under this load), and a median of three lands on
        either; the high-water mark is what a leak raises."""
        measured = self.measured
        if len(measured) < 6:
            return None
        span = max(3, min(len(measured) // 2,
                          sum(1 for s in measured if s.at < measured[0].at + WINDOW_S)))
        first = max(s.rss_mb for s in measured[:span])
        last = max(s.rss_mb for s in measured[-span:])
        return (last - first) / first * 100


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def held_figures(port: int) -> dict[str, float]:
    """`pit_processor_*` gauges from /metrics, keyed "<component>.<kind>" and "<c>.ledger"."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    figures: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("pit_processor_entities{", "pit_processor_ledger_commands{")):
            labels, value = line.rsplit(" ", 1)
            fields = dict(part.split("=", 1) for part in labels[labels.index("{") + 1:-1]
                          .split(","))
            kind = fields.get("kind", '"ledger"').strip('"')
            figures[f"{fields['component'].strip(chr(34))}.{kind}"] = float(value)
    return figures


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Soak:
    """The processes and loads of one soak run on `data_dir`."""

    def __init__(self, data_dir: Path, workflows: int = 2,
                 say: Callable[[str], None] = print) -> None:
        self.data_dir, self.workflows, self.say = data_dir, workflows, say
        self.port = _free_port()
        self.env = {**os.environ, "PIT_DATA_DIR": str(data_dir),
                    "PIT_HTTP_PORT": str(self.port)}
        for name in ("PIT_KAFKA_BOOTSTRAP_SERVERS", "PIT_DATABASE_URL"):
            self.env.pop(name, None)
        self.settings = Settings(data_dir=data_dir, http_port=self.port)
        self.done: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.processes: list[asyncio.subprocess.Process] = []

    async def _spawn(self, name: str, *args: str, ready: str, timeout_s: float = 120.0
                     ) -> asyncio.subprocess.Process:
        """A `pit` subprocess, once its output (in <data dir>/<name>.log) says `ready`."""
        log_path = self.data_dir / f"{name}.log"
        with log_path.open("w") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "streams.cli", *args, env=self.env, stdout=out,
                stderr=asyncio.subprocess.STDOUT)
        self.processes.append(process)
        deadline = time.monotonic() + timeout_s
        while ready not in log_path.read_text():
            if process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"pit {args[0]} did not start: {log_path.read_text()[-800:]}")
            await asyncio.sleep(0.2)
        return process

    async def start(self) -> Soak:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.pit = await self._spawn("pit-up", "up", ready="pit is up")
        await self._spawn("runner", "runner", "--id", "soak-runner", "--concurrency", "64",
                          ready="taking tasks")
        await self._spawn("host", "host", "--id", "soak-host", "--memory-mb", "500",
                          "--capacity", "2", ready="serving on")
        return self

    async def stop(self) -> None:
        for process in reversed(self.processes):  # host and runner first, then pit up
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 60)
                except TimeoutError:
                    process.kill()
                    await process.wait()

    async def _loop(self, name: str, step: Callable[[], Awaitable[None]],
                    stop: asyncio.Event) -> None:
        """Run `step()` until stopped, counting what finished and what failed (by type):
        a failed step is reported, not fatal - the memory figures are what a soak is for."""
        while not stop.is_set():
            try:
                await step()
                self.done[name] += 1
            except Exception as exc:  # counted and shown, not fatal
                self.errors[f"{name}: {type(exc).__name__}: {exc}"[:160]] += 1
                await asyncio.sleep(1.0)

    async def load(self, stop: asyncio.Event) -> None:
        from streams.client import PitClient
        from streams.dag.definition import deep_dag

        chain = deep_dag(WORKFLOW_NODES, name="soak")
        async with PitClient(self.settings, issued_by="pit-soak") as pit:
            await pit.pool.register_model(POOL_MODEL, "python:streams.pool.examples:sentiment",
                                          50, 10)

            async def workflow() -> None:
                result = await pit.dag.await_result(await pit.dag.execute_workflow(chain),
                                                    timeout=300)
                if not result.ok:
                    raise RuntimeError(f"workflow ended {result.status}: {result.error}")

            async def pool() -> None:
                allocation = await pit.pool.allocate_model(POOL_MODEL, "soak", timeout=60)
                try:
                    await pit.pool.infer(allocation, "a good and steady soak")
                finally:
                    await pit.pool.release_model(allocation.request_id)
                await pit.pool.record_usage(POOL_MODEL)
                await asyncio.sleep(0.1)  # a steady trickle, not a flood

            async def artifact() -> None:
                n = self.done["artifacts"]
                await pit.artifacts.store(f"soak content {n % ARTIFACT_CONTENTS}".encode(),
                                          name=f"soak-{n % 5}", content_type="text/plain")
                await asyncio.sleep(0.5)

            loops = [self._loop("workflows", workflow, stop) for _ in range(self.workflows)]
            await asyncio.gather(*loops, self._loop("pool", pool, stop),
                                 self._loop("artifacts", artifact, stop))

    def sample(self) -> Sample:
        held: dict[str, float] = {}
        with contextlib.suppress(OSError):
            held = held_figures(self.port)
        return Sample(time.time(), rss_mb(self.pit.pid), Counter(self.done), held)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60:d}:{minutes % 60:02d}:{secs:02d}"


def describe(sample: Sample, started: float) -> str:
    done = ", ".join(f"{n} {name}" for name, n in sorted(sample.done.items())) or "nothing yet"
    held = "  ".join(f"{k}={v:.0f}" for k, v in sorted(sample.held.items()))
    when = time.strftime("%H:%M:%S", time.localtime(sample.at))
    return (f"{when}  +{_clock(sample.at - started)}  RSS {sample.rss_mb:6.1f} MB  {done}"
            f"{'  held: ' + held if held else ''}")


async def soak(data_dir: Path, minutes: float, sample_s: float, warmup_s: float,
               workflows: int = 2, say: Callable[[str], None] = print) -> SoakReport:
    """Run the soak; returns every sample (printed as taken) and the loads' errors."""
    run = Soak(data_dir, workflows, say)
    report = SoakReport(warmup_s=warmup_s)
    stop = asyncio.Event()
    await run.start()
    try:
        load = asyncio.create_task(run.load(stop))
        started = time.time()
        end = time.monotonic() + minutes * 60
        while time.monotonic() < end and not load.done():
            report.samples.append(run.sample())
            say(describe(report.samples[-1], started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(load), min(sample_s,
                                                                 end - time.monotonic()))
        stop.set()
        report.samples.append(run.sample())
        say(describe(report.samples[-1], started))
        await load  # raises what stopped the loads early
    finally:
        stop.set()
        report.errors = run.errors
        await run.stop()
    return report


def summary(report: SoakReport, max_growth: float) -> tuple[list[str], bool]:
    lines = []
    measured = report.measured
    growth = report.growth_pct
    if measured:
        lines.append(f"after the warm-up ({report.warmup_s / 60:g} min): RSS"
                     f" {measured[0].rss_mb:.1f} -> {measured[-1].rss_mb:.1f} MB, min"
                     f" {min(s.rss_mb for s in measured):.1f}, max"
                     f" {max(s.rss_mb for s in measured):.1f}")
    for error, count in report.errors.most_common(5):
        lines.append(f"{count} x {error}")
    if growth is None:
        lines.append("too few samples after the warm-up to measure growth")
        return lines, False
    ok = growth <= max_growth
    lines.append(f"RSS growth after the warm-up: {growth:+.1f}% (target <= {max_growth:g}%):"
                 f" {'ok' if ok else 'too much'}")
    return lines, ok


def run(args: argparse.Namespace, settings: Settings) -> int:
    warmup = args.warmup_minutes if args.warmup_minutes is not None else min(
        10.0, args.minutes / 6)
    with tempfile.TemporaryDirectory(prefix="pit-soak-") as scratch:
        data_dir = args.data_dir or Path(scratch)
        print(f"soak: {args.minutes:g} min of workflows ({args.workflows} at once), pool and"
              f" artifact load on {data_dir}; RSS every {args.sample_s:g} s, warm-up"
              f" {warmup:g} min", flush=True)
        report = asyncio.run(soak(data_dir, args.minutes, args.sample_s, warmup * 60,
                                  args.workflows, say=lambda line: print(line, flush=True)))
    lines, ok = summary(report, args.max_growth)
    print("\n".join(lines))
    return 0 if ok else 1
