"""`pit campaign chaos`: kill -9 the Pit's processes and break its broker under a mixed load,
then check from the log and the views that nothing acknowledged was lost (issue 11).

The harness, in a fresh data directory:
* runs `pit up` (with PIT_FAULTS=1: three embedded brokers and POST /faults), two model hosts
  (`pit host`) and two workflow runners (`pit runner`) as subprocesses;
* drives a mixed load from this process through a `PitClient` that records every outcome
  that said *accepted*: pool commands (RegisterModel, TransitionModel, RecordModelUsage,
  allocations and releases, two in three of them arbitrated as a tenant's), workflows
  (chains and layered DAGs of `chaos_step` nodes, which append each run to a ledger file),
  artifact stores (half of them tagged "keep") and the
  Stale Manager's plans and applies under CHAOS_RETENTION (the rest is deleted, the kept
  ones move to the warm tier; the trash is purged after seconds) and holds;
* at seeded random moments kills one process with SIGKILL (`pit up`, a runner or a host) and
  starts it again, or injects a broker fault through the mock API (a broker down and up,
  failing requests, a partition's leader moved), while the load goes on.

After each kill point the load pauses and the campaign checks, once the Pit has caught up
(the archive holds everything the broker held when it looked, within a deadline):
* every acknowledged command's events are in the log exactly once (by event id);
* every acknowledged workflow ends, completed, with the outputs a sequential evaluation
  gives, and one NodeCompleted per node;
* no `chaos_step` ran twice for one node, except the runs a killed runner had in flight;
* each entity's event sequence numbers go 1, 2, 3... without a gap or a repeat;
* the audit chain verifies (`projections.audit.verify`);
* every view equals the same view rebuilt from the archive up to the positions it shows (the
  contract test, tests/integration/test_components.py, holds rebuilt views to the decider's
  state; the views without tables, the search index, are left out);
* the Stale Manager deleted nothing outside a confirmed plan, nothing tagged "keep" and
  nothing under a legal hold; it purged only what it had trashed; and every stored artifact
  it never trashed reads back byte for byte, from whichever tier it is in (a move either
  completed or left it where it was);
* `pit up` did not exit by itself, and runners and hosts carried on after a `pit up` restart
  without being restarted (one that did not is restarted, and counted).
It measures the recovery time: from the restart (or the end of the broker fault) to the
first progress (an accepted outcome; a node run by a restarted runner; a restarted host
registered). The seed fixes the schedule (what is killed, when, how); the load's timing is
the machine's, so a reproduction repeats the kill point, not every interleaving.

Run as `python -m streams.campaigns.chaos <pit arguments>` this module is `pit` with
`chaos_step` registered: the subprocesses the campaign starts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from sqlalchemy import Engine, func, select, text

from projections import audit
from projections.runtime import Projector, create_schema, live_tables
from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.archive import archive_positions, archived_records, audit_log
from streams.client import PitClient
from streams.commands import Outcome
from streams.components import DECIDERS, views
from streams.config import Settings
from streams.dag.bench import sequential_outputs
from streams.dag.definition import OPERATORS, WILDCARD, Workflow, deep_dag, layered_dag
from streams.dag.execution import NodeCompleted
from streams.dag.topics import DAG_EVENTS
from streams.errors import PitError
from streams.kafka import partitions_of, start_consumer, stop_consumer
from streams.pool.lifecycle import ModelState, RecordModelUsage, TransitionModel, TransitionReason
from streams.sql import connect, load_positions
from streams.stale.topics import STALE_EVENTS
from streams.topics import load_catalog

if TYPE_CHECKING:
    from streams.decider import Message

PROGRAM = (sys.executable, "-m", "streams.campaigns.chaos")
KINDS = {"pit-up": 0.35, "runner": 0.25, "host": 0.15, "broker": 0.25}  # kill point weights
RUNNERS, HOSTS, MODELS = 2, 2, 10
MODEL_URI = "python:streams.pool.examples:sentiment"
START_S, SETTLE_S, CATCH_UP_S, WORKFLOW_S = 120.0, 60.0, 60.0, 90.0  # deadlines
STEP_S = 30.0  # the longest one load step may take (an artifact store waits for the view)
START_TRIES = 3
RECONNECT_S = 30.0  # for runners and hosts to carry on after `pit up` restarted
INFLIGHT_S = 10.0  # a killed runner's run this close before the kill was still in flight
PRODUCE, FETCH, NOT_LEADER_OR_FOLLOWER = 0, 1, 6  # Kafka API keys and a retriable error
# Delete what is not tagged "keep", move what is to the warm tier; purge the trash after ~9 s.
CHAOS_RETENTION = {
    "policies": [{"name": "chaos", "rules": [{"type": "MaxAge", "days": 0},
                                             {"type": "KeepTagged", "tags": ["keep"]}]}],
    "tiers": {"warm_after_days": 0, "warm_below": 1.0}, "trash_days": 0.0001}


# --- the operator with a side effect to count -----------------------------------------------

async def _chaos_step(params: dict, **values: float) -> float:
    """sum_inputs that first sleeps `ms` and then appends its run (execution, node, pid,
    time) to the ledger file: one O_APPEND write per line, so runners share it safely."""
    await asyncio.sleep(params.get("ms", 0) / 1000)
    line = json.dumps({"e": params["execution"], "n": params["node"], "pid": os.getpid(),
                       "t": time.time()}) + "\n"
    fd = os.open(params["ledger"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    return sum(values.values())


OPERATORS.register("chaos_step", _chaos_step, inputs={WILDCARD: "float"}, output="float",
                   replace=True)


def ledgered(workflow: Workflow, execution_id: str, ledger: Path, ms: int) -> Workflow:
    """`workflow` (add/identity/sum_inputs nodes) with every node a chaos_step: the same
    outputs, every run in the ledger."""
    nodes = tuple(replace(node, operator="chaos_step", params={
        "ledger": str(ledger), "execution": execution_id, "node": node.id, "ms": ms})
        for node in workflow.nodes)
    return replace(workflow, nodes=nodes)


# --- the processes ----------------------------------------------------------------------------

@dataclass
class Proc:
    """A `pit` subprocess that can be killed and started again; each run logs to its own
    file, and is ready once that log shows `ready`."""

    name: str
    args: tuple[str, ...]
    ready: str
    data_dir: Path
    env: dict[str, str]
    runs: int = 0
    process: subprocess.Popen | None = None
    started_at: float = 0.0

    @property
    def log(self) -> Path:
        return self.data_dir / "logs" / f"{self.name}.{self.runs}.log"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else 0

    async def start(self, *extra: str) -> Proc:
        self.runs += 1
        self.log.parent.mkdir(exist_ok=True)
        with self.log.open("w") as out:
            self.process = subprocess.Popen([*PROGRAM, *self.args, *extra], env=self.env,
                                            stdout=out, stderr=subprocess.STDOUT)
        self.started_at = time.monotonic()
        deadline = self.started_at + START_S
        while self.ready not in self.log.read_text():
            if not self.alive or time.monotonic() > deadline:
                self.kill()
                raise PitError(f"{self.name} did not start: {self.tail()}")
            await asyncio.sleep(0.1)
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def tail(self, lines: int = 3) -> str:
        return " | ".join(self.log.read_text().strip().splitlines()[-lines:])


class Pit:
    """`pit up`, the hosts and the runners on one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        env = {**os.environ, "PIT_DATA_DIR": str(data_dir), "PIT_HTTP_PORT": str(self.port),
               "PIT_FAULTS": "1"}
        for name in ("PIT_KAFKA_BOOTSTRAP_SERVERS", "PIT_DATABASE_URL"):
            env.pop(name, None)
        self.settings = Settings.from_env(env)

        def proc(name: str, args: tuple[str, ...], ready: str) -> Proc:
            return Proc(name, args, ready, data_dir, env)

        self.up = proc("pit-up", ("up",), "pit is up")
        self.hosts = [proc(f"h{n}", ("host", "--id", f"h{n}", "--memory-mb", "300",
                                     "--capacity", "4", "--drain-timeout", "5"),
                           "registered in pool") for n in range(HOSTS)]
        self.runners = [proc(f"r{n}", ("runner", "--session-timeout", "3",
                                       "--concurrency", "64"), "taking tasks")
                        for n in range(RUNNERS)]
        self.chaos_killed: dict[int, float] = {}  # runner pid -> when the campaign killed it
        self.pids: dict[int, str] = {}  # runner pid -> its runner id
        self.failed_starts: list[str] = []

    def runner_names(self, pids: list[int]) -> str:
        return ", ".join(self.pids.get(pid, "?") for pid in pids)

    async def launch(self, proc: Proc) -> None:
        """Start `proc` (a runner with a new id per run: reports name the run), trying again
        when it gives up starting (`pit host` waits 10 s for `pit up`'s answers)."""
        for attempt in range(1, START_TRIES + 1):
            try:
                if proc in self.runners:
                    await proc.start("--id", f"{proc.name}.{proc.runs + 1}")
                    self.pids[proc.pid] = f"{proc.name}.{proc.runs}"
                else:
                    await proc.start()
                return
            except PitError as exc:
                self.failed_starts.append(str(exc))
                print(f"  {exc} (try {attempt} of {START_TRIES})", flush=True)
                if attempt == START_TRIES:
                    raise

    async def start(self) -> None:
        for proc in (self.up, *self.hosts, *self.runners):
            await self.launch(proc)

    def stop(self) -> None:
        for proc in (*self.runners, *self.hosts, self.up):
            proc.kill()

    def fault(self, **body: Any) -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/faults",
                                         data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10) as reply:
            reply.read()


