"""The Stale Manager as a component of the Pit (streams/component.py): its decider, the
catalog observer and the tier worker `pit up` runs for it, its views, metrics, read-API
routes, CLI, client operations and bench. Its timers (purges, apply batches, scheduled runs)
are events on its own topic, which the timer service follows by itself."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from streams.component import Component, PitFactory, Route, Runtime, Service
from streams.stale.cli import add_parser
from streams.stale.settings import StaleSettings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from streams.config import Settings
    from streams.decider import Decider


def _deciders() -> tuple[Decider[Any], ...]:
    from streams.stale.manager import STALE

    return (STALE,)


def _services(runtime: Runtime) -> Mapping[str, Service]:
    from streams.stale.observer import CatalogObserver
    from streams.stale.worker import TierWorker

    # The observer tells the decider what the catalog and the blob store hold; the worker
    # moves and purges the bytes it decided on.
    return {"catalog-observer": CatalogObserver(runtime.settings, runtime.codec,
                                                runtime.engine),
            "stale-worker": TierWorker(runtime.settings, runtime.codec, runtime.engine)}


def _views(_settings: Settings | None) -> Sequence[Any]:
    from projections.stale import StaleView

    return [StaleView()]


def _observers(engine: Engine) -> Sequence[Any]:
    from projections.stale_metrics import StaleMetrics

    return [StaleMetrics(engine)]


def _routes() -> Sequence[Route]:
    from projections.stale_api import ROUTES

    return ROUTES


async def _bench(settings: Settings, _pit: PitFactory) -> dict[str, Any]:
    from streams.stale.bench import bench_stale

    return await bench_stale(settings)


def _operations(client: Any) -> Any:
    from streams.stale.client import StaleOps  # on first use: `pit` starts fast

    return StaleOps(client)


COMPONENT = Component(
    name="stale",
    load_deciders=_deciders,
    services=_services,
    views=_views,
    observers=_observers,
    routes=_routes,
    add_cli=add_parser,
    client=_operations,
    settings=StaleSettings.of,
    benches={"stale": _bench},
)
