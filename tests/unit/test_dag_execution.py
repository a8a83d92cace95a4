"""The execution decider, rule by rule: starting, scheduling order and bounds, branches,
runner reports (duplicates, stale attempts), every recovery strategy, node and workflow
timeouts on durable timers, checkpoints and restore, cancellation, status, the records."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.dag.definition import (
    Backoff,
    BackoffKind,
    Condition,
    Node,
    NodeKind,
    Recovery,
    Resources,
    Strategy,
    Workflow,
    WorkflowBuilder,
    backoff_ms,
    deep_dag,
    wide_dag,
)
from streams.dag.definition_store import FileDefinitionStore
from streams.dag.execution import (
    COMMANDS,
    DAG,
    EVENTS,
    CancelExecution,
    CheckpointTaken,
    Definitions,
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionRestarted,
    ExecutionStarted,
    ExecutionStatus,
    ExecutionTimedOut,
    FallbackUsed,
    NodeCompleted,
    NodeFailed,
    NodeRetryScheduled,
    NodeScheduled,
    NodeSkipped,
    NodeStarted,
    NodeStatus,
    ReportNodeCompleted,
    ReportNodeFailed,
    ReportNodeStarted,
    StartExecution,
    TakeCheckpoint,
    TimerFired,
    decide,
    evolve,
    initial_state,
    restore,
    status,
)
from streams.dag.topics import DAG_COMMANDS
from streams.decider import Message, Rejection, from_record, to_record
from streams.log import LogRecord
from streams.processor import Processor
from streams.timers import Timer, TimerCancelled, TimerScheduled, command_output

T0 = 1_700_000_000_000
EID = "e1"


class Run:
    """One execution: every command decided twice (the answers must agree), its events
    applied with evolve and logged with their time."""

    def __init__(self, workflow: Workflow | None = None, *, definitions: Definitions | None = None,
                 **start) -> None:
        self.definitions = definitions or Definitions()
        self.state = initial_state(EID)
        self.now = T0
        self.log: list[tuple[Message, int]] = []
        self.fired: set[str] = set()
        if workflow is not None:
            self.send(StartExecution(EID, workflow.canonical_json(), **start))

    def send(self, command: Message) -> list[Message]:
        events = decide(self.state, command, self.now, self.definitions)
        assert decide(self.state, command, self.now, self.definitions) == events
        for event in events:
            self.state = evolve(self.state, event, self.now, self.definitions)
            self.log.append((event, self.now))
        return events

    def reject(self, command: Message) -> str:
        with pytest.raises(Rejection) as caught:
            decide(self.state, command, self.now, self.definitions)
        return caught.value.reason

    def at(self, node_id: str):
        return self.state.node(node_id)

    def in_flight(self) -> list[str]:
        return sorted(n for n in self.state.plan.ids
                      if self.at(n).status in (NodeStatus.SCHEDULED, NodeStatus.RUNNING))

    def task(self, node_id: str) -> NodeScheduled:
        return [e for e, _ in self.log if isinstance(e, NodeScheduled) and e.node_id == node_id][-1]

    def complete(self, node_id: str, value=None, *, output: str | None = None, **fields):
        return self.send(ReportNodeCompleted(
            EID, node_id, self.at(node_id).attempt,
            json.dumps({"out": value}) if output is None else output, **fields))

    def fail(self, node_id: str, error: str = "Boom", **fields):
        return self.send(ReportNodeFailed(EID, node_id, self.at(node_id).attempt, error, **fields))

    def timers(self) -> dict[str, TimerScheduled]:
        """Pending timers: scheduled, neither cancelled nor fired."""
        pending: dict[str, TimerScheduled] = {}
        for event, _ in self.log:
            if isinstance(event, TimerScheduled) and event.timer_id not in self.fired:
                pending[event.timer_id] = event
            elif isinstance(event, TimerCancelled):
                pending.pop(event.timer_id, None)
        return pending

    def fire(self, timer_id: str) -> list[Message]:
        self.now = max(self.now, self.timers()[timer_id].due_at_ms)
        self.fired.add(timer_id)
        return self.send(TimerFired(EID, timer_id))

    def events(self, cls: type) -> list:
        return [e for e, _ in self.log if isinstance(e, cls)]

    def drain(self) -> None:
        """Complete every dispatched node with the sum of its numeric inputs, until none is."""
        while names := self.in_flight():
            for name in names:
                inputs = json.loads(self.task(name).inputs)
                self.complete(name, sum(v for v in inputs.values() if isinstance(v, int)))


def op(node_id: str, operator: str = "identity", **fields) -> Node:
    return Node(node_id, NodeKind.OPERATOR, operator=operator, **fields)


def flow(*nodes: Node, edges: tuple[tuple[str, str], ...] = (), **settings) -> Workflow:
    builder = WorkflowBuilder("test", **settings)
    for node in nodes:
        builder.node(node)
    for source, target in edges:
        builder.edge(source, target)
    return builder.build()


def chain(*ids: str, **fields) -> Workflow:
    """ids[0] = identity(1); each next = add(previous, 1)."""
    nodes = [op(ids[0], constants={"value": 1}, **fields)]
    nodes += [op(i, "add", constants={"b": 1}, **fields) for i in ids[1:]]
    return flow(*nodes, edges=tuple((a, f"{b}.a") for a, b in pairwise(ids)))


def names(events: list, cls: type = NodeScheduled) -> list[str]:
    return [e.node_id for e in events if isinstance(e, cls)]


# --- starting -------------------------------------------------------------------------------

def test_start_records_the_definition_and_dispatches_the_roots_with_their_task():
    workflow = flow(op("a", constants={"value": 7}, params={"p": 1}, priority=3,
                       resources=Resources(cpu=2, memory_mb=512), timeout_ms=1000),
                    op("b", "add", constants={"b": 1}), edges=(("a", "b.a"),), timeout_ms=60_000)
    run = Run(workflow)
    started = run.events(ExecutionStarted)[0]
    assert started.definition_hash == workflow.content_hash()
    assert started.definition == workflow.canonical_json()
    assert (started.max_concurrency, started.nodes) == (1024, 2)
    assert started.deadline_at == T0 + 60_000
    task = run.task("a")
    assert (task.attempt, task.task_id, task.kind, task.pool) == (1, "e1/a/1", "operator",
                                                                  "operator")
    assert json.loads(task.inputs) == {"value": 7}
    assert json.loads(task.spec) == {"operator": "identity", "params": {"p": 1}}
    assert (task.cpu, task.memory_mb, task.priority, task.rank) == (2.0, 512, 3, 2.0)
    assert task.deadline_at == T0 + 1000
    assert run.in_flight() == ["a"]
    assert set(run.timers()) == {"e1/timeout", "e1/a/timeout/1"}


def test_a_definition_by_hash_is_read_from_the_store(tmp_path):
    store = FileDefinitionStore(tmp_path)
    workflow = chain("a", "b")
    run = Run(definitions=Definitions(store))
    run.send(StartExecution(EID, definition_hash=store.put(workflow)))
    assert run.events(ExecutionStarted)[0].definition == workflow.canonical_json()
    assert "no definition store" in Run().reject(StartExecution(EID, definition_hash="sha256:"
                                                                + "0" * 64))
    assert "unknown definition" in Run(definitions=Definitions(store)).reject(
        StartExecution(EID, definition_hash="sha256:" + "0" * 64))


def test_a_large_definition_travels_by_hash_only(tmp_path):
    store = FileDefinitionStore(tmp_path)
    workflow = wide_dag(3000)
    assert workflow.is_large
    assert "definition store" in Run().reject(StartExecution(EID, workflow.canonical_json()))
    run = Run(definitions=Definitions(store))
    run.send(StartExecution(EID, definition_hash=store.put(workflow)))
    assert run.events(ExecutionStarted)[0].definition == ""
    # the snapshot does not carry it either: restoring reads the store
    snap = run.send(TakeCheckpoint(EID))[0].snapshot
    assert restore(snap, (), Definitions(store)) == run.state


def test_a_definition_started_again_is_known_by_its_text(monkeypatch):
    import streams.dag.execution as execution

    parsed: list[str] = []
    parse = execution.workflow_from_json
    monkeypatch.setattr(execution, "workflow_from_json",
                        lambda text: parsed.append(text) or parse(text))
    definitions = Definitions()
    workflow = chain("a", "b")
    text, found = workflow.canonical_json(), workflow.content_hash()
    plan = definitions.load(text, "")
    assert definitions.load(text, found) is plan
    assert parsed == [text]  # parsed and hashed on its first start only
    wrong = "sha256:" + "0" * 64
    with pytest.raises(Rejection, match="does not match the definition"):
        definitions.load(text, wrong)
    spaced = json.dumps(json.loads(text), indent=2)  # another text of the same content
    assert definitions.load(spaced, found) is plan
    assert parsed == [text, spaced]


def test_invalid_starts_are_rejected_with_the_reason():
    workflow = chain("a", "b")
    assert "cycle" in Run().reject(StartExecution(EID, json.dumps({
        "name": "w", "nodes": [{"id": "a", "operator": "identity"},
                               {"id": "b", "operator": "identity"}],
        "edges": [{"from": "a", "to": "b.value"}, {"from": "b", "to": "a.value"}]})))
    assert "does not match" in Run().reject(StartExecution(
        EID, workflow.canonical_json(), "sha256:" + "1" * 64))
    assert "required" in Run().reject(StartExecution(EID))
    assert "constant" in Run().reject(StartExecution(EID, workflow.canonical_json(),
                                                     inputs='{"b.a": 3}'))
    assert "not JSON" in Run().reject(StartExecution(EID, workflow.canonical_json(),
                                                     inputs="{"))
    assert "unknown runner pool 'gpu'" in Run().reject(StartExecution(
        EID, workflow.canonical_json(), capacity_cpu={"gpu": 4}))
    assert "could never run" in Run().reject(StartExecution(
        EID, flow(op("a", resources=Resources(cpu=4), constants={"value": 1})).canonical_json(),
        capacity_cpu={"operator": 2}))


def test_inputs_replace_constants():
    run = Run(chain("a", "b"), inputs='{"a.value": 41}')
    assert json.loads(run.task("a").inputs) == {"value": 41}


def test_the_same_start_again_changes_nothing_and_another_is_rejected():
    workflow = chain("a", "b")
    run = Run(workflow)
    assert run.send(StartExecution(EID, workflow.canonical_json())) == []
    assert "already started" in run.reject(StartExecution(EID, chain("a", "c").canonical_json()))


# --- scheduling -----------------------------------------------------------------------------

def test_a_node_is_dispatched_once_all_its_dependencies_completed_with_their_outputs():
    workflow = flow(op("a", constants={"value": 2}), op("b", constants={"value": 3}),
                    op("c", "add"), edges=(("a", "c.a"), ("b", "c.b")))
    run = Run(workflow)
    assert run.in_flight() == ["a", "b"]
    assert names(run.complete("a", 2)) == []
    events = run.complete("b", 3)
    assert names(events) == ["c"]
    assert json.loads(run.task("c").inputs) == {"a": 2, "b": 3}
    done = run.complete("c", 5)
    assert json.loads(done[-1].outputs) == {"c": {"out": 5}}
    assert run.state.status is ExecutionStatus.COMPLETED


def test_a_node_fed_twice_by_one_source_is_dispatched_once():
    """Two edges a -> c: a's completion settles both, and c is queued and dispatched once."""
    workflow = flow(op("a", constants={"value": 2}), op("c", "add"),
                    edges=(("a", "c.a"), ("a", "c.b")))
    run = Run(workflow)
    assert names(run.complete("a", 2)) == ["c"]
    assert json.loads(run.task("c").inputs) == {"a": 2, "b": 2}
    assert all(pool.ready.size == 0 for pool in run.state.pools)
    run.complete("c", 4)
    assert run.state.status is ExecutionStatus.COMPLETED


