"""The workflows' live Prometheus metrics (streams.metrics), from the DAG events.

`DagMetrics` is a projector observer (`Projector(observers=...)`), like `PoolMetrics`: it
sees each event once, when the projector archives it, never on a replay, and reads the
decoded records as they are:
* node durations (the runner's duration_ms) by node kind and outcome, completions by kind
  (throughput: their rate), failures by kind and error type (error rates: failures over
  completions plus failures), executions started and ended by final status.
A NodeCompleted or NodeFailed does not carry its node's kind: it is read from the
`dag_node_runs` rows of the batch's attempts, which the projector committed just before.
A duplicated event in the log (same execution sequence again) is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine, select

from projections.dag import DagView
from projections.runtime import FreshEvents, live_tables
from streams import metrics
from streams.archive import Entry
from streams.dag.dispatch import ATTEMPT_ENDED
from streams.dag.execution import ENDINGS, task_id
from streams.dag.topics import DAG_EVENTS

EXECUTIONS_LIMIT = 100_000  # executions whose last sequence is remembered (for duplicates)
UNKNOWN = "unknown"         # the kind of an attempt the view has no row for
_CHUNK = 500
_ENDED = {event.avro_name: status for event, status in ENDINGS.items()}


class DagMetrics:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.runs = live_tables(DagView())["dag_node_runs"]
        self.fresh = FreshEvents(DAG_EVENTS, EXECUTIONS_LIMIT)

    def __call__(self, entries: Sequence[Entry]) -> None:
        ended = []  # (name, record) of node attempts that ended
        for name, record, _ in self.fresh(entries):
            if name in ATTEMPT_ENDED:
                ended.append((name, record))
            elif name in _ENDED:
                metrics.DAG_EXECUTIONS_ENDED.labels(_ENDED[name]).inc()
            elif name == "pit.dag.ExecutionStarted":
                metrics.DAG_EXECUTIONS_STARTED.inc()
        if ended:
            self._attempts(ended)

    def _attempts(self, ended: list[tuple[str, dict]]) -> None:
        keys = [task_id(r["execution_id"], r["node_id"], r["attempt"]) for _, r in ended]
        kinds = self._kinds(sorted(set(keys)))
        for (name, record), key in zip(ended, keys, strict=True):
            kind = kinds.get(key, UNKNOWN)
            seconds = record["duration_ms"] / 1000
            if name == "pit.dag.NodeCompleted":
                metrics.DAG_NODE_SECONDS.labels(kind, "completed").observe(seconds)
                metrics.DAG_NODES_COMPLETED.labels(kind).inc()
            else:
                metrics.DAG_NODE_SECONDS.labels(kind, "failed").observe(seconds)
                metrics.DAG_NODE_FAILURES.labels(kind, record["error_type"]).inc()

    def _kinds(self, keys: list[str]) -> dict[str, str]:
        runs = self.runs
        found: dict[str, str] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(keys), _CHUNK):
                found.update(conn.execute(select(runs.c.task_id, runs.c.kind).where(
                    runs.c.task_id.in_(keys[start:start + _CHUNK]))).all())
        return found
