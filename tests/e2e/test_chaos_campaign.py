"""The chaos campaign (streams/campaigns/chaos.py) in the suite.

* `pit up` with PIT_FAULTS=1 runs three embedded brokers and serves the mock cluster's fault
  injection on POST /faults: commands are still decided across a moved leader, failed
  produce requests and a broker down and up; a fault it does not know is refused.
* A short campaign, 6 kill points through `pit campaign chaos`, keeps the promises of
  issue 11 that its table can state exactly: no acknowledged command lost or doubled, no
  workflow stalled or wrong, no sequence gap, the audit chain and the views intact, `pit up`
  never stopping by itself. Its output lists what broke, with the kill point.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

import aiohttp
import pytest

from streams.app import Stack
from streams.client import PitClient
from streams.config import Settings
from streams.errors import CommandTimeoutError
from streams.pool.topics import POOL_COMMANDS, POOL_EVENTS
from streams.topics import load_catalog

pytestmark = pytest.mark.slow

PRODUCE, NOT_LEADER_OR_FOLLOWER = 0, 6


async def test_pit_up_with_faults_serves_the_mock_clusters_fault_injection(tmp_path,
                                                                          free_port) -> None:
    port = free_port()
    settings = Settings.from_env({"PIT_DATA_DIR": str(tmp_path), "PIT_FAULTS": "1"})
    async with Stack(settings, http_port=port, progress=False,
                     without={"host-monitor"}) as stack, \
            PitClient(stack.settings, codec=stack.codec) as client, \
            aiohttp.ClientSession() as http:
        assert stack.broker is not None and stack.broker.brokers == 3

        async def fault(**body) -> tuple[int, dict]:
            async with http.post(f"http://127.0.0.1:{port}/faults", json=body) as reply:
                return reply.status, await reply.json()

        for partition in range(load_catalog()[POOL_COMMANDS].partitions):
            assert await fault(fault="leader", topic=POOL_COMMANDS, partition=partition,
                               broker=2) == (200, {"ok": True})
            assert await fault(fault="leader", topic=POOL_EVENTS, partition=partition,
                               broker=3) == (200, {"ok": True})
        assert await fault(fault="errors", api_key=PRODUCE,
                           errors=[NOT_LEADER_OR_FOLLOWER] * 3) == (200, {"ok": True})

        async def registered(model_id: str) -> bool:
            """Sent again under the same id while no outcome comes, as a client would (the
            consumer groups rejoin after a fault, which takes a while on a loaded machine)."""
            for _ in range(6):
                with contextlib.suppress(CommandTimeoutError):
                    return (await client.pool.register_model(
                        model_id, "python:streams.pool.examples:sentiment", 40, 5,
                        command_id=f"{model_id}/register", timeout=20)).accepted
            raise AssertionError(f"{model_id} was never decided")

        assert await registered("m1")
        assert await fault(fault="down", broker=1) == (200, {"ok": True})
        assert await fault(fault="up", broker=1) == (200, {"ok": True})
        assert await registered("m2")

        status, body = await fault(fault="melt")
        assert status == 400 and body["error"] == "bad fault: unknown fault 'melt'"
        status, body = await fault(fault="down")
        assert status == 400 and body["error"] == "bad fault: 'broker'"


# What a short campaign must show, figure by figure (the campaign's summary table). Repeated
# side effects and runners or hosts restarted by the campaign are printed, not asserted
# here: which repeated run counts as "in flight at a kill" is a 10 s timing heuristic, and
# the deterministic checks of those promises are tests/integration/test_dag_runners.py
# (join, leave) and tests/e2e/test_drain_and_reconnect.py (reconnect).
PROMISES = {
    "kill points survived (no new violation)": None,  # printed
    "acknowledged commands lost": "0",
    "acknowledged commands with a double effect": "0",
    "workflows stalled": "0",
    "workflows with a wrong end or result": "0",
    "event sequence gaps or repeats": "0",
    "audit verify": "ok",
    "views == replay": "ok",
    "stale manager: deleted outside a plan or kept / unreadable": "0",
    "pit up exits not caused by the campaign": "0",
    "duplicate side effects: other": None,
    "processes that did not carry on by themselves": None,
}


def test_a_short_chaos_campaign_keeps_every_promise(tmp_path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "campaign", "chaos", "--kills", "6",
         "--seed", "11", "--data-dir", str(tmp_path / "chaos")],
        capture_output=True, text=True, timeout=900)
    table = dict(line.strip("| ").split(" | ", 1) for line in done.stdout.splitlines()
                 if line.startswith("| ") and " | " in line.strip("| "))
    print({name: table.get(name) for name in PROMISES})  # shown when the test fails
    broken = {name: table.get(name) for name, wanted in PROMISES.items()
              if wanted is not None and table.get(name) != wanted}
    assert not broken, (broken, done.stdout[-5000:] + done.stderr[-2000:])
