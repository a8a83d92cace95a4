"""How a component joins the Pit: one `Component` descriptor, listed once in the registry
(`streams/components.py`).

The kernel (this folder's top-level modules and `schemas/`) knows no component. `pit up`,
the CLI, the read API, replay, audit, `pit bench` and the contract tests iterate the
registry and take from each descriptor what they need, so adding a component means its
folder under `streams/`, its views under `projections/`, its schemas in `schemas/avro/`,
its topics in `infra/topics.yaml`, and one line in the registry (plus, with client
operations, one type line in `PitClient`, streams/client.py, for type checkers).

Every part but the deciders is optional, and every part that needs a running Pit is a
factory: the descriptor itself imports nothing heavy and starts nothing. Even the deciders
are loaded on first use (their modules import the runtime: SQLAlchemy, aiokafka), so a `pit`
command that only reads a view never imports them.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from streams.decider import Decider

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy import Engine

    from schemas.codec import Codec
    from streams.config import Settings


class Service(Protocol):
    """A long-running part of `pit up` (a process manager, relay or worker): runs until
    `stop` is set, then returns once its in-flight work is done."""

    async def run(self, stop: asyncio.Event) -> None: ...


@dataclass(frozen=True)
class Runtime:
    """What a running `pit up` hands a component's factories; `embedded`: its broker is the
    embedded one (its own, or the one it joined), which holds an empty fetch for its whole
    wait, where a cluster answers as soon as a record arrives."""

    settings: Settings
    codec: Codec
    engine: Engine
    embedded: bool


@dataclass(frozen=True)
class Param:
    """A query parameter of a route, as /openapi.json describes it: `type` is a JSON
    schema type ("string", "integer"); `enum` lists the values it takes, if only those."""

    name: str
    description: str = ""
    type: str = "string"
    enum: tuple[str, ...] = ()


@dataclass(frozen=True)
class Route:
    """An API route: `method` `path`, answered by `handler(request)`. Any method but GET is
    an action: it publishes a command, and needs PIT_API_TOKEN (projections/api.py).

    The rest describes it in /openapi.json (projections/openapi.py): `summary`, its query
    parameters, and `body`, the JSON schema of its request body (`body_required` or not)."""

    path: str
    handler: Callable[[Any], Awaitable[Any]]
    method: str = "GET"
    summary: str = ""
    query: tuple[Param, ...] = ()
    body: Mapping[str, Any] | None = None
    body_required: bool = True


# `pit up` in this process on a data directory, not yet started (`streams.app.Stack`):
# what `pit bench` (streams/bench.py) hands a component's benches that drive a whole Pit. A
# component never imports the assembly itself.
PitFactory = Callable[["Path"], Any]

# A `pit bench` part: (settings, a PitFactory) -> figures.
Bench = Callable[["Settings", PitFactory], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Component:
    """One component of the Pit, as data.

    * `deciders`: its rules, as the contract tests and the audit log see them, loaded by
      `load_deciders()` on first use; `configure(settings)` gives the ones `pit up` runs
      when they need the settings (the DAG reads definitions from the data directory).
    * `subjects`: deciders that replay one subject's events inside an entity's topic (the
      pool's model lifecycle), for `pit audit <key> --until` on a key that is no entity;
      loaded by `load_subjects()` on first use.
    * `services(runtime)`: what `pit up` runs for it besides its processors, by name (the
      task's name; `Stack(without=...)` leaves named ones out). They run once per cluster,
      on the elected leader (streams/leader.py), and are made afresh for every term; those
      named in `shared` divide their work through their own consumer group instead, and
      run in every `pit up`.
    * `prepare(settings, engine)`: runs once the embedded broker is restored and before any
      processor starts (restoring consumer positions the component owns).
    * `views(settings)`: its projections; `observers(engine)`: metrics fed by the projector.
    * `routes()`: its API routes, reads and actions (a factory: handlers import the
      projections);
      `add_cli(subparsers)`: its `pit` subcommands.
    * `client(pit_client)`: its operations, reachable as `pit_client.<name>`.
    * `benches`: `pit bench` parts, name -> async function(settings, a `PitFactory`)
      -> figures.
    * `settings(settings)`: its own settings, parsed from its `PIT_*` variables in
      `settings.env`; the CLI parses every component's at start-up, so a bad value fails
      before any command runs.
    * `quiet_events`: record types (event or command names) too frequent to read one by one
      in an entity's history - a health check every 10 s: `pit audit` folds each run of
      them into one line (`--all` shows every one).
    """

    name: str
    load_deciders: Callable[[], tuple[Decider[Any], ...]]
    configure: Callable[[Settings], tuple[Decider[Any], ...]] | None = None
    load_subjects: Callable[[], tuple[Decider[Any], ...]] = lambda: ()
    services: Callable[[Runtime], Mapping[str, Service]] = lambda _runtime: {}
    shared: frozenset[str] = frozenset()
    prepare: Callable[[Settings, Engine], Awaitable[None]] | None = None
    views: Callable[[Settings | None], Sequence[Any]] = lambda _settings: ()
    observers: Callable[[Engine], Sequence[Any]] = lambda _engine: ()
    routes: Callable[[], Sequence[Route]] = lambda: ()
    add_cli: Callable[[argparse._SubParsersAction[Any]], None] | None = None
    client: Callable[[Any], Any] | None = None
    benches: Mapping[str, Bench] = field(default_factory=dict)
    settings: Callable[[Settings], Any] | None = None
    quiet_events: frozenset[str] = frozenset()

    @cached_property
    def deciders(self) -> tuple[Decider[Any], ...]:
        return self.load_deciders()

    @cached_property
    def subjects(self) -> tuple[Decider[Any], ...]:
        return self.load_subjects()

    def running_deciders(self, settings: Settings) -> tuple[Decider[Any], ...]:
        return self.configure(settings) if self.configure is not None else self.deciders


def audit_deciders(components: Iterable[Component]
                   ) -> dict[str, tuple[Decider[Any], Decider[Any]]]:
    """Event topic -> (the decider of its entities, the decider of one subject's events),
    what `state_as_of` replays; without a subject decider a key is replayed as an entity."""
    found: dict[str, tuple[Decider[Any], Decider[Any]]] = {}
    for component in components:
        for decider in component.deciders:
            subject = next((s for s in component.subjects
                            if s.event_topic == decider.event_topic), decider)
            found[decider.event_topic] = (decider, subject)
    return found


def bench_note(text: str) -> None:
    """A `pit bench` part's progress line: on stderr, so stdout holds only the figures."""
    print(f"bench: {text}", file=sys.stderr, flush=True)
