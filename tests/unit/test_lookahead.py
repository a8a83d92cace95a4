"""The lookahead predictor (streams/pool/lookahead.py), fed by the real execution decider:
which instrument nodes it warms, and when; never a node that cannot run or one already
warmed; executions picked up from a checkpoint, restarts, definitions by hash. And the
prewarmer's side: only Cold, unplaced, registered models with no decision on the way."""

from __future__ import annotations

import json
from dataclasses import replace

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.config import Settings
from streams.dag.definition import (
    Condition,
    Edge,
    Node,
    NodeKind,
    Recovery,
    Strategy,
    Workflow,
)
from streams.dag.definition_store import FileDefinitionStore
from streams.dag.execution import (
    CheckpointTaken,
    Definitions,
    ExecutionStarted,
    NodeScheduled,
    ReportNodeCompleted,
    ReportNodeFailed,
    ReportNodeStarted,
    StartExecution,
    TakeCheckpoint,
    decide,
    evolve,
    initial_state,
)
from streams.decider import Message, to_record
from streams.pool.lifecycle import DEFAULT_POOL, ModelState, ModelTransitioned
from streams.pool.lifecycle import TransitionReason as R
from streams.pool.lookahead import Lookahead, LookaheadPredictor
from streams.pool.pool import ModelPlaced, ModelRegistered
from streams.pool.prewarmer import PoolPrewarmer, Prewarmer

T0 = 1_700_000_000_000


class Execution:
    """One execution under the real decider; every event also goes to the predictor."""

    def __init__(self, workflow: Workflow, predictor: LookaheadPredictor | None = None, *,
                 execution_id: str = "e1", definitions: Definitions | None = None,
                 by_hash: bool = False) -> None:
        self.id = execution_id
        self.definitions = definitions or Definitions()
        self.predictor = predictor or LookaheadPredictor(self.definitions)
        self.state = initial_state(execution_id)
        self.now = T0
        self.log: list[Message] = []
        self.hints: list[Lookahead] = []
        start = (StartExecution(execution_id, definition_hash=workflow.content_hash())
                 if by_hash else StartExecution(execution_id, workflow.canonical_json()))
        self.start_hints = self.send(start)

    def send(self, command: Message) -> list[str]:
        """Decide and apply `command`; the node ids the predictor warmed on its events."""
        self.now += 1_000
        hints: list[Lookahead] = []
        for event in decide(self.state, command, self.now, self.definitions):
            self.state = evolve(self.state, event, self.now, self.definitions)
            self.log.append(event)
            hints += self.predictor.apply(event, self.now)
        self.hints += hints
        return [h.node_id for h in hints]

    def attempt(self, node_id: str) -> int:
        return self.state.node(node_id).attempt

    def started(self, node_id: str) -> list[str]:
        return self.send(ReportNodeStarted(self.id, node_id, self.attempt(node_id)))

    def complete(self, node_id: str, value=1, *, output: dict | None = None) -> list[str]:
        return self.send(ReportNodeCompleted(self.id, node_id, self.attempt(node_id),
                                             json.dumps(output or {"out": value})))

    def fail(self, node_id: str, error: str = "Boom") -> list[str]:
        return self.send(ReportNodeFailed(self.id, node_id, self.attempt(node_id), error))

    def scheduled(self) -> list[str]:
        return [e.node_id for e in self.log if isinstance(e, NodeScheduled)]


def op(node_id: str, **fields) -> Node:
    return Node(node_id, NodeKind.OPERATOR, operator="identity", **fields)


def instrument(node_id: str, model: str, **fields) -> Node:
    return Node(node_id, NodeKind.INSTRUMENT, model=model, **fields)


def branch(node_id: str) -> Node:
    return Node(node_id, NodeKind.BRANCH, condition=Condition("truthy"))


def flow(*nodes: Node, edges: tuple[tuple[str, str], ...] = ()) -> Workflow:
    return Workflow("lookahead", nodes, tuple(Edge.parse(*edge) for edge in edges))


def pipeline() -> Workflow:
    """a -> slow -> m1 -> m2: two operators, then two instruments."""
    return flow(op("a", constants={"value": 1}), op("slow"), instrument("m1", "model-1"),
                instrument("m2", "model-2"),
                edges=(("a", "slow.value"), ("slow", "m1.text"), ("m1", "m2.text")))


