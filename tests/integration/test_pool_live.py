"""The pool's views, API, metrics and `pit pool status` in a running Pit: the Stack (embedded
broker, pool processor, projector with its metrics observer, HTTP API) and a real model host
in process; allocations go through PitClient."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import aiohttp
import pytest
from prometheus_client import REGISTRY

from streams import metrics
from streams.app import Stack
from streams.client import PitClient
from streams.config import Settings
from streams.pool.host import ModelHost

SENTIMENT = "python:streams.pool.examples:sentiment"
COUNTERS = ("pit_pool_cache_hits_total", "pit_pool_cache_misses_total",
            "pit_pool_load_seconds_count")



def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("projector_process", [False, True], ids=["inline", "process"])
async def test_a_running_pit_shows_its_pool(tmp_path, free_port, projector_process) -> None:
    port = free_port()
    settings = Settings(data_dir=tmp_path)
    here_before = metrics.PROJECTED.get_sample_value("pit_pool_cache_misses_total")
    async with Stack(settings, http_port=port, progress=False,
                     projector_process=projector_process) as stack:
        # the metrics of the projector wherever it runs: this process's, or its child's
        before = {name: sample(name) for name in COUNTERS}
        host = await ModelHost(stack.settings, "live-h1", 1000, 3,
                               say=lambda _line: None).start()
        try:
            async with PitClient(stack.settings, issued_by="pool-live-test") as client:
                for model_id in ("sent-a", "sent-b"):
                    assert (await client.pool.register_model(model_id, SENTIMENT, 50, 5)).accepted
                first = await client.pool.allocate_model("sent-a", "alice")
                second = await client.pool.allocate_model("sent-a", "bob")
                third = await client.pool.allocate_model("sent-b", "carol")
                assert (first.cache_hit, second.cache_hit, third.cache_hit) == (False, True, False)
                assert (await client.pool.release_model(first.request_id)).accepted
            await stack.drain_projector()

            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/pool") as response:
                    assert response.status == 200
                    status = await response.json()
                cache = status["cache"]
                counted = {"pit_pool_cache_hits_total": cache["hits"],
                           "pit_pool_cache_misses_total": cache["misses"],
                           "pit_pool_load_seconds_count": 2}
                # a projector counts a batch just after committing it: in a process of its
                # own, that may be just after the drain saw the commit
                for _ in range(200):
                    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                        exposed = await response.text()
                    grown = {name: sample(name) - value for name, value in before.items()}
                    if grown == counted:
                        break
                    await asyncio.sleep(0.05)
            # a prewarm may have made a hit of a first use: count what the pool counted
            assert cache["hits"] >= 1 and cache["hits"] + cache["misses"] == 3
            assert cache["loads"] == 2 and cache["mean_load_ms"] >= 0
            (h1,) = status["hosts"]
            assert (h1["host_id"], h1["alive"], h1["endpoint"]) == ("live-h1", True,
                                                                    host.endpoint)
            assert sorted(h1["models"]) == ["sent-a", "sent-b"] and h1["model_count"] == 2
            assert h1["resident_mb"] == sum(m["memory_mb"] for m in status["models"]["placed"])
            placed = {m["model_id"]: m for m in status["models"]["placed"]}
            assert (placed["sent-a"]["state"], placed["sent-a"]["allocations"]) == ("Hot", 1)
            assert placed["sent-b"]["allocations"] == 1

            # the live metrics counted the same events, once
            assert grown == counted
            assert sample("pit_pool_host_memory_mb", pool="default", host="live-h1") == \
                h1["resident_mb"]
            assert 'pit_pool_host_memory_mb{host="live-h1",pool="default"}' in exposed
            if projector_process:  # counted by the child: this process counted nothing
                assert metrics.PROJECTED.get_sample_value("pit_pool_cache_misses_total") == \
                    here_before

            shown = subprocess.run(
                [sys.executable, "-m", "streams.cli", "pool", "status"], capture_output=True,
                text=True, timeout=60, env={**os.environ, "PIT_DATA_DIR": str(tmp_path)})
            assert shown.returncode == 0, shown.stderr
            assert shown.stdout.startswith("pool default: 1 host (1 alive), 2 models")
            assert f"{h1['resident_mb']}/1000 MB" in shown.stdout
        finally:
            await host.close()
    if projector_process:  # drained, then asked to stop: it exited cleanly
        assert stack.projector_child.process.returncode == 0
