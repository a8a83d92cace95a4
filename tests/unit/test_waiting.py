"""`streams.waiting.until`: what the campaigns and the tests wait with."""

from __future__ import annotations

import pytest

from streams.waiting import until


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
