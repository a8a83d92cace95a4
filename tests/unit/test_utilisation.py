"""The utilisation reporter (streams/arbitration/utilisation.py): the CPU busy fraction from
/proc/stat between samples, a report each interval, and 0 when it stops."""

from __future__ import annotations

import asyncio

import pytest

from streams.arbitration.arbiter import ReportUtilisation
from streams.arbitration.utilisation import (
    CpuSampler,
    cpu_times,
    report_every_s,
    report_utilisation,
)
from streams.config import Settings
from streams.errors import ConfigError, PitError


def stat(user: int, system: int, idle: int, iowait: int) -> str:
    return f"cpu  {user} 0 {system} {idle} {iowait} 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"


def test_busy_is_everything_but_idle_and_iowait_between_two_samples() -> None:
    assert cpu_times(stat(100, 50, 800, 50)) == (150, 1000)
    texts = iter([stat(100, 50, 800, 50), stat(160, 90, 880, 70)])
    sampler = CpuSampler(read=lambda: next(texts))
    sampler.sample()
    assert sampler.sample() == pytest.approx(100 / 200)


def test_without_proc_stat_the_load_average_stands_in(monkeypatch) -> None:
    def missing() -> str:
        raise OSError("no /proc here")

    monkeypatch.setattr("os.getloadavg", lambda: (3.0, 0.0, 0.0))
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert CpuSampler(read=missing).sample() == 0.75


def test_reporting_is_asked_for_in_whole_seconds() -> None:
    assert report_every_s(Settings()) == 0
    assert report_every_s(Settings(env={"PIT_UTILISATION_REPORT_S": "10"})) == 10
    with pytest.raises(ConfigError, match="PIT_UTILISATION_REPORT_S"):
        report_every_s(Settings(env={"PIT_UTILISATION_REPORT_S": "fast"}))


async def test_reports_each_interval_survive_a_failed_send_and_end_with_zero() -> None:
    sent: list[ReportUtilisation] = []
    three = asyncio.Event()

    async def send(report: ReportUtilisation) -> None:
        sent.append(report)
        if len(sent) == 2:
            raise PitError("pit up is away")  # logged; the next interval tries again
        if len(sent) == 3:
            three.set()

    texts = iter(stat(10 * n, 10 * n, 100 * n, 0) for n in range(1, 100))
    task = asyncio.ensure_future(report_utilisation(
        send, "h1", 0.001, pool_id="p", sampler=CpuSampler(read=lambda: next(texts))))
    await asyncio.wait_for(three.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sent[0] == ReportUtilisation("h1", round(20 / 120, 2), "p")
    assert sent[-1] == ReportUtilisation("h1", 0.0, "p")
