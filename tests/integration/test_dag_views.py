"""The workflow views (`dag`), their API and live metrics, on SQLite and PostgreSQL, fed with
the events the DAG decider really emits: commands are encoded and decided by
`Processor.handle`, exactly as the DAG processor does over Kafka, and the views are
compared with the decider's own state (node states, attempts, durations)."""

from __future__ import annotations

import json
import logging
import random
import time
import zlib
from collections import Counter
from dataclasses import replace
from itertools import pairwise

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from sqlalchemy import Engine, select

from projections.api import make_app
from projections.dag import DagView
from projections.dag_metrics import DagMetrics
from projections.replay import rebuild
from projections.runtime import Projector, live_tables
from schemas.codec import Codec
from streams.components import COMPONENTS, views
from streams.dag.bench import MemoryDefinitionStore
from streams.dag.definition import (
    Backoff,
    Condition,
    Node,
    NodeKind,
    Recovery,
    Strategy,
    Workflow,
    WorkflowBuilder,
    layered_dag,
)
from streams.dag.execution import (
    DAG,
    CancelExecution,
    Definitions,
    ExecutionState,
    NodeStatus,
    ReportNodeCompleted,
    ReportNodeFailed,
    ReportNodeStarted,
    StartExecution,
    TakeCheckpoint,
    TimerFired,
    execution_decider,
)
from streams.dag.topics import DAG_COMMANDS, DAG_EVENTS
from streams.decider import Message, to_record
from streams.log import LogRecord
from streams.processor import Processor

T0 = 1_700_000_000_000
TABLES = ("dag_executions", "dag_nodes", "dag_node_runs", "dag_failures", "dag_node_starts")
KEYS = {"dag_executions": ("execution_id",), "dag_nodes": ("node_key",),
        "dag_node_runs": ("task_id",), "dag_failures": ("execution_id", "sequence"),
        "dag_node_starts": ("execution_id", "sequence")}
RETRY = Recovery(Strategy.RETRY, max_attempts=3, backoff=Backoff(initial_ms=100, max_ms=400))


class Flow:
    """The DAG processor without Kafka: each command is encoded, decided by
    `Processor.handle`, and its events kept as the log records the projector reads (on the
    partition of their execution, as the processor writes them)."""

    def __init__(self, codec: Codec, definitions: Definitions | None = None,
                 partitions: int = 4) -> None:
        self.codec, self.partitions = codec, partitions
        self.processor = Processor(DAG if definitions is None else
                                   execution_decider(definitions), codec)
        self.records: list[LogRecord] = []
        self.now, self.commands = T0, 0
        self.offsets: dict[int, int] = {}

    def send(self, command: Message, *, after_ms: int = 10) -> dict:
        self.now += after_ms
        self.commands += 1
        meta = {"command_id": f"cmd-{self.commands}", "issued_at": self.now,
                "issued_by": "test", "correlation_id": None}
        value = self.codec.encode(command.avro_name, {"meta": meta, **to_record(command)})
        partition = zlib.crc32(command.execution_id.encode()) % self.partitions
        outputs = self.processor.handle([LogRecord(DAG_COMMANDS, partition, self.commands,
                                                   self.now, command.execution_id.encode(),
                                                   value)])
        outcome = None
        for out in outputs:
            if out.topic == DAG_EVENTS:
                self.records.append(self.record(out.partition, out.key, out.value,
                                                out.timestamp_ms))
            else:
                outcome = self.codec.decode(out.value).record
        return outcome

    def record(self, partition: int, key: bytes | None, value: bytes, at_ms: int) -> LogRecord:
        offset = self.offsets[partition] = self.offsets.get(partition, -1) + 1
        return LogRecord(DAG_EVENTS, partition, offset, at_ms, key, value)

    def ok(self, command: Message, **options) -> dict:
        outcome = self.send(command, **options)
        assert outcome["status"] == "ACCEPTED", outcome["reason"]
        return outcome

    def state(self, execution_id: str) -> ExecutionState:
        return self.processor.state(execution_id)

    def attempt(self, execution_id: str, node_id: str) -> int:
        return self.state(execution_id).node(node_id).attempt

    def start(self, execution_id: str, workflow: Workflow, **options) -> None:
        self.ok(StartExecution(execution_id, workflow.canonical_json(), **options))

    def begin(self, execution_id: str, node_id: str, runner: str = "r1") -> None:
        self.ok(ReportNodeStarted(execution_id, node_id, self.attempt(execution_id, node_id),
                                  runner), after_ms=5)

    def complete(self, execution_id: str, node_id: str, value=1, *, output: str | None = None,
                 duration_ms: int = 25, begin: bool = True, after_ms: int = 30) -> None:
        if begin:
            self.begin(execution_id, node_id)
        self.ok(ReportNodeCompleted(
            execution_id, node_id, self.attempt(execution_id, node_id),
            json.dumps({"out": value}) if output is None else output,
            duration_ms=duration_ms, runner="r1"), after_ms=after_ms)

    def fail(self, execution_id: str, node_id: str, error: str = "Boom", message: str = "",
             *, retryable: bool = True, duration_ms: int = 15) -> None:
        self.begin(execution_id, node_id, "r2")
        self.ok(ReportNodeFailed(execution_id, node_id, self.attempt(execution_id, node_id),
                                 error, message, retryable, duration_ms, "r2"), after_ms=20)

    def fire(self, execution_id: str, timer: str, *, after_ms: int = 500) -> None:
        self.ok(TimerFired(execution_id, f"{execution_id}/{timer}"), after_ms=after_ms)

    def events(self) -> list[tuple[str, dict]]:
        return [(d.name, d.record) for d in map(self.codec.decode,
                                                 (r.value for r in self.records))]


