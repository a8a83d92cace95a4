"""The console's execution graph (projections/console/graph.py), against brute force on random
DAGs and random node states: node by node it is the definition, state for state; in bands it
loses no node and no state; the critical path is a longest source-to-sink path; the ETA is 0
once every node ended."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from projections.console.graph import ENDED, NodeRow, execution_graph
from streams.dag.definition import Workflow, layered_dag

STATES = ("pending", "scheduled", "running", "retrying", "failed", "completed", "fallback",
          "skipped", "cancelled")
NOW = 1_000_000


@st.composite
def executions(draw) -> tuple[Workflow, dict[str, NodeRow]]:
    count = draw(st.integers(1, 40))
    workflow = layered_dag(count, seed=draw(st.integers(0, 10_000)),
                           layers=draw(st.integers(1, 12)))
    rows = {}
    for node in workflow.nodes:
        state = draw(st.sampled_from((None, *STATES)))  # None: no event named it yet
        if state is None:
            continue
        rows[node.id] = NodeRow(
            state, "operator",
            duration_ms=draw(st.integers(0, 5_000)) if state in ENDED else None,
            started_at_ms=NOW - draw(st.integers(0, 5_000)) if state == "running" else None)
    return workflow, rows


def paths(workflow: Workflow) -> list[list[str]]:
    """Every source-to-sink path, by brute force."""
    graph = workflow.graph
    found: list[list[str]] = []

    def walk(i: int, path: list[str]) -> None:
        path = [*path, graph.ids[i]]
        if not graph.dependents[i]:
            found.append(path)
        for j in graph.dependents[i]:
            walk(j, path)

    for source in graph.sources:
        walk(source, [])
    return found


@settings(max_examples=150, deadline=None)
@given(executions())
def test_node_by_node_it_is_the_definition_in_the_views_states(execution) -> None:
    workflow, rows = execution
    body = execution_graph(workflow, rows, now_ms=NOW, node_limit=10_000)
    assert body["mode"] == "nodes"
    assert [n["id"] for n in body["nodes"]] == [n.id for n in workflow.nodes]
    assert {n["id"]: n["state"] for n in body["nodes"]} == {
        n.id: rows[n.id].state if n.id in rows else "pending" for n in workflow.nodes}
    assert sorted((e["source"], e["target"]) for e in body["edges"]) == sorted(
        {(e.from_node, e.to_node) for e in workflow.edges})
    assert sum(body["counts"].values()) == len(workflow.nodes)


@settings(max_examples=150, deadline=None)
@given(executions(), st.integers(1, 5))
def test_bands_lose_no_node_and_no_state_and_chain_forward(execution, max_bands) -> None:
    workflow, rows = execution
    body = execution_graph(workflow, rows, now_ms=NOW, node_limit=0, max_bands=max_bands)
    assert body["mode"] == "bands"
    assert len(body["bands"]) <= max_bands
    assert sum(b["nodes"] for b in body["bands"]) == len(workflow.nodes)
    merged: dict[str, int] = {}
    for band in body["bands"]:
        assert sum(band["counts"].values()) == band["nodes"]
        for state, n in band["counts"].items():
            merged[state] = merged.get(state, 0) + n
    assert merged == body["counts"]
    index = {b["id"]: int(b["id"].removeprefix("band-")) for b in body["bands"]}
    assert all(index[e["target"]] == index[e["source"]] + 1 for e in body["edges"])
    # a node's level is its longest path from a source: one of its dependencies is a level
    # before it, so every band feeds the next
    if len(body["bands"]) > 1:
        assert len(body["edges"]) == len(body["bands"]) - 1


@settings(max_examples=150, deadline=None)
@given(executions())
def test_the_critical_path_is_a_longest_path(execution) -> None:
    workflow, rows = execution
    body = execution_graph(workflow, rows, now_ms=NOW, node_limit=10_000)
    weight = {n["id"]: n for n in body["nodes"]}
    marked = [n["id"] for n in body["nodes"] if n["critical"]]
    assert sorted(marked) == sorted(body["critical_path"])
    all_paths = paths(workflow)
    assert body["critical_path"] in all_paths
    ended = [r.duration_ms for r in rows.values() if r.state in ENDED]
    mean = sum(ended) / len(ended) if ended else 0.0

    def cost(node_id: str) -> float:
        row = rows.get(node_id)
        if row is not None and row.state in ENDED:
            return float(row.duration_ms)
        if row is not None and row.state == "running":
            return max(float(NOW - row.started_at_ms), mean)
        return mean

    longest = max(sum(cost(n) for n in path) for path in all_paths)
    assert abs(sum(cost(n) for n in body["critical_path"]) - longest) < 1e-6
    assert abs(body["critical_path_ms"] - longest) <= 1
    assert set(weight) == {n.id for n in workflow.nodes}


@settings(max_examples=100, deadline=None)
@given(executions())
def test_the_eta_is_zero_once_every_node_ended_and_not_before(execution) -> None:
    workflow, rows = execution
    ended = {n.id: NodeRow(s, "operator", duration_ms=d) for n, s, d in zip(
        workflow.nodes, itertools.cycle(sorted(ENDED)), itertools.count(1), strict=False)}
    assert execution_graph(workflow, ended, now_ms=NOW)["eta_ms"] == 0
    waiting = [n.id for n in workflow.nodes
               if n.id not in rows or rows[n.id].state not in (*ENDED, "running")]
    measured = [r.duration_ms for r in rows.values() if r.state in ENDED]
    if waiting and measured and sum(measured) >= len(measured):  # a mean of at least 1 ms
        assert execution_graph(workflow, rows, now_ms=NOW)["eta_ms"] > 0