# --- when -------------------------------------------------------------------------------------

def test_a_chain_warms_each_instrument_when_its_dependency_is_dispatched():
    run = Execution(pipeline())
    assert run.start_hints == []  # slow waits for a: m1 is two steps away
    assert run.complete("a") == ["m1"]  # slow is dispatched: m1 is next
    assert run.scheduled() == ["a", "slow"]
    assert run.started("slow") == []  # warmed once
    assert run.complete("slow") == ["m2"]  # m1 is dispatched (its runner allocates model-1)
    assert run.complete("m1") == []
    assert run.complete("m2") == []
    assert run.predictor.runs == {}  # an ended execution is forgotten
    assert run.predictor.made == 2


def test_the_hint_names_model_node_and_execution():
    run = Execution(pipeline(), execution_id="run-7")
    run.complete("a")
    assert run.hints == [Lookahead("model-1", "run-7", "m1", 1.0)]
    assert run.hints[0].reason == "lookahead run-7/m1"


def test_a_fan_in_warms_when_its_last_blocked_dependency_is_dispatched():
    # x waits for b (behind a) and c (a root): c runs first, b only after a.
    workflow = flow(op("a", constants={"value": 1}), op("b"), op("c", constants={"value": 2}),
                    instrument("x", "model-x"),
                    edges=(("a", "b.value"), ("b", "x.left"), ("c", "x.right")))
    run = Execution(workflow)
    assert run.start_hints == []  # b is still pending
    assert run.complete("c") == []  # c done, b still pending
    assert run.complete("a") == ["x"]  # b dispatched: nothing x waits for is blocked


def test_an_instrument_with_no_dependencies_or_one_made_ready_is_not_warmed():
    workflow = flow(instrument("root", "model-r"), op("a", constants={"value": 1}),
                    instrument("next", "model-n"), edges=(("a", "next.text"),))
    run = Execution(workflow)
    # root is dispatched at the start (its runner allocates); next's dependency is in flight.
    assert run.start_hints == ["next"]
    assert sorted(run.scheduled()) == ["a", "root"]


def test_a_map_over_a_model_is_warmed_like_an_instrument():
    workflow = flow(op("a", constants={"value": [1, 2]}),
                    Node("each", NodeKind.MAP, model="model-m"), op("last"),
                    edges=(("a", "each.items"), ("each", "last.value")))
    assert Execution(workflow).start_hints == ["each"]


def test_an_execution_without_model_nodes_is_not_followed():
    workflow = flow(op("a", constants={"value": 1}), op("b"), edges=(("a", "b.value"),))
    run = Execution(workflow)
    assert not run.predictor.wants("e1")
    assert run.complete("a") == []


# --- never for nodes that cannot run -----------------------------------------------------------

def gated() -> Workflow:
    """slow -> gate (a branch); gate.true -> yes (instrument); gate.false -> no (instrument)."""
    return flow(op("slow", constants={"value": 1}), branch("gate"),
                instrument("yes", "model-yes"), instrument("no", "model-no"),
                edges=(("slow", "gate.value"), ("gate.true", "yes.text"),
                       ("gate.false", "no.text")))


def test_nodes_behind_an_undecided_branch_wait_and_the_untaken_side_is_never_warmed():
    run = Execution(gated())
    assert run.complete("slow") == []  # the gate runs: either side may be untaken
    assert run.started("gate") == []
    assert run.complete("gate", output={"true": 1}) == []  # yes is ready; no is skipped
    assert run.scheduled() == ["slow", "gate", "yes"]
    assert run.predictor.made == 0


def test_a_dead_edge_does_not_make_a_node_certain_but_a_live_one_does():
    # first decides early; second is in flight when the instruments are looked at.
    workflow = flow(op("s", constants={"value": 1}), branch("first"), op("t"),
                    branch("second"),
                    instrument("dead", "model-dead"), instrument("live", "model-live"),
                    edges=(("s", "first.value"), ("s", "t.value"), ("t", "second.value"),
                           ("first.false", "dead.a"), ("second.true", "dead.b"),
                           ("first.true", "live.a"), ("second.false", "live.b")))
    run = Execution(workflow)
    run.complete("s")
    assert run.complete("first", output={"true": 1}) == []  # both still wait for second
    # second in flight: dead has only a dead edge and a branch edge -> maybe never runs;
    # live has a live edge from first -> runs whatever second decides.
    assert run.complete("t") == ["live"]
    assert run.complete("second", output={"true": 1}) == []  # dead runs after all: ready
    assert run.predictor.made == 1


