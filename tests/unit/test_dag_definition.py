"""Workflow definitions: loaders, canonical form and hash, validation rule by rule, backoff,
branch conditions, the operator registry, the graph index and the definition store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from streams.dag.definition import (
    INLINE_LIMIT_BYTES,
    OPERATORS,
    Backoff,
    BackoffKind,
    Condition,
    Edge,
    Graph,
    Node,
    NodeKind,
    OperatorRegistry,
    Recovery,
    Resources,
    Strategy,
    Workflow,
    WorkflowBuilder,
    backoff_ms,
    check,
    deep_dag,
    evaluate_condition,
    item_input_of,
    layered_dag,
    register_operator,
    validate,
    wide_dag,
    workflow_from_dict,
    workflow_from_json,
    workflow_from_yaml,
)
from streams.dag.definition_store import FileDefinitionStore, read_workflow_file
from streams.dag.errors import DefinitionStoreError, InvalidWorkflowError
from streams.errors import PitError

FIXTURES = Path(__file__).parents[1] / "fixtures" / "workflows"


def summarize_built() -> Workflow:
    """tests/fixtures/workflows/summarize.yaml, built in Python."""
    return (
        WorkflowBuilder("summarize", timeout_ms=600_000, max_concurrency=8, checkpoint_every=4,
                        recovery=Recovery(Strategy.RETRY, max_attempts=3, backoff=Backoff(
                            BackoffKind.EXPONENTIAL, initial_ms=200, multiplier=2.0,
                            max_ms=5000, jitter=0.2), non_retryable=("InvalidInput",)))
        .operator("document", "identity", constants={
            "value": "Symphony Pit is an event-sourced backbone. Every step is an event."})
        .operator("chunks", "split_text", constants={"size": 40})
        .map("chunk_summaries", model="summarizer-small", item_input="text",
             params={"max_tokens": 64}, resources=Resources(cpu=0.5, memory_mb=512),
             timeout_ms=30_000)
        .operator("joined", "join_text", constants={"sep": " "})
        .branch("too_long", Condition("gt", 3, "chunks"))
        .operator("measure", "pack")
        .operator("size", "length")
        .instrument("condensed", "summarizer-large", params={"max_tokens": 128}, priority=5,
                    resources=Resources(cpu=1, memory_mb=2048), timeout_ms=60_000,
                    recovery=Recovery(Strategy.FALLBACK, fallback_node="joined"))
        .operator("kept", "identity", recovery=Recovery(Strategy.SKIP, default_output=""))
        .edge("document.out", "chunks.text")
        .edge("chunks", "chunk_summaries.items")
        .edge("chunk_summaries.out", "joined.items")
        .edge("chunk_summaries.out", "size.items")
        .edge("joined.out", "measure.text")
        .edge("size.out", "measure.chunks")
        .edge("measure.out", "too_long.value")
        .edge("too_long.true", "condensed.parts")
        .edge("too_long.false", "kept.value")
        .build())


def problems_of(workflow: Workflow, registry: OperatorRegistry | None = None) -> list[str]:
    return validate(workflow, registry)


def only_problem(workflow: Workflow, registry: OperatorRegistry | None = None) -> str:
    found = validate(workflow, registry)
    assert len(found) == 1, found
    return found[0]


def op(node_id: str, operator: str = "identity", **options) -> Node:
    return Node(node_id, NodeKind.OPERATOR, operator=operator, **options)


def wf(*nodes: Node, edges: tuple[tuple[str, str], ...] = (), **settings) -> Workflow:
    return Workflow("t", nodes, tuple(Edge.parse(a, b) for a, b in edges), **settings)


# --- loaders and the canonical form ---------------------------------------------------------


def test_yaml_json_and_builder_give_equal_definitions_and_the_same_hash():
    from_yaml = read_workflow_file(FIXTURES / "summarize.yaml")
    from_json = read_workflow_file(FIXTURES / "summarize.json")
    built = summarize_built()
    assert from_yaml == from_json == built
    assert from_yaml.content_hash() == from_json.content_hash() == built.content_hash()
    assert check(built) is built


def test_the_fixture_json_is_written_differently_from_the_yaml():
    # the equality above must come from normalising, not from identical input
    data = json.loads((FIXTURES / "summarize.json").read_text())
    assert data["nodes"][0]["id"] == "kept"
    assert all("kind" in node for node in data["nodes"])


def test_canonical_json_is_sorted_compact_and_omits_defaults():
    w = wf(op("b", constants={"value": 1}), op("a", constants={"value": 2}))
    text = w.canonical_json()
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    assert text == ('{"edges":[],"name":"t","nodes":[{"constants":{"value":2},"id":"a","kind":'
                    '"operator","operator":"identity"},{"constants":{"value":1},"id":"b","kind":'
                    '"operator","operator":"identity"}]}')
    assert w.content_hash().startswith("sha256:") and len(w.content_hash()) == 7 + 64


def test_order_of_nodes_and_edges_does_not_change_the_definition():
    a = wf(op("x", constants={"value": 1}), op("y"), op("z"),
           edges=(("x", "y.value"), ("y", "z.value")))
    b = wf(op("z"), op("y"), op("x", constants={"value": 1}),
           edges=(("y", "z.value"), ("x", "y.value")))
    assert a == b and a.content_hash() == b.content_hash()


def test_a_changed_field_changes_the_hash():
    base = summarize_built()
    other = workflow_from_dict({**base.to_dict(), "max_concurrency": 9})
    assert other.content_hash() != base.content_hash()


def test_canonical_form_round_trips_every_field():
    w = summarize_built()
    again = workflow_from_json(w.canonical_json())
    assert again == w and again.canonical_json() == w.canonical_json()


def test_kind_is_implied_by_model_operator_or_condition():
    w = workflow_from_yaml("""
