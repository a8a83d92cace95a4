"""Scale-out and fail-over (issue 11): two `pit up` Stacks in one process, the second joined
to the first one's embedded broker and database (SQLite and PostgreSQL), share the work:
one is elected leader and runs the singleton services, the projectors divide the partitions
without colliding (the audit chain verifies), and a workflow runs each node once. When the
leader dies without a word (its services cancelled, its group membership left to expire,
as `kill -9` leaves it) the other takes over within the measured bound, and no task is
relayed twice."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter

import pytest

from projections.audit import verify
from streams.app import Stack
from streams.client import PitClient
from streams.config import Settings
from streams.dag.definition import sleepy_dag
from streams.dag.runner import Runner
from streams.dag.topics import DAG_EVENTS, DAG_TASKS
from streams.history import read_topic
from streams.waiting import until

pytestmark = pytest.mark.asyncio

SESSION_MS = 3000  # the leader group's session; the mock adds session - 1 s to a rebalance
# What a fail-over may take here: the session expiring (checked every second by the mock),
# a heartbeat to learn of it, the mock's rebalance wait, the new leader's start - and slack
# for a loaded machine.
FAIL_OVER_BOUND_S = SESSION_MS / 1000 + 1 + SESSION_MS / 1000 + 15


@contextlib.asynccontextmanager
async def two_pits(tmp_path, db_url: str):
    # Groups with a 3 s session, for test speed only: the mock makes every rebalance of a
    # non-empty group wait session - 1 s (10 s by default).
    settings = Settings(data_dir=tmp_path / "pit", database_url=db_url,
                        env={"PIT_GROUP_SESSION_TIMEOUT_MS": str(SESSION_MS)})
    options = {"progress": False, "without": {"host-monitor"}, "leader_session_ms": SESSION_MS}
    async with Stack(settings, **options) as first, \
            Stack(settings, join=True, **options) as second:
        runner_stop = asyncio.Event()
        runner = Runner(first.settings, runner_id="r1", codec=first.codec,
                        session_timeout_ms=SESSION_MS, revoke_wait_s=2.0, say=lambda _: None)
        running = asyncio.create_task(runner.run(runner_stop))
        client = await PitClient(first.settings, issued_by="scale-out-test").start()
        try:
            yield first, second, client
        finally:
            await client.close()
            runner_stop.set()
            await running


def leaders(*stacks: Stack) -> list[Stack]:
    return [stack for stack in stacks if stack.leader.term]


async def relayed_tasks(stack: Stack) -> Counter:
    return Counter(record.key.decode()
                   for record in await read_topic(stack.settings, DAG_TASKS, stack.engine))


async def completed_nodes(stack: Stack, execution: str) -> Counter:
    found: Counter = Counter()
    for record in await read_topic(stack.settings, DAG_EVENTS, stack.engine):
        if record.key == execution.encode():
            decoded = stack.codec.decode(record.value)
            if decoded.name.endswith("NodeCompleted"):
                found[decoded.record["node_id"]] += 1
    return found


def crash(stack: Stack) -> asyncio.Task:
    """What `kill -9` does to a leader: its services stop mid-work, unannounced, and its
    group membership is not left but expires."""
    async def silent() -> None:
        pass

    gate = stack.leader
    gate.consumer._coordinator._maybe_leave_group = silent
    for task in gate._running.values():
        task.cancel()
    [task] = [task for task in stack.tasks if task.get_name() == "leader"]
    task.cancel()
    return task


async def test_two_pits_share_the_work_and_survive_the_leader(tmp_path, db_url) -> None:
    async with two_pits(tmp_path, db_url) as (first, second, client):
        # The second's join rebalances the leader group, and a leader whose renewals fail
        # for half a session ends its term (streams/leader.py). One clean-clone run, on a
        # loaded machine, found neither leading the moment both were started.
        [leader] = await until(lambda: len(found := leaders(first, second)) == 1 and found,
                               30, "one of the two to lead")
        assert set(leader.services) >= {"task-dispatcher", "timers", "prewarmer"}
        follower = second if leader is first else first
        assert not {"task-dispatcher", "timers", "prewarmer"} & set(follower.services)
        # The projectors divide the partitions between them (once both are in the group).
        assignments = await until(
            lambda: all(s.projector_consumer.assignment() for s in (first, second))
            and [s.projector_consumer.assignment() for s in (first, second)],
            60, "both projectors to hold partitions")
        assert not assignments[0] & assignments[1]

        before = await client.dag.execute_workflow(sleepy_dag(20, 50, name="before"))
        result = await client.dag.await_result(before, timeout=60)
        assert result.ok and result.outputs == {"sink": {"out": 20}}, result

        # The leader dies while a workflow runs; the other one takes over.
        during = await client.dag.execute_workflow(sleepy_dag(30, 300, name="during"))
        async def during_relayed() -> bool:
            return any(key.startswith(f"{during}/") for key in await relayed_tasks(first))

        await until(during_relayed, 60, "the first tasks relayed")  # the leader is at work
        crashed_at = time.monotonic()
        dead = crash(leader)
        with contextlib.suppress(asyncio.CancelledError):
            await dead
        await asyncio.wait_for(follower.leader.leading.wait(), FAIL_OVER_BOUND_S)
        print(f"fail-over took {time.monotonic() - crashed_at:.1f} s")
        assert leaders(first, second) == [follower]
        result = await client.dag.await_result(during, timeout=90)
        assert result.ok and result.outputs == {"sink": {"out": 30}}, result

        assert set((await completed_nodes(first, during)).values()) == {1}
        tasks = await relayed_tasks(first)
        assert tasks and set(tasks.values()) == {1}  # no task relayed twice, by either leader
        await first.drain_projector()
        report = await asyncio.to_thread(verify, first.engine)
        assert report.ok, report.lines()
