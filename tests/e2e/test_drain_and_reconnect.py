"""`pit runner` and `pit host` as real processes around a real `pit up`: asked to stop they exit
within their drain timeout plus a few seconds whatever `pit up` does meanwhile (a short run
of `pit campaign drain`), and when their `pit up` is gone they say so in one line, wait, and
carry on with the next one."""

from __future__ import annotations

import asyncio
import signal

import pytest

from streams.campaigns.drain import Pit, campaign
from streams.dag.definition import WorkflowBuilder
from streams.waiting import until

pytestmark = pytest.mark.slow


async def test_a_short_drain_campaign_finds_every_exit_within_its_bound(tmp_path):
    # the round that stops `pit up` comes last: one `pit up` start for the whole run
    steps = [("runner", "none", True), ("host", "stop", False)]
    rounds = await campaign(tmp_path / "pit", steps, drain_timeout_s=2.0,
                            say=lambda _line: None)
    assert [(r.target, r.action, r.twice) for r in rounds] == steps
    for found in rounds:  # the work outlasted the drain: each had to give some up
        assert found.ok and found.returncode == 1, found
    assert rounds[0].exit_s < 2.0 + 1.0  # the second signal did not wait for the drain


async def test_runners_and_hosts_wait_for_pit_up_and_carry_on_after_a_restart(tmp_path):
    pit = Pit(tmp_path / "pit")
    (tmp_path / "pit").mkdir()
    runner, runner_log = pit.spawn("runner", "runner", "--session-timeout", "3")
    host, host_log = pit.spawn("host", "host", "--id", "h-reconnect", "--memory-mb", "256",
                               "--capacity", "1")
    try:
        # started before pit up: they wait for it
        await until(lambda: "waiting for one" in runner_log.read_text(), 60, "runner waits")
        await pit.start()
        await until(lambda: "taking tasks" in runner_log.read_text(), 60, "runner connects")
        await until(lambda: "serving on" in host_log.read_text(), 60, "host registers")

        pit.signal(signal.SIGTERM)
        await pit.ended()
        for log in (runner_log, host_log):
            await until(lambda log=log: "pit up is gone" in log.read_text(), 30,
                        f"{log.name} to notice")
        await asyncio.sleep(2.0)  # a while without pit up: no spam, no exit
        assert runner.poll() is None and host.poll() is None

        await pit.start()  # a new embedded broker, at a new address
        await until(lambda: runner_log.read_text().count("taking tasks") == 2, 60,
                    "runner to reconnect")
        await until(lambda: host_log.read_text().count("serving on") == 2, 60,
                    "host to register again")
        workflow = (WorkflowBuilder("after-restart")
                    .operator("a", "identity", constants={"value": 20})
                    .operator("b", "add", constants={"b": 22}).edge("a", "b.a").build())
        async with pit.client() as client:
            execution = await client.dag.execute_workflow(workflow, timeout=60)
            result = await client.dag.await_result(execution, timeout=60)
        assert result.ok and result.outputs == {"b": {"out": 42}}, result

        for process, log in ((runner, runner_log), (host, host_log)):
            process.send_signal(signal.SIGTERM)
            await until(lambda process=process: process.poll() is not None, 40, "exit")
            text = log.read_text()
            assert process.returncode == 0, text
            assert text.count("pit up is gone") == 1 and "Traceback" not in text, text
            assert len(text.splitlines()) < 15, text  # one line per event, no retry spam
    finally:
        for process in (runner, host):
            process.kill()
        if pit.alive():
            pit.signal(signal.SIGTERM)
            await pit.ended()
