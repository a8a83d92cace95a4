"""Lookahead prewarming (issue 4): warm the model of an instrument node before it is ready.

The pool's other predictors (streams/pool/prewarm.py) guess from usage; a running workflow
says outright which models it will call next. `LookaheadPredictor` follows the DAG
execution events (pit.dag.events) and, when an instrument node (or a map over a model) is
about to become ready, names its model so the prewarmer can warm it while the node's
dependencies still run. Pure, as the deciders are: events and their time in, hints out; no
I/O beyond reading a definition stored by hash through `Definitions`, which is
content-addressed.

The rule. A node is warmed once, when
* it is still waiting (Pending: some dependency has not resolved), and
* every dependency it still waits for is in flight: scheduled, running or waiting for a
  retry. So a node's lead time is its last dependencies' run time: a chain warms node k+1
  when node k is scheduled, a fan-in when its last blocked dependency is scheduled. A
  dependency that is itself still waiting (or ready but not dispatched) holds it back; its
  own dispatch is the next trigger. And
* it will run, as far as the facts go: by the decider's rule a node runs when at least one
  incoming edge is live, so it needs a resolved live edge, or an in-flight dependency that
  is not a branch (every other kind completes with its "out", and a recovery skip gives the
  default output there). A node that only an undecided branch feeds waits for the branch:
  it may be on the untaken side, and one on an untaken side is never warmed. Once the
  branch resolves the node is ready at once, and its runner allocates the model itself.
A ready node (or one without dependencies) is not warmed: the decision that made it ready
dispatches it unless the execution's bounds hold it back, and a warm would race its
runner's allocation. A dependency that fails the
execution makes a warmed node a wrong prediction; the pool never evicts for a warm, so it
costs only free room.

Execution state is the decider's own (`execution.evolve`), so branches, skips, fallbacks,
retries and restarts from a checkpoint mean here what they mean to the decider. Per
instrument node it keeps two counts, updated by the one node each event changes: its
dependencies that are blocked (neither resolved nor in flight) and those in flight that are
not branches; so an event costs O(its node's instrument dependents), whatever the fan-in.
Executions without instrument nodes are not followed (`wants` says so from the start
event's definition alone), and an execution is forgotten when it ends. A history that
begins after an execution's start (retention) picks the execution up at its next checkpoint.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from streams.dag.definition import NodeKind
from streams.dag.errors import DefinitionStoreError, InvalidWorkflowError
from streams.dag.execution import (
    DEFINITIONS,
    ENDINGS,
    IN_FLIGHT,
    RESOLVED,
    CheckpointTaken,
    Definitions,
    ExecutionRestarted,
    ExecutionStarted,
    ExecutionState,
    NodeStatus,
    P,
    Plan,
    evolve,
    restore,
)
from streams.decider import Message

ENDED = tuple(ENDINGS)
SHAPES = 64  # plans' shapes kept, most recently started first
PASSED = 10_000  # executions remembered as having no model to warm, most recent first
_MODEL_KEY = '"model":'  # canonical JSON omits an empty model: no match, no model node


@dataclass(frozen=True)
class Lookahead:
    """Warm `model_id`: node `node_id` of execution `execution_id` is about to be ready."""
    model_id: str
    execution_id: str
    node_id: str
    probability: float

    @property
    def reason(self) -> str:
        return f"lookahead {self.execution_id}/{self.node_id}"


@dataclass(frozen=True)
class _Shape:
    """What the rule needs of a plan, built once per definition hash."""
    models: tuple[str, ...]              # per node: its model, "" for nodes without one
    branch: tuple[bool, ...]
    deps: tuple[tuple[int, ...], ...]    # distinct dependencies
    watched: tuple[tuple[int, ...], ...]  # per node: the model nodes it feeds

    @classmethod
    def of(cls, plan: Plan) -> _Shape:
        nodes = plan.workflow.nodes
        models = tuple(n.model if n.kind in (NodeKind.INSTRUMENT, NodeKind.MAP) else ""
                       for n in nodes)
        return cls(models, tuple(n.kind == NodeKind.BRANCH for n in nodes),
                   plan.workflow.graph.dependencies,
                   tuple(tuple(t for t in targets if models[t]) for targets in plan.targets))


def _blocked(status: NodeStatus) -> bool:
    return status not in RESOLVED and status not in IN_FLIGHT


class _Run:
    """One followed execution: the decider's state and the counts per model node."""

    __slots__ = ("blocked", "promising", "shape", "state", "warned")

    def __init__(self, state: ExecutionState, shape: _Shape) -> None:
        self.state, self.shape = state, shape
        self.warned: set[int] = set()
        self.recount()

    @property
    def plan(self) -> Plan:
        plan = self.state.plan
        assert plan is not None  # followed from its start or a checkpoint: the plan is known
        return plan

    def recount(self) -> None:
        nodes, shape = self.state.nodes, self.shape
        self.blocked: dict[int, int] = {}
        self.promising: dict[int, int] = {}
        for t, model in enumerate(shape.models):
            if model:
                statuses = [(nodes[d].status, d) for d in shape.deps[t]]
                self.blocked[t] = sum(_blocked(s) for s, _ in statuses)
                self.promising[t] = sum(s in IN_FLIGHT and not shape.branch[d]
                                        for s, d in statuses)

    def moved(self, i: int, before: NodeStatus, after: NodeStatus) -> None:
        """Node i went from `before` to `after`: its model dependents' counts follow."""
        branch = self.shape.branch[i]
        blocked = _blocked(after) - _blocked(before)
        promising = ((after in IN_FLIGHT and not branch)
                     - (before in IN_FLIGHT and not branch))
        if blocked or promising:
            for t in self.shape.watched[i]:
                self.blocked[t] += blocked
                self.promising[t] += promising

    def due(self, t: int) -> bool:
        run = self.state.nodes[t]
        return (t not in self.warned and run.status is P and run.remaining > 0
                and self.blocked[t] == 0 and (run.live > 0 or self.promising[t] > 0))


