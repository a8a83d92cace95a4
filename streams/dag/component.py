"""The DAG executor as a component of the Pit (streams/component.py): its decider, the
task dispatcher `pit up` runs for it, its view, metrics, routes, CLI and bench."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from streams.component import Component, PitFactory, Route, Runtime, Service
from streams.dag.settings import DagSettings
from streams.dag.workflow_cli import add_parser

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from streams.config import Settings
    from streams.decider import Decider


def _deciders() -> tuple[Decider[Any], ...]:
    from streams.dag.execution import DAG

    return (DAG,)


def _configure(settings: Settings) -> tuple[Decider[Any], ...]:
    """The decider as `pit up` runs it: it reads a definition started by hash from the
    definition store in the data directory, where clients put it."""
    from streams.dag.definition_store import definition_store
    from streams.dag.execution import Definitions, execution_decider

    return (execution_decider(Definitions(definition_store(settings))),)


async def _prepare(settings: Settings, engine: Engine) -> None:
    from streams.dag.dispatch import restore_runner_positions
    from streams.dag.runner import GROUP

    await restore_runner_positions(settings, engine, GROUP)


def _services(runtime: Runtime) -> Mapping[str, Service]:
    from streams.dag.dispatch import TaskDispatcher
    from streams.kafka import path_fetch_wait_ms

    # NodeScheduled events become tasks for `pit runner` processes (issue 4). Every hop of a
    # workflow passes the dispatcher: on the embedded broker it fetches as often as the
    # processor, even while idle (its librdkafka consumer cannot slow down).
    return {"task-dispatcher": TaskDispatcher(
        runtime.settings, runtime.codec, runtime.engine,
        fetch_max_wait_ms=path_fetch_wait_ms(runtime.embedded))}


def _views(_settings: Settings | None) -> Sequence[Any]:
    from projections.dag import DagView

    return [DagView()]


def _observers(engine: Engine) -> Sequence[Any]:
    from projections.dag_metrics import DagMetrics

    return [DagMetrics(engine)]


def _routes() -> Sequence[Route]:
    from projections.dag_api import ROUTES

    return ROUTES


async def _bench(settings: Settings, pit: PitFactory) -> dict[str, Any]:
    from streams.dag.bench import bench_dag

    return await bench_dag(settings, pit)


def _operations(client: Any) -> Any:
    from streams.dag.workflows import WorkflowOps  # imported on first use: `pit` starts fast

    return WorkflowOps(client)


COMPONENT = Component(
    name="dag",
    load_deciders=_deciders,
    configure=_configure,
    prepare=_prepare,
    services=_services,
    views=_views,
    observers=_observers,
    routes=_routes,
    add_cli=add_parser,
    benches={"dag": _bench},
    client=_operations,
    settings=DagSettings.of,
)
