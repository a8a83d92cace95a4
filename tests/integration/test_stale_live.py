"""The Stale Manager in a running Pit: the Stack (embedded broker, processors, the catalog
observer, the tier worker, timers, projector) with its three tiers on real backends - hot and
warm on the local filesystem, cold on moto's S3 server over HTTP. Content goes in through
`PitClient.artifacts`, decisions through `PitClient.stale`; every wait is for an observed
state (an event in the log, a view), never for time."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from test_timers_live import records

from streams.app import Stack
from streams.artifacts.storage import artifact_store
from streams.blobs import FileBlobStore, blob_store
from streams.client import PitClient
from streams.config import Settings
from streams.dag.definition import OPERATORS, WorkflowBuilder
from streams.dag.runner import Runner
from streams.dag.topics import DAG_EVENTS
from streams.stale import manager
from streams.stale.client import StaleError
from streams.stale.tiers import tiered_store
from streams.stale.topics import STALE_EVENTS
from streams.waiting import until


def tiered_settings(tmp_path, bucket: str, endpoint: str) -> Settings:
    return Settings(data_dir=tmp_path, env={"PIT_STALE_COLD_BUCKET": bucket,
                                            "PIT_STALE_COLD_ENDPOINT_URL": endpoint})


async def stale_events(stack: Stack, name: str) -> list[dict]:
    return [r for n, r, _ in await records(stack, STALE_EVENTS)
            if n == f"pit.stale.{name}"]


async def observed(stack: Stack, addresses: set[str], orphans: frozenset[str] = frozenset()
                   ) -> bool:
    """Every address observed, the last observation of each saying cataloged or orphan as
    expected: a scan that lists a blob before its StoreArtifact is folded first reports it as
    an orphan, and the catalog's observation corrects that a moment later."""
    latest = {i["address"]: i["orphan"] for r in await stale_events(stack, "ArtifactsObserved")
              for i in r["items"]}
    return all(latest.get(a) == (a in orphans) for a in addresses)


async def plan_status(stack: Stack, plan_id: str) -> str:
    found = [r for r in await stale_events(stack, "PlanApplied") if r["plan_id"] == plan_id]
    return "applied" if found else ""


async def test_plans_archive_to_s3_purge_orphans_trash_and_restore_reading_every_tier(
        tmp_path, s3_bucket, s3_endpoint) -> None:
    settings = tiered_settings(tmp_path, s3_bucket, s3_endpoint)
    # a blob nothing catalogs: a crash between its write and its StoreArtifact
    orphan = FileBlobStore(tmp_path / "artifacts", kind="artifact").store(b"lost upload")
    async with Stack(settings, progress=False, without={"host-monitor"}) as stack, \
            PitClient(stack.settings, issued_by="stale-test") as pit:
        old = await pit.artifacts.store(b"old results " * 500, tags=["old"])
        junk = await pit.artifacts.store(b"scratch " * 100, tags=["junk"])
        kept = await pit.artifacts.store(b"release notes", tags=["release"])
        await until(lambda: observed(stack, {old.address, junk.address, kept.address,
                                             orphan.address}, frozenset({orphan.address})),
                    what="the catalog observer telling the Stale Manager")
        await pit.stale.set_policy({
            "policies": [{"name": "archive", "rules": [
                {"type": "MaxAge", "days": 0, "action": "archive"},
                {"type": "KeepTagged", "tags": ["release", "junk"]}]}],
            "orphan_grace_hours": 0, "trash_days": 0, "tiers": {"warm_below": 0}})
        plan = await pit.stale.plan()
        targets = {i["address"]: i["target"] for i in
                   (await pit.stale.show(plan["plan_id"], limit=10))["item_rows"]}
        assert targets == {old.address: "cold", orphan.address: "trash"}
        await pit.stale.apply(plan["plan_id"], progress=lambda _plan: None)
        tiers = tiered_store(stack.settings)
        await until(lambda: _async(tiers.tier_of(old.address) == "cold"),
                    what="the worker moving the old results to S3")
        # the orphan's grace and trash days are 0: purged at once, its bytes gone
        await until(lambda: _bytes_purged(stack, orphan.address), what="the orphan purged")
        assert orphan.address not in artifact_store(stack.settings)
        # a cold read restores on demand, verified against its address
        assert await pit.artifacts.retrieve(old.address) == b"old results " * 500
        assert tiers.tier_of(old.address) == "hot"
        assert tiers.tier_of(kept.address) == "hot"
        # now delete the junk and the old results: they go to the trash, then come back
        await pit.stale.set_policy({
            "policies": [{"name": "clean", "rules": [
                {"type": "MaxAge", "days": 0},
                {"type": "KeepTagged", "tags": ["release"]}]}], "trash_days": 7})
        second = await pit.stale.plan()
        await pit.stale.apply(second["plan_id"], progress=lambda _plan: None)
        trashed = {r["address"] for r in await stale_events(stack, "ItemTrashed")}
        assert {junk.address, old.address} <= trashed and kept.address not in trashed
        with pytest.raises(StaleError, match="already applied"):
            await pit.stale.apply(second["plan_id"])
        await pit.stale.restore(second["plan_id"])
        restored = {r["address"] for r in await stale_events(stack, "ItemRestored")}
        assert {junk.address, old.address} <= restored
        assert await pit.artifacts.retrieve(junk.address) == b"scratch " * 100
        with pytest.raises(StaleError, match="was purged"):
            await pit.stale.restore(orphan.address)


