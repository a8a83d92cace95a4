"""How long the Pit's readers on a command's path (the processors, the task dispatcher) let
the broker hold a fetch that finds nothing: 2 ms on the embedded broker, which holds such a
fetch for its whole wait even when a record arrives meanwhile; 500 ms on a cluster, which
answers as soon as one arrives, so that a short wait there would only make empty fetches."""

from __future__ import annotations

import pytest

import streams.processor
from streams.app import Stack
from streams.broker import EmbeddedBroker
from streams.components import COMPONENTS
from streams.config import Settings
from streams.kafka import BUSY_FETCH_WAIT_MS, CLUSTER_FETCH_WAIT_MS
from streams.topics import load_catalog


async def _waits(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Each processor group's fetch wait, and the dispatcher's, in a `pit up` on `settings`."""
    waits: dict[str, int] = {}
    start_consumer = streams.processor.start_consumer

    async def recording(settings: Settings, *topics: str, **options):
        waits[options["group_id"]] = options["fetch_max_wait_ms"]
        return await start_consumer(settings, *topics, **options)

    monkeypatch.setattr(streams.processor, "start_consumer", recording)
    async with Stack(settings, progress=False, without={"host-monitor"}) as stack:
        waits["task-dispatcher"] = stack.services["task-dispatcher"].fetch_max_wait_ms
    return waits


def _expected(wait_ms: int) -> dict[str, int]:
    groups = {streams.processor.processor_group(decider)
              for component in COMPONENTS for decider in component.deciders}
    return {**dict.fromkeys(groups, wait_ms), "task-dispatcher": wait_ms}


async def test_on_the_embedded_broker_the_path_fetches_briefly(tmp_path, monkeypatch) -> None:
    waits = await _waits(Settings(data_dir=tmp_path), monkeypatch)
    assert waits == _expected(BUSY_FETCH_WAIT_MS)


async def test_on_a_cluster_the_path_lets_the_broker_answer_when_a_record_comes(
        tmp_path, monkeypatch) -> None:
    with EmbeddedBroker(1) as cluster:  # standing in for a cluster: `pit up` did not start it
        cluster.apply(load_catalog())
        settings = Settings(data_dir=tmp_path, bootstrap_servers=cluster.bootstrap_servers)
        waits = await _waits(settings, monkeypatch)
    assert waits == _expected(CLUSTER_FETCH_WAIT_MS)
