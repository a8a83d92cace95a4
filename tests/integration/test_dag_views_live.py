"""The workflow views, API and metrics in a running Pit: the Stack (embedded broker, DAG
processor, timer service, task dispatcher, projector with its metrics observers, HTTP API)
and an in-process runner; the workflow is started through PitClient. What the views say
agrees with the client's result, and the live metrics counted each node once."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

import aiohttp
from prometheus_client import REGISTRY

from streams.app import Stack
from streams.client import PitClient
from streams.config import Settings
from streams.dag.definition import OPERATORS, Backoff, Recovery, Strategy, WorkflowBuilder
from streams.dag.runner import Runner

CALLS: Counter = Counter()


def _flaky_twice(value: str) -> str:
    CALLS[value] += 1
    if CALLS[value] <= 2:
        raise ConnectionResetError(f"{value}: call {CALLS[value]} fails")
    return value.upper()


OPERATORS.register("views_flaky_twice", _flaky_twice, inputs={"value": "str"}, output="str",
                   replace=True)



def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


WATCHED = {"completed": ("pit_dag_nodes_completed_total", {"kind": "operator"}),
           "durations": ("pit_dag_node_seconds_count", {"kind": "operator",
                                                         "outcome": "completed"}),
           "resets": ("pit_dag_node_failures_total", {"kind": "operator",
                                                      "error_type": "ConnectionResetError"}),
           "injected": ("pit_dag_node_failures_total", {"kind": "operator",
                                                        "error_type": "InjectedError"}),
           "ended": ("pit_dag_executions_ended_total", {"status": "completed"})}


async def test_a_running_pit_shows_its_workflows(tmp_path, free_port) -> None:
    before = {key: sample(name, **labels) for key, (name, labels) in WATCHED.items()}
    port = free_port()
    workflow = (WorkflowBuilder("live-views")
                .operator("word", "identity", constants={"value": "hello"})
                .operator("shout", "views_flaky_twice",
                          recovery=Recovery(Strategy.RETRY, 3, Backoff("constant", 50)))
                .operator("broken", "raise_error",
                          constants={"message": "no luck", "error": "InjectedError"},
                          recovery=Recovery(Strategy.SKIP, default_output="skipped"))
                .operator("both", "pack")
                .edge("word", "shout.value").edge("shout", "both.shout")
                .edge("broken", "both.broken")
                .build())
    async with Stack(Settings(data_dir=tmp_path), http_port=port, progress=False,
                     without={"host-monitor"}) as stack:
        runner = Runner(stack.settings, runner_id="views-r1", codec=stack.codec,
                        session_timeout_ms=3000, say=lambda _line: None)
        stop = asyncio.Event()
        running = asyncio.create_task(runner.run(stop))
        try:
            async with PitClient(stack.settings, issued_by="dag-views-live") as client:
                execution_id = await client.dag.execute_workflow(workflow)
                result = await client.dag.await_result(execution_id, timeout=30)
            assert result.ok, result.error
            assert result.outputs == {"both": {"out": {"shout": "HELLO", "broken": "skipped"}}}
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        await stack.drain_projector()

        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/executions/{execution_id}") as response:
                assert response.status == 200
                execution = await response.json()
            async with http.get(f"{base}/executions/{execution_id}/nodes") as response:
                nodes = {n["node_id"]: n for n in (await response.json())["nodes"]}
            async with http.get(f"{base}/executions/{execution_id}/failures") as response:
                failures = (await response.json())["failures"]
            async with http.get(f"{base}/executions", params={"status": "completed"}) as r:
                listed = [e["execution_id"] for e in (await r.json())["executions"]]
            async with http.get(f"{base}/metrics") as response:
                exposed = await response.text()

    assert (execution["status"], execution["workflow"], execution["progress"]) == (
        "completed", "live-views", 1.0)
    assert execution["counts"]["completed"] == 3 and execution["counts"]["skipped"] == 1
    assert (execution["attempts"], execution["retries"], execution["node_failures"]) == (6, 2, 3)
    assert execution["outputs"] == result.outputs and listed == [execution_id]
    shout = nodes["shout"]
    assert [(r["attempt"], r["status"], r["retried"], r["runner"]) for r in shout["runs"]] == [
        (1, "failed", True, "views-r1"), (2, "failed", True, "views-r1"),
        (3, "completed", False, "views-r1")]
    assert all(r["started_at_ms"] >= r["scheduled_at_ms"] and r["duration_ms"] is not None
               for r in shout["runs"])
    assert (nodes["broken"]["state"], nodes["broken"]["runs"][0]["skipped"]) == ("skipped", True)
    assert sorted((f["node_id"], f["attempt"], f["error_type"]) for f in failures) == [
        ("broken", 1, "InjectedError"), ("shout", 1, "ConnectionResetError"),
        ("shout", 2, "ConnectionResetError")]
    grown = {key: sample(name, **labels) - before[key] for key, (name, labels) in WATCHED.items()}
    assert grown == {"completed": 3, "durations": 3, "resets": 2, "injected": 1, "ended": 1}
    assert 'pit_dag_node_failures_total{error_type="InjectedError",kind="operator"}' in exposed
