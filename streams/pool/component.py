"""The Pool Manager as a component of the Pit (listed in streams/components.py)."""

from __future__ import annotations

from typing import Any

from streams.component import Component
from streams.pool.cli import add_parser
from streams.pool.pool import POOL


def _operations(client: Any) -> Any:
    from streams.pool.client import PoolOps  # imported on first use: `pit` starts fast

    return PoolOps(client)


COMPONENT = Component(
    name="pool",
    deciders=(POOL,),
    client=_operations,
    add_cli=add_parser,
)
