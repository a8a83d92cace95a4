"""Arbitration in a running Pit: the Stack (embedded broker, processors, the pool observer,
timers, projector) and a real model host in process; requests go through PitClient."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY
from test_timers_live import records

from projections import arbitration as views
from streams.app import Stack
from streams.arbitration.topics import ARBITRATION_EVENTS
from streams.client import PitClient
from streams.config import Settings
from streams.pool.errors import AllocationError
from streams.pool.host import ModelHost
from streams.waiting import until

SENTIMENT = "python:streams.pool.examples:sentiment"


async def observed(stack: Stack, models: set[str], host: str) -> bool:
    """Whether arbitration has been told of `models` and `host` (by the pool observer)."""
    seen = {(name, r.get("model_id") or r.get("host_id"))
            for name, r, _ in await records(stack, ARBITRATION_EVENTS)}
    return {("pit.arbitration.ModelObserved", m) for m in models} | {
        ("pit.arbitration.HostObserved", host)} <= seen


async def host_free(stack: Stack, host: str) -> int | None:
    """The free memory arbitration was last told of for `host`."""
    told = [r["free_mb"] for name, r, _ in await records(stack, ARBITRATION_EVENTS)
            if name == "pit.arbitration.HostObserved" and r["host_id"] == host]
    return told[-1] if told else None


async def request_state(stack: Stack, request_id: str) -> str:
    await stack.drain_projector()
    found = views.request(stack.engine, request_id)
    return found["state"] if found else ""


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


QUEUED = {"outcome": "queued", "strategy": "priority", "conflict": "memory_pressure"}


async def test_two_tenants_contend_for_a_host_that_fits_one_model(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path)
    queued_before = sample("pit_arbitration_decisions_total", **QUEUED)
    waits_before = sample("pit_arbitration_wait_seconds_count")
    async with Stack(settings, progress=False) as stack:
        # The host has 1 MB: the models measure 1 MB each (the least a load reports).
        host = await ModelHost(stack.settings, "arb-h1", 1, 2, say=lambda _line: None).start()
        try:
            async with PitClient(stack.settings, issued_by="arbitration-test") as pit:
                assert (await pit.arbitration.set_policy({"tenants": {"a": 1, "b": 1},
                                                          "memory_threshold": 1.0})).accepted
                for model_id in ("m-a", "m-b"):
                    assert (await pit.pool.register_model(model_id, SENTIMENT, 1, 5)).accepted
                await until(lambda: observed(stack, {"m-a", "m-b"}, "arb-h1"),
                            what="the pool observer telling arbitration")
                first = await pit.pool.allocate_model("m-a", "alice", tenant="a",
                                                      request_id="alice-1")
                assert (first.model_id, first.host_id) == ("m-a", "arb-h1")
                await until(lambda: _free_is(stack, "arb-h1", 0),
                            what="arbitration told that m-a holds the host's memory")
                # m-b needs the host's memory, which m-a holds while in use: b waits
                waiting = asyncio.ensure_future(pit.pool.allocate_model(
                    "m-b", "bob", tenant="b", request_id="bob-1", timeout=60))
                await until(lambda: _is(stack, "bob-1", "waiting"), what="bob-1 queued")
                assert not waiting.done()
                assert (await pit.pool.release_model(first.request_id)).accepted
                second = await asyncio.wait_for(waiting, 60)  # the queue drains
                assert (second.model_id, second.host_id) == ("m-b", "arb-h1")
                assert (await pit.pool.release_model(second.request_id)).accepted
            await until(lambda: _is(stack, "bob-1", "released"), what="bob-1 released")
            story = views.request(stack.engine, "bob-1")
            assert [d["outcome"] for d in story["decisions"]] == ["queued", "granted"]
            assert story["decisions"][0]["conflict_kinds"] == ["memory_pressure"]
            assert "MB more were free" in story["decisions"][0]["counterfactual"]
            assert (await request_state(stack, "alice-1")) == "released"
            # the live metrics counted bob's wait, once
            assert sample("pit_arbitration_decisions_total", **QUEUED) == queued_before + 1
            assert sample("pit_arbitration_wait_seconds_count") == waits_before + 1
            assert sample("pit_arbitration_queue_length", pool="default",
                          priority="NORMAL") == 0
        finally:
            await host.close()


async def _free_is(stack: Stack, host: str, free_mb: int) -> bool:
    return await host_free(stack, host) == free_mb


async def _is(stack: Stack, request_id: str, state: str) -> bool:
    return await request_state(stack, request_id) == state


async def test_a_refused_request_is_a_denial_and_a_resent_one_a_duplicate(tmp_path) -> None:
    async with Stack(Settings(data_dir=tmp_path), progress=False,
                     without={"host-monitor"}) as stack, \
            PitClient(stack.settings, issued_by="arbitration-test") as pit:
        await pit.arbitration.set_policy({"tenants": {"a": 1}, "closed": True})
        assert (await pit.arbitration.describe_model("m", slots=1)).accepted
        decision = await pit.arbitration.submit("m", tenant="a", request_id="ok-1")
        assert decision.granted
        refused = await pit.arbitration.arbitrate([
            _ask("m", tenant="z"), _ask("m", tenant="a", request_id="q-1")])
        assert refused[0].outcome == "denied" and "unknown tenant" in refused[0].rationale
        assert (refused[1].outcome, refused[1].position) == ("queued", 0)
        again = await pit.arbitration.submit("m", tenant="a", request_id="q-1")
        assert again.outcome == "queued"  # the same submission again: a duplicate


async def test_a_model_registered_a_moment_ago_is_allocated_through_arbitration(
        tmp_path) -> None:
    async with Stack(Settings(data_dir=tmp_path), progress=False) as stack, \
            PitClient(stack.settings, issued_by="arbitration-test") as pit:
        host = await ModelHost(stack.settings, "arb-h2", 100, 2, say=lambda _line: None).start()
        try:
            assert (await pit.pool.register_model("fresh", SENTIMENT, 1, 5)).accepted
            # no wait for the pool observer: the client gives arbitration a moment to learn
            allocation = await pit.pool.allocate_model("fresh", "me", tenant="t", timeout=30)
            assert allocation.model_id == "fresh"
            assert (await pit.pool.release_model(allocation.request_id)).accepted
            with pytest.raises(AllocationError, match="unknown model 'never'"):
                await pit.pool.allocate_model("never", "me", tenant="t", timeout=1)
        finally:
            await host.close()


def _ask(model_id: str, **fields):
    from streams.arbitration.client import Ask

    return Ask(model_id, **fields)


async def test_a_timeout_fires_after_a_pit_up_restart(tmp_path) -> None:
    async with Stack(Settings(data_dir=tmp_path), progress=False,
                     without={"host-monitor"}) as stack, \
            PitClient(stack.settings, issued_by="arbitration-test") as pit:
        assert (await pit.arbitration.describe_model("m", slots=1)).accepted
        assert (await pit.arbitration.submit("m", request_id="holder")).granted
        queued = await pit.arbitration.submit("m", request_id="late", timeout=3)
        assert queued.outcome == "queued"
    async with Stack(Settings(data_dir=tmp_path), progress=False,
                     without={"host-monitor"}) as stack:
        await until(lambda: _is(stack, "late", "timed_out"), timeout_s=60,
                    what="the timeout set before the restart")
        assert await request_state(stack, "holder") == "granted"


async def _reports(stack: Stack, source: str) -> list[float]:
    return [r["utilisation"] for name, r, _ in await records(stack, ARBITRATION_EVENTS)
            if name == "pit.arbitration.UtilisationReported" and r["source"] == source]


async def test_a_host_reports_its_cpu_and_saturation_defers_grants_until_it_stops(
        tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, env={"PIT_UTILISATION_REPORT_S": "1"})
    async with Stack(settings, progress=False, without={"host-monitor"}) as stack, \
            PitClient(stack.settings, issued_by="arbitration-test") as pit:
        # any fresh report saturates: the host's measured figure, whatever it is, defers
        await pit.arbitration.set_policy({"cpu_threshold": 0.0, "cpu_defer_s": 3600})
        assert (await pit.arbitration.describe_model("m")).accepted
        host = await ModelHost(stack.settings, "util-h1", 100, 2, say=lambda _line: None,
                               advertise="http://util-h1.internal:8700/").start()
        try:
            assert host.endpoint == "http://util-h1.internal:8700"  # what it registered
            reported = await until(lambda: _reports(stack, "util-h1"),
                                   what="the host's first utilisation report")
            assert all(0.0 <= u <= 1.0 for u in reported)
            decision = await pit.arbitration.submit("m", tenant="a", request_id="busy-1")
            assert decision.outcome == "deferred" and "CPU at" in decision.rationale
        finally:
            await host.close()
        # a graceful stop says 0, so a stopped host holds nothing back
        await until(lambda: _last_is_zero(stack, "util-h1"), what="the host's last report, 0")


async def _last_is_zero(stack: Stack, source: str) -> bool:
    told = await _reports(stack, source)
    return bool(told) and told[-1] == 0.0
