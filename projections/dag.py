"""The workflow views (issue 4), from pit.dag.events alone, and the readers of them.

View `dag`, four tables:
* dag_executions: one row per execution: workflow, definition hash, status (running,
  completed, failed, cancelled, timed_out), start and end, its nodes counted by state,
  attempts, retries, node failures, restarts, the last checkpoint, and the outputs (the
  ExecutionCompleted JSON, empty when too large for the event) or the error;
* dag_nodes: one row per node an event named, with its current state, as the decider
  keeps it (streams.dag.execution.NodeStatus), except that the decider's PENDING and READY
  are both "pending": readiness follows from the graph and no event records it. A node no
  event named has no row: it is counted as pending (cancelled once its execution ended);
* dag_node_runs: one row per attempt (key: the task id "<execution>/<node>/<attempt>"):
  kind, runner pool, runner, scheduled/started/ended times (a run shorter than the runner's
  `start_report_after_s` reports its start with its end: its start is its end less its
  duration), the duration the runner reported (what the decider averages), status
  (scheduled, running, completed, failed, cancelled: the execution ended or restarted while
  it was in flight), the error, and whether a retry followed it, or a fallback or a skip
  completed its node;
* dag_failures: one row per NodeFailed, ExecutionFailed and ExecutionTimedOut (error type
  "Timeout"), with the error type and message;
* dag_node_starts: one row per NodeStarted: which runner started which attempt, when. An
  attempt started more than once was run again by another runner, its first runner lost
  mid-node (killed, or cut off from `pit up`): every run that reported its start shows
  here (a run reports it once it has lasted 50 ms, or before it runs when fenced).

The rules follow the decider's evolve: when an execution fails, is cancelled or times out,
its unfinished nodes become cancelled (a failed node stays failed); a restart sends every
node not resolved at the checkpoint it goes back to (the last CheckpointTaken, else the
start) back to pending, which the view tells by the sequence of the event that resolved
the node. Every column comes from the events (times are envelope times), so `pit replay
dag` reproduces the tables; the envelope sequence is per execution and the view keeps the
last one applied, so a duplicated event in the log changes nothing.

Batches: the rows a batch touches are loaded once (IN lookups), changed in memory and
written back with executemany (COPY on PostgreSQL), so a 10,000-node execution projects
in seconds. Records are read as decoded (no event objects).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    func,
    or_,
    select,
)

from projections.rows import CHUNK, Rows
from projections.runtime import View, constraint_name, index_name, live_tables
from schemas.codec import Decoded
from streams.dag.execution import task_id
from streams.dag.topics import DAG_EVENTS
from streams.errors import PitError
from streams.log import LogRecord
from streams.sql import Long, insert_rows

log = logging.getLogger(__name__)

_ID = Text  # ids, names and error types: any length a command let through, never a failed write
EXECUTION_STATUSES = ("running", "completed", "failed", "cancelled", "timed_out")
NODE_STATES = ("pending", "scheduled", "running", "retrying", "failed", "completed",
               "fallback", "skipped", "cancelled")
RESOLVED = ("completed", "fallback", "skipped")
UNFINISHED = ("pending", "scheduled", "running", "retrying")  # cancelled when the run ends
IN_FLIGHT = ("scheduled", "running")                           # an attempt out with a runner
TIMEOUT = "Timeout"  # the error type of a workflow timeout (a node's is the decider's too)
_TOTALS = ("attempts", "retries", "node_failures", "restarts")
_FAILURE_COLUMNS = ("execution_id", "sequence", "event", "node_id", "attempt", "kind",
                    "error_type", "message", "retryable", "runner", "occurred_at_ms",
                    "event_id")
_START_COLUMNS = ("execution_id", "sequence", "node_id", "attempt", "runner",
                  "started_at_ms")
_PREFIX = "pit.dag."


def _node_key(execution_id: str, node_id: str) -> tuple[str]:
    return (f"{execution_id}/{node_id}",)


class _Table(Rows):
    """The pool views' batch rows, keyed by one column here, loaded as plain tuples (a
    third faster than mappings), and also by any condition."""

    def load(self, conn: Connection, wanted: Iterable[tuple]) -> None:
        keys = sorted({key for (key,) in wanted} - {key for (key,) in self.rows})
        column = self.table.c[self.keys[0]]
        for start in range(0, len(keys), CHUNK):
            self.load_where(conn, column.in_(keys[start:start + CHUNK]))

    def load_where(self, conn: Connection, *conditions: Any) -> None:
        result = conn.execute(select(self.table).where(*conditions))
        names = tuple(result.keys())
        at = names.index(self.keys[0])
        for values in result:
            key = (values[at],)
            if key not in self.rows:  # a row already in memory is newer
                self.rows[key] = dict(zip(names, values, strict=True))
                self.stored.add(key)


class DagView(View):
    name = "dag"
    topics = (DAG_EVENTS,)
    table_names = ("dag_executions", "dag_nodes", "dag_node_runs", "dag_failures",
                   "dag_node_starts")

    def define(self, metadata: MetaData, suffix: str = "", token: str = "") -> dict[str, Table]:
        executions = Table(
            "dag_executions" + suffix, metadata,
            Column("execution_id", _ID, nullable=False),
            Column("workflow", _ID, nullable=False),
            Column("definition_hash", _ID, nullable=False),
            Column("status", String(16), nullable=False),
            Column("nodes", Integer, nullable=False),
            *(Column(state, Integer, nullable=False) for state in NODE_STATES),
            *(Column(name, Integer, nullable=False) for name in _TOTALS),
            Column("checkpoint", Integer, nullable=False),
            Column("checkpoint_sequence", Long, nullable=False),  # what a restart keeps
            Column("max_concurrency", Integer, nullable=False),
            Column("timeout_ms", Long, nullable=False),
            Column("deadline_at_ms", Long),
            Column("started_at_ms", Long, nullable=False),
            Column("ended_at_ms", Long),
            Column("duration_ms", Long),
            Column("outputs", Text),
            Column("error_type", _ID),
            Column("error_node", _ID),
            Column("error", Text),
            Column("last_sequence", Long, nullable=False),
            Column("updated_at_ms", Long, nullable=False),
            PrimaryKeyConstraint("execution_id",
                                 name=constraint_name("pk", "dag_executions", token)),
            Index(index_name("dag_executions", "status", token), "status", "started_at_ms"),
            Index(index_name("dag_executions", "started_at_ms", token), "started_at_ms"),
        )
        nodes = Table(
            "dag_nodes" + suffix, metadata,
            # one column to look rows up by: without statistics (a table filling inside one
            # transaction) PostgreSQL looked (execution_id, node_id IN ...) up by the
            # execution alone, a scan of its nodes per lookup
            Column("node_key", _ID, nullable=False),  # "<execution>/<node>"
            Column("execution_id", _ID, nullable=False),
            Column("node_id", _ID, nullable=False),
            Column("kind", String(16)),      # known once dispatched
            Column("pool", _ID),
            Column("state", String(16), nullable=False),
            Column("attempt", Integer, nullable=False),  # the last one dispatched
            Column("skip_reason", String(16)),
            Column("resolved_sequence", Long),
            Column("updated_at_ms", Long, nullable=False),
            PrimaryKeyConstraint("node_key", name=constraint_name("pk", "dag_nodes", token)),
            Index(index_name("dag_nodes", "execution_id", token), "execution_id", "node_id"),
        )
        runs = Table(
            "dag_node_runs" + suffix, metadata,
            Column("task_id", _ID, nullable=False),
            Column("execution_id", _ID, nullable=False),
            Column("node_id", _ID, nullable=False),
            Column("attempt", Integer, nullable=False),
            Column("kind", String(16), nullable=False),
            Column("pool", _ID, nullable=False),
            Column("cpu", Float, nullable=False),
            Column("memory_mb", Integer, nullable=False),
            Column("priority", Integer, nullable=False),
            Column("status", String(16), nullable=False),
            Column("runner", _ID),
            Column("scheduled_at_ms", Long, nullable=False),
            Column("started_at_ms", Long),
            Column("ended_at_ms", Long),
            Column("duration_ms", Long),
            Column("deadline_at_ms", Long),
            Column("error_type", _ID),
            Column("message", Text),
            Column("retryable", Boolean),
            Column("retried", Boolean, nullable=False),
            Column("fallback", Boolean, nullable=False),
            Column("fallback_node", _ID),
            Column("skipped", Boolean, nullable=False),
            Column("updated_at_ms", Long, nullable=False),
            PrimaryKeyConstraint("task_id", name=constraint_name("pk", "dag_node_runs", token)),
            Index(index_name("dag_node_runs", "node", token), "execution_id", "node_id",
                  "attempt"),
            Index(index_name("dag_node_runs", "kind", token), "kind", "status"),
        )
        failures = Table(
            "dag_failures" + suffix, metadata,
            Column("execution_id", _ID, nullable=False),
            Column("sequence", Long, nullable=False),
            Column("event", _ID, nullable=False),
            Column("node_id", _ID),
            Column("attempt", Integer),
            Column("kind", String(16)),
            Column("error_type", _ID, nullable=False),
            Column("message", Text, nullable=False),
            Column("retryable", Boolean),
            Column("runner", _ID),
            Column("occurred_at_ms", Long, nullable=False),
            Column("event_id", _ID, nullable=False),
            PrimaryKeyConstraint("execution_id", "sequence",
                                 name=constraint_name("pk", "dag_failures", token)),
            Index(index_name("dag_failures", "error_type", token), "error_type"),
        )
        starts = Table(
            "dag_node_starts" + suffix, metadata,
            Column("execution_id", _ID, nullable=False),
            Column("sequence", Long, nullable=False),
            Column("node_id", _ID, nullable=False),
            Column("attempt", Integer, nullable=False),
            Column("runner", _ID),
            Column("started_at_ms", Long, nullable=False),
            PrimaryKeyConstraint("execution_id", "sequence",
                                 name=constraint_name("pk", "dag_node_starts", token)),
        )
        return {"dag_executions": executions, "dag_nodes": nodes, "dag_node_runs": runs,
                "dag_failures": failures, "dag_node_starts": starts}

    def apply_batch(self, conn: Connection, tables: dict[str, Table],
                    events: Sequence[tuple[Decoded, LogRecord]]) -> None:
        selected = [(d.name[len(_PREFIX):], d.record) for d, _ in events if d.name in _EVENTS]
        if selected:
            batch = _DagBatch(conn, tables, selected)
            batch.run(selected)
            batch.write()


class _DagBatch:
    """One batch of DAG events applied to the rows it touches."""

    def __init__(self, conn: Connection, tables: dict[str, Table],
                 selected: list[tuple[str, dict[str, Any]]]) -> None:
        self.conn = conn
        self.executions = _Table(tables["dag_executions"], ("execution_id",))
        self.nodes = _Table(tables["dag_nodes"], ("node_key",))
        self.runs = _Table(tables["dag_node_runs"], ("task_id",))
        self.failures_table = tables["dag_failures"]
        self.failures: list[tuple[Any, ...]] = []
        self.starts_table = tables["dag_node_starts"]
        self.starts: list[tuple[Any, ...]] = []
        self.unknown = 0  # events of executions whose start the view never saw: skipped
        ids, node_keys, attempts = set(), set(), set()
        for _, record in selected:
            execution_id = record["execution_id"]
            ids.add((execution_id,))
            if node_id := record.get("node_id"):
                node_keys.add(_node_key(execution_id, node_id))
                if (attempt := record.get("attempt")) is not None:
                    attempts.add((task_id(execution_id, node_id, attempt),))
        self.executions.load(conn, ids)
        self.nodes.load(conn, node_keys)
        # skips and fallbacks name no attempt: theirs is the node's last one
        attempts.update((task_id(row["execution_id"], row["node_id"], row["attempt"]),)
                        for row in self.nodes.rows.values() if row["attempt"])
        self.runs.load(conn, attempts)

    def run(self, selected: list[tuple[str, dict[str, Any]]]) -> None:
        for name, record in selected:
            envelope = record["envelope"]
            execution_id, sequence = record["execution_id"], envelope["sequence"]
            execution = self.executions.get((execution_id,))
            if execution is None:
                if name == "ExecutionStarted":
                    self.started(record, sequence, envelope["occurred_at"])
                else:
                    self.unknown += 1
                continue
            if sequence <= execution["last_sequence"]:
                continue  # the same event again (a duplicate in the log): already applied
            execution = self.executions.changed((execution_id,))
            execution.update(last_sequence=sequence, updated_at_ms=envelope["occurred_at"])
            handler = _HANDLERS.get(name)  # ExecutionStarted again: nothing to do
            if handler is not None:
                handler(self, execution, record, envelope)
        if self.unknown:
            log.warning("dag view: %d events of executions it never saw start (the log it"
                        " read began later); `pit replay dag` rebuilds it from the archive",
                        self.unknown)

    def write(self) -> None:
        for rows in (self.executions, self.nodes, self.runs):
            rows.write(self.conn)
        insert_rows(self.conn, self.failures_table, _FAILURE_COLUMNS, self.failures)
        insert_rows(self.conn, self.starts_table, _START_COLUMNS, self.starts)

    # --- helpers ------------------------------------------------------------------------------

    def node(self, execution: dict[str, Any], node_id: str, at_ms: int) -> dict[str, Any]:
        key = _node_key(execution["execution_id"], node_id)
        if key in self.nodes.rows:
            row = self.nodes.changed(key)
        else:
            row = self.nodes.add(key, execution_id=execution["execution_id"], node_id=node_id,
                                 kind=None, pool=None, state="pending", attempt=0,
                                 skip_reason=None, resolved_sequence=None)
        row["updated_at_ms"] = at_ms
        return row

    @staticmethod
    def move(execution: dict[str, Any], node: dict[str, Any], state: str) -> None:
        execution[node["state"]] -= 1
        execution[state] += 1
        node["state"] = state

    def attempt(self, execution_id: str, node_id: str, attempt: int,
                at_ms: int) -> dict[str, Any] | None:
        """An attempt's row to change (None when its NodeScheduled was never seen)."""
        key = (task_id(execution_id, node_id, attempt),)
        if key not in self.runs.rows:
            self.runs.load(self.conn, [key])
            if key not in self.runs.rows:
                return None
        row = self.runs.changed(key)
        row["updated_at_ms"] = at_ms
        return row

    def latest(self, node: dict[str, Any], at_ms: int) -> dict[str, Any] | None:
        if not node["attempt"]:
            return None
        return self.attempt(node["execution_id"], node["node_id"], node["attempt"], at_ms)

    def failure(self, execution: dict[str, Any], event: str, record: dict[str, Any],
                envelope: dict[str, Any], error_type: str, message: str) -> None:
        node_id = record.get("node_id") or None
        node = self.nodes.get(_node_key(execution["execution_id"], node_id)) if node_id else None
        self.failures.append((
            execution["execution_id"], envelope["sequence"], event, node_id,
            record.get("attempt"), node["kind"] if node else None, error_type, message,
            record.get("retryable"), record.get("runner") or None, envelope["occurred_at"],
            envelope["event_id"]))

    def nodes_of(self, execution: dict[str, Any], *conditions: Any) -> list[dict[str, Any]]:
        """The execution's node rows that `conditions` select in the database, and those in
        memory (newer) whatever their values: the caller checks them."""
        execution_id = execution["execution_id"]
        table = self.nodes.table
        self.nodes.load_where(self.conn, table.c.execution_id == execution_id, *conditions)
        return [row for row in self.nodes.rows.values() if row["execution_id"] == execution_id]

    def reset(self, execution: dict[str, Any], nodes: list[dict[str, Any]], state: str,
              at_ms: int) -> None:
        """These nodes go to `state`; the attempts of those in flight are abandoned (their
        results will not count)."""
        flying = [n for n in nodes if n["state"] in IN_FLIGHT and n["attempt"]]
        self.runs.load(self.conn, [(task_id(n["execution_id"], n["node_id"], n["attempt"]),)
                                   for n in flying])
        for node in flying:
            if run := self.latest(node, at_ms):
                run.update(status="cancelled", ended_at_ms=at_ms)
        for node in nodes:
            self.nodes.changed(_node_key(node["execution_id"], node["node_id"]))
            self.move(execution, node, state)
            node.update(resolved_sequence=None, skip_reason=None, updated_at_ms=at_ms)

    def end(self, execution: dict[str, Any], status: str, at_ms: int, **fields: Any) -> None:
        execution.update(status=status, ended_at_ms=at_ms,
                         duration_ms=at_ms - execution["started_at_ms"], **fields)
        if status == "completed":
            return  # every node is resolved already
        nodes = self.nodes_of(execution, self.nodes.table.c.state.in_(UNFINISHED))
        self.reset(execution, [n for n in nodes if n["state"] in UNFINISHED], "cancelled",
                   at_ms)
        # the nodes no event named are pending too
        execution["cancelled"] += execution["pending"]
        execution["pending"] = 0

    # --- the events -----------------------------------------------------------------------------

    def started(self, r: dict[str, Any], sequence: int, at_ms: int) -> None:
        self.executions.add(
            (r["execution_id"],), workflow=r["workflow"], definition_hash=r["definition_hash"],
            status="running", nodes=r["nodes"], **{**dict.fromkeys(NODE_STATES, 0),
                                                    "pending": r["nodes"]},
            **dict.fromkeys(_TOTALS, 0), checkpoint=0, checkpoint_sequence=sequence,
            max_concurrency=r["max_concurrency"], timeout_ms=r["timeout_ms"],
            deadline_at_ms=r["deadline_at"] or None, started_at_ms=at_ms, ended_at_ms=None,
            duration_ms=None, outputs=None, error_type=None, error_node=None, error=None,
            last_sequence=sequence, updated_at_ms=at_ms)

    def scheduled(self, ex: dict, r: dict, env: dict) -> None:
        at = env["occurred_at"]
        node = self.node(ex, r["node_id"], at)
        node.update(kind=r["kind"], pool=r["pool"], attempt=r["attempt"], skip_reason=None,
                    resolved_sequence=None)
        self.move(ex, node, "scheduled")
        ex["attempts"] += 1
        self.runs.add(
            (task_id(ex["execution_id"], r["node_id"], r["attempt"]),),
            execution_id=ex["execution_id"], node_id=r["node_id"], attempt=r["attempt"],
            kind=r["kind"], pool=r["pool"], cpu=r["cpu"], memory_mb=r["memory_mb"],
            priority=r["priority"], status="scheduled", runner=None, scheduled_at_ms=at,
            started_at_ms=None, ended_at_ms=None, duration_ms=None,
            deadline_at_ms=r["deadline_at"] or None, error_type=None, message=None,
            retryable=None, retried=False, fallback=False, fallback_node=None, skipped=False,
            updated_at_ms=at)

    def node_started(self, ex: dict, r: dict, env: dict) -> None:
        at = env["occurred_at"]
        self.starts.append((ex["execution_id"], env["sequence"], r["node_id"], r["attempt"],
                            r["runner"] or None, at))
        self.move(ex, self.node(ex, r["node_id"], at), "running")
        if run := self.attempt(ex["execution_id"], r["node_id"], r["attempt"], at):
            run.update(status="running", started_at_ms=at, runner=r["runner"] or None)

    def _ended_attempt(self, ex: dict, r: dict, at: int, status: str, **fields: Any) -> None:
        if run := self.attempt(ex["execution_id"], r["node_id"], r["attempt"], at):
            if run["started_at_ms"] is None and r["runner"]:
                # a short run reports its start with its end (streams/dag/runner.py)
                run["started_at_ms"] = at - r["duration_ms"]
            run.update(status=status, ended_at_ms=at, duration_ms=r["duration_ms"],
                       runner=r["runner"] or run["runner"], **fields)

    def completed(self, ex: dict, r: dict, env: dict) -> None:
        at = env["occurred_at"]
        node = self.node(ex, r["node_id"], at)
        self.move(ex, node, "completed")
        node["resolved_sequence"] = env["sequence"]
        self._ended_attempt(ex, r, at, "completed")

    def failed(self, ex: dict, r: dict, env: dict) -> None:
        at = env["occurred_at"]
        self.move(ex, self.node(ex, r["node_id"], at), "failed")
        ex["node_failures"] += 1
        self._ended_attempt(ex, r, at, "failed", error_type=r["error_type"],
                            message=r["message"], retryable=r["retryable"])
        self.failure(ex, "NodeFailed", r, env, r["error_type"], r["message"])

    def retry_scheduled(self, ex: dict, r: dict, env: dict) -> None:
        at = env["occurred_at"]
        self.move(ex, self.node(ex, r["node_id"], at), "retrying")
        ex["retries"] += 1
        if run := self.attempt(ex["execution_id"], r["node_id"], r["attempt"], at):
            run["retried"] = True

    def skipped(self, ex: dict, r: dict, env: dict) -> None:
        at = env["occurred_at"]
        node = self.node(ex, r["node_id"], at)
        self.move(ex, node, "skipped")
        node.update(resolved_sequence=env["sequence"], skip_reason=r["reason"])
        if r["reason"] == "recovery" and (run := self.latest(node, at)):
            run["skipped"] = True

    def fallback_used(self, ex: dict, r: dict, env: dict) -> None:
        at = env["occurred_at"]
        node = self.node(ex, r["node_id"], at)
        self.move(ex, node, "fallback")
        node["resolved_sequence"] = env["sequence"]
        if run := self.latest(node, at):
            run.update(fallback=True, fallback_node=r["fallback_node"] or None)

    def checkpoint_taken(self, ex: dict, r: dict, env: dict) -> None:
        ex.update(checkpoint=r["checkpoint"], checkpoint_sequence=env["sequence"])

    def restarted(self, ex: dict, r: dict, env: dict) -> None:
        at, base = env["occurred_at"], ex["checkpoint_sequence"]
        ex["restarts"] += 1
        table = self.nodes.table
        nodes = self.nodes_of(ex, or_(table.c.state.not_in(RESOLVED),
                                      table.c.resolved_sequence > base))
        # what was resolved at the checkpoint stays; the rest runs again
        self.reset(ex, [n for n in nodes if n["state"] != "pending" and not (
            n["state"] in RESOLVED and n["resolved_sequence"] <= base)], "pending", at)

    def execution_completed(self, ex: dict, r: dict, env: dict) -> None:
        self.end(ex, "completed", env["occurred_at"], outputs=r["outputs"])

    def execution_failed(self, ex: dict, r: dict, env: dict) -> None:
        self.failure(ex, "ExecutionFailed", r, env, r["error_type"], r["message"])
        self.end(ex, "failed", env["occurred_at"], error_type=r["error_type"] or None,
                 error_node=r["node_id"] or None, error=r["message"])

    def execution_cancelled(self, ex: dict, r: dict, env: dict) -> None:
        self.end(ex, "cancelled", env["occurred_at"], error=r["reason"])

    def execution_timed_out(self, ex: dict, r: dict, env: dict) -> None:
        message = f"timed out after {r['timeout_ms']} ms"
        self.failure(ex, "ExecutionTimedOut", r, env, TIMEOUT, message)
        self.end(ex, "timed_out", env["occurred_at"], error_type=TIMEOUT, error=message)


