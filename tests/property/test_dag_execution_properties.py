"""Properties of the execution decider on random DAGs under random runner behaviour.

Random workflows (1-12 nodes, up to 3 dependencies each, one of them maybe feeding two
inputs, branches whose sides feed later nodes, timeouts, every recovery strategy including
fallback to another node and restart) run against random runners: they start, complete
(inline or by hash, branches on either side, sometimes with an output that does not fit),
fail (retryable or not, error types some recoveries do not retry), repeat old reports, let
timers fire (also cancelled ones), take checkpoints, cancel, and crash the processor (its
state is restored from the last snapshot plus the events after it). Then everything left is
completed until it ends.

Checked against an oracle that follows the events only:
* no node is dispatched (NodeScheduled) before all its dependencies completed, fell back or
  were skipped, nor once it has a result (a restart forgets what came after its checkpoint);
* no node gets a second result, and every node ends in exactly one terminal state;
* the nodes in flight never exceed max_concurrency, nor their pool's capacity;
* a repeated report or a timer that fires after its cancel changes nothing;
* decide is deterministic and a rejection says why;
* the counters, ready queues and slots evolve keeps equal a recount from scratch;
* folding evolve over the events (through the Avro codec) reproduces the state;
* every checkpoint's snapshot plus the events after it equals the full replay.
"""

from __future__ import annotations

import dataclasses
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.dag.definition import (
    OPERATORS,
    Backoff,
    BackoffKind,
    Condition,
    Edge,
    Node,
    NodeKind,
    Recovery,
    Resources,
    Strategy,
    Workflow,
    layered_dag,
)
from streams.dag.execution import (
    IN_FLIGHT,
    TERMINAL,
    CancelExecution,
    CheckpointTaken,
    Definitions,
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionRestarted,
    ExecutionState,
    ExecutionStatus,
    ExecutionTimedOut,
    FallbackUsed,
    NodeCompleted,
    NodeFailed,
    NodeRetryScheduled,
    NodeRun,
    NodeScheduled,
    NodeSkipped,
    NodeStarted,
    NodeStatus,
    ReadyQueue,
    ReportNodeCompleted,
    ReportNodeFailed,
    ReportNodeStarted,
    StartExecution,
    TakeCheckpoint,
    TimerFired,
    _rebuilt,
    decide,
    evolve,
    initial_state,
    restore,
)
from streams.decider import Message, Rejection, copy_with, from_record, to_record
from streams.timers import TimerCancelled, TimerScheduled

T0 = 1_700_000_000_000
EID = "x"
CODEC = Codec(EmbeddedRegistry())
ENVELOPE = {"event_id": "e", "event_type": "t", "entity_key": EID, "sequence": 1,
            "correlation_id": "c", "causation_id": "c", "occurred_at": T0, "producer": "p"}
BLOB = "sha256:" + "f" * 64


def recoveries(earlier: list[str]) -> st.SearchStrategy[Recovery | None]:
    """A node's recovery; it may fall back to an earlier node (which cannot depend on it)."""
    then = st.sampled_from([Strategy.FAIL, Strategy.SKIP, Strategy.FALLBACK, Strategy.RESTART])
    options = [
        st.none(),
        st.builds(Recovery, strategy=st.just(Strategy.RETRY), max_attempts=st.integers(1, 3),
                  backoff=st.builds(Backoff, kind=st.sampled_from(list(BackoffKind)),
                                    initial_ms=st.integers(0, 50), max_ms=st.just(200),
                                    jitter=st.sampled_from([0.0, 0.5])),
                  on_exhausted=then, fallback_value=st.just([1]), default_output=st.just([0]),
                  non_retryable=st.just(("Fatal",))),
        st.builds(Recovery, strategy=st.just(Strategy.FALLBACK), fallback_value=st.just([2])),
        st.builds(Recovery, strategy=st.just(Strategy.SKIP), default_output=st.just([0])),
        st.builds(Recovery, strategy=st.just(Strategy.RESTART), max_attempts=st.integers(1, 3)),
        st.just(Recovery(Strategy.FAIL)),
    ]
    if earlier:
        options.append(st.builds(Recovery, strategy=st.just(Strategy.FALLBACK),
                                 fallback_node=st.sampled_from(earlier)))
    return st.one_of(options)