def test_an_operator_beside_an_undecided_branch_makes_the_node_certain():
    # join runs with a null input even when gate's side is untaken: its other edge is live.
    workflow = flow(op("slow", constants={"value": 1}), branch("gate"),
                    op("other", constants={"value": 2}), op("later"),
                    instrument("join", "model-j"),
                    edges=(("slow", "gate.value"), ("gate.false", "join.a"),
                           ("other", "later.value"), ("later", "join.b")))
    run = Execution(workflow)
    assert run.complete("slow") == []  # gate in flight, later still pending
    assert run.complete("other") == ["join"]  # later (an operator) in flight too


def test_a_dependency_waiting_for_its_fallback_node_holds_the_node_back():
    workflow = flow(op("a", constants={"value": 1}), op("pre", constants={"value": 0}),
                    op("x", constants={"value": 2}), op("b"), op("d"),
                    op("c", recovery=Recovery(Strategy.FALLBACK, fallback_node="b")),
                    instrument("m", "model-m"),
                    edges=(("a", "c.value"), ("pre", "b.value"), ("x", "d.value"),
                           ("c", "m.left"), ("d", "m.right")))
    run = Execution(workflow)
    assert run.complete("a") == []  # c in flight, d pending
    assert run.fail("c") == []  # c waits for b, which waits for pre
    assert run.complete("x") == []  # d in flight, but c is neither done nor running
    assert run.complete("pre") == []
    assert run.complete("b") == ["m"]  # c falls back to b's output: only d is left


# --- retries, restarts, checkpoints, definitions by hash ---------------------------------------

def test_a_retrying_dependency_keeps_the_node_warmed_once():
    workflow = flow(op("a", constants={"value": 1},
                       recovery=Recovery(Strategy.RETRY, max_attempts=3)),
                    instrument("m", "model-m"), edges=(("a", "m.text"),))
    run = Execution(workflow)
    assert run.start_hints == ["m"]
    assert run.fail("a") == []  # retrying: still in flight, already warmed


def test_a_restart_warms_again_what_runs_again():
    workflow = flow(op("a", constants={"value": 1}),
                    op("b", recovery=Recovery(Strategy.RESTART, max_attempts=2)),
                    instrument("m", "model-m"), edges=(("a", "b.value"), ("b", "m.text")))
    run = Execution(workflow)
    assert run.complete("a") == ["m"]
    assert run.fail("b") == []  # restarted from the start: a runs again, b waits
    assert run.scheduled()[-1] == "a"
    assert run.complete("a") == ["m"]  # b dispatched again: m warmed again
    assert run.complete("b") == []


def test_an_execution_is_picked_up_at_a_checkpoint_when_its_start_is_not_in_the_history():
    run = Execution(pipeline())
    run.send(TakeCheckpoint("e1"))
    checkpoint = next(e for e in run.log if isinstance(e, CheckpointTaken))
    late = LookaheadPredictor()  # its history begins at the checkpoint
    assert late.apply(checkpoint, run.now) == []
    assert late.wants("e1")
    run.predictor = late
    assert run.complete("a") == ["m1"]


def test_a_definition_by_hash_is_read_from_the_store(tmp_path):
    store = FileDefinitionStore(tmp_path / "definitions")
    store.put(pipeline())
    run = Execution(pipeline())
    start = next(e for e in run.log if isinstance(e, ExecutionStarted))
    large = replace(start, definition="")  # as a definition too large to travel inline
    stored = LookaheadPredictor(Definitions(store))
    assert stored.apply(large, T0) == []
    assert stored.wants("e1")
    run.predictor = stored
    assert run.complete("a") == ["m1"]
    blind = LookaheadPredictor()  # no store: it cannot follow, and does not fail
    assert blind.apply(large, T0) == []
    assert not blind.wants("e1")


# --- the prewarmer's filter --------------------------------------------------------------------