_HANDLERS = {
    "NodeScheduled": _DagBatch.scheduled,
    "NodeStarted": _DagBatch.node_started,
    "NodeCompleted": _DagBatch.completed,
    "NodeFailed": _DagBatch.failed,
    "NodeRetryScheduled": _DagBatch.retry_scheduled,
    "NodeSkipped": _DagBatch.skipped,
    "FallbackUsed": _DagBatch.fallback_used,
    "CheckpointTaken": _DagBatch.checkpoint_taken,
    "ExecutionRestarted": _DagBatch.restarted,
    "ExecutionCompleted": _DagBatch.execution_completed,
    "ExecutionFailed": _DagBatch.execution_failed,
    "ExecutionCancelled": _DagBatch.execution_cancelled,
    "ExecutionTimedOut": _DagBatch.execution_timed_out,
}
_EVENTS = frozenset(_PREFIX + name for name in ("ExecutionStarted", *_HANDLERS))


# --- readers (the API) --------------------------------------------------------------------------

_INTERNAL = ("checkpoint_sequence", "last_sequence", "outputs", *NODE_STATES)


def dag_tables() -> dict[str, Table]:
    return live_tables(DagView())


def _execution(row: Any) -> dict[str, Any]:
    out = {k: v for k, v in dict(row).items() if k not in _INTERNAL}
    counts = {state: row[state] for state in NODE_STATES}
    done = sum(counts[state] for state in RESOLVED)
    out.update(sequence=row["last_sequence"], counts=counts, done=done,
               progress=done / row["nodes"] if row["nodes"] else 0.0)
    return out


