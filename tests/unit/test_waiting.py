"""`streams.waiting`: `until`, what the campaigns and the tests wait with; `unless_stopped`,
what a service that sends commands waits with."""

from __future__ import annotations

import asyncio

import pytest

from streams.waiting import unless_stopped, until


async def test_until_returns_what_the_check_found_once_it_holds() -> None:
    looks = iter([None, [], {"found": 1}])
    assert await until(lambda: next(looks), 5) == {"found": 1}


async def test_until_awaits_an_async_check() -> None:
    looks = iter([0, 0, 7])

    async def check() -> int:
        return next(looks)

    assert await until(check, 5) == 7


async def test_until_names_what_it_waited_for_when_time_runs_out() -> None:
    with pytest.raises(TimeoutError, match=r"no pigs flying within 0\.05 s"):
        await until(lambda: False, 0.05, "pigs flying")


async def test_unless_stopped_returns_the_result_of_work_that_ends_first() -> None:
    async def answered() -> str:
        return "accepted"

    assert await unless_stopped(answered(), asyncio.Event()) == "accepted"


async def test_unless_stopped_gives_up_on_a_wait_once_stop_is_set_and_cancels_it() -> None:
    never, started, cancelled = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def unanswered() -> str:
        started.set()
        try:
            await never.wait()  # an outcome that never comes
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "accepted"

    stop = asyncio.Event()
    waiting = asyncio.ensure_future(unless_stopped(unanswered(), stop))
    await asyncio.wait_for(started.wait(), 5)
    stop.set()
    assert await asyncio.wait_for(waiting, 5) is None
    await asyncio.wait_for(cancelled.wait(), 5)


async def test_unless_stopped_raises_what_the_work_raised() -> None:
    async def refused() -> str:
        raise ValueError("no outcome")

    with pytest.raises(ValueError, match="no outcome"):
        await unless_stopped(refused(), asyncio.Event())
