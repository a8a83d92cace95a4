"""`PitClient`: the kernel's command client (streams/commands.py) with every registered
component's operations, each reachable under the component's name: `pit.pool.allocate_model`,
`pit.dag.execute_workflow`, `pit.artifacts.store`. Async, with `SyncPitClient` for blocking
code."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, Unpack

from streams.commands import CommandClient
from streams.components import COMPONENTS, all_deciders
from streams.config import Settings

if TYPE_CHECKING:
    from schemas.codec import Codec
    from streams.arbitration.client import ArbitrationOps
    from streams.artifacts.client import ArtifactOps
    from streams.dag.workflows import WorkflowOps
    from streams.decider import Decider
    from streams.pool.client import PoolOps
    from streams.stale.client import StaleOps

_T = TypeVar("_T")

# Component name -> the factory of its operations on a client.
OPERATIONS = {c.name: c.client for c in COMPONENTS if c.client is not None}


class PitClient(CommandClient):
    """Routes every registered component's commands. A component's operations are built
    on first use (so a client that never stores an artifact opens no blob store)."""

    # What the registry's `client` factories build, named for type checkers: the one line a
    # new component with operations adds here (tests/unit/test_client_namespaces.py).
    pool: PoolOps
    dag: WorkflowOps
    artifacts: ArtifactOps
    arbitration: ArbitrationOps
    stale: StaleOps

    def __init__(self, settings: Settings | None = None, issued_by: str = "pit-client",
                 codec: Codec | None = None) -> None:
        super().__init__(settings, issued_by, codec)

    def routed(self) -> Iterable[Decider[Any]]:
        """Every registered component's deciders, loaded when the first command is sent."""
        return all_deciders()

    def __getattr__(self, name: str) -> Any:
        factory = OPERATIONS.get(name)
        if factory is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        operations = factory(self)
        setattr(self, name, operations)
        return operations


def _blocking(attribute: Any, call: Callable[[Any], Any]) -> Any:
    if not asyncio.iscoroutinefunction(attribute):
        return attribute
    return lambda *args, **kwargs: call(attribute(*args, **kwargs))


class _BlockingOperations:
    """A component's operations with their coroutines run to completion on the client's
    loop."""

    def __init__(self, operations: Any, call: Callable[[Any], Any]) -> None:
        self._operations, self._call = operations, call

    def __getattr__(self, name: str) -> Any:
        return _blocking(getattr(self._operations, name), self._call)


class _ClientOptions(TypedDict, total=False):
    """What `SyncPitClient` passes on to its `PitClient`."""

    issued_by: str
    codec: Codec | None


class SyncPitClient:
    """Blocking facade: runs a `PitClient` on an event loop in a background thread."""

    def __init__(self, settings: Settings | None = None,
                 **options: Unpack[_ClientOptions]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="pit-client")
        self._thread.start()
        self._client = PitClient(settings or Settings.from_env(), **options)
        try:
            self._call(self._client.start())
        except BaseException:  # no client to close: the loop and its thread go at once
            self._stop_loop()
            raise

    def _call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name in OPERATIONS:
            return _BlockingOperations(attribute, self._call)
        return _blocking(attribute, self._call)

    def close(self) -> None:
        try:
            self._call(self._client.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():  # a loop still running cannot be closed
            self._loop.close()

    def __enter__(self) -> SyncPitClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
