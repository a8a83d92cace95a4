"""Processes outside `pit up` that work for it (`pit runner`, `pit host`): finding the broker of
the `pit up` they serve, noticing it gone, and stopping within a bounded time.

* An embedded broker lives and dies with its `pit up`, which names it in its broker file
  (streams/config.py BROKER_FILE: address and pid). `broker_address` is that address while
  the pid lives: a file left behind by a killed `pit up`, or removed by a stopped one, means
  no broker. `wait_for_broker` waits for one (re-reading the file) and says so in one line;
  a restarted `pit up` has a new address and the process reconnects to it. With a configured
  cluster the address is fixed and the Kafka clients reconnect by themselves.
* `Stopping`: SIGTERM/SIGINT. The first sets `stop` (the process drains) and arms a watchdog
  that ends the process `drain_timeout_s + GRACE_S` later whatever is stuck - a send to a
  broker that is gone, a thread running a model load, a Kafka client that will not close;
  the second signal calls `force` (abandon the drain) and ends the process `FORCE_S` later
  at the latest. The watchdog is a daemon thread, so it fires even while the event loop or
  the interpreter's exit waits on something.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import NoReturn

from streams.config import BROKER_FILE, Settings

BROKER_POLL_S = 0.5  # how often a process waiting for `pit up` reads its broker file
GRACE_S = 5.0   # past the drain timeout: reports, commits, closing the clients
FORCE_S = 2.0   # after a second signal
CLOSE_S = 2.0   # closing the clients, all of them


def broker_address(settings: Settings) -> str | None:
    """Where Kafka is now: the configured cluster, or the embedded broker of a `pit up` that
    is running on this data directory; None when there is none."""
    if not settings.embedded:
        return settings.bootstrap_servers
    try:
        found = json.loads((settings.data_dir / BROKER_FILE).read_text())
        address, pid = found["bootstrap_servers"], int(found["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except PermissionError:
        pass  # alive, another user's
    except OSError:
        return None
    return address


async def wait_for_broker(settings: Settings, stop: asyncio.Event,
                          say: Callable[[str], None], *, said: bool = False) -> str | None:
    """The broker's address once there is one, saying once that it waits (unless `said`:
    the caller said why already); None if `stop` is set first."""
    while not stop.is_set():
        address = broker_address(settings)
        if address is not None:
            return address
        if not said:
            say(f"no pit up is running on {settings.data_dir.resolve()}; waiting for one"
                f" (watching {BROKER_FILE})")
            said = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), BROKER_POLL_S)
    return None


async def close_all(closers: Iterable[Callable[[], Awaitable[object]]],
                    timeout_s: float = CLOSE_S) -> None:
    """Run each closer in turn, all within `timeout_s`; one that fails or runs out of time is
    left behind (a client of a broker that is gone may never get its goodbye answered)."""
    deadline = time.monotonic() + timeout_s
    for closer in closers:
        try:
            await asyncio.wait_for(closer(), max(0.05, deadline - time.monotonic()))
        except asyncio.CancelledError:  # raised from inside a client's own teardown
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
        except Exception:  # closing: nothing left to do about it
            pass


def exit_now(code: int) -> NoReturn:
    """End a process whose work is done (reports acknowledged, clients closed or left
    behind) at once: not after threads still stuck in a call to a broker that is gone, nor
    after the interpreter's teardown, either of which can take longer than the drain."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def gone_line(address: str) -> str:
    return (f"pit up is gone (its broker at {address} stopped); waiting for it to come back"
            f" (watching {BROKER_FILE})")


class Stopping:
    """SIGTERM/SIGINT handling with a bounded stop (see the module doc)."""

    def __init__(self, drain_timeout_s: float, force: Callable[[], None],
                 say: Callable[[str], None], *, grace_s: float = GRACE_S,
                 force_s: float = FORCE_S) -> None:
        self.stop = asyncio.Event()
        self.drain_timeout_s, self.grace_s, self.force_s = drain_timeout_s, grace_s, force_s
        self._force, self._say = force, say

    def install(self) -> Stopping:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        return self

    def _on_signal(self) -> None:
        if not self.stop.is_set():
            self.stop.set()
            self._arm(self.drain_timeout_s + self.grace_s, "still stopping")
        else:
            self._force()
            self._arm(self.force_s, "stopped by a second signal")

    def _arm(self, seconds: float, why: str) -> None:
        timer = threading.Timer(seconds, self._exit, (why, seconds))
        timer.daemon = True
        timer.start()

    def _exit(self, why: str, seconds: float) -> None:
        self._say(f"{why} {seconds:g} s after the signal: exiting now")
        exit_now(1)