# --- the load ---------------------------------------------------------------------------------

class RecordingClient(PitClient):
    """A PitClient that keeps every accepted outcome its operations receive."""

    def __init__(self, settings: Settings, accepted: Callable[[Outcome], None]) -> None:
        super().__init__(settings, issued_by="pit-chaos")
        self.accepted = accepted

    async def send(self, command: Message, **options: Any) -> Outcome:
        outcome = await super().send(command, **options)
        if outcome.accepted:
            self.accepted(outcome)
        return outcome


@dataclass
class Expected:
    """An acknowledged workflow: its nodes, and its sinks' outputs."""

    nodes: tuple[str, ...]
    outputs: dict[str, Any]
    ended: str = ""  # "" while unchecked, else "ok" or what went wrong


class Load:
    """Pool, workflow and artifact workers sending through the current client."""

    def __init__(self, pit: Pit, seed: int) -> None:
        self.pit, self.seed = pit, seed
        self.ledger = pit.data_dir / "ledger.jsonl"
        self.client: RecordingClient | None = None
        self.acked: list[Outcome] = []
        self.last_accepted = 0.0  # monotonic time of the latest accepted outcome
        self.workflows: dict[str, Expected] = {}
        self.failures: Counter[str] = Counter()  # sends without an outcome, by error type
        self.models = [f"chaos-m{n}" for n in range(MODELS)]
        self.tasks: list[asyncio.Task] = []
        self.stop = asyncio.Event()
        self.rounds = 0
        self.stored: dict[str, bytes] = {}  # acknowledged artifacts' content, by address
        self.kept: set[str] = set()          # ... of those tagged "keep"
        self.policy_set = False

    @property
    def live(self) -> RecordingClient:
        if self.client is None:
            raise PitError("no client: pit up is being restarted")
        return self.client

    def accepted(self, outcome: Outcome) -> None:
        self.acked.append(outcome)
        self.last_accepted = time.monotonic()

    async def connect(self) -> None:
        await self.disconnect()
        self.client = await RecordingClient(Settings.from_env(self.pit.up.env),
                                            self.accepted).start()

    async def disconnect(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 2)

    def start(self) -> None:
        self.rounds += 1
        self.stop = asyncio.Event()
        workers = [self.pool_worker(n) for n in range(3)] + [
            self.workflow_worker(), self.artifact_worker(), self.stale_worker()]
        self.tasks = [asyncio.create_task(self._loop(n, worker))
                      for n, worker in enumerate(workers)]

    async def pause(self) -> None:
        """Let the steps in flight end (each is bounded), then stop."""
        self.stop.set()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=STEP_S + 10)
        await self.halt()

    async def halt(self) -> None:
        """Drop what is in flight at once (`pit up` is gone: its calls would hang). A step
        stuck in a client call that does not yield to the cancel is left behind."""
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=10)

    async def _loop(self, n: int, step: Callable[[random.Random], Any]) -> None:
        rng = random.Random(f"{self.seed}/{self.rounds}/{n}")
        while not self.stop.is_set():
            try:
                # a send to a `pit up` killed mid-call can hang in the client: bound every step
                await asyncio.wait_for(step(rng), STEP_S)
            except Exception as exc:  # counted and shown: the load goes on
                name = type(exc).__name__
                if not isinstance(exc, PitError | KafkaError | TimeoutError | OSError) \
                        and name not in self.failures:
                    print(f"  load: unexpected {name}: {exc}", flush=True)
                self.failures[name] += 1
                await asyncio.sleep(0.2)  # back off while the Pit is down or busy

    def pool_worker(self, _n: int) -> Callable[[random.Random], Any]:
        async def step(rng: random.Random) -> None:
            pool, model = self.live.pool, rng.choice(self.models)
            kind = rng.choices(["register", "warm", "cool", "usage", "allocate"],
                               [1, 3, 2, 3, 3])[0]
            if kind == "register":
                await pool.register_model(model, MODEL_URI, 40, 5, timeout=5)
            elif kind in ("warm", "cool"):
                to = ModelState.WARMING if kind == "warm" else ModelState.COOLING
                await self.live.send(TransitionModel(model, to, TransitionReason.USER_REQUEST),
                                       timeout=5)
            elif kind == "usage":
                await self.live.send(RecordModelUsage(model, rng.randint(1, 5)), timeout=5)
            else:  # half through arbitration, as a tenant (its grant released with the model)
                tenant = rng.choice(["", "chaos-a", "chaos-b"])
                allocation = await pool.allocate_model(model, "chaos", timeout=5,
                                                       tenant=tenant or None)
                await pool.release_model(allocation.request_id, timeout=5)
            await asyncio.sleep(rng.uniform(0.02, 0.1))
        return step

    def workflow_worker(self) -> Callable[[random.Random], Any]:
        async def step(rng: random.Random) -> None:
            execution_id = f"chaos-{uuid.UUID(int=rng.getrandbits(128)).hex[:12]}"
            if rng.random() < 0.5:
                base = deep_dag(rng.randint(4, 10), name="chain")
            else:
                base = layered_dag(rng.randint(12, 40), seed=rng.randrange(1 << 30),
                                   layers=rng.randint(3, 6))
            expected = sequential_outputs(base)
            workflow = ledgered(base, execution_id, self.ledger, rng.randint(20, 80))
            await self.live.dag.execute_workflow(workflow, execution_id=execution_id,
                                                   timeout=5)
            sinks = set(expected) - {edge.from_node for edge in base.edges}
            self.workflows[execution_id] = Expected(
                tuple(expected), {sink: {"out": expected[sink]} for sink in sinks})
            await asyncio.sleep(rng.uniform(0.3, 1.0))
        return step

    def artifact_worker(self) -> Callable[[random.Random], Any]:
        async def step(rng: random.Random) -> None:
            content = json.dumps({"round": self.rounds, "value": rng.random()}).encode()
            keep = rng.random() < 0.5
            stored = await self.live.artifacts.store(
                content, name=f"chaos-doc-{rng.randrange(5)}",
                tags=["chaos", "keep"] if keep else ["chaos"], content_type="application/json",
                timeout=5)
            self.stored[stored.address] = content
            if keep:
                self.kept.add(stored.address)
            await asyncio.sleep(rng.uniform(0.3, 1.0))
        return step

    def stale_worker(self) -> Callable[[random.Random], Any]:
        async def step(rng: random.Random) -> None:
            stale = self.live.stale
            if not self.policy_set:
                await stale.set_policy(CHAOS_RETENTION)
                self.policy_set = True
            if self.stored and rng.random() < 0.2:
                await stale.hold(rng.choice(sorted(self.stored)), "chaos")
            else:
                plan = await stale.plan(timeout=5)
                await stale.apply(plan["plan_id"])
            await asyncio.sleep(rng.uniform(1.0, 3.0))
        return step


