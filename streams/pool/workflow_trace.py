"""A seeded trace of workflow executions, to measure lookahead prewarming on (issue 4).

streams/pool/trace.py draws model requests; this draws what makes them: executions of DAG
workflows (streams/dag/definition.py) whose instrument nodes call models. A pure function of
its arguments: all randomness from `random.Random` seeded by the config, no wall clock.

The workload (every knob is a field of `WorkflowTraceConfig`):
* **Workflows.** `workflows` definitions of `nodes` (min, max) nodes each. Node 0 is an
  operator with a constant; every later node takes one or two earlier nodes as inputs
  (mostly the one just before, so paths are long enough to look ahead on). A node is an
  instrument with probability `instrument_share` (its model drawn by Zipf(`model_zipf_s`)
  over the `models` models, so some models serve many workflows), a branch with
  probability `branch_share` (its dependents hang off one side or the other), else an
  operator ("collect" over its inputs).
* **Executions.** `executions` starts, Poisson over `hours`, of a workflow drawn by
  Zipf(`workflow_zipf_s`). Each execution draws every node's run time - operators
  `operator_ms`, instruments `instrument_ms` (inference, once the model is loaded) - and
  every branch's side (true with probability `branch_true`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from streams.dag.definition import Condition, Edge, Node, NodeKind, Workflow
from streams.pool.trace import _pick, _zipf_cumulative

HOUR_MS = 3_600_000


@dataclass(frozen=True)
class WorkflowTraceConfig:
    """The knobs of the workload; the defaults are the benchmark's trace."""
    seed: int = 11
    models: int = 24
    workflows: int = 12
    nodes: tuple[int, int] = (4, 9)
    instrument_share: float = 0.4
    branch_share: float = 0.1
    model_zipf_s: float = 0.8
    workflow_zipf_s: float = 1.0
    executions: int = 800
    hours: float = 12.0
    operator_ms: tuple[int, int] = (2_000, 30_000)
    instrument_ms: tuple[int, int] = (500, 5_000)
    branch_true: float = 0.5
    model_mb: int = 1_000
    load_ms: tuple[int, int] = (5_000, 20_000)   # per model, how long its load takes


@dataclass(frozen=True)
class ModelSpec:
    model_id: str
    memory_mb: int
    load_ms: int


@dataclass(frozen=True)
class ExecutionSpec:
    """One execution: when it starts, what it runs, how long each node takes, which side
    each branch takes."""
    at_ms: int
    execution_id: str
    workflow: Workflow
    durations: dict[str, int] = field(default_factory=dict)
    sides: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkflowTrace:
    config: WorkflowTraceConfig
    models: tuple[ModelSpec, ...]
    workflows: tuple[Workflow, ...]
    executions: tuple[ExecutionSpec, ...]


def _workflow(rng: random.Random, config: WorkflowTraceConfig, name: str,
              models: list[str], model_zipf: list[float]) -> Workflow:
    count = rng.randint(*config.nodes)
    ids = [f"n{k}" for k in range(count)]
    nodes = [Node(ids[0], NodeKind.OPERATOR, operator="identity", constants={"value": 1})]
    edges = []
    branches: set[int] = set()
    for k in range(1, count):
        roll = rng.random()
        parents = {k - 1 if rng.random() < 0.7 else rng.randrange(k)}
        if rng.random() < 0.3:
            parents.add(rng.randrange(k))
        sources = [f"{ids[p]}.{('true' if rng.random() < 0.5 else 'false')}" if p in branches
                   else ids[p] for p in sorted(parents)]
        if roll < config.branch_share and k < count - 1:
            branches.add(k)
            nodes.append(Node(ids[k], NodeKind.BRANCH, condition=Condition("truthy")))
            edges.append(Edge.parse(sources[0], f"{ids[k]}.value"))
            continue
        if roll < config.branch_share + config.instrument_share:
            nodes.append(Node(ids[k], NodeKind.INSTRUMENT,
                              model=models[_pick(rng, model_zipf)]))
        else:
            nodes.append(Node(ids[k], NodeKind.OPERATOR, operator="collect"))
        edges += [Edge.parse(source, f"{ids[k]}.in{j}") for j, source in enumerate(sources)]
    return Workflow(name, tuple(nodes), tuple(edges))


def workflow_trace(seed: int = 11, **knobs: object) -> WorkflowTrace:
    """The trace: models, workflow definitions and executions in start order. Same
    arguments, same trace; keyword arguments set other `WorkflowTraceConfig` knobs."""
    config = replace(WorkflowTraceConfig(), seed=seed, **knobs)  # type: ignore[arg-type]
    rng = random.Random(f"workflow-trace:{config.seed}")
    models = tuple(ModelSpec(f"model-{m:02d}", config.model_mb, rng.randint(*config.load_ms))
                   for m in range(config.models))
    names = [m.model_id for m in models]
    rng.shuffle(names)  # popularity is not the id order
    model_zipf = _zipf_cumulative(len(names), config.model_zipf_s)
    workflows = tuple(_workflow(rng, config, f"wf{w:02d}", names, model_zipf)
                      for w in range(config.workflows))
    workflow_zipf = _zipf_cumulative(len(workflows), config.workflow_zipf_s)
    span = config.hours * HOUR_MS
    at, executions = 0.0, []
    for number in range(config.executions):
        at += rng.expovariate(config.executions / span)
        workflow = workflows[_pick(rng, workflow_zipf)]
        durations, sides = {}, {}
        for node in workflow.nodes:
            if node.kind == NodeKind.INSTRUMENT:
                durations[node.id] = rng.randint(*config.instrument_ms)
            else:
                durations[node.id] = rng.randint(*config.operator_ms)
            if node.kind == NodeKind.BRANCH:
                sides[node.id] = rng.random() < config.branch_true
        executions.append(ExecutionSpec(int(at), f"{workflow.name}-x{number:05d}", workflow,
                                        durations, sides))
    return WorkflowTrace(config, models, workflows, tuple(executions))
