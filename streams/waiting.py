"""Waiting on observed state: `until` a condition holds, looked at again every few
milliseconds, never a sleep that hopes it is long enough. The campaigns wait on processes
this way, and so do the tests. And `unless_stopped`: a service's wait that a stop ends."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

_T = TypeVar("_T")

LOOK_EVERY_S = 0.02  # short beside any wait worth waiting for, and cheap to look


async def until(check: Callable[[], _T | Awaitable[_T]], timeout_s: float = 30.0,
                what: str = "condition") -> _T:
    """Until `check()` (a plain or an async function) returns something true, which is
    returned; TimeoutError naming `what` once `timeout_s` passed without it."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        found = await result if inspect.isawaitable(result) else result
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout_s:g} s")
        await asyncio.sleep(LOOK_EVERY_S)


async def unless_stopped(work: Awaitable[_T], stop: asyncio.Event) -> _T | None:
    """`work`'s result, or None when `stop` is set first (`work` is then cancelled). A
    service that sends commands uses it: once `pit up` stops, its processors may stop
    before answering, and the service would wait out the command's timeout (10 s) to end
    with a warning."""
    working, stopped = asyncio.ensure_future(work), asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([working, stopped], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not working.done():
            working.cancel()
    return working.result() if working.done() else None