# --- what the log says --------------------------------------------------------------------------

class LogFacts:
    """What the archive holds, read incrementally: events by id, NodeCompleted per node,
    and each entity's sequence numbers (one entity's events may span partitions: the pool's
    are keyed by model, so its numbers are checked as a set, not in archive order)."""

    def __init__(self) -> None:
        self.event_topics = sorted({decider.event_topic for decider in DECIDERS})
        self.events: Counter[str] = Counter()       # event id -> times in the log
        self.completed: Counter[tuple[str, str]] = Counter()  # (execution, node)
        self.sequences: dict[tuple[str, str], set[int]] = {}  # (topic, entity) -> numbers
        self.settled: dict[tuple[str, str], int] = {}  # numbers up to here must all be there
        self.sequence_faults: list[str] = []
        self.seen = 0  # archive seq read so far
        # The Stale Manager's deletions, to hold against its plans.
        self.plan_trash: dict[str, set[str]] = {}   # plan id -> addresses it would trash
        self.confirmed: set[str] = set()            # plans applied
        self.trashed: list[tuple[str, str]] = []    # (address, plan id), every ItemTrashed
        self.purged: set[str] = set()
        self.held: set[str] = set()                 # under a legal hold now (in log order)
        self.trashed_held: list[tuple[str, str]] = []  # (address, plan id) trashed while held

    def read(self, engine: Engine) -> None:
        with engine.connect() as conn:
            top = conn.execute(select(func.max(audit_log.c.seq))).scalar() or 0
            rows = conn.execute(
                select(audit_log.c.topic, audit_log.c.event_type, audit_log.c.payload_json)
                .where(audit_log.c.seq > self.seen, audit_log.c.seq <= top,
                       audit_log.c.topic.in_(self.event_topics)))
            for topic, event_type, payload in rows:
                if payload is not None:
                    self.add(topic, event_type, json.loads(payload))
        self.seen = top
        self.settle()

    def settle(self) -> None:
        """Report the numbers missing below what the previous read saw (the archive has
        caught up since: they are gone for good), each once."""
        for entity, numbers in self.sequences.items():
            missing = set(range(1, self.settled.get(entity, 0) + 1)) - numbers
            if missing:
                self.sequence_faults.append(f"{entity[0]} {entity[1]}: sequence numbers"
                                            f" {sorted(missing)[:5]} missing")
                numbers.update(missing)
            self.settled[entity] = max(numbers)

    def add(self, topic: str, event_type: str, record: dict) -> None:
        envelope = record["envelope"]
        self.events[envelope["event_id"]] += 1
        if topic == DAG_EVENTS and event_type == NodeCompleted.__name__:
            self.completed[(record["execution_id"], record["node_id"])] += 1
        if topic == STALE_EVENTS:
            self.add_stale(event_type, record)
        numbers = self.sequences.setdefault((topic, envelope["entity_key"]), set())
        if envelope["sequence"] in numbers:
            self.sequence_faults.append(f"{topic} {envelope['entity_key']}: sequence"
                                        f" {envelope['sequence']} twice")
        numbers.add(envelope["sequence"])


    def add_stale(self, event_type: str, record: dict) -> None:
        match event_type:
            case "PlanItemsListed":
                self.plan_trash.setdefault(record["plan_id"], set()).update(
                    i["address"] for i in record["items"] if i["target"] == "trash")
            case "PlanApplyStarted":
                self.confirmed.add(record["plan_id"])
            case "ItemTrashed":
                self.trashed.append((record["address"], record["plan_id"]))
                if record["address"] in self.held:
                    self.trashed_held.append((record["address"], record["plan_id"]))
            case "ItemPurged":
                self.purged.add(record["address"])
            # A hold and a trash of one address share its key (`stale:<address>`), so one
            # partition: the archive has them in the order they were decided.
            case "HoldPlaced":
                self.held.add(record["address"])
            case "HoldReleased":
                self.held.discard(record["address"])