@pytest.fixture
def flow(codec: Codec) -> Flow:
    return Flow(codec)


def op(node_id: str, operator: str = "identity", **fields) -> Node:
    return Node(node_id, NodeKind.OPERATOR, operator=operator, **fields)


def workflow(name: str, *nodes: Node, edges: tuple[tuple[str, str], ...] = (),
             **settings) -> Workflow:
    builder = WorkflowBuilder(name, **settings)
    for node in nodes:
        builder.node(node)
    for source, target in edges:
        builder.edge(source, target)
    return builder.build()


def chain(name: str, *ids: str, **fields) -> Workflow:
    nodes = [op(ids[0], constants={"value": 1}, **fields)]
    nodes += [op(i, "add", constants={"b": 1}, **fields) for i in ids[1:]]
    return workflow(name, *nodes, edges=tuple((a, f"{b}.a") for a, b in pairwise(ids)))


def story(flow: Flow) -> None:
    """Seven executions, interleaved: a branch, retries (one after a node timeout),
    fallbacks to a value and to a node, a skip, a restart from a checkpoint, a failure, a
    cancel and a workflow timeout."""
    flow.start("ok", workflow(
        "branching", op("src", constants={"value": 5}),
        Node("br", NodeKind.BRANCH, condition=Condition("gt", 3)), op("yes"), op("yes2"),
        op("no"), op("join", "collect"),
        edges=(("src", "br.value"), ("br.true", "yes.value"), ("yes", "yes2.value"),
               ("br.false", "no.value"), ("yes2", "join.a"), ("no", "join.b"))))
    flow.start("retry", chain("retrying", "a", "b", recovery=RETRY, timeout_ms=400))
    flow.start("fallbacks", workflow(
        "fallbacks", op("fast", constants={"value": 1},
                        recovery=Recovery(Strategy.FALLBACK, fallback_node="slow")),
        op("slow", constants={"value": 2}), op("after", "add", constants={"b": 1}),
        op("v", constants={"value": 3}, recovery=Recovery(Strategy.FALLBACK, fallback_value=9)),
        op("s", constants={"value": 4}, recovery=Recovery(Strategy.SKIP, default_output=0)),
        edges=(("fast", "after.a"),)))
    flow.start("restart", chain("restarting", "a", "b", "c",
                                recovery=Recovery(Strategy.RESTART, max_attempts=2)))
    flow.start("failed", workflow("failing", op("a", constants={"value": 1}),
                                  op("b", constants={"value": 1}, timeout_ms=5000),
                                  op("c", "add", constants={"b": 1}),
                                  edges=(("b", "c.a"),)), timeout_ms=60_000)
    flow.start("cancelled", chain("cancelling", "a", "b", "c"))
    flow.start("timedout", chain("slowpoke", "a", "b"), timeout_ms=2000)

    flow.complete("ok", "src", 5, duration_ms=40, begin=False)  # short: no start report
    flow.fail("retry", "a", "Flaky", "try again")
    flow.complete("ok", "br", output=json.dumps({"false": 5}), duration_ms=3)  # yes, yes2 skip
    flow.fail("fallbacks", "fast", "Boom", "fast broke")                      # waits for slow
    flow.fire("retry", "a/retry/1")
    flow.complete("retry", "a", 1, duration_ms=50)
    flow.complete("restart", "a", 1)
    flow.ok(TakeCheckpoint("restart"))
    flow.complete("restart", "b", 2)
    flow.fail("fallbacks", "v", "ValueError", "bad value")                    # fallback value
    flow.begin("retry", "b")
    flow.fire("retry", "b/timeout/1")                                         # Timeout, retried
    flow.fail("restart", "c", "Crash", "c crashed")                           # back to b
    flow.complete("ok", "no", 5, duration_ms=7)
    flow.complete("fallbacks", "slow", 2, duration_ms=80)                     # fast falls back
    flow.fail("fallbacks", "s", "Nope")                                       # skipped
    flow.begin("cancelled", "a")
    flow.ok(CancelExecution("cancelled", "user asked"))
    flow.fire("retry", "b/retry/1")
    flow.complete("retry", "b", 2, duration_ms=60)
    flow.complete("restart", "b", 2, duration_ms=11)
    flow.complete("restart", "c", 3, duration_ms=12)
    flow.complete("fallbacks", "after", 3)
    flow.begin("ok", "join", "r1")
    flow.begin("ok", "join", "r3")  # r1 was lost mid-node: r3 ran the task again
    flow.complete("ok", "join", [None, 5], begin=False)
    flow.begin("failed", "b")
    flow.fail("failed", "a", "Fatal", "a is broken", retryable=False)
    flow.begin("timedout", "a")
    flow.fire("timedout", "timeout")


