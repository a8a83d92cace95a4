"""`pit runner` and `pit workflow submit|status|cancel`: the DAG's command line (the
runner, streams/dag/runner.py, and the workflow API, streams/dag/workflows.py). Errors are
`PitError`s: streams/cli.py prints them as one line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from contextlib import aclosing
from typing import TYPE_CHECKING, Any, TextIO

from streams.errors import PitError

if TYPE_CHECKING:  # the rest is imported when a command runs: `pit` starts fast
    from collections.abc import Callable

    from streams.config import Settings
    from streams.dag.execution import Progress
    from streams.dag.workflows import WorkflowOps, WorkflowResult

BAR = 24


def parse_inputs(pairs: list[str] | None) -> dict[str, Any]:
    """--input node.input=JSON, repeated, as {"node.input": value}."""
    inputs = {}
    for pair in pairs or ():
        name, sep, text = pair.partition("=")
        if not sep or "." not in name:
            raise PitError(f"--input {pair!r}: expected node.input=JSON")
        try:
            inputs[name] = json.loads(text)
        except ValueError as exc:
            raise PitError(f"--input {name}: not JSON ({exc}); a string is quoted:"
                           f" {name}='\"text\"'") from None
    return inputs


def _seconds(ms: int | None) -> str:
    if ms is None:
        return "?"
    return f"{ms / 1000:.1f}s" if ms < 60_000 else f"{ms // 60_000}m{ms % 60_000 // 1000:02d}s"


def progress_line(p: Progress) -> str:
    """One line: status, a progress bar, nodes done, counts by state, elapsed and ETA."""
    filled = round(p.progress * BAR)
    counts = ", ".join(f"{state} {n}" for state, n in p.counts.items())
    eta = "" if p.status != "running" else f", ETA {_seconds(p.eta_ms)}"
    return (f"{p.execution_id} {p.status} [{'#' * filled}{'.' * (BAR - filled)}]"
            f" {p.progress:4.0%} {p.done}/{p.nodes} nodes ({counts})"
            f" {_seconds(p.elapsed_ms)} elapsed{eta}")


def result_line(result: WorkflowResult) -> str:
    if result.ok:
        outputs = ("(outputs too large for one event: see the sink nodes)"
                   if result.outputs is None else json.dumps(result.outputs))
        return f"{result.execution_id} completed in {_seconds(result.duration_ms)}: {outputs}"
    return f"{result.execution_id} {result.status.replace('_', ' ')}: {result.error}"


NO_RUNNER_S = 10.0  # scheduled work nobody started for this long gets a hint


def waiting_for_a_runner(p: Progress) -> bool:
    """Nodes are scheduled, yet none has ever started: no runner is taking tasks."""
    return p.status == "running" and p.counts.get("scheduled", 0) > 0 and \
        set(p.counts) <= {"pending", "ready", "scheduled"}


class _Lines:
    """Progress lines: redrawn in place on a terminal, else one per change of counts. Says
    once when scheduled work has waited NO_RUNNER_S with no node started: with no runner,
    the counts would otherwise show "scheduled" for good, silently."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.tty, self.clock = stream, stream.isatty(), clock
        self.last: tuple | None = None
        self.idle_since: float | None = None
        self.hinted = False

    def show(self, p: Progress) -> None:
        self._hint(p)
        if self.tty:
            print(f"\r\033[K{progress_line(p)}", end="", file=self.stream, flush=True)
        elif (p.status, p.counts) != self.last:
            print(progress_line(p), file=self.stream, flush=True)
        self.last = (p.status, p.counts)

    def end(self) -> None:
        if self.tty and self.last is not None:
            print(file=self.stream, flush=True)

    def _hint(self, p: Progress) -> None:
        if not waiting_for_a_runner(p):
            self.idle_since = None
            return
        now = self.clock()
        self.idle_since = now if self.idle_since is None else self.idle_since
        if not self.hinted and now - self.idle_since >= NO_RUNNER_S:
            self.hinted = True
            if self.tty:
                print(file=self.stream)  # below the line redrawn in place
            print(f"no runner has taken a task in {NO_RUNNER_S:.0f}s: is `pit runner` running"
                  " for this pool?", file=self.stream, flush=True)


async def _watch(workflows: WorkflowOps, execution_id: str, lines: _Lines | None,
                 interval: float, *, follow: bool = True,
                 ) -> tuple[Progress, WorkflowResult | None]:
    """Show the execution's progress (until it ends when following); its last status and
    how it ended (None while it runs)."""
    async with aclosing(workflows.watch(execution_id, interval)) as updates:
        try:
            async for update in updates:
                if lines is not None:
                    lines.show(update[0])
                if not follow:
                    break
        finally:
            if lines is not None:
                lines.end()
    return update


def _as_json(progress: Progress, result: WorkflowResult | None) -> str:
    shown = {**progress.__dict__}
    if result is not None:
        shown["result"] = result.__dict__
    return json.dumps(shown)


