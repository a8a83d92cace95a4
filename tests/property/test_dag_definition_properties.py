"""Properties of workflow definitions over random DAGs.

* a generated acyclic DAG validates, and its graph index agrees with its edges;
* adding a back edge (a node to one of its ancestors, or to itself) is always rejected, and
  every cycle named is a real cycle of the new edges;
* the topological order respects every edge;
* the canonical form round-trips (JSON and YAML), and the hash does not depend on the order
  nodes and edges were written in;
* the critical-path rank of a node is greater than the rank of each of its dependents;
* backoff never exceeds its cap, grows with the attempt, and jitter stays in its fraction.
"""

from __future__ import annotations

from itertools import pairwise

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.dag.definition import (
    Backoff,
    BackoffKind,
    Edge,
    Graph,
    Node,
    NodeKind,
    Recovery,
    Resources,
    Strategy,
    Workflow,
    backoff_ms,
    layered_dag,
    validate,
    workflow_from_json,
    workflow_from_yaml,
)
from streams.dag.errors import InvalidWorkflowError

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                         st.floats(allow_nan=False, allow_infinity=False),
                         st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=8)

recoveries = st.one_of(
    st.none(),
    st.builds(Recovery, strategy=st.sampled_from([Strategy.RETRY, Strategy.FAIL,
                                                  Strategy.RESTART]),
              max_attempts=st.integers(1, 9),
              backoff=st.builds(Backoff, kind=st.sampled_from(list(BackoffKind)),
                                initial_ms=st.integers(0, 1000), max_ms=st.integers(1000, 10**5),
                                jitter=st.sampled_from([0.0, 0.1, 0.5, 1.0])),
              non_retryable=st.lists(st.sampled_from(["ValueError", "InvalidInput"]),
                                     max_size=2, unique=True).map(tuple)),
    st.builds(Recovery, strategy=st.just(Strategy.SKIP), default_output=st.floats(-1, 1)),
)


@st.composite
def dags(draw) -> Workflow:
    """A random DAG: node k may feed any node after it in a random order, so ids (sorted in
    the definition) do not follow the topological order."""
    count = draw(st.integers(1, 30))
    names = draw(st.permutations([f"n{i}" for i in range(count)]))
    edges = []
    for target in range(1, count):
        sources = draw(st.lists(st.integers(0, target - 1), max_size=3, unique=True))
        edges += [Edge(names[target], f"in_{names[s]}", names[s]) for s in sources]
    fed = {e.to_node for e in edges}
    nodes = []
    for name in names:
        options = {
            "priority": draw(st.integers(-5, 5)),
            "resources": Resources(cpu=draw(st.sampled_from([0.5, 1.0, 2])),
                                   memory_mb=draw(st.integers(0, 4096))),
            "timeout_ms": draw(st.one_of(st.none(), st.integers(1, 10**6))),
            "params": draw(st.dictionaries(st.text(max_size=5), json_values, max_size=2)),
            "recovery": draw(recoveries),
        }
        if name in fed:
            nodes.append(Node(name, NodeKind.OPERATOR, operator="sum_inputs", **options))
        else:
            nodes.append(Node(name, NodeKind.OPERATOR, operator="identity",
                              constants={"value": 1}, **options))
    return Workflow(draw(st.sampled_from(["w", "random dag"])), tuple(nodes), tuple(edges),
                    max_concurrency=draw(st.one_of(st.none(), st.integers(1, 100))),
                    checkpoint_every=draw(st.integers(0, 10)))


def ancestors(graph: Graph, node: int) -> set[int]:
    seen, stack = set(), list(graph.dependencies[node])
    while stack:
        v = stack.pop()
        if v not in seen:
            seen.add(v)
            stack.extend(graph.dependencies[v])
    return seen


@settings(max_examples=150, deadline=None)
@given(dags())
def test_generated_dags_validate_and_the_index_agrees_with_the_edges(workflow):
    assert validate(workflow) == []
    graph = workflow.graph
    pairs = {(e.from_node, e.to_node) for e in workflow.edges}
    assert {(graph.ids[s], graph.ids[t]) for t, deps in enumerate(graph.dependencies)
            for s in deps} == pairs
    assert {(graph.ids[s], graph.ids[t]) for s, targets in enumerate(graph.dependents)
            for t in targets} == pairs


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 400), st.integers(0, 2**32), st.integers(1, 12), st.integers(1, 5))
def test_layered_dags_validate(count, seed, layers, fan_in):
    workflow = layered_dag(count, seed=seed, layers=layers, max_fan_in=fan_in)
    assert validate(workflow) == []
    assert max(workflow.graph.critical_path_rank()) == min(layers, count)


