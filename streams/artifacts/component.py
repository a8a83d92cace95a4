"""The Artifact Store as a component of the Pit (listed in streams/components.py)."""

from __future__ import annotations

from typing import Any

from streams.artifacts.catalog import ARTIFACTS
from streams.artifacts.cli import add_parser
from streams.component import Component


def _operations(client: Any) -> Any:
    from streams.artifacts.client import ArtifactOps  # imported on first use: `pit` starts fast

    return ArtifactOps(client)


COMPONENT = Component(
    name="artifacts",
    deciders=(ARTIFACTS,),
    client=_operations,
    add_cli=add_parser,
)
