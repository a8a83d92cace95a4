"""Utilisation reports (seed M3.4.1, CPU saturation): `pit host` and `pit runner` tell the
arbiter how busy their machine's CPUs are, every `PIT_UTILISATION_REPORT_S` seconds.

What is measured: the machine's CPU busy fraction over the last interval, from /proc/stat
(the load average over the CPUs where there is none). A runner's tasks mostly wait on model
calls, so slot occupancy would say "full" when the CPUs are idle and defer the very
allocations its tasks wait for; the CPUs are what saturates.

Why opt-in (0, the default, reports nothing): the arbiter defers every grant of the pool
while any source is at or above `cpu_threshold`. On machines shared with other work - a
laptop, a test run - that stops grants for reasons that are not the pool's. A report is
sent every interval even when unchanged: the arbiter forgets a source silent for
`utilisation_ttl_s` (a killed process), and sees a live one again each half of it. A
graceful stop reports 0, so a stopped source holds nothing back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from streams.arbitration.arbiter import ReportUtilisation
from streams.config import Settings, parse_count
from streams.errors import PitError
from streams.pool.lifecycle import DEFAULT_POOL

log = logging.getLogger(__name__)

PROC_STAT = Path("/proc/stat")


def report_every_s(settings: Settings) -> int:
    """PIT_UTILISATION_REPORT_S: seconds between reports; 0 (the default): none."""
    return parse_count("PIT_UTILISATION_REPORT_S",
                       settings.env.get("PIT_UTILISATION_REPORT_S") or "0")


def cpu_times(text: str) -> tuple[int, int]:
    """(busy, total) jiffies from /proc/stat's first line (idle and iowait are not busy)."""
    fields = [int(f) for f in text.split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])  # guest time is already counted in user and nice
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return total - idle, total


@dataclass
class CpuSampler:
    """The CPU busy fraction since the previous sample (the first: since boot)."""

    read: Callable[[], str] = PROC_STAT.read_text
    _last: tuple[int, int] = (0, 0)

    def sample(self) -> float:
        try:
            busy, total = cpu_times(self.read())
        except (OSError, ValueError, IndexError):
            return min(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
        (last_busy, last_total), self._last = self._last, (busy, total)
        if total <= last_total:
            return 0.0
        return min(1.0, max(0.0, (busy - last_busy) / (total - last_total)))


Send = Callable[[ReportUtilisation], Awaitable[object]]


async def report_utilisation(send: Send, source: str, every_s: float, *,
                             pool_id: str = DEFAULT_POOL,
                             sampler: CpuSampler | None = None) -> None:
    """Report `source`'s utilisation every `every_s` until cancelled, then 0. `send` is a
    CommandClient's send; a failed send is logged and the next interval tries again (pit up
    may be away)."""
    sampler = sampler or CpuSampler()
    sampler.sample()  # the baseline: the first figure covers one interval
    try:
        while True:
            await asyncio.sleep(every_s)
            await _send(send, ReportUtilisation(source, round(sampler.sample(), 2), pool_id))
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(_send(send, ReportUtilisation(source, 0.0, pool_id)), 2.0)


async def _send(send: Send, report: ReportUtilisation) -> None:
    try:
        await send(report)
    except PitError as exc:
        log.debug("utilisation of %s not reported: %s", report.source, exc)