@st.composite
def workflows(draw) -> Workflow:
    """Node n<k> depends only on nodes before it; a branch's sides feed later nodes."""
    count = draw(st.integers(1, 12))
    nodes, edges, branches = [], [], set()
    for k in range(count):
        node_id = f"n{k}"
        sources = draw(st.lists(st.integers(0, k - 1), max_size=3, unique=True)) if k else []
        fields = {
            "priority": draw(st.integers(0, 2)),
            "resources": Resources(cpu=draw(st.sampled_from([0.5, 1.0]))),
            "timeout_ms": draw(st.one_of(st.none(), st.integers(50, 500))),
        }
        # fallback nodes: earlier non-branch nodes (a branch has no "out" to fall back on)
        earlier = [f"n{j}" for j in range(k) if f"n{j}" not in branches]
        recovery = draw(recoveries(earlier))
        if len(sources) == 1 and draw(st.booleans()):
            if recovery is not None and recovery.fallback_node:
                recovery = None
            nodes.append(Node(node_id, NodeKind.BRANCH, condition=Condition("truthy"),
                              recovery=recovery, **fields))
            branches.add(node_id)
        elif sources:
            nodes.append(Node(node_id, NodeKind.OPERATOR, operator="collect",
                              recovery=recovery, **fields))
        else:
            nodes.append(Node(node_id, NodeKind.OPERATOR, operator="identity",
                              constants={"value": k}, recovery=recovery, **fields))
        input_name = "value" if node_id in branches else None
        for j in sources:
            source = f"n{j}"
            output = draw(st.sampled_from(["true", "false"])) if source in branches else "out"
            edges.append(Edge(node_id, input_name or f"i{j}", source, output))
        if sources and input_name is None and draw(st.booleans()):
            # one source feeding two inputs: its completion settles both edges at once
            source = f"n{sources[0]}"
            output = draw(st.sampled_from(["true", "false"])) if source in branches else "out"
            edges.append(Edge(node_id, f"i{sources[0]}_again", source, output))
    default = draw(st.sampled_from([Recovery(), Recovery(Strategy.SKIP, default_output=[0]),
                                    Recovery(Strategy.RETRY, max_attempts=2)]))
    return Workflow("random", tuple(nodes), tuple(edges),
                    max_concurrency=draw(st.one_of(st.none(), st.integers(1, 4))),
                    default_recovery=default, checkpoint_every=draw(st.integers(0, 3)))


class Oracle:
    """What the events say, and nothing else."""

    def __init__(self, workflow: Workflow, max_concurrency: int) -> None:
        self.deps = {n.id: set() for n in workflow.nodes}
        for edge in workflow.edges:
            self.deps[edge.to_node].add(edge.from_node)
        self.max_concurrency = max_concurrency
        self.resolved: set[str] = set()
        self.at_checkpoint: set[str] = set()
        self.in_flight: set[str] = set()
        self.ended = False

    def see(self, event: Message) -> None:
        match event:
            case NodeScheduled(node_id=n):
                assert not self.ended
                assert self.deps[n] <= self.resolved, f"{n} dispatched before its dependencies"
                assert n not in self.resolved, f"{n} dispatched again after its result"
                self.in_flight.add(n)
                assert len(self.in_flight) <= self.max_concurrency
            case NodeCompleted(node_id=n) | FallbackUsed(node_id=n) | NodeSkipped(node_id=n):
                assert n not in self.resolved, f"{n} has two results"
                self.resolved.add(n)
                self.in_flight.discard(n)
            case NodeFailed(node_id=n):
                self.in_flight.discard(n)
            case NodeRetryScheduled(node_id=n):
                self.in_flight.add(n)  # it keeps its slot while it waits
            case CheckpointTaken():
                self.at_checkpoint = set(self.resolved)
            case ExecutionRestarted():
                self.resolved = set(self.at_checkpoint)
                self.in_flight.clear()
            case ExecutionCompleted() | ExecutionFailed() | ExecutionCancelled() | (
                    ExecutionTimedOut()):
                self.ended = True
                self.in_flight.clear()