def stale_violations(facts: LogFacts, kept: Collection[str]) -> list[tuple[str, str]]:
    """What the log shows the Stale Manager did wrong, (address, why): a trash outside a
    confirmed plan's trash list, of an item tagged keep (`kept`) or under a legal hold, and
    a purge of an item never trashed."""
    found = []
    ever_trashed = {address for address, _ in facts.trashed}
    for address, plan_id in facts.trashed:
        if plan_id not in facts.confirmed or address not in facts.plan_trash.get(plan_id, ()):
            found.append((address, f"trashed outside confirmed plan {plan_id}"))
        if address in kept:
            found.append((address, "trashed though tagged keep"))
    for address, plan_id in facts.trashed_held:
        found.append((address, f"trashed under a legal hold (plan {plan_id})"))
    for address in sorted(facts.purged - ever_trashed):
        found.append((address, "purged without being trashed"))
    return found


async def caught_up(settings: Settings, engine: Engine, timeout_s: float) -> bool:
    """Until the archive holds every record the broker holds now (False at the deadline)."""
    consumer = await start_consumer(settings)
    try:
        tps = [TopicPartition(topic, p) for topic in load_catalog()
               for p in await partitions_of(consumer, topic)]
        ends = {(tp.topic, tp.partition): end
                for tp, end in (await consumer.end_offsets(tps)).items() if end > 0}
    finally:
        await stop_consumer(consumer)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        archived = await asyncio.to_thread(archive_positions, engine)
        if all(archived.get(tp, -1) >= end - 1 for tp, end in ends.items()):
            return True
        await asyncio.sleep(0.2)
    return False


