"""The Artifact Store as a component of the Pit (streams/component.py): its decider, the
output cataloger `pit up` runs when asked, its views, routes, CLI and bench."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from streams.artifacts.cli import add_parser
from streams.artifacts.settings import ArtifactSettings
from streams.component import Component, PitFactory, Route, Runtime, Service

if TYPE_CHECKING:
    from streams.config import Settings
    from streams.decider import Decider


def _deciders() -> tuple[Decider[Any], ...]:
    from streams.artifacts.catalog import ARTIFACTS

    return (ARTIFACTS,)


def _services(runtime: Runtime) -> Mapping[str, Service]:
    if not ArtifactSettings.of(runtime.settings).dag_output_artifacts:
        return {}
    from streams.artifacts.dag_outputs import OutputCataloger

    # Completed nodes' outputs become artifacts with their lineage (issue 5), when asked.
    return {"dag-output-cataloger": OutputCataloger(runtime.settings, runtime.codec)}


def _views(settings: Settings | None) -> Sequence[Any]:
    """`settings` tell the search view where artifact content is (default: the
    environment's)."""
    from projections.artifacts import ArtifactSearchView, ArtifactsView

    return [ArtifactsView(), ArtifactSearchView(settings)]


def _routes() -> Sequence[Route]:
    from projections.artifacts_api import ROUTES

    return ROUTES


async def _bench(settings: Settings, _pit: PitFactory) -> dict[str, Any]:
    from streams.artifacts.bench import bench_artifacts

    return await bench_artifacts(settings)


def _operations(client: Any) -> Any:
    from streams.artifacts.client import ArtifactOps  # imported on first use: `pit` starts fast

    return ArtifactOps(client)


COMPONENT = Component(
    name="artifacts",
    load_deciders=_deciders,
    services=_services,
    shared=frozenset({"dag-output-cataloger"}),  # its consumer group divides the work
    views=_views,
    routes=_routes,
    add_cli=add_parser,
    benches={"artifacts": _bench},
    client=_operations,
    settings=ArtifactSettings.of,
)
