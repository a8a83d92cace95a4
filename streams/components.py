"""The registry: every component of the Pit, one line each (streams/component.py says what
a component is). `pit up`, the CLI, the API, replay, audit, `pit bench` and the contract
tests iterate it; the helpers below derive from it."""

from __future__ import annotations

from functools import cache
from typing import Any

from streams.arbitration import component as arbitration
from streams.artifacts import component as artifacts
from streams.component import Component
from streams.config import Settings
from streams.dag import component as dag
from streams.decider import Decider, Message
from streams.errors import PitError
from streams.pool import component as pool
from streams.stale import component as stale

COMPONENTS: tuple[Component, ...] = (
    pool.COMPONENT,
    dag.COMPONENT,
    artifacts.COMPONENT,
    arbitration.COMPONENT,
    stale.COMPONENT,
)

# Every component's deciders (all_deciders), loaded on first use: `pit pool status` and the
# other reads never import them. Declared here for type checkers; __getattr__ makes it.
DECIDERS: tuple[Decider, ...]


@cache
def all_deciders() -> tuple[Decider, ...]:
    return tuple(d for c in COMPONENTS for d in c.deciders)


def __getattr__(name: str) -> Any:
    if name == "DECIDERS":
        return all_deciders()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def views(settings: Settings | None = None) -> list[Any]:
    """Every component's views; `settings` tell a view where its data is (default: the
    environment's)."""
    return [view for component in COMPONENTS for view in component.views(settings)]


def command_types() -> dict[str, type[Message]]:
    """Every command any component accepts, by short name (`TransitionModel`)."""
    return {cls.__name__: cls for decider in all_deciders() for cls in decider.commands}


def command_type(name: str) -> type[Message]:
    known = command_types()
    short = name.rsplit(".", 1)[-1]
    if short not in known:
        raise PitError(f"unknown command type {name!r}; known: {', '.join(sorted(known))}")
    return known[short]


def decider_for(command: type[Message]) -> Decider:
    return next(d for d in all_deciders() if command in d.commands)
