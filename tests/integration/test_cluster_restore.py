"""`pit topics restore`: disaster recovery onto a new cluster. A Pit runs and stops; a new,
empty cluster (a second embedded broker standing in for it) is filled from the archive with
every record at its original partition and offset; a cluster that already holds records is
refused, in one line, and left as it was."""

from __future__ import annotations

import asyncio

from streams import cli
from streams.app import Stack
from streams.broker import EmbeddedBroker
from streams.client import PitClient
from streams.config import Settings
from streams.history import read_topic
from streams.pool.topics import POOL_COMMANDS, POOL_EVENTS
from streams.topics import RESULTS, load_catalog

SENTIMENT = "python:streams.pool.examples:sentiment"
TOPICS = (POOL_COMMANDS, POOL_EVENTS, RESULTS)


async def _run_a_pit(settings: Settings) -> dict[str, list]:
    async with Stack(settings, progress=False, without={"host-monitor"}) as stack, \
            PitClient(stack.settings, issued_by="restore-test") as pit:
        for n in range(3):
            assert (await pit.pool.register_model(f"m{n}", SENTIMENT, 10, 5)).accepted
        await stack.drain_projector()
        return await _records(stack.settings)


async def _records(settings: Settings) -> dict[str, list]:
    return {topic: sorted((r.partition, r.offset, r.key, r.value)
                          for r in await read_topic(settings, topic)) for topic in TOPICS}


def test_a_new_cluster_gets_every_archived_record_back_at_its_offset(tmp_path, monkeypatch,
                                                                     capsys) -> None:
    before = asyncio.run(_run_a_pit(Settings(data_dir=tmp_path)))
    assert all(before.values())
    with EmbeddedBroker(1) as cluster:
        cluster.apply(load_catalog())  # `pit topics apply` on the new cluster
        monkeypatch.setenv("PIT_DATA_DIR", str(tmp_path))
        monkeypatch.setenv("PIT_KAFKA_BOOTSTRAP_SERVERS", cluster.bootstrap_servers)
        assert cli.main(["topics", "restore"]) == 0
        assert "restored" in capsys.readouterr().out
        restored = Settings.from_env()
        assert asyncio.run(_records(restored)) == before
        assert cli.main(["topics", "restore"]) == 1  # not empty any more: refused
        assert "already holds records" in capsys.readouterr().err
        assert asyncio.run(_records(restored)) == before