class Sim:
    def __init__(self, workflow: Workflow, start: StartExecution) -> None:
        self.definitions = Definitions()
        self.state: ExecutionState = initial_state(EID)
        self.now = T0
        self.log: list[tuple[Message, int]] = []
        self.reports: list[Message] = []
        self.fired: set[str] = set()
        self.oracle: Oracle | None = None
        self.send(start)
        self.oracle = Oracle(workflow, self.state.max_concurrency)
        for event, _ in self.log:
            self.oracle.see(event)

    def send(self, command: Message) -> list[Message]:
        try:
            events = decide(self.state, command, self.now, self.definitions)
        except Rejection as rejection:
            assert rejection.reason
            return []
        assert decide(self.state, command, self.now, self.definitions) == events
        # what the decision hands a processor, plus the events it had not applied, is the
        # state evolving them all gives
        handed = events.state
        for event in events[events.applied:]:
            handed = evolve(handed, event, self.now, self.definitions)
        for event in events:
            self.state = evolve(self.state, event, self.now, self.definitions)
            self.log.append((event, self.now))
            if self.oracle is not None:
                self.oracle.see(event)
        assert handed == self.state
        self.check()
        return events

    def check(self) -> None:
        s = self.state
        assert s.slots <= s.max_concurrency
        for pool in s.pools:
            assert pool.used_cpu_m <= pool.cpu_m
        if s.running:
            assert _rebuilt(s, list(s.nodes)) == s  # the incremental counters, from scratch

    def in_flight(self) -> list[str]:
        return [n for n in self.state.plan.ids
                if self.state.node(n).status in (NodeStatus.SCHEDULED, NodeStatus.RUNNING)]

    def timers(self) -> list[TimerScheduled]:
        pending: dict[str, TimerScheduled] = {}
        for event, _ in self.log:
            if isinstance(event, TimerScheduled) and event.timer_id not in self.fired:
                pending[event.timer_id] = event
            elif isinstance(event, TimerCancelled):
                pending.pop(event.timer_id, None)
        return sorted(pending.values(), key=lambda t: (t.due_at_ms, t.timer_id))

    def task(self, node_id: str) -> NodeScheduled:
        return [e for e, _ in self.log if isinstance(e, NodeScheduled) and e.node_id == node_id][-1]

    def done_timers(self) -> list[str]:
        """Timers fired or cancelled: firing one (again) must change nothing."""
        cancelled = {e.timer_id for e, _ in self.log if isinstance(e, TimerCancelled)}
        return sorted(self.fired | cancelled)

    def report(self, command: Message) -> None:
        self.reports.append(command)
        self.send(command)

    def fire(self, timer: TimerScheduled) -> None:
        self.now = max(self.now, timer.due_at_ms)
        self.fired.add(timer.timer_id)
        self.send(TimerFired(EID, timer.timer_id))

    def complete(self, node_id: str, data: st.DataObject | None) -> None:
        run = self.state.node(node_id)
        branch = self.state.plan.node(self.state.plan.index[node_id]).kind == NodeKind.BRANCH
        side = data.draw(st.sampled_from(["true", "false"])) if data else "true"
        how = data.draw(st.sampled_from(["inline", "inline", "hash", "bad"])) if data else "inline"
        if how == "hash":
            command = ReportNodeCompleted(EID, node_id, run.attempt, output_hash=BLOB,
                                          branch_taken=side if branch else "")
        else:
            output = {side if branch else "out": [run.attempt]}
            if how == "bad":
                output = {"wrong": 1}
            command = ReportNodeCompleted(EID, node_id, run.attempt, json.dumps(output),
                                          duration_ms=7)
        self.report(command)

    def crash(self) -> None:
        """The processor restarts: from the last checkpoint and the events after it."""
        marks = [k for k, (event, _) in enumerate(self.log) if isinstance(event,
                                                                          CheckpointTaken)]
        if marks:
            restored = restore(self.log[marks[-1]][0].snapshot, self.log[marks[-1] + 1:],
                               Definitions())
        else:
            restored = initial_state(EID)
            for event, at in self.log:
                restored = evolve(restored, event, at, Definitions())
        assert restored == self.state
        self.state = restored

    def finish(self) -> None:
        """Complete whatever runs, fire what waits, until the execution ends."""
        for _ in range(1000):
            if not self.state.running:
                return
            names = self.in_flight()
            if names:
                self.complete(names[0], None)
            else:
                timers = self.timers()
                assert timers, "stalled: nothing in flight, no timer pending, not ended"
                self.fire(timers[0])
        raise AssertionError("the execution did not end")


