"""Waiting on observed state: `until` a condition holds, looked at again every few
milliseconds, never a sleep that hopes it is long enough. The campaigns wait on processes
this way, and so do the tests."""

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