# --- reading the views ------------------------------------------------------------------------

def tables() -> dict:
    return live_tables(DagView())


def rows(engine: Engine, name: str) -> list[dict]:
    table = tables()[name]
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            select(table).order_by(*(table.c[k] for k in KEYS[name]))).mappings()]


def snapshot(engine: Engine) -> dict[str, list[dict]]:
    return {name: rows(engine, name) for name in TABLES}


def node_state(status: NodeStatus) -> str:
    """The view's name for a decider node status: readiness is not an event."""
    return "pending" if status in (NodeStatus.PENDING, NodeStatus.READY) else status.name.lower()


def assert_matches_decider(engine: Engine, flow: Flow) -> None:
    """Every execution's rows say what the decider's state says."""
    executions = {r["execution_id"]: r for r in rows(engine, "dag_executions")}
    nodes = {(r["execution_id"], r["node_id"]): r for r in rows(engine, "dag_nodes")}
    runs: dict[tuple[str, str], list[dict]] = {}
    for run in rows(engine, "dag_node_runs"):
        runs.setdefault((run["execution_id"], run["node_id"]), []).append(run)
    assert set(executions) == set(flow.processor.entities)
    for execution_id in executions:
        s, row = flow.state(execution_id), executions[execution_id]
        counts = Counter(node_state(status) for status in NodeStatus for _ in
                         range(s.counts[status]))
        assert {state: row[state] for state in counts} == dict(counts), execution_id
        assert sum(row[state] for state in {node_state(st) for st in NodeStatus}) == \
            s.plan.size == row["nodes"]
        assert (row["status"], row["started_at_ms"], row["ended_at_ms"], row["checkpoint"],
                row["attempts"], row["restarts"], row["definition_hash"]) == (
            s.status.name.lower(), s.started_at, s.ended_at or None, s.checkpoint,
            sum(n.attempt for n in s.nodes), sum(n.restarts for n in s.nodes),
            s.plan.definition_hash), execution_id
        if row["status"] == "failed":
            assert s.error == f"node {row['error_node']}: {row['error_type']}: {row['error']}"
        elif row["status"] in ("cancelled", "timed_out"):
            assert s.error == row["error"]
        durations: dict[str, list[int]] = {}
        unnamed = "pending" if s.running else "cancelled"  # nodes no event named
        for i, node_id in enumerate(s.plan.ids):
            run = s.nodes[i]
            node = nodes.get((execution_id, node_id))
            assert ((node["state"], node["attempt"]) if node else (unnamed, 0)) == (
                node_state(run.status), run.attempt), (execution_id, node_id)
            attempts = runs.get((execution_id, node_id), [])
            assert [a["attempt"] for a in attempts] == list(range(1, run.attempt + 1))
            if run.status in (NodeStatus.SCHEDULED, NodeStatus.RUNNING, NodeStatus.COMPLETED):
                assert attempts[-1]["status"] == run.status.name.lower(), (execution_id, node_id)
            for a in attempts:
                assert a["kind"] == s.plan.node(i).kind.value
                if a["status"] == "completed":
                    durations.setdefault(a["kind"], []).append(a["duration_ms"])
        assert tuple((k, len(ms), sum(ms)) for k, ms in sorted(durations.items())) == \
            s.durations, execution_id
    failures = [(name.rsplit(".", 1)[1], r["execution_id"], r["envelope"]["sequence"],
                 r.get("error_type") or "Timeout") for name, r in flow.events()
                if name.rsplit(".", 1)[1] in ("NodeFailed", "ExecutionFailed",
                                              "ExecutionTimedOut")]
    assert [(f["event"], f["execution_id"], f["sequence"], f["error_type"])
            for f in rows(engine, "dag_failures")] == sorted(failures, key=lambda f: f[1:3])