async def submit(args: argparse.Namespace, settings: Settings) -> int:
    from streams.dag.definition import check
    from streams.dag.workflows import load_workflow, workflow_ops

    workflow = check(load_workflow(args.file))  # an invalid file says so even without pit up
    inputs = parse_inputs(args.input)
    workflows = workflow_ops(settings, "pit-cli")
    async with workflows.client:
        execution_id = await workflows.execute_workflow(
            workflow, inputs, execution_id=args.id, max_concurrency=args.max_concurrency,
            timeout_ms=args.timeout_ms, tenant=args.tenant or "")
        print(execution_id, flush=True)
        if not args.wait:
            return 0
        progress, result = await _watch(workflows, execution_id, _Lines(sys.stderr),
                                        args.interval)
    assert result is not None  # followed until it ended
    print(_as_json(progress, result) if args.json else result_line(result))
    return 0 if result.ok else 2


async def status(args: argparse.Namespace, settings: Settings) -> int:
    from streams.dag.workflows import workflow_ops

    workflows = workflow_ops(settings, "pit-cli")  # reads only: no connection needed
    progress, result = await _watch(workflows, args.id, None if args.json else _Lines(sys.stdout),
                                    args.interval, follow=args.follow)
    if args.json:
        print(_as_json(progress, result))
    elif result is not None:
        print(result_line(result))
    return 0


async def cancel(args: argparse.Namespace, settings: Settings) -> int:
    from streams.dag.workflows import workflow_ops

    workflows = workflow_ops(settings, "pit-cli")
    async with workflows.client:
        await workflows.cancel_workflow(args.id, args.reason)
    print(f"{args.id}: cancel accepted")
    return 0


def run(args: argparse.Namespace, settings: Settings) -> int:
    return asyncio.run(args.workflow(args, settings))


def cmd_runner(args: argparse.Namespace, settings: Settings) -> int:
    from streams.dag.definition import load_operator_modules
    from streams.dag.runner import POOLS, run_runner
    from streams.process import exit_now

    for module in load_operator_modules(args.imports or ()):
        print(f"pit runner: operators from {module}", file=sys.stderr)

    return exit_now(asyncio.run(run_runner(settings, args.id, args.concurrency, args.threads,
                                           args.drain_timeout, args.pool or POOLS,
                                           int(args.session_timeout * 1000))))


def add_parser(sub: argparse._SubParsersAction) -> None:
    """`pit runner` and `pit workflow ...` on the `pit` parser's subcommands."""
    runner = sub.add_parser("runner", help="run DAG node tasks (one consumer group: start more"
                                           " runners to scale out)")
    runner.add_argument("--id", help="runner id in reports (default: <hostname>-<pid>)")
    runner.add_argument("--import", dest="imports", action="append", metavar="MODULE",
                        help="a module of your operators to import (repeatable); the"
                             " `pit.operators` entry points and PIT_OPERATOR_MODULES are"
                             " loaded too")
    runner.add_argument("--concurrency", type=int, default=256,
                        help="most tasks running at once")
    runner.add_argument("--threads", type=int, default=32,
                        help="threads for blocking operators")
    runner.add_argument("--drain-timeout", type=float, default=30.0,
                        help="seconds SIGTERM waits for running tasks before leaving")
    runner.add_argument("--pool", action="append",
                        help="a runner pool to serve (repeat; default: instrument and operator)")
    runner.add_argument("--session-timeout", type=float, default=10.0,
                        help="seconds without a heartbeat before the group gives a dead"
                             " runner's tasks to the others (the same for every runner)")
    runner.set_defaults(run=cmd_runner)

    workflow = sub.add_parser("workflow", help="run workflows (DAGs): submit, status, cancel")
    workflow.set_defaults(run=run)
    actions = workflow.add_subparsers(dest="action", required=True)

    submit_ = actions.add_parser("submit", help="start a workflow from a .yaml/.json file;"
                                                " prints the execution id")
    submit_.add_argument("file", help="the workflow definition (.yaml, .yml or .json)")
    submit_.add_argument("--input", action="append", metavar="NODE.INPUT=JSON",
                         help="a value for a node input the definition feeds with a constant"
                              " (repeat)")
    submit_.add_argument("--id", help="execution id (default: <workflow name>-<random>)")
    submit_.add_argument("--max-concurrency", type=int, help="most nodes running at once")
    submit_.add_argument("--tenant", help="whose workflow it is: its model allocations go"
                                          " through arbitration, at each node's priority")
    submit_.add_argument("--timeout-ms", type=int, help="workflow timeout (default: the"
                                                        " definition's)")
    submit_.add_argument("--wait", action="store_true",
                         help="show progress, then print the result (exit 2 unless completed)")
    submit_.add_argument("--json", action="store_true", help="with --wait: the end as JSON")
    submit_.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)
    submit_.set_defaults(workflow=submit)

    status_ = actions.add_parser("status", help="an execution's progress: node counts by"
                                                " state, progress bar, ETA")
    status_.add_argument("id", help="execution id")
    status_.add_argument("--follow", "-f", action="store_true",
                         help="refresh until the execution ends")
    status_.add_argument("--json", action="store_true", help="the status as JSON")
    status_.add_argument("--interval", type=float, default=0.5,
                         help="seconds between refreshes with --follow")
    status_.set_defaults(workflow=status)

    cancel_ = actions.add_parser("cancel", help="cancel a running execution")
    cancel_.add_argument("id", help="execution id")
    cancel_.add_argument("--reason", default="", help="recorded with the cancellation")
    cancel_.set_defaults(workflow=cancel)