def test_the_pool_prewarmer_sends_lookahead_only_for_cold_unplaced_registered_models():
    pool = PoolPrewarmer("default")
    for model in ("cold", "hot", "placed"):
        pool.apply(ModelRegistered(model, "python:x:y", 100, 1_000), T0)
    pool.apply(ModelTransitioned("hot", ModelState.COLD, ModelState.WARMING,
                                 R.USER_REQUEST, 0, {}), T0)
    pool.apply(ModelPlaced("placed", "h1", 100, R.USER_REQUEST), T0)
    hints = [Lookahead(m, "e1", f"n-{m}", 1.0) for m in ("cold", "hot", "placed", "unknown")]
    decisions = pool.lookahead(hints, T0 + 5)
    assert [(d.model_id, d.reason, d.at_ms) for d in decisions] == [
        ("cold", "lookahead e1/n-cold", T0 + 5)]
    # A decision on the way is not repeated for another execution's node.
    assert pool.lookahead([Lookahead("cold", "e2", "n", 1.0)], T0 + 6) == []
    pool.apply(ModelPlaced("cold", "h1", 100, R.PREDICTIVE_PREWARM), T0 + 7)
    assert pool.lookahead([Lookahead("cold", "e3", "n", 1.0)], T0 + 8) == []


# --- the service's side: records in, decisions out --------------------------------------------

def record(codec: Codec, event: Message, at_ms: int, sequence: int) -> bytes:
    envelope = {"event_id": f"{event.entity_key}/{sequence}", "event_type": event.type_name,
                "entity_key": getattr(event, "execution_id", DEFAULT_POOL),
                "sequence": sequence, "correlation_id": "c", "causation_id": "c",
                "occurred_at": at_ms, "producer": "test"}
    return codec.encode(event.avro_name, {"envelope": envelope, **to_record(event)})


def test_the_prewarmer_rebuilds_executions_from_history_and_decides_only_live(tmp_path):
    codec = Codec(EmbeddedRegistry())
    prewarmer = Prewarmer(Settings(data_dir=tmp_path), codec)
    prewarmer.fold(record(codec, ModelRegistered("model-1", "python:x:y", 100, 1_000), T0, 1))
    history = Execution(pipeline(), execution_id="old")
    history.complete("a")  # m1's hint was made back then
    for n, event in enumerate(history.log):
        assert prewarmer.fold_dag(event.execution_id.encode(),
                                  record(codec, event, T0, n), live=False) == []
    assert prewarmer.lookahead.wants("old")
    assert prewarmer.lookahead.made == 1

    live = Execution(pipeline(), execution_id="new")
    live.complete("a")
    decisions = [d for n, event in enumerate(live.log)
                 for d in prewarmer.fold_dag(event.execution_id.encode(),
                                             record(codec, event, T0 + n, n))]
    assert [(d.pool_id, d.model_id, d.reason) for d in decisions] == [
        (DEFAULT_POOL, "model-1", "lookahead new/m1")]


class CountingCodec(Codec):
    """The real codec, counting the records it decodes."""

    decoded = 0

    def decode(self, data: bytes):
        self.decoded += 1
        return super().decode(data)


def test_the_prewarmer_passes_over_executions_without_models_undecoded(tmp_path):
    codec = CountingCodec(EmbeddedRegistry())
    prewarmer = Prewarmer(Settings(data_dir=tmp_path), codec)
    plain = Execution(flow(op("a", constants={"value": 1}), op("b"), edges=(("a", "b.value"),)))
    plain.complete("a")
    plain.send(TakeCheckpoint("e1"))
    assert any(isinstance(event, CheckpointTaken) for event in plain.log)
    records = [record(codec, event, T0, n) for n, event in enumerate(plain.log)]
    assert len(records) > 3
    for value in records:
        assert prewarmer.fold_dag(b"e1", value) == []
    assert codec.decoded == 1  # the start only: not even its checkpoint
    assert not prewarmer.lookahead.wants("e1") and prewarmer.lookahead.passes("e1")


def test_a_late_predictor_still_picks_up_a_checkpoint_of_an_execution_it_never_saw_start():
    run = Execution(pipeline())
    run.send(TakeCheckpoint("e1"))
    checkpoint = next(e for e in run.log if isinstance(e, CheckpointTaken))
    predictor = LookaheadPredictor()
    plain = Execution(flow(op("a", constants={"value": 1})), predictor, execution_id="e2")
    assert predictor.passes("e2") and not predictor.passes("e1")
    predictor.apply(checkpoint, run.now)
    assert predictor.wants("e1") and not predictor.wants(plain.id)