@settings(max_examples=150, deadline=None)
@given(dags(), st.data())
def test_a_back_edge_is_always_rejected_naming_a_real_cycle(workflow, data):
    graph = workflow.graph
    target = data.draw(st.sampled_from(range(len(graph.ids))))
    above = sorted(ancestors(graph, target) | {target})  # itself: a self-loop
    source = data.draw(st.sampled_from(above))
    back = Edge(graph.ids[source], "back", graph.ids[target])
    cyclic = Workflow(workflow.name, workflow.nodes, (*workflow.edges, back))
    edges = {(e.from_node, e.to_node) for e in cyclic.edges}
    problems = validate(cyclic)
    cycles = [p.removeprefix("cycle: ").split(" -> ") for p in problems
              if p.startswith("cycle: ")]
    assert cycles, problems
    for path in cycles:
        assert path[0] == path[-1]
        assert all((a, b) in edges for a, b in pairwise(path))
    assert any(back.from_node in path and back.to_node in path for path in cycles)
    try:
        Graph.of(cyclic)
    except InvalidWorkflowError as exc:
        assert exc.problems == [p for p in problems if p.startswith("cycle: ")]
    else:
        raise AssertionError("Graph.of accepted a cycle")


@settings(max_examples=150, deadline=None)
@given(dags())
def test_topological_order_respects_every_edge(workflow):
    graph = workflow.graph
    position = {graph.ids[i]: k for k, i in enumerate(graph.order)}
    assert sorted(position.values()) == list(range(len(workflow.nodes)))
    for edge in workflow.edges:
        assert position[edge.from_node] < position[edge.to_node]


@settings(max_examples=150, deadline=None)
@given(dags(), st.randoms(use_true_random=False))
def test_canonical_form_round_trips_and_ignores_writing_order(workflow, rng):
    again = workflow_from_json(workflow.canonical_json())
    assert again == workflow and again.content_hash() == workflow.content_hash()
    via_yaml = workflow_from_yaml(yaml.safe_dump(workflow.to_dict()))
    assert via_yaml.content_hash() == workflow.content_hash()
    nodes, edges = list(workflow.nodes), list(workflow.edges)
    rng.shuffle(nodes)
    rng.shuffle(edges)
    shuffled = Workflow(workflow.name, tuple(nodes), tuple(edges), workflow.timeout_ms,
                        workflow.max_concurrency, workflow.default_recovery,
                        workflow.checkpoint_every)
    assert shuffled == workflow and shuffled.content_hash() == workflow.content_hash()


@settings(max_examples=150, deadline=None)
@given(dags(), st.data())
def test_critical_path_rank_exceeds_every_dependent(workflow, data):
    graph = workflow.graph
    durations = data.draw(st.dictionaries(st.sampled_from(graph.ids),
                                          st.floats(0.001, 1000), max_size=len(graph.ids)))
    for rank in (graph.critical_path_rank(), graph.critical_path_rank(durations)):
        for node, dependents in enumerate(graph.dependents):
            for dependent in dependents:
                assert rank[node] > rank[dependent]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(BackoffKind)), st.integers(0, 5000), st.integers(0, 5000),
       st.floats(1, 10), st.integers(0, 10**6), st.floats(0, 1), st.integers(1, 200),
       st.text(max_size=10))
def test_backoff_is_capped_monotone_and_jitter_stays_in_its_fraction(
        kind, initial, increment, multiplier, cap_extra, jitter, attempt, key):
    plain = Backoff(kind, initial, increment, multiplier, initial + cap_extra)
    jittered = Backoff(kind, initial, increment, multiplier, initial + cap_extra, jitter)
    base = backoff_ms(plain, attempt, key)
    assert 0 <= base <= plain.max_ms
    assert backoff_ms(plain, attempt + 1, key) >= base
    delay = backoff_ms(jittered, attempt, key)
    assert delay == backoff_ms(jittered, attempt, key)
    assert int(base * (1 - jitter)) - 1 <= delay <= base