def test_ready_nodes_go_by_priority_then_critical_path_rank_within_max_concurrency():
    # a -> a2 -> a3 (rank 3), b -> b2 (rank 2), c (rank 1), p (priority 1, rank 1)
    workflow = flow(op("a", constants={"value": 1}), op("a2"), op("a3"),
                    op("b", constants={"value": 1}), op("b2"),
                    op("c", constants={"value": 1}), op("p", constants={"value": 1}, priority=1),
                    edges=(("a", "a2.value"), ("a2", "a3.value"), ("b", "b2.value")),
                    max_concurrency=2)
    run = Run(workflow)
    assert names(run.events(NodeScheduled)) == ["p", "a"]
    assert names(run.complete("p", 1)) == ["b"]
    assert names(run.complete("a", 1)) == ["a2"]  # rank 2 before c's 1
    assert names(run.complete("b", 1)) == ["b2"]  # b2 and c rank 1: by id
    assert names(run.complete("a2", 1)) == ["a3"]
    assert names(run.complete("b2", 1)) == ["c"]


def test_max_concurrency_bounds_the_nodes_in_flight():
    run = Run(wide_dag(10), max_concurrency=3)
    run.complete("source", 1)
    assert len(run.in_flight()) == 3 and run.state.slots == 3
    run.complete(run.in_flight()[0], 1)
    assert len(run.in_flight()) == 3
    run.drain()
    assert run.state.status is ExecutionStatus.COMPLETED
    assert json.loads(run.events(ExecutionCompleted)[0].outputs) == {"sink": {"out": 55}}


