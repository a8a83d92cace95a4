"""Issue 4, checkpoints: a processor restores a DAG execution from its last CheckpointTaken
plus the events after it, so the evolve work of a restore does not grow with the history;
state, ledger and positions equal a full replay's, and other deciders fold as before."""

from __future__ import annotations

from dataclasses import replace

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.dag.bench import ProcessorRun, bench_processor_restore
from streams.dag.definition import layered_dag
from streams.dag.execution import DAG, CheckpointTaken, StartExecution, TakeCheckpoint

EID = "long"
CODEC = Codec(EmbeddedRegistry())


def counting(decider):
    """The decider with its evolve calls counted (calls[0])."""
    calls = [0]

    def evolve(state, event, at_ms):
        calls[0] += 1
        return decider.evolve(state, event, at_ms)

    return replace(decider, evolve=evolve), calls


def run_with_history(completed: int) -> ProcessorRun:
    """`completed` nodes done, a checkpoint, then five more nodes done."""
    run = ProcessorRun(CODEC, EID)
    run.send(StartExecution(EID, layered_dag(600, seed=3, layers=20).canonical_json(),
                            checkpoint_every=0))
    run.complete(completed)
    run.send(TakeCheckpoint(EID))
    run.complete(5)
    return run


def tail_after_checkpoint(run: ProcessorRun) -> int:
    names = [CODEC.decode(r.value).name for r in run.events()]
    last = max(k for k, name in enumerate(names) if name == CheckpointTaken.avro_name)
    return len(names) - last - 1


def test_restore_evolves_only_the_events_after_the_last_checkpoint():
    short, long = run_with_history(50), run_with_history(400)
    work = []
    for run in (short, long):
        decider, calls = counting(DAG)
        processor = run.restored(decider)
        # the same state, ledger and positions as the live processor's
        assert processor.state(EID) == run.live.state(EID)
        assert processor.entities[EID].sequence == run.live.entities[EID].sequence
        assert processor.positions == run.live.positions
        assert processor.ledger.keys() == run.live.ledger.keys()
        assert calls[0] == tail_after_checkpoint(run)
        work.append(calls[0])
    # eight times the history, the same restore work: five nodes' worth of events
    assert len(long.events()) > 6 * len(short.events())
    assert all(calls <= 5 * 4 for calls in work)
    # without the checkpoint hook every event is evolved
    full, calls = counting(replace(DAG, snapshots=(), from_snapshot=None))
    assert full.snapshots == () and full.from_snapshot is None
    assert long.restored(full).state(EID) == long.live.state(EID)
    assert calls[0] == len(long.events())


def test_a_restored_processor_answers_a_resent_command_as_a_duplicate_and_decides_on():
    run = run_with_history(40)
    processor = run.restored()
    outputs = processor.handle([run.commands[10]])
    assert len(outputs) == 1
    assert CODEC.decode(outputs[0].value).record["duplicate"] is True
    run.complete(1)
    processor.handle(run.commands[-2:])
    assert processor.state(EID) == run.live.state(EID)


def test_the_last_of_several_checkpoints_is_the_starting_point():
    run = run_with_history(30)
    run.send(TakeCheckpoint(EID))
    run.complete(3)
    decider, calls = counting(DAG)
    assert run.restored(decider).state(EID) == run.live.state(EID)
    assert calls[0] == tail_after_checkpoint(run)


def test_the_restore_measurement_checks_both_ways_agree():
    figures = bench_processor_restore(CODEC, histories=(500, 1_500), n=300)
    assert figures["dag_restore_history_events_1k"] > figures["dag_restore_history_events_500"]
    assert figures["dag_restore_events_read_1k"] == figures["dag_restore_events_read_500"]
    assert figures["dag_restore_ms_1k"] > 0