# --- the views --------------------------------------------------------------------------------

def test_views_equal_the_deciders_state(engine: Engine, flow: Flow) -> None:
    story(flow)
    result = Projector(engine, views()).apply_batch(flow.records)
    assert result.applied["dag"] == len(flow.records)
    assert_matches_decider(engine, flow)

    executions = {r["execution_id"]: r for r in rows(engine, "dag_executions")}
    assert {e: r["status"] for e, r in executions.items()} == {
        "ok": "completed", "retry": "completed", "fallbacks": "completed",
        "restart": "completed", "failed": "failed", "cancelled": "cancelled",
        "timedout": "timed_out"}
    ok = executions["ok"]
    assert (ok["workflow"], ok["nodes"], ok["completed"], ok["skipped"], ok["attempts"]) == (
        "branching", 6, 4, 2, 4)
    assert json.loads(ok["outputs"]) == {"join": {"out": [None, 5]}}
    assert ok["duration_ms"] == ok["ended_at_ms"] - ok["started_at_ms"] > 0
    assert (executions["retry"]["retries"], executions["retry"]["node_failures"]) == (2, 2)
    assert (executions["fallbacks"]["fallback"], executions["fallbacks"]["skipped"]) == (2, 1)
    assert (executions["restart"]["restarts"], executions["restart"]["checkpoint"]) == (1, 1)
    failed = executions["failed"]
    assert (failed["error_node"], failed["error_type"], failed["error"]) == (
        "a", "Fatal", "a is broken")
    assert (failed["failed"], failed["cancelled"], failed["pending"]) == (1, 2, 0)
    assert (executions["cancelled"]["cancelled"], executions["cancelled"]["error"]) == (
        3, "user asked")
    assert executions["timedout"]["error"] == "timed out after 2000 ms"

    runs = {r["task_id"]: r for r in rows(engine, "dag_node_runs")}
    first, second = runs["retry/a/1"], runs["retry/a/2"]
    assert (first["status"], first["retried"], first["error_type"], first["message"],
            first["runner"], first["duration_ms"]) == ("failed", True, "Flaky", "try again",
                                                       "r2", 15)
    assert (second["status"], second["duration_ms"], second["runner"]) == ("completed", 50, "r1")
    assert second["scheduled_at_ms"] < second["started_at_ms"] < second["ended_at_ms"]
    short = runs["ok/src/1"]  # its start came with its end
    assert (short["status"], short["runner"], short["started_at_ms"]) == (
        "completed", "r1", short["ended_at_ms"] - 40)
    timed = runs["retry/b/1"]
    assert (timed["status"], timed["error_type"], timed["retried"]) == ("failed", "Timeout", True)
    assert timed["deadline_at_ms"] == timed["scheduled_at_ms"] + 400
    assert (runs["fallbacks/fast/1"]["fallback"], runs["fallbacks/fast/1"]["fallback_node"]) \
        == (True, "slow")
    assert (runs["fallbacks/v/1"]["fallback"], runs["fallbacks/v/1"]["fallback_node"]) == (
        True, None)
    assert runs["fallbacks/s/1"]["skipped"] is True
    assert [runs[f"restart/b/{n}"]["status"] for n in (1, 2)] == ["completed", "completed"]
    assert "restart/a/2" not in runs  # recorded at the checkpoint: not run again
    assert runs["failed/b/1"]["status"] == "cancelled"   # in flight when the run failed
    assert runs["cancelled/a/1"]["status"] == "cancelled"
    nodes = {(r["execution_id"], r["node_id"]): r for r in rows(engine, "dag_nodes")}
    assert (nodes[("ok", "yes")]["state"], nodes[("ok", "yes")]["skip_reason"],
            nodes[("ok", "yes")]["kind"]) == ("skipped", "branch", None)
    assert nodes[("fallbacks", "s")]["skip_reason"] == "recovery"
    assert ("failed", "c") not in nodes  # never named: counted among the cancelled

    failures = rows(engine, "dag_failures")
    assert [(f["execution_id"], f["event"], f["node_id"], f["error_type"]) for f in failures
            if f["execution_id"] in ("failed", "timedout")] == [
        ("failed", "NodeFailed", "a", "Fatal"), ("failed", "ExecutionFailed", "a", "Fatal"),
        ("timedout", "ExecutionTimedOut", None, "Timeout")]
    node_failed = next(f for f in failures if f["execution_id"] == "failed")
    assert (node_failed["attempt"], node_failed["kind"], node_failed["retryable"],
            node_failed["message"], node_failed["runner"]) == (1, "operator", False,
                                                               "a is broken", "r2")


