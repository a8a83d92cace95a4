"""The shared outcome reader's count of hurried waits per client (`OutcomeReader.pending`,
streams/commands.py): whatever clients expect (in a hurry or patiently), give up on, or get
answered, `waits(client)` says what a pass over every wait would, a patient wait counting
only once it is also expected in a hurry (the model below is the oracle)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.commands import OutcomeReader
from streams.config import Settings
from streams.processor import OUTCOME

CODEC = Codec(EmbeddedRegistry())
CLIENTS = ("a", "b", "c")
COMMANDS = ("c1", "c2", "c3", "c4")


class Client:
    """A client as the reader sees one: hashable, nothing more."""


def outcome_record(command_id: str) -> SimpleNamespace:
    """An outcome as the shared reader reads it from the results topic."""
    value = CODEC.encode(OUTCOME, {
        "command_id": command_id, "command_type": "T", "entity_key": "k",
        "status": "ACCEPTED", "duplicate": False, "reason": None, "event_ids": [],
        "decided_at": 0, "processor": "p", "command_partition": 0, "command_offset": 0})
    return SimpleNamespace(key=command_id.encode(), value=value)


steps = st.lists(st.tuples(st.sampled_from(("expect", "expect patiently", "forget", "answer")),
                           st.sampled_from(CLIENTS), st.sampled_from(COMMANDS)), max_size=40)


@given(steps)
def test_a_client_waits_exactly_while_some_command_of_its_is_unanswered(plan) -> None:
    async def run() -> None:
        reader = OutcomeReader(Settings(), CODEC, (0, "test"))
        clients = {name: Client() for name in CLIENTS}
        hurried: dict[tuple[str, str], bool] = {}  # the model: each wait, and its hurry
        for step, name, command_id in plan:
            client = clients[name]
            if step.startswith("expect"):
                patient = step == "expect patiently"
                future = reader.expect(client, command_id,  # type: ignore[arg-type]
                                       patient=patient)
                assert future is reader.waiting[command_id][client]  # one future per wait
                was = hurried.get((name, command_id), False)
                hurried[(name, command_id)] = was or not patient
            elif step == "forget":
                reader.forget(client, command_id)  # type: ignore[arg-type]
                hurried.pop((name, command_id), None)
            else:
                reader._on_outcome(outcome_record(command_id))  # type: ignore[arg-type]
                hurried = {wait: hurry for wait, hurry in hurried.items()
                           if wait[1] != command_id}
            for each_name, each in clients.items():
                oracle = any(hurry for (waiter, _), hurry in hurried.items()
                             if waiter == each_name)
                assert reader.waits(each) is oracle  # type: ignore[arg-type]
        assert sum(reader.pending.values()) == sum(hurried.values())
        assert len(reader.patient) == len(hurried) - sum(hurried.values())
        assert sum(map(len, reader.waiting.values())) == len(hurried)

    asyncio.run(run())
