"""The Arbitration Engine as a component of the Pit (streams/component.py): its decider, the
pool observer `pit up` runs for it, its views, metrics, read-API routes, CLI, client
operations and bench. Its timers (timeouts, deferrals) are events on its own topic, which
the timer service follows by itself."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from streams.arbitration.cli import add_parser
from streams.component import Component, PitFactory, Route, Runtime, Service

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from streams.config import Settings
    from streams.decider import Decider


def _deciders() -> tuple[Decider[Any], ...]:
    from streams.arbitration.arbiter import ARBITER

    return (ARBITER,)


def _services(runtime: Runtime) -> Mapping[str, Service]:
    from streams.arbitration.observer import PoolObserver

    # Tells the arbiter what the pool holds: models Hot or not, hosts' free memory.
    return {"pool-observer": PoolObserver(runtime.settings, runtime.codec, runtime.engine)}


def _views(_settings: Settings | None) -> Sequence[Any]:
    from projections.arbitration import ArbitrationView

    return [ArbitrationView()]


def _observers(engine: Engine) -> Sequence[Any]:
    from projections.arbitration_metrics import ArbitrationMetrics

    return [ArbitrationMetrics(engine)]


def _routes() -> Sequence[Route]:
    from projections.arbitration_api import ROUTES

    return ROUTES


async def _bench(settings: Settings, _pit: PitFactory) -> dict[str, Any]:
    from streams.arbitration.bench import bench_arbitration

    return await bench_arbitration(settings)


def _operations(client: Any) -> Any:
    from streams.arbitration.client import ArbitrationOps  # on first use: `pit` starts fast

    return ArbitrationOps(client)


COMPONENT = Component(
    name="arbitration",
    load_deciders=_deciders,
    services=_services,
    views=_views,
    observers=_observers,
    routes=_routes,
    add_cli=add_parser,
    benches={"arbitration": _bench},
    client=_operations,
)