ACTIONS = ["complete", "complete", "complete", "fail", "fail", "start", "repeat", "takeover",
           "timer", "timer", "checkpoint", "crash", "cancel", "late_timer"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workflows(), st.data())
def test_random_executions_keep_every_invariant(workflow, data):
    start = StartExecution(
        EID, workflow.canonical_json(),
        timeout_ms=data.draw(st.sampled_from([0, 0, 3000])),
        capacity_cpu=data.draw(st.sampled_from([{}, {"operator": 1.0}, {"operator": 1.5}])))
    sim = Sim(workflow, start)
    for _ in range(data.draw(st.integers(0, 40))):
        if not sim.state.running:
            break
        action = data.draw(st.sampled_from(ACTIONS))
        flying = sim.in_flight()
        if action == "complete" and flying:
            sim.complete(data.draw(st.sampled_from(flying)), data)
        elif action == "fail" and flying:
            node_id = data.draw(st.sampled_from(flying))
            sim.report(ReportNodeFailed(EID, node_id, sim.state.node(node_id).attempt,
                                        data.draw(st.sampled_from(["Boom", "Fatal"])),
                                        retryable=data.draw(st.booleans())))
        elif action == "start" and flying:
            node_id = data.draw(st.sampled_from(flying))
            sim.report(ReportNodeStarted(EID, node_id, sim.state.node(node_id).attempt))
        elif action == "repeat" and sim.reports:
            # the same report again (also re-sent after a restore that no longer knows its
            # command id) changes nothing, unless another runner took that attempt over since
            before, report = sim.state, data.draw(st.sampled_from(sim.reports))
            node = before.node(report.node_id)
            if (isinstance(report, ReportNodeStarted) and node.status is NodeStatus.RUNNING
                    and node.attempt == report.attempt and node.runner != report.runner):
                assert sim.send(report) == [NodeStarted(EID, report.node_id, report.attempt)]
            else:
                assert sim.send(report) == []
                assert sim.state is before
        elif action == "takeover" and (running := [
                node_id for node_id in flying
                if sim.state.node(node_id).status is NodeStatus.RUNNING]):
            # another runner starts a running attempt: it took the task over (from whichever
            # runner runs it now, maybe one that took it over before)
            node_id = data.draw(st.sampled_from(running))
            attempt, runner = sim.state.node(node_id).attempt, sim.state.node(node_id).runner
            taker = "other" if runner != "other" else "another"
            assert sim.send(ReportNodeStarted(EID, node_id, attempt, taker)) == [
                NodeStarted(EID, node_id, attempt, taker)]
            assert sim.state.node(node_id).status is NodeStatus.RUNNING
        elif action == "timer" and sim.timers():
            sim.fire(sim.timers()[0])
        elif action == "late_timer" and sim.done_timers():
            timer_id = data.draw(st.sampled_from(sim.done_timers()))
            assert sim.send(TimerFired(EID, timer_id)) == []
        elif action == "checkpoint":
            sim.send(TakeCheckpoint(EID))
        elif action == "crash":
            sim.crash()
        elif action == "cancel" and data.draw(st.integers(0, 9)) == 0:
            sim.send(CancelExecution(EID, "random"))
        sim.now += data.draw(st.integers(0, 100))
    sim.finish()

    # every node ends in exactly one terminal state; a completed run resolved them all
    final = sim.state
    assert final.slots == 0
    for node_id in final.plan.ids:
        status = final.node(node_id).status
        assert status in TERMINAL or status is NodeStatus.FAILED
        assert status not in IN_FLIGHT
    if any(isinstance(e, ExecutionCompleted) for e, _ in sim.log):
        assert final.status is ExecutionStatus.COMPLETED
        assert sim.oracle.resolved == set(final.plan.ids)

    # folding evolve over the decoded events reproduces the state
    replayed = initial_state(EID)
    for event, at in sim.log:
        record = CODEC.decode(CODEC.encode(event.avro_name, {
            "envelope": ENVELOPE, **to_record(event)})).record
        decoded = from_record(type(event), record)
        assert decoded == event
        replayed = evolve(replayed, decoded, at, Definitions())
    assert replayed == final

    # every snapshot plus the events after it equals the full replay
    for k, (event, _) in enumerate(sim.log):
        if isinstance(event, CheckpointTaken):
            assert restore(event.snapshot, sim.log[k + 1:], Definitions()) == final


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 80), st.integers(0, 2**16), st.integers(1, 6),
       st.randoms(use_true_random=False))
