"""The Pit's components, each one's descriptor (streams/component.py); their deciders fix
their topics and message types."""

from __future__ import annotations

from streams.artifacts.component import COMPONENT as ARTIFACTS
from streams.component import Component
from streams.dag.component import COMPONENT as DAG
from streams.decider import Decider, Message
from streams.errors import PitError
from streams.pool.component import COMPONENT as POOL

COMPONENTS: tuple[Component, ...] = (POOL, DAG, ARTIFACTS)

DECIDERS: tuple[Decider, ...] = tuple(d for c in COMPONENTS for d in c.deciders)


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
