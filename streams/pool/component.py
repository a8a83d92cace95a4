"""The model pool as a component of the Pit (streams/component.py): its deciders, the
services `pit up` runs for it, its views, metrics, read-API routes and bench."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from streams.component import Component, PitFactory, Route, Runtime, Service
from streams.pool.cli import add_parser

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from streams.config import Settings
    from streams.decider import Decider


def _deciders() -> tuple[Decider[Any], ...]:
    from streams.pool.pool import POOL

    return (POOL,)


def _subjects() -> tuple[Decider[Any], ...]:
    from streams.pool.lifecycle import LIFECYCLE

    return (LIFECYCLE,)


def _services(runtime: Runtime) -> Mapping[str, Service]:
    from streams.pool.monitor import HostMonitor
    from streams.pool.prewarmer import Prewarmer

    return {
        # Relearns from the whole log in the background; sends WarmModel once caught up.
        "prewarmer": Prewarmer(runtime.settings, runtime.codec, runtime.engine),
        # Polls registered hosts' /health, reports dead ones down.
        "host-monitor": HostMonitor(runtime.settings, runtime.engine, codec=runtime.codec),
    }


def _views(_settings: Settings | None) -> Sequence[Any]:
    from projections.models import ModelsView
    from projections.pool import PoolHealthView, PoolView

    return [ModelsView(), PoolView(), PoolHealthView()]


def _observers(engine: Engine) -> Sequence[Any]:
    from projections.pool_metrics import PoolMetrics

    return [PoolMetrics(engine)]


def _routes() -> Sequence[Route]:
    from projections.pool_api import ROUTES

    return ROUTES


async def _bench(settings: Settings, _pit: PitFactory) -> dict[str, Any]:
    from streams.pool.bench import bench_pool

    return await bench_pool(settings)


def _operations(client: Any) -> Any:
    from streams.pool.client import PoolOps  # imported on first use: `pit` starts fast

    return PoolOps(client)


COMPONENT = Component(
    name="pool",
    load_deciders=_deciders,
    load_subjects=_subjects,
    services=_services,
    views=_views,
    observers=_observers,
    routes=_routes,
    benches={"pool": _bench},
    client=_operations,
    add_cli=add_parser,
    quiet_events=frozenset({"HealthRecorded", "ReportHealth"}),  # every 10 s per model
)