def test_batches_split_anywhere_and_duplicates_change_nothing(engine: Engine, flow: Flow) -> None:
    story(flow)
    projector = Projector(engine, views())
    for record in flow.records:  # one event per transaction: all state goes through the rows
        projector.apply_batch([record])
    one_by_one = snapshot(engine)
    assert_matches_decider(engine, flow)
    projector.apply_batch(flow.records)  # the whole log redelivered
    copies = [flow.record(r.partition, r.key, r.value, r.timestamp_ms) for r in flow.records]
    result = projector.apply_batch(copies)  # every event again at a new offset
    assert result.applied["dag"] == len(copies)  # read, and recognised as seen
    assert snapshot(engine) == one_by_one


def test_replay_reproduces_the_views(engine: Engine, flow: Flow) -> None:
    story(flow)
    projector = Projector(engine, views())
    for start in range(0, len(flow.records), 7):
        projector.apply_batch(flow.records[start:start + 7])
    live = snapshot(engine)
    report = rebuild(engine, DagView(), batch_size=11)
    assert report.swapped and report.records == len(flow.records)
    assert snapshot(engine) == live
    assert_matches_decider(engine, flow)


def test_a_log_read_from_after_a_start_skips_that_execution_until_a_replay(
        engine: Engine, flow: Flow, caplog: pytest.LogCaptureFixture) -> None:
    story(flow)
    start = next(record for record, (name, r) in zip(flow.records, flow.events(), strict=True)
                 if name == "pit.dag.ExecutionStarted" and r["execution_id"] == "retry")
    with caplog.at_level(logging.WARNING, logger="projections.dag"):
        Projector(engine, views()).apply_batch([r for r in flow.records if r is not start])
    assert "never saw start" in caplog.text
    executions = {r["execution_id"] for r in rows(engine, "dag_executions")}
    assert executions == set(flow.processor.entities) - {"retry"}
    assert not any(r["execution_id"] == "retry" for name in TABLES[1:]
                   for r in rows(engine, name))
    rebuild(engine, DagView(), flow.records)  # from the whole log again
    assert_matches_decider(engine, flow)