def test_pool_capacity_bounds_cpu_and_memory_and_a_big_node_is_not_overtaken():
    nodes = [op(f"n{i}", constants={"value": i}, resources=Resources(cpu=1, memory_mb=100))
             for i in range(4)]
    nodes.append(op("big", constants={"value": 9}, priority=-1,
                    resources=Resources(cpu=3, memory_mb=100)))
    nodes.append(Node("m", NodeKind.INSTRUMENT, model="llm", priority=-2,
                      resources=Resources(cpu=2)))
    run = Run(flow(*nodes), capacity_cpu={"operator": 3, "instrument": 2},
              capacity_memory_mb={"operator": 250})
    assert run.in_flight() == ["m", "n0", "n1"]  # memory: 2 x 100 of 250; the instrument pool
    run.complete("n0", 0)
    assert run.in_flight() == ["m", "n1", "n2"]
    run.complete("n1", 0)
    run.complete("n2", 0)
    assert run.in_flight() == ["m", "n3"]
    run.complete("n3", 0)
    assert run.in_flight() == ["big", "m"]  # 3 cpu: only once the pool is empty
    assert run.task("m").pool == "instrument"


def test_an_output_held_in_the_blob_store_is_passed_by_reference():
    run = Run(chain("a", "b"))
    run.send(ReportNodeCompleted(EID, "a", 1, output_hash="sha256:" + "a" * 64))
    assert json.loads(run.task("b").inputs) == {"b": 1}
    assert json.loads(run.task("b").input_refs) == {"a": {"hash": "sha256:" + "a" * 64,
                                                          "path": ["out"]}}


