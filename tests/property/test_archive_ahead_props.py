"""How far a processor's events may run ahead of the archive on the embedded broker
(streams/processor.py, `Unarchived` and `event_chunks`): the bytes counted ahead are those
of the batches written and not yet wholly archived - never fewer than the bytes not
archived - and a batch's events are cut into chunks of whole commands that each fit the
limit: in order, none lost, none split."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from streams.log import LogRecord
from streams.processor import Output, Unarchived, event_chunks, logged_size

EVENTS, RESULTS = "pit.test.events", "pit.results"
PARTITIONS = 3

# A command's outputs: its events (partition, value size) then its outcome.
commands = st.lists(st.lists(st.tuples(st.integers(0, PARTITIONS - 1), st.integers(0, 400)),
                             max_size=6), max_size=25)


def batch_of(decided: list[list[tuple[int, int]]]) -> tuple[list[Output], list[list[int]]]:
    """The outputs of the commands, and each command's event indexes."""
    outputs: list[Output] = []
    runs: list[list[int]] = []
    for events in decided:
        runs.append([])
        for partition, size in events:
            runs[-1].append(len(outputs))
            outputs.append(Output(EVENTS, partition, b"k", b"v" * size, 0))
        outputs.append(Output(RESULTS, 0, b"c", b"outcome", 0))
    return outputs, runs


@given(commands, st.integers(0, 1_500))
def test_events_go_in_chunks_of_whole_commands_within_the_limit(decided, limit) -> None:
    outputs, runs = batch_of(decided)
    chunks = [chunk.indexes for chunk in event_chunks(outputs, EVENTS, limit)]
    assert [i for chunk in chunks for i in chunk] == [i for run in runs for i in run]
    assert all(chunks)
    where = {i: n for n, chunk in enumerate(chunks) for i in chunk}
    for run in runs:  # a command's events are never split over two chunks
        assert len({where[i] for i in run}) <= 1
    for chunk in chunks:
        sizes: Counter[int] = Counter()
        for i in chunk:
            out = outputs[i]
            sizes[out.partition] += logged_size(out.key, out.value, out.headers)
        commands_in_it = sum(1 for run in runs if run and run[0] in chunk)
        assert commands_in_it == 1 or max(sizes.values()) <= limit


@given(st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, PARTITIONS - 1),
              st.lists(st.integers(0, 300), min_size=1, max_size=4)),
    st.tuples(st.just("archive"), st.integers(0, PARTITIONS - 1), st.integers(0, 40))),
    max_size=60), st.integers(1, 2_000))
def test_ahead_is_what_was_written_and_not_archived(steps, limit) -> None:
    """Counted per batch: a batch is ahead until the archive holds all of it, so the count
    never falls below the bytes not archived, and equals them batch by batch."""
    unarchived = Unarchived(limit=limit)
    batches: dict[int, list[tuple[int, int]]] = {p: [] for p in range(PARTITIONS)}  # (last, size)
    records: dict[int, list[tuple[int, int]]] = {p: [] for p in range(PARTITIONS)}  # (offset, size)
    archived = {p: -1 for p in range(PARTITIONS)}
    for step, partition, amount in steps:
        if step == "write":
            batch = []
            for value_size in amount:
                offset = len(records[partition])
                batch.append(LogRecord(EVENTS, partition, offset, 0, b"k", b"v" * value_size,
                                       ()))
                records[partition].append((offset, logged_size(b"k", b"v" * value_size, ())))
            size = sum(size for _, size in records[partition][-len(batch):])
            unarchived.kept(batch, {(EVENTS, partition): size})
            batches[partition].append((batch[-1].offset, size))
        else:  # the archive reaches some offset; it never goes back
            archived[partition] = max(archived[partition],
                                      min(amount, len(records[partition]) - 1))
            unarchived.archived({(EVENTS, p): at for p, at in archived.items()})
        for p in range(PARTITIONS):
            exact = sum(size for offset, size in records[p] if offset > archived[p])
            # the count shrinks only when positions are read, and never below the truth
            assert unarchived.ahead[(EVENTS, p)] >= exact
    unarchived.archived({(EVENTS, p): at for p, at in archived.items()})
    ahead = {}
    for p in range(PARTITIONS):
        ahead[p] = sum(size for last, size in batches[p] if last > archived[p])
        assert unarchived.ahead[(EVENTS, p)] == ahead[p]
    adding = {(EVENTS, p): 100 for p in range(PARTITIONS)}
    assert set(unarchived.over(adding)) == {
        (EVENTS, p) for p in range(PARTITIONS) if ahead[p] and ahead[p] + 100 > limit}