def test_random_runs_keep_the_views_equal_to_the_decider(engine: Engine, flow: Flow) -> None:
    """Random layered DAGs, random recovery per node, runners that start, complete, fail
    and time out at random, checkpoints and cancels; compared as it goes."""
    rng = random.Random(11)
    strategies = [RETRY, replace(RETRY, on_exhausted=Strategy.SKIP),
                  Recovery(Strategy.FALLBACK, fallback_value=7),
                  Recovery(Strategy.SKIP, default_output=0),
                  Recovery(Strategy.RESTART, max_attempts=3), Recovery()]
    for k in range(6):
        base = layered_dag(rng.randint(5, 25), seed=k, layers=4)
        nodes = tuple(replace(n, recovery=rng.choice(strategies),
                              timeout_ms=rng.choice([None, None, 300])) for n in base.nodes)
        flow.start(f"x{k}", replace(base, name=f"random{k}", nodes=nodes),
                   max_concurrency=rng.choice([2, 4, 100]), checkpoint_every=rng.choice([0, 3]))
    projector, projected = Projector(engine, views()), 0
    for step in range(700):
        live = [e for e in flow.processor.entities if flow.state(e).running]
        if not live:
            break
        execution_id = rng.choice(live)
        s = flow.state(execution_id)
        busy = [(n, s.node(n).status) for n in s.plan.ids
                if s.node(n).status in (NodeStatus.SCHEDULED, NodeStatus.RUNNING,
                                        NodeStatus.RETRYING)]
        pick = rng.random()
        if pick < 0.01:
            flow.ok(CancelExecution(execution_id, "enough"))
        elif pick < 0.04:
            flow.ok(TakeCheckpoint(execution_id))
        elif busy:
            node_id, status = rng.choice(busy)
            if status is NodeStatus.RETRYING:
                flow.fire(execution_id, f"{node_id}/retry/{s.node(node_id).attempt}")
            elif s.plan.node(s.plan.index[node_id]).timeout_ms and rng.random() < 0.1:
                flow.fire(execution_id, f"{node_id}/timeout/{s.node(node_id).attempt}")
            elif status is NodeStatus.SCHEDULED and rng.random() < 0.5:
                flow.begin(execution_id, node_id)
            elif rng.random() < 0.2:
                flow.fail(execution_id, node_id, rng.choice(["Flaky", "Bad"]),
                          retryable=rng.random() < 0.8, duration_ms=rng.randint(1, 90))
            else:
                flow.complete(execution_id, node_id, 1, begin=False,
                              duration_ms=rng.randint(1, 90), after_ms=rng.randint(0, 50))
        if step % 29 == 0:  # project in uneven batches and compare as it goes
            projector.apply_batch(flow.records[projected:])
            projected = len(flow.records)
            assert_matches_decider(engine, flow)
    projector.apply_batch(flow.records[projected:])
    assert_matches_decider(engine, flow)
    outcomes = Counter(flow.state(e).status.name for e in flow.processor.entities)
    names = Counter(name.rsplit(".", 1)[1] for name, _ in flow.events())
    assert outcomes["COMPLETED"] and sum(outcomes.values()) == 6
    assert all(names[n] for n in ("NodeRetryScheduled", "FallbackUsed", "NodeSkipped",
                                  "ExecutionRestarted", "CheckpointTaken", "NodeFailed"))


# --- a heavy execution ------------------------------------------------------------------------

HEAVY_NODES = 10_000


@pytest.fixture(scope="module")
def heavy(codec: Codec) -> Flow:
    """One 10,000-node layered execution (started by hash), every node started and
    completed, each attempt with a timeout timer: ~50,000 events."""
    store = MemoryDefinitionStore()
    definition_hash = store.put(layered_dag(HEAVY_NODES, seed=3, timeout_ms=60_000))
    flow = Flow(codec, Definitions(store))
    flow.ok(StartExecution("big", definition_hash=definition_hash))
    while ready := [n for n in flow.state("big").plan.ids
                    if flow.state("big").node(n).status is NodeStatus.SCHEDULED]:
        for k, node_id in enumerate(ready):
            flow.complete("big", node_id, 1, duration_ms=k % 100, after_ms=0)
    return flow


