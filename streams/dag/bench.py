"""Micro-benchmarks of the execution decider, pure and in process (`bench_schedule`).

A 10,000-node layered DAG (each node fed by 1-3 nodes of earlier layers) runs to completion
with simulated runners that start and complete every task in dispatch order. Measured:
* dag_schedule_p99_ms: one runner report's decision as the processor makes it (decide, then
  evolve over its events), p99 over every ReportNodeCompleted: recording the result,
  settling the node's edges and dispatching what became ready;
* dag_checkpoint_ms: TakeCheckpoint with half the nodes done (the snapshot is built and
  compressed in decide), the median of 5;
* dag_snapshot_kb and dag_restore_ms: that snapshot's size, and restoring a state from it.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from streams.dag.definition import Workflow, layered_dag
from streams.dag.execution import (
    CheckpointTaken,
    Definitions,
    ExecutionState,
    NodeScheduled,
    ReportNodeCompleted,
    ReportNodeStarted,
    StartExecution,
    TakeCheckpoint,
    decide,
    evolve,
    initial_state,
    restore,
)
from streams.decider import Message
from streams.pool.bench import percentile

T0 = 1_700_000_000_000


class MemoryDefinitionStore:
    """A `DefinitionStore` in a dict (the benchmark does no I/O)."""

    def __init__(self) -> None:
        self._workflows: dict[str, Workflow] = {}

    def put(self, workflow: Workflow) -> str:
        self._workflows[workflow.content_hash()] = workflow
        return workflow.content_hash()

    def get(self, definition_hash: str) -> Workflow:
        return self._workflows[definition_hash]

    def __contains__(self, definition_hash: object) -> bool:
        return definition_hash in self._workflows


class _Run:
    """One execution driven by simulated runners; `step` times each decision."""

    def __init__(self, definitions: Definitions, execution_id: str) -> None:
        self.definitions = definitions
        self.state: ExecutionState = initial_state(execution_id)
        self.now = T0
        self.tasks: list[NodeScheduled] = []

    def step(self, command: Message) -> tuple[float, list[Message]]:
        self.now += 1
        started = time.perf_counter()
        events = decide(self.state, command, self.now, self.definitions)
        state = self.state
        for event in events:
            state = evolve(state, event, self.now, self.definitions)
        elapsed = time.perf_counter() - started
        self.state = state
        self.tasks.extend(e for e in events if isinstance(e, NodeScheduled))
        return elapsed, events


def bench_schedule(n: int = 10_000) -> dict[str, Any]:
    store = MemoryDefinitionStore()
    definitions = Definitions(store)
    workflow = layered_dag(n, seed=1, layers=50)
    run = _Run(definitions, "bench")
    run.step(StartExecution("bench", definition_hash=store.put(workflow)))
    decisions: list[float] = []
    checkpoint_ms: list[float] = []
    snapshot = b""
    done = 0
    while run.tasks:
        task = run.tasks.pop(0)
        eid, node, attempt = task.execution_id, task.node_id, task.attempt
        run.step(ReportNodeStarted(eid, node, attempt))
        output = json.dumps({"out": sum(json.loads(task.inputs).values() or [1])})
        elapsed, _ = run.step(ReportNodeCompleted(eid, node, attempt, output, duration_ms=5))
        decisions.append(elapsed)
        done += 1
        if done == n // 2:
            for _ in range(5):
                elapsed, events = run.step(TakeCheckpoint(eid))
                checkpoint_ms.append(elapsed * 1000)
                snapshot = next(e for e in events if isinstance(e, CheckpointTaken)).snapshot
    started = time.perf_counter()
    restore(snapshot, (), definitions)
    restore_ms = (time.perf_counter() - started) * 1000
    return {
        "dag_schedule_p99_ms": round(percentile(decisions, 0.99) * 1000, 3),
        "dag_checkpoint_ms": round(statistics.median(checkpoint_ms), 2),
        "dag_snapshot_kb": round(len(snapshot) / 1024, 1),
        "dag_restore_ms": round(restore_ms, 1),
    }


if __name__ == "__main__":
    print(json.dumps(bench_schedule()))