# --- branches -------------------------------------------------------------------------------

def branching() -> Workflow:
    """src -> br; br.true -> yes -> yes2; br.false -> no; join(yes2, no)."""
    return flow(op("src", constants={"value": 5}),
                Node("br", NodeKind.BRANCH, condition=Condition("gt", 3)),
                op("yes"), op("yes2"), op("no"), op("join", "collect"),
                edges=(("src", "br.value"), ("br.true", "yes.value"), ("yes", "yes2.value"),
                       ("br.false", "no.value"), ("yes2", "join.a"), ("no", "join.b")))


def test_an_untaken_branch_is_skipped_transitively_and_a_join_runs_with_null():
    run = Run(branching())
    run.complete("src", 5)
    assert json.loads(run.task("br").spec) == {"condition": {"op": "gt", "value": 3,
                                                             "path": ""}}
    events = run.complete("br", output=json.dumps({"false": 5}))
    assert names(events, NodeSkipped) == ["yes", "yes2"]
    assert all(e.reason == "branch" and e.output == "" for e in events
               if isinstance(e, NodeSkipped))
    assert names(events) == ["no"]
    run.complete("no", 5)
    assert json.loads(run.task("join").inputs) == {"a": None, "b": 5}
    run.complete("join", [None, 5])
    assert run.state.status is ExecutionStatus.COMPLETED
    assert run.state.counts[NodeStatus.SKIPPED] == 2


def test_a_branch_reported_by_hash_names_the_output_it_took():
    run = Run(branching())
    run.complete("src", 5)
    events = run.send(ReportNodeCompleted(EID, "br", 1, output_hash="sha256:" + "b" * 64,
                                          branch_taken="true"))
    assert names(events, NodeSkipped) == ["no"] and names(events) == ["yes"]
    assert json.loads(run.task("yes").input_refs)["value"]["path"] == ["true"]


def test_an_output_that_does_not_fit_the_node_fails_it():
    run = Run(branching())
    run.complete("src", 5)
    events = run.complete("br", output=json.dumps({"true": 1, "false": 2}))
    failed = run.events(NodeFailed)[0]
    assert (failed.error_type, failed.retryable) == ("InvalidOutput", False)
    assert isinstance(events[-1], ExecutionFailed)
    run = Run(chain("a", "b"))
    run.complete("a", output=json.dumps({"other": 1}))
    assert "'out'" in run.events(NodeFailed)[0].message
    run = Run(chain("a", "b"))
    run.complete("a", output="[1]")
    assert "JSON object" in run.events(NodeFailed)[0].message


# --- runner reports -------------------------------------------------------------------------

def test_started_then_completed_and_repeated_or_stale_results_change_nothing():
    run = Run(chain("a", "b"))
    assert isinstance(run.send(ReportNodeStarted(EID, "a", 1, "r1"))[0], NodeStarted)
    assert run.at("a").status is NodeStatus.RUNNING
    # another runner took the task over (r1 was lost mid-node): a run of its own
    assert run.send(ReportNodeStarted(EID, "a", 1, "r2")) == [NodeStarted(EID, "a", 1, "r2")]
    assert run.at("a").status is NodeStatus.RUNNING
    run.complete("a", 1)
    assert run.send(ReportNodeCompleted(EID, "a", 1, '{"out": 2}')) == []  # duplicate result
    assert run.send(ReportNodeFailed(EID, "a", 1, "Boom")) == []
    # a start for an attempt that is over is refused: the runner asking does not run it
    assert "attempt 1 is over (it is completed)" in run.reject(ReportNodeStarted(EID, "a", 1))
    assert run.at("a").output == {"out": 1}


def test_a_start_after_a_newer_attempt_or_the_end_is_refused():
    run = Run(flow(op("a", constants={"value": 1}, recovery=RETRY),
                   op("b", constants={"value": 2})), max_concurrency=1)
    run.fail("a", "Flaky")
    run.fire(run.events(NodeRetryScheduled)[0].timer_id)
    assert "attempt 2 is the latest" in run.reject(ReportNodeStarted(EID, "a", 1))
    run.send(CancelExecution(EID, "enough"))
    assert "its execution has ended" in run.reject(ReportNodeStarted(EID, "a", 2))


def test_reports_for_attempts_never_dispatched_or_unknown_nodes_are_rejected():
    run = Run(chain("a", "b"))
    assert "never dispatched" in run.reject(ReportNodeCompleted(EID, "a", 2, '{"out": 1}'))
    assert "never dispatched" in run.reject(ReportNodeStarted(EID, "b", 1))
    assert "no node 'zz'" in run.reject(ReportNodeFailed(EID, "zz", 1, "Boom"))
    run.complete("a", output="")
    assert "exactly one of output and output_hash" in run.events(NodeFailed)[0].message
    assert "unknown execution" in Run().reject(ReportNodeStarted(EID, "a", 1))
    assert "error_type" in Run(chain("a")).reject(ReportNodeFailed(EID, "a", 1, ""))