def test_a_heavy_execution_projects_in_batches_and_equals_the_decider(
        engine: Engine, heavy: Flow) -> None:
    assert heavy.state("big").status.name == "COMPLETED"
    assert len(heavy.records) > 4 * HEAVY_NODES
    projector = Projector(engine, views(), archive=False)
    started = time.perf_counter()
    for start in range(0, len(heavy.records), 5000):
        projector.apply_batch(heavy.records[start:start + 5000])
    seconds = time.perf_counter() - started
    print(f"\n{len(heavy.records)} events of a {HEAVY_NODES}-node execution projected in"
          f" {seconds:.2f} s ({len(heavy.records) / seconds:,.0f} events/s,"
          f" {engine.dialect.name})")
    assert_matches_decider(engine, heavy)
    (row,) = rows(engine, "dag_executions")
    assert (row["completed"], row["attempts"], row["status"]) == (HEAVY_NODES, HEAVY_NODES,
                                                                  "completed")
    assert seconds < 60  # a sanity bound (~1 s measured): rows are batched, not per event


# --- the API ----------------------------------------------------------------------------------

async def test_executions_api(engine: Engine, flow: Flow) -> None:
    client = TestClient(TestServer(make_app(engine, COMPONENTS)))
    await client.start_server()
    try:
        empty = await (await client.get("/executions")).json()
        assert empty == {"executions": [], "count": 0}
        story(flow)
        Projector(engine, views()).apply_batch(flow.records)

        listed = await (await client.get("/executions")).json()
        assert listed["count"] == 7
        started = [e["started_at_ms"] for e in listed["executions"]]
        assert started == sorted(started, reverse=True)  # newest first
        assert listed["executions"][0]["execution_id"] == "timedout"
        failed = await (await client.get("/executions", params={"status": "failed"})).json()
        assert [e["execution_id"] for e in failed["executions"]] == ["failed"]
        limited = await (await client.get("/executions", params={"limit": 2})).json()
        assert limited["count"] == 2
        for params in ({"status": "bogus"}, {"limit": "x"}, {"limit": "-1"}):
            answer = await client.get("/executions", params=params)
            assert answer.status == 400 and "error" in await answer.json()

        ok = await (await client.get("/executions/ok")).json()
        assert (ok["status"], ok["nodes"], ok["done"], ok["progress"]) == ("completed", 6, 6,
                                                                           1.0)
        assert ok["counts"] == {"pending": 0, "scheduled": 0, "running": 0, "retrying": 0,
                                "failed": 0, "completed": 4, "fallback": 0, "skipped": 2,
                                "cancelled": 0}
        assert ok["outputs"] == {"join": {"out": [None, 5]}}
        assert "checkpoint_sequence" not in ok and ok["sequence"] > 0
        failed_one = await (await client.get("/executions/failed")).json()
        assert (failed_one["error_type"], failed_one["error_node"], failed_one["outputs"]) == (
            "Fatal", "a", None)
        assert (await client.get("/executions/nope")).status == 404

        nodes = await (await client.get("/executions/retry/nodes")).json()
        assert nodes["count"] == 2 and [n["node_id"] for n in nodes["nodes"]] == ["a", "b"]
        b = nodes["nodes"][1]
        assert (b["state"], b["attempt"], b["kind"]) == ("completed", 2, "operator")
        assert [(r["attempt"], r["status"], r["error_type"], r["retried"]) for r in b["runs"]] \
            == [(1, "failed", "Timeout", True), (2, "completed", None, False)]
        assert b["runs"][1]["duration_ms"] == 60
        page = await (await client.get("/executions/retry/nodes",
                                       params={"limit": 1, "offset": 1})).json()
        assert (page["count"], [n["node_id"] for n in page["nodes"]]) == (2, ["b"])
        assert [s["runner"] for s in b["runs"][1]["starts"]] == ["r1"]
        ok_nodes = await (await client.get("/executions/ok/nodes")).json()
        (join,) = [n for n in ok_nodes["nodes"] if n["node_id"] == "join"]
        (run,) = join["runs"]  # one attempt, run twice: each run with its runner
        assert [s["runner"] for s in run["starts"]] == ["r1", "r3"]
        assert run["starts"][0]["started_at_ms"] < run["starts"][1]["started_at_ms"]
        skipped = await (await client.get("/executions/ok/nodes",
                                          params={"state": "skipped"})).json()
        assert [(n["node_id"], n["runs"]) for n in skipped["nodes"]] == [("yes", []),
                                                                         ("yes2", [])]
        assert (await client.get("/executions/ok/nodes", params={"state": "x"})).status == 400
        assert (await client.get("/executions/nope/nodes")).status == 404

        failures = await (await client.get("/executions/retry/failures")).json()
        assert [(f["node_id"], f["attempt"], f["error_type"], f["message"])
                for f in failures["failures"]] == [
            ("a", 1, "Flaky", "try again"), ("b", 1, "Timeout", "no result within 400 ms")]
        none = await (await client.get("/executions/ok/failures")).json()
        assert none["failures"] == [] and none["count"] == 0
        assert (await client.get("/executions/nope/failures")).status == 404
    finally:
        await client.close()


