"""The Pit's components: each one's decider, which fixes its topics and message types."""

from __future__ import annotations

from streams.artifacts.catalog import ARTIFACTS
from streams.dag.execution import DAG
from streams.decider import Decider, Message
from streams.errors import PitError
from streams.pool.pool import POOL

DECIDERS: tuple[Decider, ...] = (POOL, DAG, ARTIFACTS)


def command_types() -> dict[str, type[Message]]:
    """Every command any component accepts, by short name (`TransitionModel`)."""
    return {cls.__name__: cls for decider in DECIDERS for cls in decider.commands}


def command_type(name: str) -> type[Message]:
    known = command_types()
    short = name.rsplit(".", 1)[-1]
    if short not in known:
        raise PitError(f"unknown command type {name!r}; known: {', '.join(sorted(known))}")
    return known[short]


def decider_for(command: type[Message]) -> Decider:
    return next(d for d in DECIDERS if command in d.commands)