def test_layered_dags_give_the_results_of_a_sequential_evaluation(count, seed, limit, rng):
    """Whatever order the runners finish in, each node gets its dependencies' outputs."""
    workflow = layered_dag(count, seed=seed)
    expected: dict[str, object] = {}
    graph = workflow.graph
    for i in graph.order:
        node = workflow.nodes[i]
        inputs = dict(node.constants)
        inputs.update({e.to_input: expected[e.from_node] for e in workflow.edges
                       if e.to_node == node.id})
        expected[node.id] = OPERATORS[node.operator](inputs, node.params)
    sim = Sim(workflow, StartExecution(EID, workflow.canonical_json(), max_concurrency=limit))
    while sim.state.running:
        node_id = rng.choice(sim.in_flight())
        node = workflow.node_by_id[node_id]
        value = OPERATORS[node.operator](json.loads(sim.task(node_id).inputs), node.params)
        sim.report(ReportNodeCompleted(EID, node_id, sim.state.node(node_id).attempt,
                                       json.dumps({"out": value})))
    completed = [e for e, _ in sim.log if isinstance(e, ExecutionCompleted)]
    assert json.loads(completed[0].outputs) == {
        graph.ids[i]: {"out": expected[graph.ids[i]]} for i in graph.sinks}


_RUN_FIELDS = st.fixed_dictionaries({}, optional={
    "status": st.sampled_from(list(NodeStatus)), "remaining": st.integers(0, 9),
    "live": st.integers(0, 9), "attempt": st.integers(1, 5), "output": st.text(max_size=5),
    "error": st.text(max_size=5), "runner": st.text(max_size=5)})


@given(_RUN_FIELDS, _RUN_FIELDS)
def test_copy_with_is_dataclasses_replace_and_leaves_the_original(first, changes):
    """`copy_with`, which evolve calls for every event, writes its copy out per class."""
    run = dataclasses.replace(NodeRun(), **first)
    before = dataclasses.astuple(run)
    copied = copy_with(run, **changes)
    assert copied == dataclasses.replace(run, **changes) and type(copied) is NodeRun
    assert dataclasses.astuple(run) == before


# a ready queue's operations: a batch of keys queued together (a fan-out), or a pop
_QUEUE_OPS = st.lists(st.one_of(
    st.lists(st.tuples(st.integers(-2, 2), st.integers(-3, 0)), max_size=12),
    st.just("pop")), max_size=30)


@given(_QUEUE_OPS)
def test_a_ready_queue_gives_the_best_key_first_however_its_keys_came(ops):
    """`push_all` (a fan-out's nodes queued at once, as one sorted run when they outnumber
    the queue) and `push` one by one hold the same keys, and both pop them best first, as a
    sorted list does. Keys are (-priority, -rank, node index): unique by their index."""
    batched, single, model = ReadyQueue(), ReadyQueue(), []
    index = 0
    for op in ops:
        if op == "pop":
            if model:
                best = min(model)
                model.remove(best)
                assert batched.head() == single.head() == best
                batched, single = batched.remove(best), single.remove(best)
            continue
        keys = []
        for priority, rank in op:
            keys.append((priority, float(rank), index))
            index += 1
        batched = batched.push_all(keys)
        for key in keys:
            single = single.push(key)
        model += keys
        assert batched == single and batched.keys() == sorted(model)
        assert batched.size == len(model)