class LookaheadPredictor:
    """Follows DAG execution events (`apply`, in log order per execution) and names the
    models of instrument nodes about to become ready (see the module docstring)."""

    def __init__(self, definitions: Definitions | None = None, *,
                 probability: float = 1.0) -> None:
        # Its own plan cache: the DAG processor's may be in use on another thread.
        base = definitions if definitions is not None else DEFINITIONS
        self.definitions = Definitions(base.store, base.registry)
        self.probability = probability
        self.runs: dict[str, _Run] = {}
        # Executions whose start was seen and has no model to warm: their checkpoints (the
        # whole state, every few completions) are then not restored for nothing.
        self.passed: OrderedDict[str, None] = OrderedDict()
        self._shapes: OrderedDict[str, _Shape] = OrderedDict()  # by definition hash
        self.made = 0

    def wants(self, execution_id: str) -> bool:
        """Whether events of this execution matter (beyond starts and checkpoints)."""
        return execution_id in self.runs

    def passes(self, execution_id: str) -> bool:
        """Whether this execution was seen starting with no model to warm: none of its
        events matter, not even its checkpoints."""
        return execution_id in self.passed

    def apply(self, event: Message, at_ms: int) -> list[Lookahead]:
        """Fold one pit.dag.events event at its `occurred_at`; the models to warm now."""
        execution_id = getattr(event, "execution_id", None)
        if execution_id is None:
            return []  # a timer request: no node changes
        if isinstance(event, ExecutionStarted):
            return self._start(event, at_ms)
        run = self.runs.get(execution_id)
        if run is None:
            if isinstance(event, CheckpointTaken):
                return self._pick_up(event)
            return []
        if isinstance(event, ENDED):
            del self.runs[execution_id]
            return []
        node_id = getattr(event, "node_id", "")
        before, plan = run.state, run.plan
        run.state = evolve(before, event, at_ms, self.definitions)
        if isinstance(event, ExecutionRestarted):
            run.recount()
            run.warned = {t for t in run.warned if run.state.nodes[t].status is not P}
            return self._due(run, range(len(run.shape.models)))
        i = plan.index.get(node_id) if node_id else None
        if i is None:
            return []
        run.moved(i, before.nodes[i].status, run.state.nodes[i].status)
        return self._due(run, run.shape.watched[i])

    def _start(self, event: ExecutionStarted, at_ms: int) -> list[Lookahead]:
        hints = self._started(event, at_ms)
        if event.execution_id not in self.runs:
            self._pass(event.execution_id)
        return hints

    def _started(self, event: ExecutionStarted, at_ms: int) -> list[Lookahead]:
        if event.definition and _MODEL_KEY not in event.definition:
            return []
        try:
            state = evolve(ExecutionState(event.execution_id), event, at_ms, self.definitions)
        except (DefinitionStoreError, InvalidWorkflowError, ValueError):
            return []  # a definition it cannot read: that execution gets no lookahead
        return self._follow(state)

    def _pass(self, execution_id: str) -> None:
        self.passed[execution_id] = None
        self.passed.move_to_end(execution_id)
        if len(self.passed) > PASSED:
            self.passed.popitem(last=False)

    def _pick_up(self, event: CheckpointTaken) -> list[Lookahead]:
        if self.passes(event.execution_id):
            return []
        try:
            state = restore(event.snapshot, (), self.definitions)
        except (DefinitionStoreError, InvalidWorkflowError, ValueError):
            return []
        return self._follow(state) if state.running else []

    def _follow(self, state: ExecutionState) -> list[Lookahead]:
        plan = state.plan
        assert plan is not None  # started, or restored from a checkpoint
        shape = self._shapes.pop(plan.definition_hash, None) or _Shape.of(plan)
        self._shapes[plan.definition_hash] = shape
        if len(self._shapes) > SHAPES:
            self._shapes.popitem(last=False)
        if not any(shape.models):
            return []
        run = self.runs[state.execution_id] = _Run(state, shape)
        return self._due(run, range(len(shape.models)))

    def _due(self, run: _Run, candidates: Iterable[int]) -> list[Lookahead]:
        hints = []
        for t in candidates:
            if run.shape.models[t] and run.due(t):
                run.warned.add(t)
                hints.append(Lookahead(run.shape.models[t], run.state.execution_id,
                                       run.plan.ids[t], self.probability))
        self.made += len(hints)
        return hints