# --- recovery -------------------------------------------------------------------------------

RETRY = Recovery(Strategy.RETRY, max_attempts=3,
                 backoff=Backoff(BackoffKind.EXPONENTIAL, initial_ms=100, max_ms=1000, jitter=0.5))


def test_retry_waits_its_backoff_on_a_durable_timer_and_keeps_its_slot():
    run = Run(flow(op("a", constants={"value": 1}, recovery=RETRY),
                   op("b", constants={"value": 2})), max_concurrency=1)
    assert run.in_flight() == ["a"]
    events = run.fail("a", "Flaky", message="try again")
    retry = run.events(NodeRetryScheduled)[0]
    delay = backoff_ms(RETRY.backoff, 1, "e1/a")
    assert (retry.attempt, retry.next_attempt, retry.delay_ms) == (1, 2, delay)
    assert retry.due_at == T0 + delay and retry.timer_id == "e1/a/retry/1"
    timer = run.timers()["e1/a/retry/1"]
    assert (timer.due_at_ms, timer.command_type, timer.target_topic, timer.key) == (
        T0 + delay, "pit.dag.TimerFired", DAG_COMMANDS, EID)
    assert json.loads(timer.command_json) == {"execution_id": EID, "timer_id": "e1/a/retry/1"}
    assert names(events) == [] and run.at("a").status is NodeStatus.RETRYING
    assert run.state.slots == 1  # b waits: the retry keeps the slot
    assert names(run.fire("e1/a/retry/1")) == ["a"]
    assert run.task("a").attempt == 2
    assert run.send(ReportNodeCompleted(EID, "a", 1, '{"out": 0}')) == []  # stale attempt
    run.fail("a")
    assert run.events(NodeRetryScheduled)[-1].delay_ms == backoff_ms(RETRY.backoff, 2, "e1/a")
    run.fire("e1/a/retry/2")
    events = run.fail("a")  # the third attempt fails: on_exhausted is fail
    assert isinstance(events[-1], ExecutionFailed)
    assert events[-1].node_id == "a" and run.at("b").status is NodeStatus.CANCELLED
    assert run.at("a").status is NodeStatus.FAILED


@pytest.mark.parametrize("report", [dict(error="InvalidInput"), dict(retryable=False)])
def test_a_non_retryable_error_goes_straight_to_on_exhausted(report):
    recovery = Recovery(Strategy.RETRY, on_exhausted=Strategy.SKIP, default_output=0,
                        non_retryable=("InvalidInput",))
    run = Run(chain("a", "b", recovery=recovery))
    events = run.fail("a", **report)
    assert not run.events(NodeRetryScheduled)
    skipped = run.events(NodeSkipped)[0]
    assert (skipped.reason, json.loads(skipped.output)) == ("recovery", {"out": 0})
    assert names(events) == ["b"]
    assert json.loads(run.task("b").inputs) == {"a": 0, "b": 1}


def test_fallback_with_a_value_completes_the_node():
    recovery = Recovery(Strategy.FALLBACK, fallback_value=10)
    run = Run(flow(op("a", constants={"value": 1}, recovery=recovery), op("b", "add",
                   constants={"b": 1}), edges=(("a", "b.a"),)))
    events = run.fail("a")
    assert json.loads(run.events(FallbackUsed)[0].output) == {"out": 10}
    assert names(events) == ["b"] and run.at("a").status is NodeStatus.FALLBACK
    assert json.loads(run.task("b").inputs)["a"] == 10


def test_fallback_to_a_node_waits_for_its_output():
    recovery = Recovery(Strategy.FALLBACK, fallback_node="slow")
    run = Run(flow(op("fast", constants={"value": 1}, recovery=recovery),
                   op("slow", constants={"value": 2}), op("after", "add", constants={"b": 1}),
                   edges=(("fast", "after.a"),)))
    run.fail("fast")
    assert not run.events(FallbackUsed) and run.at("fast").status is NodeStatus.FAILED
    events = run.complete("slow", 2)
    used = run.events(FallbackUsed)[0]
    assert (used.node_id, used.fallback_node, json.loads(used.output)) == ("fast", "slow",
                                                                            {"out": 2})
    assert names(events) == ["after"]
    run.drain()
    assert run.state.status is ExecutionStatus.COMPLETED


def test_fallback_to_a_node_already_done_is_immediate_and_by_reference_when_it_is_a_blob():
    recovery = Recovery(Strategy.FALLBACK, fallback_node="first")
    run = Run(flow(op("first", constants={"value": 1}), op("second", constants={"value": 1},
                                                           recovery=recovery)))
    run.send(ReportNodeCompleted(EID, "first", 1, output_hash="sha256:" + "c" * 64))
    run.fail("second")
    used = run.events(FallbackUsed)[0]
    assert (used.output, used.output_hash, used.output_path) == ("", "sha256:" + "c" * 64,
                                                                 ["out"])