def list_executions(engine: Engine, status: str | None = None, limit: int = 100
                    ) -> list[dict[str, Any]]:
    """Executions, newest first; `status` one of EXECUTION_STATUSES."""
    if status is not None and status not in EXECUTION_STATUSES:
        raise PitError(f"unknown execution status {status!r}; statuses: "
                       f"{', '.join(EXECUTION_STATUSES)}")
    table = dag_tables()["dag_executions"]
    stmt = select(table).order_by(table.c.started_at_ms.desc(), table.c.execution_id)
    if status is not None:
        stmt = stmt.where(table.c.status == status)
    with engine.connect() as conn:
        return [_execution(row) for row in conn.execute(stmt.limit(limit)).mappings()]


def execution(engine: Engine, execution_id: str) -> dict[str, Any] | None:
    """One execution with its outputs (parsed; None while running or when they were too
    large for the event); None for an execution the view does not know."""
    table = dag_tables()["dag_executions"]
    with engine.connect() as conn:
        row = conn.execute(select(table).where(table.c.execution_id == execution_id)
                           ).mappings().first()
    if row is None:
        return None
    return {**_execution(row), "outputs": json.loads(row["outputs"]) if row["outputs"] else None}


def _known(conn: Connection, tables: dict[str, Table], execution_id: str) -> bool:
    table = tables["dag_executions"]
    return conn.execute(select(table.c.execution_id)
                        .where(table.c.execution_id == execution_id)).first() is not None


