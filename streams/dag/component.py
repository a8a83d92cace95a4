"""The DAG (workflows) as a component of the Pit (listed in streams/components.py)."""

from __future__ import annotations

from typing import Any

from streams.component import Component
from streams.dag.execution import DAG
from streams.dag.workflow_cli import add_parser


def _operations(client: Any) -> Any:
    from streams.dag.workflows import WorkflowOps  # imported on first use: `pit` starts fast

    return WorkflowOps(client)


COMPONENT = Component(
    name="dag",
    deciders=(DAG,),
    client=_operations,
    add_cli=add_parser,
)