def test_fallback_to_a_node_on_an_untaken_branch_fails_the_workflow():
    workflow = branching()
    nodes = [n if n.id != "src" else op("other", constants={"value": 1},
                                         recovery=Recovery(Strategy.FALLBACK, fallback_node="no"))
             for n in workflow.nodes]
    nodes.append(op("src", constants={"value": 5}))
    run = Run(Workflow("w", tuple(nodes), workflow.edges))
    run.complete("src", 5)
    run.fail("other")
    run.complete("br", output='{"true": 5}')
    failed = run.events(ExecutionFailed)[0]
    assert (failed.node_id, failed.error_type) == ("other", "FallbackUnavailable")


def test_skip_completes_with_the_default_output():
    run = Run(chain("a", "b", recovery=Recovery(Strategy.SKIP, default_output=5)))
    run.fail("a")
    assert run.at("a").status is NodeStatus.SKIPPED
    assert json.loads(run.task("b").inputs)["a"] == 5


def test_fail_fails_the_workflow_and_cancels_what_is_left():
    run = Run(flow(op("a", constants={"value": 1}, timeout_ms=500),
                   op("b", constants={"value": 1}, timeout_ms=500)), timeout_ms=10_000)
    events = run.fail("a", "Boom", message="it broke")
    failed = events[-1]
    assert (failed.node_id, failed.error_type, failed.message) == ("a", "Boom", "it broke")
    assert run.state.status is ExecutionStatus.FAILED
    assert run.state.error == "node a: Boom: it broke"
    assert run.at("b").status is NodeStatus.CANCELLED and run.state.slots == 0
    assert run.timers() == {}  # b's timeout and the workflow's are cancelled
    assert run.send(ReportNodeCompleted(EID, "b", 1, '{"out": 1}')) == []  # after the end


def test_restart_without_a_checkpoint_runs_everything_again_with_new_attempts():
    run = Run(chain("a", "b", "c", recovery=Recovery(Strategy.RESTART, max_attempts=2)))
    run.complete("a", 1)
    run.complete("b", 2)
    events = run.fail("c")
    restarted = run.events(ExecutionRestarted)[0]
    assert (restarted.node_id, restarted.checkpoint, restarted.reason) == ("c", 0, "Boom")
    assert names(events) == ["a"] and run.task("a").attempt == 2
    assert run.at("b").status is NodeStatus.PENDING and run.at("b").output is None
    run.complete("a", 1)
    run.complete("b", 2)
    assert run.task("c").attempt == 2
    events = run.fail("c")  # max_attempts 2: one restart, then the workflow fails
    assert isinstance(events[-1], ExecutionFailed)


def test_a_restart_cancels_the_node_timers_but_keeps_the_workflow_deadline():
    run = Run(chain("a", "b", timeout_ms=300, recovery=Recovery(Strategy.RESTART)),
              timeout_ms=5000)
    events = run.fail("a")
    cancelled = [e.timer_id for e in events if isinstance(e, TimerCancelled)]
    assert cancelled == ["e1/a/timeout/1"]
    assert set(run.timers()) == {"e1/timeout", "e1/a/timeout/2"}
    assert isinstance(run.fire("e1/timeout")[-1], ExecutionTimedOut)


def test_restart_goes_back_to_the_last_checkpoint_only():
    run = Run(chain("a", "b", "c", recovery=Recovery(Strategy.RESTART)))
    run.complete("a", 1)
    run.send(TakeCheckpoint(EID))
    run.complete("b", 2)
    events = run.fail("c")
    assert run.events(ExecutionRestarted)[0].checkpoint == 1
    assert names(events) == ["b"] and run.at("a").status is NodeStatus.COMPLETED
    assert run.send(ReportNodeCompleted(EID, "c", 1, '{"out": 3}')) == []  # before: stale
    run.drain()
    assert run.state.status is ExecutionStatus.COMPLETED
    assert names(run.events(NodeScheduled)).count("a") == 1


# --- timeouts -------------------------------------------------------------------------------

def test_a_node_timeout_fails_the_attempt_and_its_recovery_retries():
    run = Run(chain("a", "b", timeout_ms=500, recovery=RETRY))
    assert run.timers()["e1/a/timeout/1"].due_at_ms == T0 + 500
    run.now += 100
    run.send(ReportNodeStarted(EID, "a", 1))
    run.fire("e1/a/timeout/1")
    failed = run.events(NodeFailed)[0]
    assert (failed.error_type, failed.retryable, failed.duration_ms) == ("Timeout", True, 500)
    assert "e1/a/retry/1" in run.timers()
    run.fire("e1/a/retry/1")
    assert run.task("a").attempt == 2 and "e1/a/timeout/2" in run.timers()
    events = run.complete("a", 1)
    assert any(isinstance(e, TimerCancelled) and e.timer_id == "e1/a/timeout/2" for e in events)
    assert run.send(TimerFired(EID, "e1/a/timeout/1")) == []  # stale timers change nothing


