"""`ArbitrationOps.release_model` (streams/arbitration/client.py) sends two commands, the
pool's release and then the grant's: a command id given names each apart, never both."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from streams.arbitration.arbiter import ReleaseRequest
from streams.arbitration.client import allocation_ops
from streams.commands import Outcome
from streams.decider import Message
from streams.pool.pool import ReleaseModel


class _RecordingClient:
    """What the operations use of a CommandClient: `send` (recorded, always accepted) and
    `at_close`."""

    def __init__(self) -> None:
        self.sent: list[tuple[Message, dict[str, Any]]] = []

    def at_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        pass

    async def send(self, command: Message, **options: Any) -> Outcome:
        self.sent.append((command, options))
        return Outcome(command_id=options.get("command_id") or "", command_type="",
                       entity_key="", status="ACCEPTED", reason=None, event_ids=(),
                       decided_at=0, processor="")


async def test_a_command_id_becomes_one_for_the_pools_release_and_one_for_the_grants() -> None:
    client = _RecordingClient()
    _pool, arbitration = allocation_ops(client)  # type: ignore[arg-type]
    outcome = await arbitration.release_model("r1", command_id="c1", timeout=5.0)
    assert outcome.accepted
    assert [(type(command), options) for command, options in client.sent] == [
        (ReleaseModel, {"command_id": "c1/pool", "timeout": 5.0}),
        (ReleaseRequest, {"command_id": "c1/grant", "timeout": 5.0}),
    ]


async def test_without_a_command_id_both_releases_get_the_same_other_options() -> None:
    client = _RecordingClient()
    _pool, arbitration = allocation_ops(client)  # type: ignore[arg-type]
    await arbitration.release_model("r1", correlation_id="x")
    assert [(type(command), options) for command, options in client.sent] == [
        (ReleaseModel, {"correlation_id": "x"}),
        (ReleaseRequest, {"correlation_id": "x"}),
    ]