name: k
nodes:
  - {id: a, model: m}
  - {id: b, operator: identity}
  - {id: c, condition: {op: truthy}}
""")
    assert [n.kind for n in w.nodes] == [NodeKind.INSTRUMENT, NodeKind.OPERATOR, NodeKind.BRANCH]


def test_runner_pool_is_set_or_follows_the_kind():
    w = workflow_from_yaml("""
name: p
nodes:
  - {id: a, model: m}
  - {id: b, operator: identity, constants: {value: 1}}
  - {id: c, kind: map, model: m, constants: {items: []}}
  - {id: d, model: m, pool: gpu}
""")
    assert [n.runner_pool for n in w.nodes] == ["instrument", "operator", "instrument", "gpu"]
    assert validate(w) == []
    assert '"pool":"gpu"' in w.canonical_json() and w.canonical_json().count("pool") == 1


def test_loaders_reject_malformed_definitions_listing_every_shape_problem():
    with pytest.raises(InvalidWorkflowError) as caught:
        workflow_from_yaml("""
name: bad
nodes:
  - {id: a, operator: identity, retries: 3}
  - {operator: identity}
edges:
  - {from: a.out}
colour: blue
""")
    assert caught.value.problems == [
        "workflow: unknown key colour (known: checkpoint_every, edges, max_concurrency, "
        "name, nodes, recovery, timeout_ms)",
        "nodes[0]: unknown key retries (known: condition, constants, id, item_input, kind, "
        "model, operator, params, pool, priority, recovery, resources, timeout_ms)",
        "nodes[1]: missing id",
        "edges[0]: needs 'from: node.output' and 'to: node.input' strings",
    ]
    assert "\n" not in str(caught.value)  # the CLI prints it as one line


@pytest.mark.parametrize(("loader", "text", "reason"), [
    (workflow_from_yaml, "name: [unclosed", "not YAML"),
    (workflow_from_json, "{", "not JSON"),
    (workflow_from_yaml, "- a list", "workflow: expected a mapping, got list"),
    (workflow_from_json, '{"name": "x", "nodes": {}}', "nodes: expected a list, got dict"),
])
def test_loaders_reject_text_that_is_not_a_definition(loader, text, reason):
    with pytest.raises(InvalidWorkflowError) as caught:
        loader(text)
    assert len(caught.value.problems) == 1 and caught.value.problems[0].startswith(reason)


def test_reading_a_missing_file_is_one_clear_error(tmp_path):
    with pytest.raises(InvalidWorkflowError, match="cannot read"):
        read_workflow_file(tmp_path / "nope.yaml")


# --- validation, rule by rule ---------------------------------------------------------------


def test_a_valid_definition_has_no_problems():
    assert problems_of(summarize_built()) == []


def test_cycle_is_rejected_naming_its_path():
    w = wf(op("a"), op("b"), op("c"), edges=(("a", "b.value"), ("b", "c.value"),
                                            ("c", "a.value")))
    assert only_problem(w) == "cycle: a -> b -> c -> a"


def test_each_independent_cycle_is_named():
    w = wf(op("a"), op("b"), op("x"), op("y"),
           edges=(("a", "b.value"), ("b", "a.value"), ("x", "y.value"), ("y", "x.value")))
    assert problems_of(w) == ["cycle: a -> b -> a", "cycle: x -> y -> x"]


def test_self_loop_is_a_cycle():
    w = wf(Node("a", NodeKind.INSTRUMENT, model="m"), edges=(("a", "a.x"),))
    assert only_problem(w) == "cycle: a -> a"


def test_graph_of_a_cyclic_workflow_raises_naming_the_cycle():
    w = wf(op("a"), op("b"), edges=(("a", "b.value"), ("b", "a.value")))
    with pytest.raises(InvalidWorkflowError, match="cycle: a -> b -> a"):
        _ = w.graph


@pytest.mark.parametrize(("edge", "reason"), [
    (("ghost", "b.message"), "edge ghost.out -> b.message: unknown node 'ghost'"),
    (("a", "ghost.value"), "edge a.out -> ghost.value: unknown node 'ghost'"),
    (("a.result", "b.message"), "edge a.result -> b.message: node 'a' has no output 'result' "
                                "(outputs: out)"),
    (("a", "b.input"), "edge a.out -> b.input: node 'b' has no input 'input'"),
    (("a", "b"), "edge a.out -> b.: no input named (write 'to: node.input')"),
])
def test_dangling_references_are_rejected(edge, reason):
    w = wf(op("a", constants={"value": "x"}), op("b", "raise_error"), edges=(edge,))
    assert only_problem(w) == reason


def test_a_branch_has_only_true_and_false_outputs():
    w = wf(op("a", constants={"value": 1}), Node("br", NodeKind.BRANCH, condition=Condition()),
           op("b"), edges=(("a", "br.value"), ("br.out", "b.value")))
    assert "edge br.out -> b.value: node 'br' has no output 'out' (outputs: true, false)" in (
        problems_of(w))


def test_duplicate_node_ids_are_rejected():
    w = wf(op("a", constants={"value": 1}), op("a", constants={"value": 2}))
    assert only_problem(w) == "duplicate node id 'a' (2 nodes)"


@pytest.mark.parametrize("bad_id", ["a.b", "", "has space", "x" * 201])
def test_node_ids_must_be_names(bad_id):
    problem = only_problem(wf(op(bad_id, constants={"value": 1})))
    assert problem.startswith(f"node id {bad_id!r} is not a name")


def test_type_mismatch_on_an_edge_is_rejected():
    w = wf(op("s", "join_text", constants={"items": ["a"]}),  # str output
           op("n", "add", constants={"b": 1}), edges=(("s", "n.a"),))
    assert only_problem(w) == "edge s.out -> n.a: type mismatch, str output into float input"


def test_int_feeds_float_and_any_is_compatible_both_ways():
    w = wf(op("len", "length", constants={"items": [1]}),  # int
           op("i", "identity"),  # any -> any
           op("n", "add"), edges=(("len", "n.a"), ("len", "i.value"), ("i", "n.b")))
    assert problems_of(w) == []


def test_a_map_input_must_be_a_list():
    w = wf(op("n", "add", constants={"a": 1, "b": 2}),
           Node("m", NodeKind.MAP, operator="identity"), edges=(("n", "m.items"),))
    assert only_problem(w) == "edge n.out -> m.items: type mismatch, float output into list input"


def test_a_map_outputs_a_list_and_binds_items_to_the_operator_input():
    w = wf(op("xs", "identity", constants={"value": [1, 2]}),
           Node("m", NodeKind.MAP, operator="add", item_input="a", constants={"b": 10}),
           op("total", "sum_list"), op("wrong", "add", constants={"b": 1}),
           edges=(("xs", "m.items"), ("m", "total.items"), ("m", "wrong.a")))
    assert only_problem(w) == "edge m.out -> wrong.a: type mismatch, list output into float input"
    assert item_input_of(w.node_by_id["m"]) == "a"
    assert item_input_of(Node("m", NodeKind.MAP, operator="length")) == "items"
    assert item_input_of(Node("m", NodeKind.MAP, model="x")) == "item"


def test_a_map_item_input_cannot_also_be_fed():
    w = wf(op("xs", "identity", constants={"value": [1]}),
           Node("m", NodeKind.MAP, operator="add", item_input="a", constants={"a": 1, "b": 2}),
           edges=(("xs", "m.items"),))
    assert only_problem(w) == "node 'm': constant for unknown input 'a'"


def test_a_branch_passes_on_the_type_it_is_fed():
    w = wf(op("s", "join_text", constants={"items": ["a"]}),
           Node("br", NodeKind.BRANCH, condition=Condition("eq", "a")),
           op("n", "add", constants={"b": 1}), edges=(("s", "br.value"), ("br.true", "n.a")))
    assert only_problem(w) == "edge br.true -> n.a: type mismatch, str output into float input"


def test_a_constant_of_the_wrong_type_is_rejected():
    w = wf(op("n", "add", constants={"a": "one", "b": 2}))
    assert only_problem(w) == "node 'n': type mismatch, constant a='one' (str) into float input"


def test_missing_required_inputs_are_rejected_but_defaults_are_optional():
    w = wf(op("n", "add", constants={"a": 1}), op("s", "sleep_then_return",
                                                  constants={"value": 1}))
    assert only_problem(w) == "node 'n': missing required input b"
    w = wf(Node("m", NodeKind.MAP, operator="add", item_input="a"))
    assert only_problem(w) == "node 'm': missing required inputs b, items"
    w = wf(Node("br", NodeKind.BRANCH, condition=Condition()))
    assert only_problem(w) == "node 'br': missing required input value"


def test_an_input_is_fed_once():
    w = wf(op("a", constants={"value": 1}), op("b", constants={"value": 2}), op("c"),
           edges=(("a", "c.value"), ("b", "c.value")))
    assert only_problem(w) == "edge b.out -> c.value: input c.value is already fed by a.out"
    w = wf(op("a", constants={"value": 1}), op("c", constants={"value": 3}),
           edges=(("a", "c.value"),))
    assert only_problem(w) == "node 'c': input 'value' is fed by both a constant and an edge"


def test_instrument_inputs_are_free_and_its_model_required():
    w = wf(Node("i", NodeKind.INSTRUMENT, model="m", constants={"prompt": "hi", "n": 3}))
    assert problems_of(w) == []
    w = wf(Node("i", NodeKind.INSTRUMENT))
    assert only_problem(w) == "node 'i': an instrument needs a model (a pool model id)"


@pytest.mark.parametrize(("node", "reason"), [
    (op("o", "nope"), "node 'o': unknown operator 'nope'"),
    (Node("o", NodeKind.OPERATOR), "node 'o': an operator node needs an operator name"),
    (Node("o", "loop"), "node 'o': unknown kind 'loop' (one of instrument, operator, branch, "
                        "map)"),
    (op("o", constants={"value": 1}, model="m"),
     "node 'o': model does not apply to operator nodes"),
    (Node("m", NodeKind.MAP, operator="identity", model="x", constants={"items": []}),
     "node 'm': a map needs either an operator or a model (not both)"),
    (Node("m", NodeKind.MAP, operator="add", item_input="c", constants={"items": [], "a": 1,
                                                                        "b": 1}),
     "node 'm': item_input 'c' is not an input of operator 'add' (inputs: a, b)"),
    (Node("br", NodeKind.BRANCH, condition=Condition("like", 1), constants={"value": 1}),
     "node 'br': unknown condition op 'like' (one of truthy, falsy, eq, ne, gt, ge, lt, le, "
     "in, contains)"),
    (Node("br", NodeKind.BRANCH, condition=Condition("gt", [1]), constants={"value": 1}),
     "node 'br': condition gt needs a number or string value"),
    (Node("br", NodeKind.BRANCH, constants={"value": 1}), "node 'br': a branch needs a condition"),
    (op("o", constants={"value": 1}, priority="high"),
     "node 'o': priority must be an int within ±2147483647, got 'high'"),
    (op("o", constants={"value": 1}, timeout_ms=0),
     "node 'o': timeout_ms must be a positive int, got 0"),
    (op("o", constants={"value": 1}, resources=Resources(cpu=-1)),
     "node 'o': resources need cpu >= 0 and an int memory_mb in 0..2147483647, got "
     "Resources(cpu=-1.0, memory_mb=0)"),
    (op("o", constants={"value": 1}, params={"when": object()}),
     "node 'o': params must be a mapping of JSON values"),
    (op("o", constants={"value": float("nan")}),
     "node 'o': constants must be a mapping of JSON values"),
    (op("o", constants={"value": 1}, pool="gpu pool"),
     "node 'o': pool 'gpu pool' is not a name (letters, digits, _ and -)"),
])
def test_bad_nodes_are_rejected(node, reason):
    assert only_problem(wf(node)) == reason


@pytest.mark.parametrize(("settings", "reason"), [
    ({"timeout_ms": 0}, "workflow timeout_ms must be a positive int, got 0"),
    ({"max_concurrency": -2}, "workflow max_concurrency must be a positive int, got -2"),
    ({"checkpoint_every": -1}, "workflow checkpoint_every must be an int >= 0 (0: no periodic "
                               "checkpoints), got -1"),
])
def test_bad_workflow_settings_are_rejected(settings, reason):
    assert only_problem(wf(op("a", constants={"value": 1}), **settings)) == reason


def test_an_empty_workflow_is_rejected():
    assert problems_of(Workflow(" ", ())) == ["workflow name is empty", "workflow has no nodes"]


@pytest.mark.parametrize(("recovery", "reason"), [
    (Recovery(Strategy.RETRY, max_attempts=0), "max_attempts must be an int >= 1, got 0"),
    (Recovery(Strategy.RETRY, backoff=Backoff(jitter=1.5)),
     "backoff jitter must be a fraction in [0, 1], got 1.5"),
    (Recovery(Strategy.RETRY, backoff=Backoff(multiplier=0.5)),
     "backoff multiplier must be >= 1, got 0.5"),
    (Recovery(Strategy.RETRY, backoff=Backoff(initial_ms=500, max_ms=100)),
     "backoff max_ms 100 is below initial_ms 500"),
    (Recovery(Strategy.RETRY, backoff=Backoff(initial_ms=-1)),
     "backoff initial_ms must be an int >= 0, got -1"),
    (Recovery(Strategy.RETRY, backoff=Backoff(kind="random")),
     "unknown backoff kind 'random' (one of constant, linear, exponential)"),
    (Recovery("again"), "unknown strategy 'again' (one of retry, fallback, skip, fail, restart)"),
    (Recovery(Strategy.RETRY, on_exhausted=Strategy.RETRY), "on_exhausted cannot be retry"),
    (Recovery(Strategy.RETRY, non_retryable=("Value Error",)),
     "non_retryable must list error type names, got ['Value Error']"),
    (Recovery(Strategy.FALLBACK, fallback_node="ghost"), "fallback to unknown node 'ghost'"),
    (Recovery(Strategy.FALLBACK, fallback_node="x"), "a node cannot fall back to itself"),
    (Recovery(Strategy.FALLBACK, fallback_node="y", fallback_output="result"),
     "fallback node 'y' has no output 'result'"),
    (Recovery(Strategy.FALLBACK, fallback_node="y", fallback_value=1),
     "fallback takes a value or a node, not both"),
    (Recovery(Strategy.SKIP, fallback_node="y"),
     "fallback_node is set but the strategy never falls back"),
    (Recovery(Strategy.FALLBACK, fallback_value="n/a"),
     "type mismatch, fallback_value 'n/a' (str) for a float output"),
    (Recovery(Strategy.SKIP, default_output=[1]),
     "type mismatch, default_output [1] (list) for a float output"),
])
def test_bad_recovery_parameters_are_rejected(recovery, reason):
    w = wf(op("x", "add", constants={"a": 1, "b": 2}, recovery=recovery),
           op("y", "add", constants={"a": 1, "b": 2}))
    assert only_problem(w) == f"node 'x': recovery: {reason}"


def test_good_recoveries_are_accepted():
    for recovery in (Recovery(Strategy.RETRY, max_attempts=5, on_exhausted=Strategy.FALLBACK,
                              fallback_value=0, non_retryable=("ValueError", "a.b.Timeout")),
                     Recovery(Strategy.FALLBACK, fallback_node="y"), Recovery(Strategy.RESTART),
                     Recovery(Strategy.SKIP, default_output=0.5), Recovery(Strategy.FAIL)):
        w = wf(op("x", "add", constants={"a": 1, "b": 2}, recovery=recovery),
               op("y", "add", constants={"a": 1, "b": 2}))
        assert problems_of(w) == [], recovery


def test_the_default_recovery_cannot_fall_back_to_a_node():
    w = wf(op("x", constants={"value": 1}), op("y", constants={"value": 1}),
           default_recovery=Recovery(Strategy.FALLBACK, fallback_node="y"))
    assert only_problem(w) == ("default recovery: cannot fall back to a node (it would apply "
                               "to every node)")


def test_falling_back_to_a_node_that_depends_on_it_is_a_fallback_cycle():
    w = wf(op("x", constants={"value": 1}, recovery=Recovery(Strategy.FALLBACK,
                                                             fallback_node="z")),
           op("y"), op("z"), edges=(("x", "y.value"), ("y", "z.value")))
    assert only_problem(w) == ("fallback cycle: x -> y -> z -> x (a node cannot fall back to "
                               "a node that depends on it)")


def test_every_problem_is_listed_at_once():
    w = wf(op("a"), op("a"), op("b", "nope"), edges=(("ghost", "a.value"),),
           timeout_ms=-1)
    with pytest.raises(InvalidWorkflowError) as caught:
        check(w)
    assert caught.value.problems == [
        "workflow timeout_ms must be a positive int, got -1",
        "duplicate node id 'a' (2 nodes)",
        "node 'b': unknown operator 'nope'",
        "edge ghost.out -> a.value: unknown node 'ghost'",
    ]
    assert isinstance(caught.value, PitError)
    assert str(caught.value).startswith("invalid workflow 't' (4 problems): workflow timeout")


# --- backoff ---------------------------------------------------------------------------------


def test_backoff_constant_linear_and_exponential_with_a_cap():
    constant = Backoff(BackoffKind.CONSTANT, initial_ms=250)
    assert [backoff_ms(constant, n, "k") for n in (1, 2, 10)] == [250, 250, 250]
    linear = Backoff("linear", initial_ms=100, increment_ms=50, max_ms=300)
    assert [backoff_ms(linear, n, "k") for n in (1, 2, 3, 4, 5, 99)] == [
        100, 150, 200, 250, 300, 300]
    exponential = Backoff(initial_ms=100, multiplier=3, max_ms=1000)
    assert [backoff_ms(exponential, n, "k") for n in (1, 2, 3, 4, 10_000)] == [
        100, 300, 900, 1000, 1000]


def test_backoff_jitter_is_deterministic_bounded_and_keyed():
    policy = Backoff(BackoffKind.CONSTANT, initial_ms=10_000, max_ms=10_000, jitter=0.5)
    delays = [backoff_ms(policy, 1, f"exec-1/node-{i}") for i in range(200)]
    assert delays == [backoff_ms(policy, 1, f"exec-1/node-{i}") for i in range(200)]
    assert all(5000 <= d <= 10_000 for d in delays)
    assert len(set(delays)) > 150  # spread, not one value
    assert backoff_ms(policy, 1, "a") != backoff_ms(policy, 2, "a")  # per attempt too


# --- branch conditions -----------------------------------------------------------------------


@pytest.mark.parametrize(("condition", "value", "expected"), [
    (Condition(), [1], True), (Condition(), [], False), (Condition("falsy"), 0, True),
    (Condition("eq", "x"), "x", True), (Condition("ne", "x"), "x", False),
    (Condition("gt", 3), 4, True), (Condition("ge", 3), 3, True), (Condition("lt", 3), 3, False),
    (Condition("le", 3), 3, True), (Condition("in", ["a", "b"]), "b", True),
    (Condition("contains", "b"), ["a", "b"], True),
    (Condition("gt", 3, "stats.chunks"), {"stats": {"chunks": 5}}, True),
    (Condition("eq", "b", "items.1"), {"items": ["a", "b"]}, True),
    (Condition("truthy", None, "missing"), {"x": 1}, False),
    (Condition("eq", None, "missing"), {"x": 1}, False),
    (Condition("ne", 1, "missing"), {"x": 1}, True),
])
def test_conditions(condition, value, expected):
    assert evaluate_condition(condition, value) is expected


def test_an_incomparable_condition_raises_type_error():
    with pytest.raises(TypeError):
        evaluate_condition(Condition("gt", 3), "text")


# --- operators -------------------------------------------------------------------------------


def test_register_operator_plain_and_as_a_decorator():
    registry = OperatorRegistry()

    @register_operator("scale", inputs={"x": "float"}, output="float", registry=registry)
    def scale(x, params):
        return x * params.get("factor", 1)

    register_operator("greet", lambda name, punctuation="!": f"hi {name}{punctuation}",
                      registry=registry)
    assert registry["scale"]({"x": 2}, {"factor": 3}) == 6
    assert registry["scale"].required == {"x"} and registry["scale"].takes_params
    greet = registry["greet"]
    assert greet.inputs == {"name": "any", "punctuation": "any"} and greet.required == {"name"}
    assert greet({"name": "pit"}) == "hi pit!"
    with pytest.raises(ValueError, match="already registered"):
        register_operator("greet", lambda name: name, registry=registry)


def test_operator_inputs_are_typed_by_annotations_by_default():
    registry = OperatorRegistry()

    def f(a: int, b: str, c: list, d) -> None: ...

    registry.register("f", f)
    assert registry["f"].inputs == {"a": "int", "b": "str", "c": "list", "d": "any"}


@pytest.mark.parametrize(("fn", "inputs", "output", "reason"), [
    (lambda a: a, {"a": "number"}, "any", "input 'a' has unknown type 'number'"),
    (lambda a: a, {"a": "int"}, "number", "unknown output type 'number'"),
    (lambda a: a, {"b": "int"}, "any", "has no parameter 'b'"),
    (lambda a, b: a, {"a": "int"}, "any", "required parameters not declared as inputs: b"),
    (lambda a: a, {"*": "int"}, "any", "a '\\*' input needs a \\*\\*kwargs parameter"),
])
def test_a_bad_operator_signature_is_refused_at_registration(fn, inputs, output, reason):
    with pytest.raises(ValueError, match=reason):
        OperatorRegistry().register("bad", fn, inputs=inputs, output=output)


def test_a_workflow_validates_against_the_registry_it_is_given():
    registry = OperatorRegistry()
    registry.register("double", lambda x: 2 * x, inputs={"x": "int"}, output="int")
    w = wf(op("d", "double", constants={"x": 2}))
    assert problems_of(w, registry) == []
    assert problems_of(w) == ["node 'd': unknown operator 'double'"]


def test_builtin_operators():
    call = {name: OPERATORS[name] for name in OPERATORS.names()}
    assert call["identity"]({"value": [1]}) == [1]
    assert call["add"]({"a": 1, "b": 2.5}) == 3.5
    assert call["sum_list"]({"items": [1, 2, 3]}) == 6
    assert call["sum_inputs"]({"n1": 1, "n0": 2}) == 3
    assert call["collect"]({"n1": "b", "n0": "a"}) == ["a", "b"]
    assert call["pack"]({"x": 1}) == {"x": 1}
    assert call["length"]({"items": [1, 2]}) == 2
    assert call["split_text"]({"text": "abcde", "size": 2}) == ["ab", "cd", "e"]
    assert call["join_text"]({"items": ["a", "b"], "sep": "-"}) == "a-b"
    started = time.perf_counter()
    assert call["sleep_then_return"]({"value": 7, "ms": 50}) == 7
    assert time.perf_counter() - started >= 0.05
    with pytest.raises(Exception, match="boom") as caught:
        call["raise_error"]({"message": "boom", "error": "InvalidInput"})
    assert type(caught.value).__name__ == "InvalidInput"  # what non_retryable lists


def test_recovery_retries_only_retryable_errors():
    rec = Recovery(Strategy.RETRY, non_retryable=("InvalidInput",))
    assert rec.retries("TimeoutError") and not rec.retries("InvalidInput")
    assert not Recovery(Strategy.FAIL).retries("TimeoutError")


# --- the graph -------------------------------------------------------------------------------


def diamond() -> Workflow:
    return wf(op("a", constants={"value": 1}), op("b", "add", constants={"b": 1}),
              op("c", "add", constants={"b": 2}), op("d", "add"),
              edges=(("a", "b.a"), ("a", "c.a"), ("b", "d.a"), ("c", "d.b")))


def test_graph_dependencies_dependents_and_order():
    g = diamond().graph
    assert g.ids == ("a", "b", "c", "d")
    assert g.dependencies_of("d") == ["b", "c"] and g.dependents_of("a") == ["b", "c"]
    assert g.dependencies[g.index["a"]] == () and g.sources == [0] and g.sinks == [3]
    assert [g.ids[i] for i in g.order] == ["a", "b", "c", "d"]


def test_two_edges_between_the_same_nodes_are_one_dependency():
    w = wf(op("a", constants={"value": 1}), op("s", "add"), edges=(("a", "s.a"), ("a", "s.b")))
    assert w.graph.dependencies_of("s") == ["a"] and w.graph.dependents_of("a") == ["s"]


def test_critical_path_rank_is_the_longest_expected_path_to_a_sink():
    g = diamond().graph
    assert g.critical_path_rank() == [3.0, 2.0, 2.0, 1.0]
    rank = g.critical_path_rank({"c": 10.0, "d": 0.5})
    assert rank == [11.5, 1.5, 10.5, 0.5]


def test_synthetic_dags_compute_what_they_say():
    deep = deep_dag(50)
    assert validate(deep) == [] and len(deep.graph.order) == 50
    assert deep.graph.critical_path_rank()[deep.graph.index["n00"]] == 50
    wide = wide_dag(20)
    assert validate(wide) == [] and len(wide.nodes) == 22
    assert wide.graph.dependencies_of("sink") == [f"n{i:02d}" for i in range(20)]
    layered = layered_dag(200, seed=7, layers=8, max_fan_in=4)
    assert validate(layered) == [] and len(layered.nodes) == 200
    assert layered == layered_dag(200, seed=7, layers=8, max_fan_in=4)
    assert layered != layered_dag(200, seed=8, layers=8, max_fan_in=4)
    assert max(layered.graph.critical_path_rank()) == 8  # a longest path crosses every layer


def test_ten_thousand_nodes_validate_and_index_quickly():
    for workflow in (deep_dag(10_000), wide_dag(10_000),
                     layered_dag(10_000, seed=1, layers=100)):
        started = time.perf_counter()
        assert validate(workflow) == []
        graph = Graph.of(workflow)
        graph.critical_path_rank()
        assert time.perf_counter() - started < 5  # ~0.3 s on the dev box
        assert len(graph.order) == len(workflow.nodes)


# --- the definition store -------------------------------------------------------------------


def test_a_large_definition_is_stored_by_hash_and_read_back(tmp_path):
    big = deep_dag(10_000)
    assert big.is_large and len(big.canonical_bytes) > INLINE_LIMIT_BYTES
    assert not summarize_built().is_large
    store = FileDefinitionStore(tmp_path)
    definition_hash = store.put(big)
    assert definition_hash == big.content_hash() and definition_hash in store
    digest = definition_hash.removeprefix("sha256:")
    assert (tmp_path / digest[:2] / f"{digest[2:]}.json").read_bytes() == big.canonical_bytes
    assert FileDefinitionStore(tmp_path).get(definition_hash) == big
    assert store.put(big) == definition_hash  # idempotent
    assert [p.name for p in tmp_path.rglob("*") if p.name.startswith(".tmp")] == []


def test_a_corrupt_stored_definition_is_refused(tmp_path):
    store = FileDefinitionStore(tmp_path)
    definition_hash = store.put(summarize_built())
    path = store.path_of(definition_hash)
    path.write_bytes(path.read_bytes().replace(b"summarizer-large", b"summarizer-LARGE"))
    with pytest.raises(DefinitionStoreError, match=f"definition {definition_hash} is corrupt"):
        store.get(definition_hash)


def test_unknown_and_malformed_hashes(tmp_path):
    store = FileDefinitionStore(tmp_path)
    missing = "sha256:" + "0" * 64
    assert missing not in store and "../etc/passwd" not in store
    with pytest.raises(DefinitionStoreError, match=f"unknown definition {missing}"):
        store.get(missing)
    with pytest.raises(DefinitionStoreError, match="not a definition hash"):
        store.get("sha256:../../x")


def test_a_definition_read_once_is_kept_parsed_for_every_store_on_that_directory(tmp_path):
    """In `pit up` the DAG processor and the workflow lookahead each have a store on the same
    directory: the second read is the first one's workflow, not another parse. A store on
    another directory does not see it."""
    big = deep_dag(2_000)
    definition_hash = FileDefinitionStore(tmp_path / "a").put(big)
    first = FileDefinitionStore(tmp_path / "a").get(definition_hash)
    assert first == big
    assert FileDefinitionStore(tmp_path / "a" / ".." / "a").get(definition_hash) is first
    with pytest.raises(DefinitionStoreError, match="not in the definition store"):
        FileDefinitionStore(tmp_path / "b").get(definition_hash)