# --- live metrics -----------------------------------------------------------------------------

def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_follow_the_events_once(engine: Engine, flow: Flow) -> None:
    watched = [("pit_dag_node_seconds_count", {"kind": "operator", "outcome": "completed"}),
               ("pit_dag_node_seconds_sum", {"kind": "operator", "outcome": "completed"}),
               ("pit_dag_node_seconds_count", {"kind": "branch", "outcome": "completed"}),
               ("pit_dag_node_seconds_count", {"kind": "operator", "outcome": "failed"}),
               ("pit_dag_nodes_completed_total", {"kind": "operator"}),
               ("pit_dag_nodes_completed_total", {"kind": "branch"}),
               ("pit_dag_node_failures_total", {"kind": "operator", "error_type": "Timeout"}),
               ("pit_dag_node_failures_total", {"kind": "operator", "error_type": "Flaky"}),
               ("pit_dag_executions_started_total", {}),
               *(("pit_dag_executions_ended_total", {"status": status})
                 for status in ("completed", "failed", "cancelled", "timed_out"))]
    before = {(n, tuple(sorted(labels.items()))): sample(n, **labels) for n, labels in watched}

    def grown() -> dict[str, float]:
        return {f"{n}{dict(labels) or ''}": round(sample(n, **dict(labels)) - value, 6)
                for (n, labels), value in before.items()}

    story(flow)
    projector = Projector(engine, views(), observers=[DagMetrics(engine)])
    projector.apply_batch(flow.records[:len(flow.records) // 2])
    projector.apply_batch(flow.records)  # overlaps: the first half is not observed twice
    completed = [r for name, r in flow.events() if name == "pit.dag.NodeCompleted"]
    operators = [r["duration_ms"] for r in completed if r["node_id"] != "br"]
    assert grown() == {
        "pit_dag_node_seconds_count{'kind': 'operator', 'outcome': 'completed'}":
            len(operators),
        "pit_dag_node_seconds_sum{'kind': 'operator', 'outcome': 'completed'}":
            round(sum(operators) / 1000, 6),
        "pit_dag_node_seconds_count{'kind': 'branch', 'outcome': 'completed'}": 1,
        "pit_dag_node_seconds_count{'kind': 'operator', 'outcome': 'failed'}": 7,
        "pit_dag_nodes_completed_total{'kind': 'operator'}": len(operators),
        "pit_dag_nodes_completed_total{'kind': 'branch'}": 1,
        "pit_dag_node_failures_total{'error_type': 'Timeout', 'kind': 'operator'}": 1,
        "pit_dag_node_failures_total{'error_type': 'Flaky', 'kind': 'operator'}": 1,
        "pit_dag_executions_started_total": 7,
        "pit_dag_executions_ended_total{'status': 'completed'}": 4,
        "pit_dag_executions_ended_total{'status': 'failed'}": 1,
        "pit_dag_executions_ended_total{'status': 'cancelled'}": 1,
        "pit_dag_executions_ended_total{'status': 'timed_out'}": 1,
    }
    again = grown()
    copies = [flow.record(r.partition, r.key, r.value, r.timestamp_ms) for r in flow.records]
    projector.apply_batch(copies)  # the same events at new offsets: archived, not observed
    assert grown() == again
    rebuild(engine, DagView())  # a replay is not live traffic
    assert grown() == again
