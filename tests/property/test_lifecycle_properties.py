"""Properties of the model lifecycle decider, and of the processor core that runs it.

Pure level: random command sequences (valid and invalid transitions, any usage count, empty
model ids) go through `decide`/`evolve` with non-decreasing timestamps, checked against an
oracle built from the seed's transition table written out literally below.

Processor level (no broker): the same kind of sequences, encoded with the real codec, go
through `Processor.handle` with duplicated command ids; a fresh processor restored from the
emitted records must then agree with the live one on every state and every decision.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass, field

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.decider import Message, Rejection, from_record, to_record
from streams.log import LogRecord
from streams.pool.lifecycle import (
    LIFECYCLE,
    TRANSITIONS,
    ModelLifecycle,
    ModelState,
    ModelTransitioned,
    ModelUsageRecorded,
    RecordModelUsage,
    TransitionModel,
    TransitionReason,
    can_transition,
    decide,
    evolve,
    initial_state,
)
from streams.pool.topics import POOL_COMMANDS, POOL_EVENTS
from streams.processor import OUTCOME, Output, Processor
from streams.topics import RESULTS

COLD, WARMING, HOT, COOLING, FAILED = "Cold", "Warming", "Hot", "Cooling", "Failed"
# The seed's table (M3.1.1), written out by hand: the decider's table must be exactly this.
SEED_TRANSITIONS: dict[str, set[str]] = {
    COLD: {WARMING},
    WARMING: {HOT, FAILED},
    HOT: {COOLING, FAILED},
    COOLING: {COLD, FAILED},
    FAILED: {COLD},
}
T0 = 1_700_000_000_000  # epoch ms where every generated timeline starts
PARTITIONS = 8
LONG = (-(2**63), 2**63 - 1)

MODEL_IDS = st.sampled_from(["model-a", "model-b", "model-c", ""])
STATES = st.sampled_from(list(ModelState))
REASONS = st.sampled_from(list(TransitionReason))
METADATA = st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=2)
STEP_MS = st.one_of(st.just(0), st.integers(1, 1_000), st.integers(1, 10**9))
ANY_INT = st.integers()  # usage counts for the pure decider: any int, <= 0 included
LONGS = st.integers(*LONG)  # what the Avro long of RecordModelUsage can carry


def commands(model_id: st.SearchStrategy[str] = MODEL_IDS,
             invocations: st.SearchStrategy[int] = ANY_INT) -> st.SearchStrategy[Message]:
    return st.one_of(
        st.builds(TransitionModel, model_id, STATES, REASONS, METADATA),
        st.builds(RecordModelUsage, model_id, invocations),
    )


def draw_command(data: st.DataObject, states: dict[str, ModelLifecycle],
                 invocations: st.SearchStrategy[int] = ANY_INT) -> Message:
    """Any command, but biased towards valid transitions so runs reach every state."""
    model_id = data.draw(MODEL_IDS)
    current = states.get(model_id, initial_state(model_id)).state
    if data.draw(st.booleans()):
        target = data.draw(st.sampled_from(sorted(SEED_TRANSITIONS[current])))
        return TransitionModel(model_id, ModelState(target), data.draw(REASONS),
                               data.draw(METADATA))
    return data.draw(commands(st.just(model_id), invocations))


def should_accept(state: ModelLifecycle, command: Message) -> bool:
    """The oracle: the seed's rules, independent of the decider's code."""
    if not command.entity_key:
        return False
    if isinstance(command, TransitionModel):
        return str(command.to_state) in SEED_TRANSITIONS[str(state.state)]
    assert isinstance(command, RecordModelUsage)
    # and the usage count stays a 64-bit integer (what the event's Avro long holds)
    return (command.invocations > 0 and state.state == HOT
            and state.usage_count + command.invocations < 2**63)


@dataclass
class Tally:
    transitions: int = 0
    failures: int = 0
    usage: int = 0
    entered_at: int | None = None


@dataclass
class PureRun:
    states: dict[str, ModelLifecycle] = field(default_factory=dict)
    log: list[tuple[Message, int]] = field(default_factory=list)  # (event, occurred_at)
    tallies: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    accepted: int = 0
    rejected: int = 0


def fold(events: list[tuple[Message, int]]) -> dict[str, ModelLifecycle]:
    states: dict[str, ModelLifecycle] = {}
    for event, at_ms in events:
        key = event.entity_key
        states[key] = evolve(states.get(key, initial_state(key)), event, at_ms)
    return states


# --- the table -------------------------------------------------------------------------------

def test_transition_table_is_exactly_the_seeds() -> None:
    assert {str(s): {str(t) for t in targets} for s, targets in TRANSITIONS.items()} == {
        "Cold": {"Warming"},
        "Warming": {"Hot", "Failed"},
        "Hot": {"Cooling", "Failed"},
        "Cooling": {"Cold", "Failed"},
        "Failed": {"Cold"},
    }
    assert [str(s) for s in ModelState] == [COLD, WARMING, HOT, COOLING, FAILED]
    for source in ModelState:
        for target in ModelState:
            assert can_transition(source, target) == (target in SEED_TRANSITIONS[source])


def test_reasons_are_the_seeds() -> None:
    assert [str(r) for r in TransitionReason] == [
        "UserRequest", "AutomaticTimeout", "HealthCheckFailure", "ResourcePressure",
        "PredictivePrewarm", "ScheduledCooldown", "ErrorRecovery",
    ]


# --- the pure decider ------------------------------------------------------------------------

@settings(max_examples=150, deadline=None)
@given(st.data())
def test_random_sequences_obey_the_lifecycle(data: st.DataObject) -> None:
    run = PureRun()
    now = T0
    for _ in range(data.draw(st.integers(1, 40))):
        now += data.draw(STEP_MS)
        command = draw_command(data, run.states)
        key = command.entity_key
        before = run.states.get(key, initial_state(key))
        try:
            events = decide(before, command, now)
        except Rejection as rejection:
            assert not should_accept(before, command), f"{command} wrongly rejected"
            assert rejection.reason
            if isinstance(command, TransitionModel) and key:
                assert str(before.state) in rejection.reason
                assert str(command.to_state) in rejection.reason
            if (isinstance(command, RecordModelUsage) and key and command.invocations > 0
                    and before.state != HOT):  # not Hot: the reason names the state
                assert str(before.state) in rejection.reason
            # A rejection changes nothing: the state is what it was, and deciding again agrees.
            assert run.states.get(key, initial_state(key)) == before
            try:
                decide(before, command, now)
            except Rejection as again:
                assert again.reason == rejection.reason
            else:
                raise AssertionError("decide is not deterministic")
            run.rejected += 1
            continue

        assert should_accept(before, command), f"{command} accepted from {before.state}"
        assert decide(before, command, now) == events  # deterministic
        assert len(events) == 1
        (event,) = events
        assert event.entity_key == key
        tally = run.tallies[key]
        if isinstance(command, TransitionModel):
            assert isinstance(event, ModelTransitioned)
            assert event.from_state == before.state
            assert event.to_state in TRANSITIONS[event.from_state]
            assert str(event.to_state) in SEED_TRANSITIONS[str(event.from_state)]
            assert (event.to_state, event.reason, event.metadata) == (
                command.to_state, command.reason, command.metadata)
            # Time in the previous state, to the millisecond, from the timestamps alone.
            expected = 0 if tally.entered_at is None else now - tally.entered_at
            assert event.time_in_previous_ms == expected
            assert before.time_in_state_ms(now) == expected
            tally.transitions += 1
            tally.failures += event.to_state == FAILED
            tally.entered_at = now
        else:
            assert isinstance(event, ModelUsageRecorded)
            assert event.invocations == command.invocations > 0
            tally.usage += command.invocations

        after = evolve(before, event, now)
        assert evolve(before, event, now) == after  # evolve is deterministic too
        run.states[key] = after
        run.log.append((event, now))
        run.accepted += 1
        assert (after.transition_count, after.failure_count, after.usage_count) == (
            tally.transitions, tally.failures, tally.usage)
        assert after.entered_at_ms == tally.entered_at
        assert after.time_in_state_ms(now) == (0 if tally.entered_at is None
                                               else now - tally.entered_at)

    # Folding evolve over everything emitted, from scratch, reproduces the live state.
    assert fold(run.log) == run.states
    assert "" not in run.states  # nothing is ever accepted for an empty model id


@settings(max_examples=200, deadline=None)
@given(STATES, commands(), st.integers(0, 2**40), st.integers(0, 2**40))
def test_decide_is_a_function_of_its_inputs(state: ModelState, command: Message,
                                            entered: int, elapsed: int) -> None:
    lifecycle = ModelLifecycle(command.entity_key or "x", state, entered_at_ms=entered)
    now = entered + elapsed

    def outcome() -> object:
        try:
            return decide(lifecycle, command, now)
        except Rejection as rejection:
            return ("rejected", rejection.reason)

    first = outcome()
    assert outcome() == first
    assert isinstance(first, tuple) != should_accept(lifecycle, command)
    if isinstance(first, list) and isinstance(command, TransitionModel):
        assert first[0].time_in_previous_ms == elapsed


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 10**6), min_size=8, max_size=8))
def test_a_full_cycle_counts_and_times_every_state(gaps: list[int]) -> None:
    """Cold→Warming→Hot→Failed→Cold→Warming→Hot→Cooling→Cold: counters and times exact."""
    path = [WARMING, HOT, FAILED, COLD, WARMING, HOT, COOLING, COLD]
    state, now, entered = initial_state("m"), T0, None
    for target, gap in zip(path, gaps, strict=True):
        now += gap
        (event,) = decide(state, TransitionModel("m", ModelState(target),
                                                 TransitionReason.USER_REQUEST), now)
        assert event.time_in_previous_ms == (0 if entered is None else gap)
        state, entered = evolve(state, event, now), now
        if target == HOT:
            (usage,) = decide(state, RecordModelUsage("m", 3), now)
            state = evolve(state, usage, now)
    assert (state.state, state.transition_count, state.failure_count, state.usage_count) == (
        COLD, 8, 1, 6)
    assert state.time_in_state_ms(now + 1234) == 1234


# --- the processor core ----------------------------------------------------------------------

CODEC = Codec(EmbeddedRegistry())


def partition_of(model_id: str) -> int:
    return zlib.crc32(model_id.encode()) % PARTITIONS


def command_record(command: Message, command_id: str, offset: int, at_ms: int) -> LogRecord:
    meta = {"command_id": command_id, "issued_at": at_ms, "issued_by": "hypothesis",
            "correlation_id": f"corr-{command_id}"}
    value = CODEC.encode(command.avro_name, {"meta": meta, **to_record(command)})
    return LogRecord(POOL_COMMANDS, partition_of(command.entity_key), offset, at_ms,
                     command.entity_key.encode(), value)


class Log:
    """What the processor produced, as the records a consumer would read back."""

    def __init__(self) -> None:
        self.records: dict[str, list[LogRecord]] = defaultdict(list)
        self._offsets: dict[tuple[str, int], int] = defaultdict(int)

    def append(self, outputs: list[Output]) -> None:
        for out in outputs:
            offset = self._offsets[out.topic, out.partition]
            self._offsets[out.topic, out.partition] += 1
            self.records[out.topic].append(LogRecord(out.topic, out.partition, offset,
                                                     out.timestamp_ms, out.key, out.value,
                                                     out.headers))


def decode_outcome(output: Output) -> dict:
    decoded = CODEC.decode(output.value)
    assert decoded.name == OUTCOME
    return decoded.record


# Fields that describe one answer rather than the decision: the duplicate flag and the
# command record answered (a re-sent command is another record).
PER_ANSWER = {"duplicate", "command_partition", "command_offset"}


def decision(outcome: dict) -> dict:
    return {k: v for k, v in outcome.items() if k not in PER_ANSWER}


def without_duplicate_flag(ledger: dict[str, dict]) -> dict[str, dict]:
    return {command_id: decision(outcome) for command_id, outcome in ledger.items()}



@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_processor_drops_duplicates_and_restores_exactly(data: st.DataObject) -> None:
    live = Processor(LIFECYCLE, CODEC)
    log = Log()
    sent: list[LogRecord] = []  # every command record, in order
    first_outcome: dict[str, dict] = {}  # command id -> its original (non-duplicate) outcome
    sequences: dict[str, int] = defaultdict(int)
    now, offset = T0, 0
    for _ in range(data.draw(st.integers(1, 40))):
        now += data.draw(STEP_MS)
        states = {key: entity.state for key, entity in live.entities.items()}
        redeliver = sent and data.draw(st.integers(0, 4)) == 0
        if redeliver:
            # The same command id again: the identical record, or other content under that id.
            old = data.draw(st.sampled_from(sent))
            command_id = CODEC.decode(old.value).record["meta"]["command_id"]
            if data.draw(st.booleans()):
                record = LogRecord(old.topic, old.partition, offset, now, old.key, old.value)
            else:
                record = command_record(draw_command(data, states, LONGS), command_id,
                                        offset, now)
        else:
            command_id = f"cmd-{offset}"
            record = command_record(draw_command(data, states, LONGS), command_id, offset, now)
        offset += 1
        before = {key: (entity.state, entity.sequence) for key, entity in live.entities.items()}
        outputs = live.handle([record])
        log.append(outputs)
        sent.append(record)

        *events, result = outputs
        assert result.topic == RESULTS and result.key == command_id.encode()
        assert result.partition == record.partition
        outcome = decode_outcome(result)
        assert outcome["command_id"] == command_id
        if command_id in first_outcome:
            original = first_outcome[command_id]
            assert outcome["duplicate"] is True
            assert events == []  # no new events
            assert decision(outcome) == decision(original)  # original event ids
            assert {key: (e.state, e.sequence) for key, e in live.entities.items()} == before
            continue

        assert outcome["duplicate"] is False
        first_outcome[command_id] = outcome
        command = from_record(LIFECYCLE.command_type(CODEC.decode(record.value).name),
                              CODEC.decode(record.value).record)
        key = command.entity_key
        state = before[key][0] if key in before else initial_state(key)
        assert (outcome["status"] == "ACCEPTED") == should_accept(state, command)
        assert outcome["event_ids"] == [f"{command_id}/{i}" for i in range(len(events))]
        if outcome["status"] == "REJECTED":
            assert events == [] and outcome["reason"]
            assert {k: (e.state, e.sequence) for k, e in live.entities.items()} == before
            continue
        assert outcome["reason"] is None and len(events) == 1
        for index, event in enumerate(events):
            assert (event.topic, event.partition, event.key) == (
                POOL_EVENTS, record.partition, key.encode())
            decoded = CODEC.decode(event.value)
            envelope = decoded.record["envelope"]
            sequences[key] += 1
            assert envelope == {
                "event_id": f"{command_id}/{index}", "event_type": decoded.name.split(".")[-1],
                "entity_key": key, "sequence": sequences[key],
                "correlation_id": f"corr-{command_id}", "causation_id": command_id,
                "occurred_at": now, "producer": live.name,
            }
            assert event.timestamp_ms == now

    # Folding evolve over the emitted events (decoded from bytes) reproduces every state.
    events = [(from_record(LIFECYCLE.event_type(d.name), d.record), d.record["envelope"])
              for d in (CODEC.decode(r.value) for r in log.records[POOL_EVENTS])]
    assert fold([(e, env["occurred_at"]) for e, env in events]) == {
        key: entity.state for key, entity in live.entities.items()}

    # A fresh processor restored from the log (events first, then results) agrees on all.
    restored = Processor(LIFECYCLE, CODEC)
    assert restored.restore(log.records[POOL_EVENTS]) == len(log.records[POOL_EVENTS])
    restored.restore(log.records[RESULTS])
    assert restored.entities == live.entities
    assert set(restored.ledger) == set(live.ledger) == set(first_outcome)
    # (the results topic also holds the duplicate acknowledgements, so a restored entry may
    # carry duplicate=True; the processor sets that flag on every re-acknowledgement anyway)
    assert without_duplicate_flag(restored.ledger) == without_duplicate_flag(live.ledger)

    # Every old command id is acknowledged as a duplicate, byte for byte as the live one does.
    for old in sent:
        again = LogRecord(old.topic, old.partition, offset, now, old.key, old.value)
        replies = restored.handle([again])
        assert replies == live.handle([again])
        assert len(replies) == 1 and decode_outcome(replies[0])["duplicate"] is True
    # And new commands are decided identically: sequences continue where they were.
    for model_id in ("model-a", "model-b", "model-c"):
        offset += 1
        command = draw_command(data, {k: e.state for k, e in live.entities.items()}, LONGS)
        record = command_record(command, f"after-{model_id}-{offset}", offset, now)
        assert restored.handle([record]) == live.handle([record])
    assert restored.entities == live.entities


def test_a_batch_with_the_same_command_twice_decides_it_once() -> None:
    processor = Processor(LIFECYCLE, CODEC)
    record = command_record(TransitionModel("m", ModelState.WARMING,
                                            TransitionReason.USER_REQUEST), "c-1", 0, T0)
    outputs = processor.handle([record, record])
    assert [out.topic for out in outputs] == [POOL_EVENTS, RESULTS, RESULTS]
    first, second = decode_outcome(outputs[1]), decode_outcome(outputs[2])
    assert (first["duplicate"], second["duplicate"]) == (False, True)
    assert first["event_ids"] == second["event_ids"] == ["c-1/0"]
    assert processor.entities["m"].sequence == 1
    assert processor.state("m").state == WARMING


def test_restoring_the_same_events_again_keeps_the_ledger_exact() -> None:
    processor = Processor(LIFECYCLE, CODEC)
    record = command_record(TransitionModel("m", ModelState.WARMING,
                                            TransitionReason.USER_REQUEST), "c-1", 0, T0)
    log = Log()
    log.append(processor.handle([record]))
    # What run_processor does on a reassignment: forget entities, restore from the topics.
    processor.entities.clear()
    processor.restore(log.records[POOL_EVENTS])  # the outcome itself has expired
    assert processor.state("m").state == WARMING
    (reply,) = processor.handle([record])
    assert decode_outcome(reply)["event_ids"] == ["c-1/0"]
