"""`pit workflow submit --wait` says when scheduled work waits with no runner taking it,
once, instead of showing "scheduled" for good (streams/dag/workflow_cli.py)."""

from __future__ import annotations

import io

from streams.dag.execution import Progress
from streams.dag.workflow_cli import NO_RUNNER_S, _Lines


def progress(**counts: int) -> Progress:
    return Progress("ex-1", "running", sum(counts.values()), counts, 0, 0.0, 0, 0, None, {})


def test_scheduled_work_no_runner_started_is_said_once_after_the_wait() -> None:
    now = [0.0]
    out = io.StringIO()
    lines = _Lines(out, clock=lambda: now[0])
    lines.show(progress(scheduled=1, pending=2))
    now[0] = NO_RUNNER_S - 0.1
    lines.show(progress(scheduled=1, pending=2))
    assert "no runner" not in out.getvalue()
    now[0] = NO_RUNNER_S
    lines.show(progress(scheduled=1, pending=2))
    now[0] = 3 * NO_RUNNER_S
    lines.show(progress(scheduled=1, pending=2))
    assert out.getvalue().count("no runner has taken a task in 10s") == 1


def test_a_started_node_is_not_a_missing_runner() -> None:
    now = [0.0]
    out = io.StringIO()
    lines = _Lines(out, clock=lambda: now[0])
    for step in range(5):
        now[0] = step * NO_RUNNER_S
        lines.show(progress(scheduled=1, running=1, completed=step))
    assert "no runner" not in out.getvalue()