def execution_nodes(engine: Engine, execution_id: str, *, state: str | None = None,
                    node_id: str | None = None, limit: int = 1000, offset: int = 0
                    ) -> dict[str, Any] | None:
    """The nodes events named (by node id), each with its attempts, oldest first, and each
    attempt with its starts (more than one: run again by another runner); `count` is how
    many match `state` (and `node_id`). None for an unknown execution."""
    if state is not None and state not in NODE_STATES:
        raise PitError(f"unknown node state {state!r}; states: {', '.join(NODE_STATES)}")
    tables = dag_tables()
    nodes, runs, starts = tables["dag_nodes"], tables["dag_node_runs"], tables["dag_node_starts"]
    where = [nodes.c.execution_id == execution_id]
    if state is not None:
        where.append(nodes.c.state == state)
    if node_id is not None:
        where.append(nodes.c.node_id == node_id)
    with engine.connect() as conn:
        if not _known(conn, tables, execution_id):
            return None
        count = conn.execute(select(func.count()).select_from(nodes).where(*where)).scalar_one()
        page = [dict(row) for row in conn.execute(
            select(nodes).where(*where).order_by(nodes.c.node_id).limit(limit).offset(offset)
        ).mappings()]
        attempts: dict[str, list[dict[str, Any]]] = {}
        started: dict[str, list[dict[str, Any]]] = {}  # task id -> its runs
        ids = [node["node_id"] for node in page]
        for start in range(0, len(ids), CHUNK):
            for row in conn.execute(
                    select(runs).where(runs.c.execution_id == execution_id,
                                       runs.c.node_id.in_(ids[start:start + CHUNK]))
                    .order_by(runs.c.node_id, runs.c.attempt)).mappings():
                attempts.setdefault(row["node_id"], []).append(
                    {k: v for k, v in dict(row).items() if k not in ("execution_id", "node_id")})
            for row in conn.execute(
                    select(starts).where(starts.c.execution_id == execution_id,
                                         starts.c.node_id.in_(ids[start:start + CHUNK]))
                    .order_by(starts.c.sequence)).mappings():
                started.setdefault(task_id(execution_id, row["node_id"], row["attempt"]),
                                   []).append({"runner": row["runner"],
                                               "started_at_ms": row["started_at_ms"]})
    for runs_of in attempts.values():
        for run in runs_of:
            run["starts"] = started.get(run["task_id"], [])
    for node in page:
        del node["node_key"], node["execution_id"], node["resolved_sequence"]
        node["runs"] = attempts.get(node["node_id"], [])
    return {"execution_id": execution_id, "count": count, "offset": offset, "nodes": page}