async def _async(value):
    return value


async def _bytes_purged(stack: Stack, address: str) -> bool:
    return any(r["address"] == address for r in await stale_events(stack, "BytesPurged"))


async def test_an_apply_interrupted_between_batches_resumes_after_a_restart(
        tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(manager, "APPLY_BATCH", 2)
    settings = Settings(data_dir=tmp_path)
    # no timer service: the first batch is done, the timer for the next one never fires
    async with Stack(settings, progress=False, without={"host-monitor"}, timers=False) as stack, \
            PitClient(stack.settings, issued_by="stale-test") as pit:
        stored = [await pit.artifacts.store(f"scratch {n}".encode()) for n in range(5)]
        await until(lambda: observed(stack, {s.address for s in stored}),
                    what="the catalog observer telling the Stale Manager")
        await pit.stale.set_policy({"policies": [{"name": "all", "rules": [
            {"type": "MaxAge", "days": 0}]}]})
        plan = await pit.stale.plan()
        await pit.stale.apply(plan["plan_id"])
        progressed = await stale_events(stack, "PlanProgressed")
        assert [p["cursor"] for p in progressed] == [2]
    async with Stack(settings, progress=False, without={"host-monitor"}) as stack:
        await until(lambda: plan_status(stack, plan["plan_id"]), what="the apply resumed")
        trashed = [r["address"] for r in await stale_events(stack, "ItemTrashed")]
        assert sorted(trashed) == sorted(s.address for s in stored)  # each once
        assert [p["cursor"] for p in await stale_events(stack, "PlanProgressed")] == [2, 4, 5]


async def test_a_scheduled_run_fires_after_a_restart(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path)
    # no timer service before the restart: the run can only fire after it
    async with Stack(settings, progress=False, without={"host-monitor"}, timers=False) as stack, \
            PitClient(stack.settings, issued_by="stale-test") as pit:
        await pit.artifacts.store(b"anything")
        # every 2 seconds (croniter's sixth field), an hour's window, plan only
        await pit.stale.set_policy({"schedule": {"cron": "* * * * * */2",
                                                 "window_minutes": 60}})
        policy = (await stale_events(stack, "RetentionPolicySet"))[-1]
        due = policy["next_run_at"]
    async with Stack(settings, progress=False, without={"host-monitor"}) as stack:
        runs = await until(lambda: _runs(stack), what="the scheduled run")
        assert runs[0]["due_at"] == due and runs[0]["plan_id"] == f"scheduled-{due}"
        assert (await stale_events(stack, "PlanComputed"))[0]["scheduled"] is True


async def _runs(stack: Stack) -> list[dict]:
    return [r for r in await stale_events(stack, "ScheduledRun") if r["plan_id"]]



def _big_text(times: int) -> str:
    return "a node output too large to travel inline " * times


OPERATORS.register("stale_big_text", _big_text, inputs={"times": "int"}, output="str",
                   replace=True)


async def test_node_outputs_of_ended_workflows_and_orphan_blobs_are_collected(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, env={"PIT_STALE_SCAN_S": "1",
                                                    "PIT_STALE_DAG_OUTPUTS": "1"})
    # a runner's output it never reported: nothing names it
    orphan = blob_store(settings).store(b'{"out": "never reported"}')
    async with Stack(settings, progress=False, without={"host-monitor"}) as stack, \
            PitClient(stack.settings, issued_by="stale-test") as pit:
        runner = Runner(stack.settings, runner_id="stale-r1", codec=stack.codec,
                        inline_limit=1024, say=lambda _line: None)
        stop = asyncio.Event()
        running = asyncio.create_task(runner.run(stop))
        try:
            workflow = (WorkflowBuilder("big-output")
                        .operator("text", "stale_big_text", constants={"times": 100})
                        .build())
            execution = await pit.dag.execute_workflow(workflow)
            assert (await pit.dag.await_result(execution, timeout=30)).ok
        finally:
            stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await running
        (output,) = [a for a in blob_store(stack.settings).raw_addresses("")
                     if a != orphan.address]
        ended_at = [ts for name, r, ts in await records(stack, DAG_EVENTS)
                    if name == "pit.dag.ExecutionCompleted" and r["execution_id"] == execution]
        await until(lambda: _ended_output_observed(stack, output, ended_at[0]),
                    what="the observer telling of the ended workflow's output")
        await pit.stale.set_policy({"dag_output_days": 0, "orphan_grace_hours": 0,
                                    "trash_days": 0})
        plan = await pit.stale.plan()
        rows = (await pit.stale.show(plan["plan_id"]))["item_rows"]
        assert {(r["address"], r["target"]) for r in rows} == {(output, "trash"),
                                                               (orphan.address, "trash")}
        await pit.stale.apply(plan["plan_id"], progress=lambda _plan: None)
        for address in (output, orphan.address):
            await until(lambda a=address: _bytes_purged(stack, a), what=f"{address} purged")
            assert address not in blob_store(stack.settings)


async def _ended_output_observed(stack: Stack, address: str, ended_at: int) -> bool:
    """Whether the Stale Manager was told `address` is the output of a workflow that ended
    at `ended_at` (while it ran, it was told as in use at the time of each scan)."""
    told = [i for r in await stale_events(stack, "ArtifactsObserved") for i in r["items"]
            if i["address"] == address]
    return bool(told) and (told[-1]["kind"], told[-1]["orphan"], told[-1]["last_used_at"]) \
        == ("dag_output", False, ended_at)