def test_the_workflow_timeout_ends_the_execution():
    run = Run(chain("a", "b", timeout_ms=500), timeout_ms=2000)
    events = run.fire("e1/timeout")
    assert isinstance(events[-1], ExecutionTimedOut) and events[-1].timeout_ms == 2000
    assert run.state.status is ExecutionStatus.TIMED_OUT
    assert run.timers() == {}
    assert run.send(TimerFired(EID, "e1/timeout")) == []
    assert "already ended (timed out)" in run.reject(CancelExecution(EID))


def test_timers_fire_into_a_state_rebuilt_from_the_log():
    """A restarted processor replays the events; a timer that fires then still works."""
    run = Run(chain("a", "b", recovery=RETRY))
    run.fail("a")
    replayed = initial_state(EID)
    for event, at in run.log:
        replayed = evolve(replayed, event, at)
    assert replayed == run.state
    run.state = replayed
    assert names(run.fire("e1/a/retry/1")) == ["a"]


def test_timer_ids_that_are_not_this_executions_are_rejected():
    run = Run(chain("a"))
    assert "not one of" in run.reject(TimerFired(EID, "other/timeout"))
    assert "names no node" in run.reject(TimerFired(EID, "e1/a/sleep/1"))


def test_a_timer_command_sent_by_the_timer_service_decodes_to_the_decider_command():
    run = Run(chain("a", recovery=RETRY))
    run.fail("a")
    scheduled = run.timers()["e1/a/retry/1"]
    codec = Codec(EmbeddedRegistry())
    output = command_output(codec, Timer(scheduled), T0)
    decoded = codec.decode(output.value)
    command = from_record(DAG.command_type(decoded.name), decoded.record)
    assert command == TimerFired(EID, "e1/a/retry/1")
    assert decoded.record["meta"]["command_id"] == "e1/a/retry/1"


# --- checkpoints ----------------------------------------------------------------------------

def test_a_checkpoint_snapshot_plus_the_tail_equals_the_full_replay():
    run = Run(deep_dag(20))
    for _ in range(8):
        run.complete(run.in_flight()[0], 1)
    events = run.send(TakeCheckpoint(EID))
    taken = events[0]
    assert (taken.checkpoint, taken.nodes_done) == (1, 8)
    at = len(run.log)
    run.send(ReportNodeStarted(EID, "n08", 1))
    run.complete("n08", 9)
    restored = restore(taken.snapshot, run.log[at:], Definitions())  # a fresh process
    assert restored == run.state
    run.drain()
    assert restore(taken.snapshot, run.log[at:]) == run.state


def test_checkpoints_are_taken_every_n_completions_and_a_resumed_run_reruns_nothing():
    run = Run(deep_dag(10), checkpoint_every=3)
    for _ in range(7):
        run.complete(run.in_flight()[0], 1)
    taken = run.events(CheckpointTaken)
    assert [t.checkpoint for t in taken] == [1, 2] and [t.nodes_done for t in taken] == [3, 6]
    at = next(k for k, (event, _) in enumerate(run.log) if event is taken[-1])
    resumed = Run()
    resumed.state = restore(taken[-1].snapshot, run.log[at + 1:])
    assert resumed.state == run.state
    resumed.log = list(run.log)  # the runners still hold the tasks dispatched before
    recorded = {n for n in run.state.plan.ids if run.at(n).status is NodeStatus.COMPLETED}
    resumed.drain()
    again = names([event for event, _ in resumed.log[len(run.log):]])
    assert again and not recorded & set(again)
    assert resumed.state.status is ExecutionStatus.COMPLETED


def test_snapshots_are_compact(tmp_path):
    """Only what evolve cannot derive: 3,002 nodes, 1,524 of them dispatched or done."""
    store = FileDefinitionStore(tmp_path)
    run = Run(definitions=Definitions(store))
    run.send(StartExecution(EID, definition_hash=store.put(wide_dag(3000))))
    run.complete("source", 1)
    for name in run.in_flight()[:500]:
        run.complete(name, 1)
    snap = run.send(TakeCheckpoint(EID))[0].snapshot
    assert len(snap) < 10_000


# --- cancel and status ----------------------------------------------------------------------

def test_cancel_ends_the_execution_once():
    run = Run(chain("a", "b"), timeout_ms=1000)
    events = run.send(CancelExecution(EID, "user asked"))
    assert isinstance(events[-1], ExecutionCancelled) and events[-1].reason == "user asked"
    assert [e.timer_id for e in events if isinstance(e, TimerCancelled)] == ["e1/timeout"]
    assert run.at("a").status is NodeStatus.CANCELLED
    assert "already ended (cancelled)" in run.reject(CancelExecution(EID))
    assert "already ended" in run.reject(TakeCheckpoint(EID))
    assert "unknown execution" in Run().reject(CancelExecution(EID))


