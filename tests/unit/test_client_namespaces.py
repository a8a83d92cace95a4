"""PitClient: each registered component's operations under its name, built on first use."""

import pytest

from streams.artifacts.client import ArtifactOps
from streams.client import OPERATIONS, PitClient
from streams.config import Settings
from streams.dag.workflows import WorkflowOps
from streams.pool.client import PoolOps


def test_every_component_with_operations_is_named_for_type_checkers() -> None:
    assert set(OPERATIONS) == set(PitClient.__annotations__)


def test_operations_are_built_once_on_first_use(tmp_path) -> None:
    pit = PitClient(Settings(data_dir=tmp_path))
    assert "artifacts" not in vars(pit)  # no blob store opened for a client that never asks
    assert isinstance(pit.pool, PoolOps) and pit.pool is pit.pool
    assert isinstance(pit.dag, WorkflowOps) and isinstance(pit.artifacts, ArtifactOps)
    with pytest.raises(AttributeError):
        pit.nothing  # noqa: B018
