"""Issue 11, memory: a processor that evicts ended entities and old outcomes (to the archive,
streams/memory.py) decides exactly as one that never evicted anything.

Two identical DAG processors decide the same random commands over four executions sharing a
partition (starts, runners' reports, failures, cancels). Everything one of them produced is
archived in SQLite, and it evicts every ended execution and every outcome the archive holds.
Then both decide the same random follow-ups - a command re-sent with its id, a start again
with the same or other arguments, a cancel, a checkpoint, a late report, a new execution -
and every output (events, outcomes, checkpoint records) must be byte for byte the same.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams import archive
from streams.dag.bench import ProcessorRun
from streams.dag.definition import deep_dag
from streams.dag.execution import (
    DAG,
    CancelExecution,
    ReportNodeCompleted,
    ReportNodeFailed,
    StartExecution,
    TakeCheckpoint,
)
from streams.memory import ArchiveRecall, Forgotten
from streams.processor import Output
from streams.sql import METADATA, connect, write_transaction

CODEC = Codec(EmbeddedRegistry())
EXECUTIONS = ("a", "b", "c", "d")
FINAL = DAG.checkpoint_topic.final

played = st.lists(st.tuples(st.sampled_from(["start", "complete", "complete", "fail", "cancel"]),
                            st.integers(0, len(EXECUTIONS) - 1), st.integers(0, 1_000)),
                  min_size=5, max_size=25)
follow_ups = st.lists(st.tuples(
    st.sampled_from(["resend", "start_same", "start_other", "cancel", "checkpoint", "report",
                     "complete", "new"]),
    st.integers(0, len(EXECUTIONS) - 1), st.integers(0, 1_000)), min_size=1, max_size=15)


def chain(seed: int) -> str:
    return deep_dag(2 + seed % 3).canonical_json()


def step(run: ProcessorRun, kind: str, execution_id: str, seed: int) -> list[Output]:
    """One command, the same for both runs (they hold the same tasks and commands)."""
    tasks = [t for t in run.tasks if t.execution_id == execution_id]
    if kind in ("start", "start_same"):
        return run.send(StartExecution(execution_id, chain(seed if kind == "start" else 0)))
    if kind == "start_other":
        return run.send(StartExecution(execution_id, chain(seed), max_concurrency=3))
    if kind == "new":
        return run.send(StartExecution(f"new-{seed}", chain(seed)))
    if kind == "cancel":
        return run.send(CancelExecution(execution_id, "enough"))
    if kind == "checkpoint":
        return run.send(TakeCheckpoint(execution_id))
    if kind == "resend" and run.commands:
        return run.decide(run.commands[seed % len(run.commands)])
    if kind == "report":  # late: a node that may have run long ago, or never
        return run.send(ReportNodeCompleted(execution_id, "n0", 1 + seed % 2,
                                            json.dumps({"out": 1}), duration_ms=1))
    if kind == "fail" and tasks:
        task = tasks[seed % len(tasks)]
        run.tasks.remove(task)
        return run.send(ReportNodeFailed(execution_id, task.node_id, task.attempt, "Boom",
                                         retryable=False))
    if kind == "complete" and tasks:
        run.complete(1, execution_id)
    return []


def archived(run: ProcessorRun, directory: str):
    """An archive holding everything `run` produced."""
    engine = connect(f"sqlite:///{Path(directory) / 'archive.db'}")
    METADATA.create_all(engine)
    entries = [archive.decode_entry(CODEC, record) for topic in sorted(run.records)
               for record in run.of(topic)]
    with write_transaction(engine) as conn:
        archive.append(conn, entries)
    return engine


def shown(outputs: list[Output]) -> list[tuple]:
    return [(out.topic, out.key, out.value) for out in outputs]


@settings(max_examples=10, deadline=None)
@given(played, follow_ups)
def test_an_evicted_entity_decides_as_one_never_evicted(played, follow_ups) -> None:
    kept, evicting = ProcessorRun(CODEC, "a"), ProcessorRun(CODEC, "a")
    for kind, slot, seed in played:
        assert shown(step(kept, kind, EXECUTIONS[slot], seed)) == shown(
            step(evicting, kind, EXECUTIONS[slot], seed))
    for run in (kept, evicting):  # at least one execution ends
        run.send(StartExecution("a", chain(0)))
        while any(t.execution_id == "a" for t in run.tasks):
            run.complete(1, "a")
    processor = evicting.live
    with tempfile.TemporaryDirectory() as directory:
        engine = archived(evicting, directory)
        try:
            recall = processor.recall = ArchiveRecall(engine, DAG, CODEC, processor.name)
            keys, command_ids = processor.eviction_candidates(0, 0)
            processor.evict(recall.archived_entities(keys), recall.archived_outcomes(command_ids))
            ended = {key for key, e in kept.live.entities.items() if FINAL(e.state)}
            assert ended and not ended & processor.entities.keys()  # all of them evicted
            assert not processor.ledger
            for kind, slot, seed in follow_ups:
                assert shown(step(kept, kind, EXECUTIONS[slot], seed)) == shown(
                    step(evicting, kind, EXECUTIONS[slot], seed)), kind
            for key, entity in processor.entities.items():
                never = kept.live.entities[key]
                assert (entity.sequence, entity.last_at_ms) == (never.sequence,
                                                                never.last_at_ms)
                assert FINAL(entity.state) == FINAL(never.state)
        finally:
            engine.dispose()


@given(st.sets(st.text(min_size=1, max_size=30), max_size=200),
       st.sets(st.text(min_size=1, max_size=30), max_size=200))
def test_forgotten_never_misses_a_key_it_was_given(added, others) -> None:
    forgotten = Forgotten()
    assert not any(key in forgotten for key in added | others)
    for key in added:
        forgotten.add(key)
    assert all(key in forgotten for key in added)
    assert sum(key in forgotten for key in others - added) <= 2  # false positives: rare