def test_status_counts_progress_and_an_eta_from_observed_durations():
    run = Run(wide_dag(8), max_concurrency=2)
    progress = status(run.state, T0)
    assert (progress.nodes, progress.done, progress.eta_ms) == (10, 0, None)
    run.now = T0 + 100
    run.complete("source", 1, duration_ms=100)
    run.now = T0 + 200
    for name in run.in_flight():
        run.complete(name, 1, duration_ms=100)
    progress = status(run.state, T0 + 200)
    assert progress.counts == {"scheduled": 2, "ready": 4, "pending": 1, "completed": 3}
    assert (progress.done, progress.progress, progress.in_flight) == (3, 0.3, 2)
    assert progress.mean_ms == {"operator": 100.0}
    # 7 nodes left at 100 ms, 300 ms of work in 200 ms: parallelism 1.5
    assert progress.eta_ms == round(7 * 100 / 1.5)
    run.drain()
    assert status(run.state, T0 + 10_000).eta_ms == 0


# --- records and wiring ---------------------------------------------------------------------

def test_every_command_and_event_round_trips_through_its_avro_schema():
    codec = Codec(EmbeddedRegistry())
    run = Run(branching(), timeout_ms=1000, capacity_cpu={"operator": 8})
    run.complete("src", 5)
    run.send(TakeCheckpoint(EID))
    run.complete("br", output='{"true": 5}')
    run.fail("yes", "Boom")
    envelope = {"event_id": "x", "event_type": "t", "entity_key": EID, "sequence": 1,
                "correlation_id": "c", "causation_id": "c", "occurred_at": T0, "producer": "p"}
    meta = {"command_id": "c", "issued_at": T0}
    seen = set()
    for event, _ in run.log:
        record = codec.decode(codec.encode(event.avro_name, {"envelope": envelope,
                                                             **to_record(event)})).record
        assert from_record(type(event), record) == event
        seen.add(type(event))
    assert {ExecutionStarted, NodeScheduled, NodeCompleted, NodeSkipped, CheckpointTaken,
            NodeFailed, ExecutionFailed, TimerScheduled, TimerCancelled} <= seen
    commands = [StartExecution(EID, "{}", "h", '{"a.b": 1}', 3, {"operator": 2.5},
                               {"operator": 100}, 5, 2),
                ReportNodeStarted(EID, "a", 1, "r"),
                ReportNodeCompleted(EID, "a", 1, "{}", "", "true", 5, "r"),
                ReportNodeFailed(EID, "a", 1, "E", "m", False, 3, "r"),
                TimerFired(EID, "t"), CancelExecution(EID, "why"), TakeCheckpoint(EID)]
    assert {type(c) for c in commands} == set(COMMANDS)
    for command in commands:
        record = codec.decode(codec.encode(command.avro_name, {"meta": meta,
                                                               **to_record(command)})).record
        assert from_record(type(command), record) == command
    assert DAG.event_type("pit.dag.NodeScheduled") is NodeScheduled
    assert set(EVENTS) >= {TimerScheduled, TimerCancelled}


def test_the_decider_runs_in_the_processor_and_restores_from_its_records():
    """Commands in, encoded events (timer requests among them) out on pit.dag.events; a
    processor restored from those records holds the same execution; a re-sent command is a
    duplicate."""
    codec = Codec(EmbeddedRegistry())
    live = Processor(DAG, codec)
    produced: list[LogRecord] = []

    def handle(command: Message, command_id: str, at: int) -> list[dict]:
        value = codec.encode(command.avro_name, {"meta": {"command_id": command_id,
                                                          "issued_at": at},
                                                 **to_record(command)})
        outputs = live.handle([LogRecord(DAG_COMMANDS, 0, len(produced), at, EID.encode(),
                                         value)])
        for out in outputs:
            produced.append(LogRecord(out.topic, out.partition, len(produced), at, out.key,
                                      out.value))
        return [codec.decode(out.value).record for out in outputs]

    handle(StartExecution(EID, chain("a", "b", recovery=RETRY).canonical_json(),
                          timeout_ms=5000), "c1", T0)
    handle(ReportNodeFailed(EID, "a", 1, "Flaky"), "c2", T0 + 10)
    records = handle(TimerFired(EID, "e1/a/retry/1"), "e1/a/retry/1", T0 + 500)
    assert [r["envelope"]["event_type"] for r in records[:-1]] == ["NodeScheduled"]
    assert records[-1]["status"] == "ACCEPTED"
    again = handle(TimerFired(EID, "e1/a/retry/1"), "e1/a/retry/1", T0 + 600)
    assert again[-1]["duplicate"] is True and len(again) == 1
    events = [r for r in produced if r.topic == DAG.event_topic]
    names_ = [codec.decode(r.value).name for r in events]
    assert "pit.timer.TimerScheduled" in names_ and "pit.dag.NodeRetryScheduled" in names_
    restored = Processor(DAG, codec)
    restored.restore(produced)
    assert restored.state(EID) == live.state(EID)
    assert restored.state(EID).node("a").attempt == 2