def node_states(engine: Engine, execution_id: str) -> dict[str, dict[str, Any]]:
    """Every node events named, with its state, kind and its last attempt's duration and
    start: one query, for drawing a whole execution (projections/console/graph.py)."""
    tables = dag_tables()
    nodes, runs = tables["dag_nodes"], tables["dag_node_runs"]
    stmt = (select(nodes.c.node_id, nodes.c.state, nodes.c.kind, runs.c.duration_ms,
                   runs.c.started_at_ms)
            .select_from(nodes.outerjoin(runs, (runs.c.execution_id == nodes.c.execution_id)
                                         & (runs.c.node_id == nodes.c.node_id)
                                         & (runs.c.attempt == nodes.c.attempt)))
            .where(nodes.c.execution_id == execution_id))
    with engine.connect() as conn:
        return {row["node_id"]: dict(row) for row in conn.execute(stmt).mappings()}


def execution_failures(engine: Engine, execution_id: str) -> list[dict[str, Any]] | None:
    """Its failures in the order they happened; None for an unknown execution."""
    tables = dag_tables()
    failures = tables["dag_failures"]
    with engine.connect() as conn:
        if not _known(conn, tables, execution_id):
            return None
        return [{k: v for k, v in dict(row).items() if k != "execution_id"}
                for row in conn.execute(select(failures)
                                        .where(failures.c.execution_id == execution_id)
                                        .order_by(failures.c.sequence)).mappings()]