def view_differences(engine: Engine, settings: Settings, codec: Codec) -> list[str]:
    """Each view's tables against the same view rebuilt from the archive, up to the
    positions the live view shows (read in one snapshot with its rows)."""
    tabled = [view for view in views(settings) if view.table_names]
    with engine.connect() as conn, conn.begin():
        positions = load_positions(conn, [view.name for view in tabled])
        live = {name: sorted(map(tuple, conn.execute(select(table))), key=repr)
                for view in tabled for name, table in live_tables(view).items()}
    scratch = connect("sqlite://")
    create_schema(scratch, tabled)
    differences = []
    for view in tabled:
        records = archived_records(engine, view.topics, until=positions[view.name])
        projector = Projector(scratch, [view], archive=False, codec=codec)
        batch: list = []
        for record in records:
            batch.append(record)
            if len(batch) >= 5000:
                projector.apply_batch(batch)
                batch.clear()
        projector.apply_batch(batch)
        with scratch.connect() as conn:
            for name, table in live_tables(view).items():
                rebuilt = sorted(map(tuple, conn.execute(select(table))), key=repr)
                if rebuilt != live[name]:
                    extra = set(live[name]) - set(rebuilt)
                    missing = set(rebuilt) - set(live[name])
                    differences.append(f"{name}: {len(extra)} rows only live, {len(missing)}"
                                       f" only rebuilt, e.g. {next(iter(extra or missing))}")
    scratch.dispose()
    return differences


def repeated_runs(ledger: list[dict], killed: dict[int, float]
                  ) -> tuple[int, dict[tuple[str, str], tuple[int, list[int]]]]:
    """Runs of one node beyond its first, from the ledger: how many a killed runner had in
    flight (its run ended at most INFLIGHT_S before it was killed: `killed` is pid -> when),
    and for each (execution, node) run more often than that, the runs not excused and the
    pids of all its runs."""
    runs: dict[tuple[str, str], list[dict]] = {}
    for run in ledger:
        runs.setdefault((run["e"], run["n"]), []).append(run)
    excused, other = 0, {}
    for node, node_runs in runs.items():
        in_flight = sum(1 for run in node_runs if run["pid"] in killed
                        and run["t"] >= killed[run["pid"]] - INFLIGHT_S)
        extra = len(node_runs) - 1
        excused += min(extra, in_flight)
        if extra > in_flight:
            other[node] = (extra - in_flight, [run["pid"] for run in node_runs])
    return excused, other


# --- the campaign -------------------------------------------------------------------------------

