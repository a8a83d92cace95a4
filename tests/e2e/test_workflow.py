"""Workflows end to end: a Pit (the `pit up` Stack, in-process, with a real model host) and two
`pit runner` processes. Through `PitClient` and `pit workflow submit|status|cancel`: a workflow
with an instrument node on a pool model runs to its result; status while it runs and after;
a slow workflow is cancelled; an invalid definition is refused with every problem in one
line; a definition larger than one event goes by hash; each bad CLI input is one line."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streams.app import Stack
from streams.client import PitClient, SyncPitClient
from streams.config import Settings
from streams.dag.definition import Workflow, WorkflowBuilder, deep_dag, wide_dag
from streams.dag.definition_store import definition_store
from streams.dag.errors import InvalidWorkflowError, WorkflowError
from streams.dag.execution import ReportNodeCompleted, StartExecution
from streams.pool.host import ModelHost

pytestmark = pytest.mark.slow

MOOD = Path(__file__).parents[1] / "fixtures" / "workflows" / "mood.yaml"
SENTIMENT = "python:streams.pool.examples:sentiment"
GATED_MS = 600_000  # a gated node's sleep: the runners abandon it when they stop


class Pit:
    """The Stack, a host with the sentiment model, two runner processes, a client."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.env = {**os.environ, "PIT_DATA_DIR": str(data_dir)}
        for name in ("PIT_KAFKA_BOOTSTRAP_SERVERS", "PIT_DATABASE_URL"):
            self.env.pop(name, None)

    async def start(self) -> Pit:
        self.stack = await Stack(Settings(data_dir=self.data_dir), progress=False).start()
        self.settings = self.stack.settings
        self.host = await ModelHost(self.settings, "wf-host", 500, 2,
                                    say=lambda _line: None).start()
        self.client = await PitClient(self.settings, issued_by="workflow-test").start()
        assert (await self.client.pool.register_model("sentiment", SENTIMENT, 50, 5)).accepted
        self.runners = [subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "runner", "--id", f"wf-runner-{n}",
             "--session-timeout", "3", "--drain-timeout", "2"],
            env=self.env, stdout=subprocess.DEVNULL,
            stderr=(self.data_dir / f"runner-{n}.log").open("w")) for n in (1, 2)]
        return self

    async def close(self) -> None:
        for runner in self.runners:
            runner.terminate()
        for runner in self.runners:
            await asyncio.to_thread(runner.wait, 30)
        await self.client.close()
        await self.host.close()
        await self.stack.close()

    def pit(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        """`pit <args>` as the user runs it (a process, off the event loop's thread). The
        timeout only stops a hung command: ten of them start at once on a loaded machine."""
        return subprocess.run([sys.executable, "-m", "streams.cli", *args],
                              env=env or self.env, capture_output=True, text=True, timeout=300)

    async def run(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return await asyncio.to_thread(self.pit, *args, env=env)


@pytest.fixture(scope="module")
async def pit(tmp_path_factory):
    pit = await Pit(tmp_path_factory.mktemp("workflow")).start()
    try:
        yield pit
    finally:
        await pit.close()


def one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pit: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def slow_chain(name: str, nodes: int, ms: int, gated: tuple[int, ...] = ()) -> Workflow:
    """s0 -> s1 -> ...: each sleeps `ms`, then passes its value (0) on. The `gated` nodes
    sleep for GATED_MS instead: they end when the test reports them (`complete`)."""
    chain = WorkflowBuilder(name)
    for i in range(nodes):
        chain.operator(f"s{i}", "sleep_then_return",
                       constants={"ms": GATED_MS if i in gated else ms,
                                  **({} if i else {"value": 0})})
        if i:
            chain.edge(f"s{i - 1}", f"s{i}.value")
    return chain.build()


async def complete(pit: Pit, execution_id: str, node_id: str) -> None:
    """Report a gated node's first attempt completed, as its runner would."""
    outcome = await pit.client.send(ReportNodeCompleted(
        execution_id, node_id, 1, json.dumps({"out": 0}), runner="workflow-test"))
    assert outcome.accepted, outcome.line()


MOOD_OUT = {"report": {"out": {"chunks": 3, "mood": {"label": "positive", "score": 2,
                                                     "words": 5}}}}


async def test_a_workflow_with_a_model_runs_to_its_result(pit):
    execution_id = await pit.client.dag.execute_workflow(MOOD, execution_id="mood-1")
    assert execution_id == "mood-1"
    result = await pit.client.dag.await_result(execution_id, timeout=30)
    assert (result.status, result.error, result.outputs) == ("completed", "", MOOD_OUT)
    status = await pit.client.dag.workflow_status(execution_id)
    assert (status.status, status.nodes, status.done, status.progress) == ("completed", 5, 5,
                                                                          1.0)
    assert status.counts == {"completed": 5} and status.eta_ms == 0
    assert set(status.mean_ms) == {"instrument", "operator"}
    # already ended: awaiting again reads it from the log; starting it again is a duplicate
    assert await pit.client.dag.await_result(execution_id, timeout=5) == result
    assert await pit.client.dag.execute_workflow(MOOD, execution_id="mood-1") == "mood-1"

    # the same file through the CLI, with an input replacing the document's constant
    done = await pit.run("workflow", "submit", str(MOOD), "--wait", "--input",
                         'document.value="I hate slow and broken things"')
    assert done.returncode == 0, done.stderr
    execution_id, last = done.stdout.splitlines()
    assert execution_id.startswith("mood-")
    assert last.startswith(f"{execution_id} completed in ")
    outputs = json.loads(last.split(": ", 1)[1])
    assert outputs["report"]["out"]["mood"] == {"label": "negative", "score": -3, "words": 6}
    assert "[########################] 100% 5/5 nodes" in done.stderr  # the progress line
    shown = await pit.run("workflow", "status", execution_id)
    assert shown.returncode == 0, shown.stderr
    line, ended = shown.stdout.splitlines()
    assert line.startswith(f"{execution_id} completed [") and "(completed 5)" in line
    assert ended == last


async def test_the_blocking_client_runs_workflows_too(pit):
    def run() -> tuple:
        with SyncPitClient(pit.settings, issued_by="workflow-test-sync") as client:
            execution_id = client.dag.execute_workflow(MOOD, {"document.value": "nice"},
                                                   execution_id="mood-sync")
            return client.dag.await_result(execution_id, timeout=30), client.dag.workflow_status(
                execution_id)

    result, status = await asyncio.to_thread(run)  # it blocks: not on the Stack's loop
    assert result.outputs["report"]["out"] == {
        "chunks": 1, "mood": {"label": "positive", "score": 1, "words": 1}}
    assert (status.status, status.done) == ("completed", 5)


async def test_status_while_running_and_after_a_cancel(pit):
    # the last node is gated: the run cannot end before the cancel, however slow the CLI is
    execution_id = await pit.client.dag.execute_workflow(slow_chain("slow", 30, 300, gated=(29,)))
    deadline = time.monotonic() + 20
    while (status := await pit.client.dag.workflow_status(execution_id)).done < 2:
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.2)
    assert status.status == "running" and 2 <= status.done < 30
    assert status.in_flight == 1 and status.eta_ms is not None and status.eta_ms > 0
    shown, plain = await asyncio.gather(pit.run("workflow", "status", execution_id, "--json"),
                                        pit.run("workflow", "status", execution_id))
    seen = json.loads(shown.stdout)
    assert (seen["status"], seen["nodes"]) == ("running", 30) and "result" not in seen
    assert seen["done"] >= status.done and seen["counts"]["pending"] >= 1
    line = plain.stdout
    assert " running [" in line and "ETA " in line and "/30 nodes" in line

    cancelled = await pit.run("workflow", "cancel", execution_id, "--reason", "too slow")
    assert cancelled.returncode == 0 and cancelled.stdout.strip().endswith("cancel accepted")
    result = await pit.client.dag.await_result(execution_id, timeout=10)
    assert (result.status, result.error, result.outputs) == ("cancelled", "too slow", None)
    after = await pit.client.dag.workflow_status(execution_id)
    assert after.status == "cancelled" and after.eta_ms == 0 and after.in_flight == 0
    assert after.counts["cancelled"] >= 1 and after.done < 30
    shown, again = await asyncio.gather(pit.run("workflow", "status", execution_id),
                                        pit.run("workflow", "cancel", execution_id))
    assert shown.stdout.splitlines()[-1] == f"{execution_id} cancelled: too slow"
    one_line_error(again, f"cannot cancel {execution_id}", "already ended (cancelled)")
    with pytest.raises(WorkflowError, match="already ended"):
        await pit.client.dag.cancel_workflow(execution_id)


async def test_status_follow_refreshes_until_the_end(pit):
    """The first and last nodes are gated: the test reports each once the follower has shown
    the state before it, so the follower sees the run from its start to its end however slow
    the machine is."""
    execution_id = await pit.client.dag.execute_workflow(slow_chain("follow", 6, 0, gated=(0, 5)))
    follower = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streams.cli", "workflow", "status", execution_id, "--follow",
        "--interval", "0.2", env=pit.env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    lines: list[str] = []

    async def shown(fragment: str) -> None:
        """Read the follower's lines until one holds `fragment`."""
        while not lines or fragment not in lines[-1]:
            line = await asyncio.wait_for(follower.stdout.readline(), 60)
            assert line, f"the follower ended before showing {fragment!r}: {lines}"
            lines.append(line.decode().rstrip("\n"))

    try:
        await shown(" 0/6 nodes")
        await complete(pit, execution_id, "s0")
        await shown(" 5/6 nodes")
        await complete(pit, execution_id, "s5")
        out, err = await asyncio.wait_for(follower.communicate(), 60)
    finally:
        if follower.returncode is None:
            follower.kill()
            await follower.wait()
    assert follower.returncode == 0, err.decode()
    lines += out.decode().splitlines()
    # not a terminal: one line per change, from running to completed, then the result
    counts = [re.search(r" \d+/6 nodes \(.*?\)", line).group() for line in lines[:-1]]
    assert len(lines) >= 4 and all(" running [" in line for line in lines[:-2]), lines
    assert all(a != b for a, b in itertools.pairwise(counts)), lines
    assert f"{execution_id} completed [" in lines[-2] and "100% 6/6 nodes" in lines[-2]
    assert lines[-1].startswith(f"{execution_id} completed in ") and lines[-1].endswith(
        '{"s5": {"out": 0}}')


async def test_an_invalid_definition_is_refused_with_every_problem(pit, tmp_path):
    bad = {"name": "bad", "nodes": [{"id": "a", "operator": "identity"},
                                    {"id": "a", "operator": "add"},
                                    {"id": "b", "operator": "no_such_operator"}],
           "edges": [{"from": "ghost.out", "to": "b.value"}]}
    with pytest.raises(InvalidWorkflowError) as refused:
        await pit.client.dag.execute_workflow(bad, execution_id="bad-1")
    assert len(refused.value.problems) >= 3
    with pytest.raises(WorkflowError, match="unknown execution 'bad-1'"):
        await pit.client.dag.workflow_status("bad-1")  # nothing was published

    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    line = one_line_error(await pit.run("workflow", "submit", str(path)),
                          "invalid workflow 'bad' (")
    for problem in refused.value.problems:
        assert problem in line


async def test_a_definition_larger_than_an_event_goes_by_hash(pit):
    workflow = wide_dag(2000)
    assert workflow.is_large and len(workflow.canonical_bytes) > 256 * 1024
    store = definition_store(pit.settings)
    execution_id = await pit.client.dag.execute_workflow(workflow, execution_id="wide-2000")
    assert workflow.content_hash() in store
    result = await pit.client.dag.await_result(execution_id, timeout=40)
    assert (result.status, result.outputs) == ("completed", {"sink": {"out": 2_001_000}})
    status = await pit.client.dag.workflow_status(execution_id)
    assert (status.nodes, status.done) == (2002, 2002)

    # a hash the processor's store does not hold: refused, saying where it looked
    missing = deep_dag(3).content_hash()
    outcome = await pit.client.send(StartExecution("lost-1", definition_hash=missing))
    assert not outcome.accepted
    assert f"unknown definition {missing}" in outcome.reason
    assert f"not in the definition store at {store.root}" in outcome.reason


async def test_cli_errors_are_one_line(pit, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    elsewhere = {**pit.env, "PIT_DATA_DIR": str(tmp_path / "no-pit")}
    expected = {  # (arguments, environment): what the one line says
        (("submit", str(tmp_path / "nope.yaml")), None): ("invalid workflow 'nope.yaml'",
                                                           "cannot read"),
        (("submit", str(broken)), None): ("invalid workflow",),
        (("submit", str(MOOD), "--input", "document.value=hi"), None): (
            "--input document.value: not JSON",),
        (("submit", str(MOOD), "--input", "novalue"), None): ("expected node.input=JSON",),
        (("submit", str(MOOD), "--input", "mood.text=1"), None): (
            "workflow 'mood' was not started", "'mood.text' does not name"),
        (("status", "no-such-run"), None): ("unknown execution 'no-such-run'",),
        (("cancel", "no-such-run"), None): ("cannot cancel no-such-run", "unknown execution"),
        (("submit", str(MOOD)), "elsewhere"): ("no broker", "pit up"),
        (("status", "mood-1"), "elsewhere"): ("no broker", "pit up"),
        (("cancel", "mood-1"), "elsewhere"): ("no broker", "pit up"),
    }
    results = await asyncio.gather(*(
        pit.run("workflow", *args, env=elsewhere if where else None)
        for args, where in expected))
    for fragments, result in zip(expected.values(), results, strict=True):
        one_line_error(result, *fragments)
