"""Cold starts on a workflow trace with and without lookahead prewarming (issue 4).

The seeded trace (streams/pool/workflow_trace.py) is replayed in process, in event time,
against the real deciders: the execution decider runs each workflow, the pool decider
places, loads, evicts and allocates models, and the prewarmer's pure side
(`PoolPrewarmer`, with the `LookaheadPredictor` when on) reads both event streams and sends
WarmModel as the service does, `send_ms` after its decision. Around them, simulated:
* runners: an operator or branch node takes its drawn run time; an instrument node
  allocates its model (AllocateModel with the execution as workflow run), waits for the
  grant, infers for its drawn time, releases; a rejected allocation (a Cooling model, no
  room) is tried again a second later;
* one host of `capacity` model slots: a load takes the model's load time, an unload a
  second;
* an operator's cooldown policy: a Hot model idle for `idle_ms` is cooled
  (ScheduledCooldown), as a serverless pool scales to zero. Prewarming never evicts, so
  without idle models leaving, a full pool would leave it nothing to warm into.

An allocation is a *cold start* when it finds its model Cold (or Cooling, or Failed):
it waits for a whole load. One that finds it loading (placed, Warming) waits for the rest;
its wait is in `wait_ms`. Everything is deterministic: same trace and knobs, same figures.

`bench_lookahead` compares the prewarmer with its usage predictors alone ("without") and
with lookahead too ("with"); "none" is no prewarming at all, for scale. On the default trace
(800 executions of 12 workflows over 12 hours, 1,840 allocations of 24 models, loads of
5-20 s, 10-minute idle cooldown), measured:
* a pool of 10 slots: cold starts 346 (none), 281 (without), 200 (with):
  `lookahead_cold_start_reduction` 0.29, allocation wait -21%. The pool is full most of the
  time and a warm never evicts (the pool's rule), so 118 of 209 lookahead warms are
  rejected for want of room;
* a pool with room for every model (`_roomy`): 152 without, 25 with: 0.84, wait -59%.
What lookahead cannot reach: an instrument that starts its workflow, one right behind a
branch (it waits for the side to be decided), and one whose last dependency runs shorter
than the load (counted loading, not cold: it waits for the rest).
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable
from dataclasses import dataclass

from streams.dag.definition import NodeKind
from streams.dag.execution import (
    Definitions,
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionState,
    ExecutionTimedOut,
    NodeScheduled,
    ReportNodeCompleted,
    ReportNodeStarted,
    StartExecution,
    initial_state,
)
from streams.dag.execution import decide as dag_decide
from streams.dag.execution import evolve as dag_evolve
from streams.decider import Message, Rejection
from streams.pool import pool
from streams.pool.lifecycle import DEFAULT_POOL, ModelState
from streams.pool.lifecycle import TransitionReason as R
from streams.pool.lookahead import LookaheadPredictor
from streams.pool.prewarmer import Decision, PoolPrewarmer
from streams.pool.workflow_trace import ExecutionSpec, WorkflowTrace, workflow_trace

HOST = "sim-host"
ENDED = (ExecutionCompleted, ExecutionFailed, ExecutionCancelled, ExecutionTimedOut)


@dataclass
class Outcome:
    """What one replay of the trace measured."""
    allocations: int = 0
    cold: int = 0          # found the model Cold: a whole load to wait for
    loading: int = 0       # found it placed or Warming: part of a load
    hot: int = 0
    wait_ms: int = 0       # request to grant, summed
    warms: int = 0         # WarmModel commands sent
    lookahead_warms: int = 0
    executions: int = 0    # completed


class Replay:
    """One replay of a trace (see the module docstring)."""

    def __init__(self, trace: WorkflowTrace, *, prewarm: bool, lookahead: bool,
                 capacity: int = 10, idle_ms: int = 600_000, send_ms: int = 50,
                 tick_ms: int = 5_000, cool_every_ms: int = 30_000, unload_ms: int = 1_000,
                 retry_ms: int = 1_000) -> None:
        self.trace = trace
        self.idle_ms, self.send_ms, self.tick_ms = idle_ms, send_ms, tick_ms
        self.cool_every_ms, self.unload_ms, self.retry_ms = cool_every_ms, unload_ms, retry_ms
        self.load_ms = {m.model_id: m.load_ms for m in trace.models}
        self.prewarmer = PoolPrewarmer(DEFAULT_POOL) if prewarm else None
        self.lookahead = LookaheadPredictor() if lookahead else None
        self.definitions = Definitions()
        self.pool = pool.initial_state(DEFAULT_POOL)
        self.runs: dict[str, tuple[ExecutionState, ExecutionSpec]] = {}
        self.waiting: dict[str, tuple[str, str, int, int]] = {}  # request -> node, when
        self.last_used: dict[str, int] = {}
        self.outcome = Outcome()
        self._queue: list[tuple[int, int, Callable[..., object], tuple]] = []
        self._seq = 0
        self.now = 0
        mb = trace.config.model_mb
        self._pool(pool.RegisterHost(HOST, capacity * mb, capacity))
        for model in trace.models:
            self._pool(pool.RegisterModel(model.model_id, f"sim:{model.model_id}",
                                          model.memory_mb, model.load_ms))

    def at(self, at_ms: int, action: Callable[..., object], *args: object) -> None:
        """Run `action(*args)` at `at_ms` (what it returns is dropped)."""
        self._seq += 1
        heapq.heappush(self._queue, (at_ms, self._seq, action, args))

    def run(self) -> Outcome:
        for spec in self.trace.executions:
            self.at(spec.at_ms, self._start, spec)
        end = self.trace.executions[-1].at_ms if self.trace.executions else 0
        self.at(0, self._tick, end)
        while self._queue:
            self.now, _, action, args = heapq.heappop(self._queue)
            action(*args)
        return self.outcome

    # -- the pool ----------------------------------------------------------------------------

    def _pool(self, command: Message) -> str:
        """Decide and apply a pool command; the rejection's reason, or "" when accepted."""
        try:
            events = pool.decide(self.pool, command, self.now)
        except Rejection as rejection:
            return rejection.reason
        for event in events:
            self.pool = pool.evolve(self.pool, event, self.now)
            if self.prewarmer is not None:
                self._send(self.prewarmer.apply(event, self.now))
            self._host(event)
        return ""

    def _host(self, event: Message) -> None:
        """The host and the runners waiting on the pool react to its events."""
        match event:
            case pool.LoadRequested(model_id=m):
                load_ms = self.load_ms[m]
                self.at(self.now + load_ms, self._pool,
                        pool.ReportModelLoaded(HOST, m, load_ms, self.trace.config.model_mb))
            case pool.UnloadRequested(model_id=m):
                self.at(self.now + self.unload_ms, self._pool, pool.ReportModelUnloaded(HOST, m))
            case pool.ModelLoaded(model_id=m) | pool.ModelReleased(model_id=m):
                self.last_used[m] = self.now
            case pool.ModelAllocated(request_id=request, model_id=m):
                self.last_used[m] = self.now
                execution, node, attempt, asked = self.waiting.pop(request)
                self.outcome.wait_ms += self.now - asked
                spec = self.runs[execution][1]
                self.at(self.now + spec.durations[node], self._inferred, request, execution,
                        node, attempt)

    def _send(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            self.outcome.warms += 1
            self.outcome.lookahead_warms += decision.reason.startswith("lookahead")
            self.at(self.now + self.send_ms, self._pool, pool.WarmModel(
                decision.model_id, decision.probability, decision.reason))

    def _tick(self, end_ms: int) -> None:
        if self.prewarmer is not None:
            self._send(self.prewarmer.advance(self.now))
        if self.now % self.cool_every_ms == 0:
            for model_id in sorted(self.last_used):
                model = self.pool.models[model_id]
                if (model.state is ModelState.HOT and not model.allocations
                        and self.now - self.last_used[model_id] >= self.idle_ms):
                    self._pool(pool.CoolModel(model_id, R.SCHEDULED_COOLDOWN))
        if self.now < end_ms or self.runs:
            self.at(self.now + self.tick_ms, self._tick, end_ms)

    # -- the workflows -----------------------------------------------------------------------

    def _start(self, spec: ExecutionSpec) -> None:
        self.runs[spec.execution_id] = (initial_state(spec.execution_id), spec)
        self._dag(StartExecution(spec.execution_id, spec.workflow.canonical_json()))

    def _dag(self, command: StartExecution | ReportNodeStarted | ReportNodeCompleted) -> None:
        execution = command.execution_id
        state, spec = self.runs[execution]
        events = dag_decide(state, command, self.now, self.definitions)
        for event in events:
            state = dag_evolve(state, event, self.now, self.definitions)
            self.runs[execution] = (state, spec)
            if self.lookahead is not None and self.prewarmer is not None:
                hints = self.lookahead.apply(event, self.now)
                self._send(self.prewarmer.lookahead(hints, self.now))
            if isinstance(event, NodeScheduled):
                self._dispatch(spec, event)
            elif isinstance(event, ENDED):
                self.outcome.executions += isinstance(event, ExecutionCompleted)
                del self.runs[execution]

    def _dispatch(self, spec: ExecutionSpec, task: NodeScheduled) -> None:
        execution, node, attempt = task.execution_id, task.node_id, task.attempt
        self.at(self.now, self._dag, ReportNodeStarted(execution, node, attempt))
        if task.kind == NodeKind.INSTRUMENT:
            model = json.loads(task.spec)["model"]
            self.waiting[task.task_id] = (execution, node, attempt, self.now)
            self._count(model)
            self.at(self.now, self._allocate, task.task_id, model, execution)
            return
        if task.kind == NodeKind.BRANCH:
            output = {"true" if spec.sides[node] else "false": 1}
        else:
            output = {"out": 1}
        self.at(self.now + spec.durations[node], self._dag, ReportNodeCompleted(
            execution, node, attempt, json.dumps(output)))

    def _count(self, model_id: str) -> None:
        model = self.pool.models[model_id]
        self.outcome.allocations += 1
        if model.state is ModelState.HOT:
            self.outcome.hot += 1
        elif model.state is ModelState.WARMING or model.waiting:
            self.outcome.loading += 1
        else:
            self.outcome.cold += 1

    def _allocate(self, request: str, model_id: str, execution: str) -> None:
        if self._pool(pool.AllocateModel(request, model_id, "sim-runner",
                                         workflow_id=execution)):
            self.at(self.now + self.retry_ms, self._allocate, request, model_id, execution)

    def _inferred(self, request: str, execution: str, node: str, attempt: int) -> None:
        self._pool(pool.ReleaseModel(request))
        self._dag(ReportNodeCompleted(execution, node, attempt, json.dumps({"out": 1})))


def replay(trace: WorkflowTrace, *, prewarm: bool, lookahead: bool, **knobs: int) -> Outcome:
    return Replay(trace, prewarm=prewarm, lookahead=lookahead, **knobs).run()


def _reduction(with_: int, without: int) -> float:
    return round(1 - with_ / without, 4) if without else 0.0


def bench_lookahead(seed: int = 11, *, capacity: int = 10, idle_ms: int = 600_000,
                    **trace_knobs: object) -> dict[str, float]:
    """The lookahead figures on the seeded workflow trace (see the module docstring): in a
    pool of `capacity` slots, and (`_roomy`) in one that holds every model, where only the
    idle cooldown makes models Cold."""
    trace = workflow_trace(seed, **trace_knobs)
    none = replay(trace, prewarm=False, lookahead=False, capacity=capacity, idle_ms=idle_ms)
    figures: dict[str, float] = {"lookahead_cold_starts_none": none.cold,
                                 "lookahead_allocations": none.allocations}
    for suffix, slots in (("", capacity), ("_roomy", len(trace.models))):
        without = replay(trace, prewarm=True, lookahead=False, capacity=slots,
                         idle_ms=idle_ms)
        with_ = replay(trace, prewarm=True, lookahead=True, capacity=slots, idle_ms=idle_ms)
        figures |= {
            f"lookahead_cold_start_reduction{suffix}": _reduction(with_.cold, without.cold),
            f"lookahead_wait_reduction{suffix}": _reduction(with_.wait_ms, without.wait_ms),
            f"lookahead_cold_starts_with{suffix}": with_.cold,
            f"lookahead_cold_starts_without{suffix}": without.cold,
            f"lookahead_warms{suffix}": with_.lookahead_warms,
        }
    return figures


if __name__ == "__main__":
    print(json.dumps(bench_lookahead(), indent=2))
