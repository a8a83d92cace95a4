"""Issue 11, memory: in `pit up`'s Stack, finished executions and old outcomes leave the DAG
processor's memory once archived (the bounds made 0 here), and come back from the archive
when a command needs them: a re-sent start is still a duplicate with its first outcome, the
same start again changes nothing, a cancel is rejected as for an execution in memory."""

from __future__ import annotations

import pytest

from streams import memory
from streams.app import Stack
from streams.client import PitClient
from streams.config import Settings
from streams.dag.bench import Runners
from streams.dag.definition import deep_dag
from streams.dag.execution import CancelExecution
from streams.dag.workflows import start_command
from streams.waiting import until


@pytest.mark.asyncio
async def test_finished_executions_leave_memory_and_come_back(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(memory, "ENDED_KEPT", 0)
    monkeypatch.setattr(memory, "LEDGER_KEPT", 0)
    monkeypatch.setattr(memory, "EVICT_EVERY_S", 0.2)
    chain = deep_dag(3, name="evicted")
    async with Stack(Settings(data_dir=tmp_path), progress=False,
                     without={"host-monitor"}) as stack, PitClient(
            stack.settings, codec=stack.codec) as client:
        runners = Runners(stack.settings, stack.codec)
        runners.start("memory-0")
        try:
            for n in range(3):
                execution_id = await client.dag.execute_workflow(chain, execution_id=f"m{n}")
                assert (await client.dag.await_result(execution_id, timeout=120)).ok
        finally:
            await runners.close()
        processor = stack.processors["dag"]
        await until(lambda: not processor.entities and not processor.ledger, 60,
                    "the finished executions and their outcomes evicted")

        start = start_command(chain, stack.settings, "m0")
        again = await client.send(start, command_id="m0/start", timeout=60)
        assert again.accepted and again.duplicate  # recalled from the archive's results
        same = await client.send(start, command_id="m0/start-again", timeout=60)
        assert same.accepted and not same.duplicate and not same.event_ids
        cancel = await client.send(CancelExecution("m1", "late"), timeout=60)
        assert not cancel.accepted and cancel.reason == "execution m1 already ended (completed)"
        assert (await client.dag.await_result("m2", timeout=60)).ok