@dataclass
class Findings:
    """Everything that broke a promise, each with the kill point it was found after."""

    lost: set[str] = field(default_factory=set)         # acknowledged command ids
    doubled: set[str] = field(default_factory=set)      # their events more than once
    stalled: set[str] = field(default_factory=set)      # executions that never ended
    wrong: set[str] = field(default_factory=set)        # ended otherwise, or wrong outputs
    duplicates_killed: int = 0                           # runs a killed runner had in flight
    duplicates_other: dict[tuple[str, str], int] = field(default_factory=dict)
    sequence_faults: int = 0
    audit_failures: int = 0
    view_failures: int = 0
    not_reconnected: int = 0
    exited: int = 0
    stale: set[str] = field(default_factory=set)        # addresses the Stale Manager harmed
    lines: list[str] = field(default_factory=list)

    @property
    def violations(self) -> int:
        return (len(self.lost) + len(self.doubled) + len(self.stalled) + len(self.wrong)
                + sum(self.duplicates_other.values()) + self.sequence_faults
                + self.audit_failures + self.view_failures + self.not_reconnected + self.exited
                + len(self.stale))


class Campaign:
    def __init__(self, kills: int, seed: int, data_dir: Path) -> None:
        self.kills, self.seed = kills, seed
        self.rng = random.Random(seed)
        self.pit = Pit(data_dir)
        self.load = Load(self.pit, seed)
        self.engine = connect(self.pit.settings.db_url)
        self.facts = LogFacts()
        self.codec = Codec(EmbeddedRegistry())  # the schemas of this code: the log's
        self.found = Findings()
        self.recovery: list[float] = []
        self.point = 0
        self.survived = 0  # kill points after which no new violation was found

    def note(self, text: str) -> None:
        line = f"  kill point {self.point} (--seed {self.seed}): {text}"
        self.found.lines.append(line)
        print(line, flush=True)

    async def run(self) -> int:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        print(f"chaos: {self.kills} kill points, seed {self.seed}, data in"
              f" {self.pit.data_dir}", flush=True)
        await self.pit.start()
        await self.load.connect()
        try:
            while self.point < self.kills:
                self.point += 1
                await self.kill_point()
        except PitError as exc:  # a process that no longer starts: the campaign cannot go on
            self.found.exited += 1
            self.note(f"stopped: {exc}")
        finally:
            self.pit.stop()  # first: whatever happens next, no process outlives the campaign
            await self.load.halt()
            await self.load.disconnect()
            self.engine.dispose()
        self.summary()
        return 1 if self.found.violations else 0

    async def kill_point(self) -> None:
        kind = self.rng.choices(list(KINDS), list(KINDS.values()))[0]
        before, load_s = self.rng.uniform(1.0, 4.0), self.rng.uniform(1.0, 3.0)
        self.load.start()
        await asyncio.sleep(before)  # the load runs: the kill lands at a random moment
        what, recovered_s = await getattr(self, f"kill_{kind.replace('-', '_')}")()
        self.recovery.append(recovered_s)
        await asyncio.sleep(load_s)  # the load goes on after the recovery
        await self.load.pause()
        violations, checking = self.found.violations, time.monotonic()
        await self.check()
        self.survived += self.found.violations == violations
        acked = len(self.load.acked)
        print(f"[{self.point}/{self.kills}] {what}: recovered in {recovered_s:.2f} s;"
              f" {acked} acknowledged, {len(self.load.workflows)} workflows; checked in"
              f" {time.monotonic() - checking:.0f} s; violations so far {self.found.violations}",
              flush=True)

    async def progress(self, since: float, seen: Callable[[], bool],
                       timeout_s: float = SETTLE_S) -> float:
        """Seconds from `since` until `seen()` (the deadline's length if never)."""
        deadline = since + timeout_s
        while not seen() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return time.monotonic() - since

    async def kill_pit_up(self) -> tuple[str, float]:
        self.pit.up.kill()
        await self.load.halt()
        await self.load.disconnect()
        await self.pit.launch(self.pit.up)
        since = self.pit.up.started_at
        await self.load.connect()
        self.load.start()
        recovered = await self.progress(since, lambda: self.load.last_accepted > since)
        await self.carry_on(since)
        return "kill -9 pit up", recovered

    async def carry_on(self, since: float) -> None:
        """Runners and hosts must carry on against the restarted `pit up` by themselves:
        a runner running nodes, a host alive and up in the pool. One that does not is
        counted and restarted."""
        def carried_on(proc: Proc) -> bool:
            if proc in self.pit.runners:
                return self.ran_since(proc.pid, since)
            return self.host_up(proc)

        procs = [*self.pit.runners, *self.pit.hosts]
        await self.progress(since, lambda: all(carried_on(p) or not p.alive for p in procs),
                            RECONNECT_S)
        for proc in procs:
            if carried_on(proc):
                continue
            self.found.not_reconnected += 1
            self.note(f"{proc.name} did not carry on after pit up restarted"
                      f" ({'alive' if proc.alive else 'exited'}: {proc.tail(2)})")
            proc.kill()
            await self.pit.launch(proc)

    def ran_since(self, pid: int, since: float) -> bool:
        wall = time.time() - (time.monotonic() - since)
        return any(run["pid"] == pid and run["t"] >= wall for run in self.ledger())

    def host_up(self, host: Proc) -> bool:
        if not host.alive:
            return False
        with self.engine.connect() as conn:
            alive = conn.execute(text("SELECT alive FROM pool_hosts WHERE host_id = :h"),
                                 {"h": host.name}).scalar()
        return bool(alive)

    async def kill_runner(self) -> tuple[str, float]:
        runner = self.rng.choice(self.pit.runners)
        self.pit.chaos_killed[runner.pid] = time.time()
        runner.kill()
        await self.pit.launch(runner)
        since = runner.started_at
        recovered = await self.progress(since, lambda: self.ran_since(runner.pid, since))
        return f"kill -9 runner {runner.name}", recovered

    async def kill_host(self) -> tuple[str, float]:
        host = self.rng.choice(self.pit.hosts)
        host.kill()
        await self.pit.launch(host)  # ready once registered: its first progress
        return f"kill -9 host {host.name}", time.monotonic() - host.started_at

    async def kill_broker(self) -> tuple[str, float]:
        fault = self.rng.choice(["down", "errors", "leader"])
        broker = self.rng.randint(1, 3)
        if fault == "down":
            self.pit.fault(fault="down", broker=broker)
            await asyncio.sleep(self.rng.uniform(0.5, 3.0))  # the outage's length
            self.pit.fault(fault="up", broker=broker)
            what = f"broker {broker} down and up"
        elif fault == "errors":
            api = self.rng.choice([PRODUCE, FETCH])
            count = self.rng.randint(1, 5)
            self.pit.fault(fault="errors", api_key=api, errors=[NOT_LEADER_OR_FOLLOWER] * count)
            what = f"{count} {'Produce' if api == PRODUCE else 'Fetch'} requests failed"
        else:
            topic = self.rng.choice(sorted(load_catalog()))
            partition = self.rng.randrange(load_catalog()[topic].partitions)
            self.pit.fault(fault="leader", topic=topic, partition=partition, broker=broker)
            what = f"leader of {topic}/{partition} moved to broker {broker}"
        since = time.monotonic()
        return what, await self.progress(since, lambda: self.load.last_accepted > since)

    def ledger(self) -> list[dict]:
        if not self.load.ledger.exists():
            return []
        return [json.loads(line) for line in self.load.ledger.read_text().splitlines()]

    async def check(self) -> None:
        if not self.pit.up.alive:
            self.found.exited += 1
            self.note(f"pit up exited by itself: {self.pit.up.tail()}")
            await self.load.disconnect()
            await self.pit.launch(self.pit.up)
            await self.load.connect()
        await self.check_workflows()
        if not await caught_up(Settings.from_env(self.pit.up.env), self.engine, CATCH_UP_S):
            self.note(f"the archive did not catch up with the broker within {CATCH_UP_S:g} s")
        self.facts.read(self.engine)
        self.check_acknowledged()
        self.check_side_effects()
        await asyncio.to_thread(self.check_stale)
        faults = self.facts.sequence_faults[self.found.sequence_faults:]
        for fault in faults:
            self.note(f"event sequence: {fault}")
        self.found.sequence_faults += len(faults)
        report = await asyncio.to_thread(audit.verify, self.engine)
        if not report.ok:
            self.found.audit_failures += 1
            self.note(f"audit verify: {report.problems[:2]}")
        differences = await asyncio.to_thread(view_differences, self.engine, self.pit.settings,
                                                self.codec)
        if differences:
            self.found.view_failures += 1
            self.note(f"views differ from their replay: {differences[:3]}")

    async def check_workflows(self) -> None:
        """Every acknowledged workflow not checked yet ends, completed, with the expected
        outputs (checked once; one that never ends is stalled)."""
        open_ = {eid: exp for eid, exp in self.load.workflows.items() if not exp.ended}
        deadline = time.monotonic() + WORKFLOW_S

        async def ended(execution_id: str, expected: Expected) -> None:
            try:
                result = await self.load.live.dag.await_result(
                    execution_id, timeout=max(1.0, deadline - time.monotonic()))
            except (PitError, KafkaError):
                expected.ended = "stalled"
                self.found.stalled.add(execution_id)
                self.note(f"workflow {execution_id} did not end within {WORKFLOW_S:g} s")
                return
            if not result.ok or result.outputs != expected.outputs:
                expected.ended = "wrong"
                self.found.wrong.add(execution_id)
                self.note(f"workflow {execution_id} ended {result.status}"
                          f" {result.error or result.outputs}")
            else:
                expected.ended = "ok"

        await asyncio.gather(*(ended(eid, exp) for eid, exp in open_.items()))

    def check_acknowledged(self) -> None:
        for outcome in self.load.acked:
            counts = [self.facts.events[event_id] for event_id in outcome.event_ids]
            if 0 in counts and outcome.command_id not in self.found.lost:
                self.found.lost.add(outcome.command_id)
                self.note(f"lost: {outcome.line()} ({counts.count(0)} of"
                          f" {len(counts)} events missing)")
            elif any(count > 1 for count in counts) and outcome.command_id not in \
                    self.found.doubled:
                self.found.doubled.add(outcome.command_id)
                self.note(f"effect twice: {outcome.line()}")
        for execution_id, expected in self.load.workflows.items():
            if expected.ended != "ok":
                continue
            odd = {node: self.facts.completed[(execution_id, node)] for node in expected.nodes
                   if self.facts.completed[(execution_id, node)] != 1}
            if odd and execution_id not in self.found.wrong:
                self.found.wrong.add(execution_id)
                self.note(f"workflow {execution_id}: NodeCompleted {len(odd)} nodes not once,"
                          f" e.g. {dict(list(odd.items())[:3])}")

    def check_stale(self) -> None:
        """What the Stale Manager deleted was in a confirmed plan, not kept and not held;
        what it purged it had trashed (`stale_violations`); everything else stored reads
        back byte for byte, from any tier."""
        from streams.artifacts.storage import artifact_store

        def harmed(address: str, why: str) -> None:
            if address not in self.found.stale:
                self.found.stale.add(address)
                self.note(f"stale manager: {address} {why}")

        for address, why in stale_violations(self.facts, self.load.kept):
            harmed(address, why)
        ever_trashed = {address for address, _ in self.facts.trashed}
        store = artifact_store(Settings.from_env(self.pit.up.env))
        for address, content in list(self.load.stored.items()):
            if address in ever_trashed:
                continue
            try:
                read = store.get(address)
            except PitError as exc:
                harmed(address, f"unreadable, never trashed: {exc}")
                continue
            if read != content:
                harmed(address, "reads back different content")

    def check_side_effects(self) -> None:
        excused, other = repeated_runs(self.ledger(), self.pit.chaos_killed)
        self.found.duplicates_killed = excused
        for node, (extra, pids) in other.items():
            if self.found.duplicates_other.get(node) != extra:
                self.found.duplicates_other[node] = extra
                self.note(f"{node[0]} node {node[1]} ran {len(pids)} times (runner pids"
                          f" {pids}: {self.pit.runner_names(pids)})")

    def summary(self) -> None:
        found, times = self.found, sorted(self.recovery)

        def pct(q: float) -> str:
            return f"{times[min(len(times) - 1, int(q * len(times)))]:.2f} s" if times else "-"

        failures = ", ".join(f"{n} {k}" for k, n in self.load.failures.most_common()) or "none"
        rows = [
            ("kill points survived (no new violation)", f"{self.survived} of {self.kills}"),
            ("acknowledged commands", f"{len(self.load.acked):,}"),
            ("acknowledged commands lost", len(found.lost)),
            ("acknowledged commands with a double effect", len(found.doubled)),
            ("workflows acknowledged", len(self.load.workflows)),
            ("workflows stalled", len(found.stalled)),
            ("workflows with a wrong end or result", len(found.wrong)),
            ("duplicate side effects: killed runner in flight", found.duplicates_killed),
            ("duplicate side effects: other", sum(found.duplicates_other.values())),
            ("event sequence gaps or repeats", found.sequence_faults),
            ("audit verify", "ok" if not found.audit_failures else
             f"failed after {found.audit_failures} kill points"),
            ("views == replay", "ok" if not found.view_failures else
             f"differed after {found.view_failures} kill points"),
            ("stale manager: deleted outside a plan or kept / unreadable", len(found.stale)),
            ("stale manager: items trashed / purged", f"{len(self.facts.trashed)} /"
                                                      f" {len(self.facts.purged)}"),
            ("processes that did not carry on by themselves", found.not_reconnected),
            ("pit up exits not caused by the campaign", found.exited),
            ("recovery p50 / p95 / max", f"{pct(0.5)} / {pct(0.95)} / {pct(1.0)}"
                                         f" (mean {statistics.fmean(times):.2f} s)"
                                         if times else "-"),
            ("sends without an outcome (expected while down)", failures),
            ("process starts that gave up and were tried again", len(self.pit.failed_starts)),
        ]
        print("\n| figure | value |\n|---|---|")
        for name, value in rows:
            print(f"| {name} | {value} |")
        verdict = "no violation" if not found.violations else f"{found.violations} violations"
        print(f"\nchaos: {verdict}; data in {self.pit.data_dir}", flush=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kills", type=int, default=100, help="kill points (default 100)")
    parser.add_argument("--seed", type=int, default=1, help="seeds the schedule and the load")
    parser.add_argument("--data-dir", type=Path,
                        help="a new directory for the Pit's state (default: a temporary one)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.kills < 1:
        raise PitError("--kills must be 1 or more")
    if args.data_dir is not None and args.data_dir.exists() and any(args.data_dir.iterdir()):
        raise PitError(f"--data-dir {args.data_dir} is not empty: the campaign needs a fresh one")
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="pit-chaos-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(Campaign(args.kills, args.seed, data_dir.resolve()).run())


if __name__ == "__main__":  # `pit` with chaos_step registered: the campaign's subprocesses
    from streams.cli import main

    sys.exit(main(sys.argv[1:]))
