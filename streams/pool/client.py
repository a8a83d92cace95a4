"""The pool as a client uses it (`PitClient.pool`): the model lifecycle, registering models
and hosts, allocating a model (its answer comes on pit.pool.events, which the operations
follow from the first allocation on) and calling the model on its host."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Unpack

import aiohttp

from streams.commands import CommandClient, Outcome
from streams.decider import from_record
from streams.errors import SchemaError
from streams.pool.errors import AllocationError, InferenceError
from streams.pool.lifecycle import (
    DEFAULT_POOL,
    ModelState,
    RecordModelUsage,
    TransitionModel,
    TransitionReason,
)
from streams.pool.pool import (
    AllocateModel,
    AllocationFailed,
    ModelAllocated,
    RegisterHost,
    RegisterModel,
    ReleaseModel,
)
from streams.pool.topics import POOL_EVENTS

if TYPE_CHECKING:
    from aiokafka import ConsumerRecord

    from streams.arbitration.client import ArbitrationOps
    from streams.commands import SendOptions


@dataclass(frozen=True)
class Allocation:
    """A granted model allocation: call the model at `endpoint` until you release it."""

    request_id: str
    model_id: str
    host_id: str
    endpoint: str
    cache_hit: bool


class PoolOps:
    """Per client: the allocations awaiting the pool's answer, and one HTTP session for
    inference."""

    def __init__(self, client: CommandClient) -> None:
        self.client = client
        self._allocations: dict[str, asyncio.Future] = {}  # request id -> its answer event
        self._pool_events: asyncio.Future | None = None  # following pit.pool.events
        self._http: aiohttp.ClientSession | None = None
        self._arbitrated: set[str] = set()  # allocations arbitration granted
        # Arbitration's operations, for allocations with a tenant or priority: a PitClient's
        # own (`client.arbitration`) unless given (a runner's bare CommandClient has none).
        self.arbitration: ArbitrationOps | None = None
        client.at_close(self.close)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    # --- the model lifecycle ---------------------------------------------------------------

    async def transition(self, model_id: str, to_state: ModelState,
                         reason: TransitionReason = TransitionReason.USER_REQUEST,
                         metadata: dict[str, str] | None = None,
                         **options: Unpack[SendOptions]) -> Outcome:
        return await self.client.send(TransitionModel(model_id, ModelState(to_state),
                                                      TransitionReason(reason), metadata or {}),
                                      **options)

    async def warm_model(self, model_id: str,
                         reason: TransitionReason = TransitionReason.USER_REQUEST,
                         **options: Unpack[SendOptions]) -> Outcome:
        return await self.transition(model_id, ModelState.WARMING, reason, **options)

    async def cool_model(self, model_id: str,
                         reason: TransitionReason = TransitionReason.SCHEDULED_COOLDOWN,
                         **options: Unpack[SendOptions]) -> Outcome:
        return await self.transition(model_id, ModelState.COOLING, reason, **options)

    async def fail_model(self, model_id: str, error: str,
                         reason: TransitionReason = TransitionReason.HEALTH_CHECK_FAILURE,
                         **options: Unpack[SendOptions]) -> Outcome:
        return await self.transition(model_id, ModelState.FAILED, reason, {"error": error},
                                     **options)

    async def recover_model(self, model_id: str, **options: Unpack[SendOptions]) -> Outcome:
        return await self.transition(model_id, ModelState.COLD, TransitionReason.ERROR_RECOVERY,
                                     **options)

    async def record_usage(self, model_id: str, invocations: int = 1,
                           **options: Unpack[SendOptions]) -> Outcome:
        return await self.client.send(RecordModelUsage(model_id, invocations), **options)

    # --- the pool --------------------------------------------------------------------------

    async def register_model(self, model_id: str, uri: str, memory_mb: int,
                             expected_load_ms: int, *, pool_id: str = DEFAULT_POOL,
                             **options: Unpack[SendOptions]) -> Outcome:
        return await self.client.send(RegisterModel(model_id, uri, memory_mb, expected_load_ms,
                                                    pool_id), **options)

    async def register_host(self, host_id: str, memory_budget_mb: int, capacity: int,
                            endpoint: str = "", *, pool_id: str = DEFAULT_POOL,
                            **options: Unpack[SendOptions]) -> Outcome:
        return await self.client.send(RegisterHost(host_id, memory_budget_mb, capacity, pool_id,
                                                   endpoint), **options)

    async def allocate_model(self, model_id: str, requester: str, *,
                             request_id: str | None = None, workflow_id: str = "",
                             pool_id: str = DEFAULT_POOL, timeout: float = 30.0,
                             tenant: str | None = None, priority: int | None = None,
                             scores: dict[str, float] | None = None) -> Allocation:
        """Allocate a model, waiting while the pool loads it (a cache miss) if it must.
        Raises AllocationError with the pool's reason when it is rejected or fails.

        With a `tenant`, `priority` or `scores` the request goes through arbitration first
        (streams/arbitration/client.py): it waits its turn, and a denial or timeout raises
        AllocationError with arbitration's reason; release it here as any other."""
        if tenant is not None or priority is not None or scores is not None:
            allocation = await self._arbitration().allocate_model(
                model_id, requester, tenant=tenant or "default", priority=priority or 0,
                scores=scores, request_id=request_id, workflow_id=workflow_id,
                pool_id=pool_id, timeout=timeout)
            self._arbitrated.add(allocation.request_id)
            return allocation
        request_id = request_id or str(uuid.uuid4())
        await self._follow_pool()
        deadline = asyncio.get_running_loop().time() + timeout
        answer = self._allocations[request_id] = asyncio.get_running_loop().create_future()
        try:
            outcome = await self.client.send(AllocateModel(request_id, model_id, requester,
                                                           pool_id, workflow_id), timeout=timeout)
            if not outcome.accepted:
                raise AllocationError(f"allocation of {model_id} rejected: {outcome.reason}")
            remaining = max(0.0, deadline - asyncio.get_running_loop().time())
            try:
                event = await asyncio.wait_for(answer, remaining)
            except TimeoutError:
                raise AllocationError(
                    f"allocation {request_id} of {model_id} still waiting for the model after"
                    f" {timeout:g}s (is a `pit host` with room for it running?); it stays"
                    " queued until released") from None
        finally:
            self._allocations.pop(request_id, None)
        if isinstance(event, AllocationFailed):
            raise AllocationError(f"allocation {request_id} of {model_id} failed"
                                  f" ({event.code}): {event.reason}")
        return Allocation(request_id, model_id, event.host_id, event.endpoint, event.cache_hit)

    def _arbitration(self) -> ArbitrationOps:
        return self.arbitration or self.client.arbitration  # type: ignore[attr-defined]

    async def _follow_pool(self) -> None:
        """Start following the pool's events once; every caller waits until it is pinned."""
        if self._pool_events is None:
            self._pool_events = asyncio.ensure_future(self.client.tail(POOL_EVENTS,
                                                                       self._on_pool_event))
        await asyncio.shield(self._pool_events)

    def _on_pool_event(self, message: ConsumerRecord) -> None:
        # Answers to allocations are keyed by request id: only those are decoded.
        request_id = message.key.decode() if message.key else ""
        waiter = self._allocations.get(request_id)
        if waiter is None or waiter.done():
            return
        try:
            decoded = self.client.codec.decode(message.value)
        except SchemaError:
            return
        for answer in (ModelAllocated, AllocationFailed):
            if decoded.name == answer.avro_name:
                waiter.set_result(from_record(answer, decoded.record))

    async def release_model(self, request_id: str, *, pool_id: str = DEFAULT_POOL,
                            **options: Unpack[SendOptions]) -> Outcome:
        if request_id in self._arbitrated:  # its grant goes back to arbitration too
            self._arbitrated.discard(request_id)
            return await self._arbitration().release_model(request_id, pool_id=pool_id,
                                                           **options)
        return await self.client.send(ReleaseModel(request_id, pool_id), **options)

    async def infer(self, allocation: Allocation, inputs: Any, *,
                    params: dict | None = None, timeout: float = 30.0) -> Any:
        """Call the allocated model on its host; returns its outputs (JSON values). `params`
        (a DAG node's) travel beside the inputs; hosts that take none ignore them."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        url = f"{allocation.endpoint}/models/{allocation.model_id}/infer"
        body = {"inputs": inputs, **({"params": params} if params else {})}
        try:
            async with self._http.post(url, json=body,
                                       timeout=aiohttp.ClientTimeout(total=timeout)) as reply:
                body = await reply.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise InferenceError(f"{allocation.model_id} on host {allocation.host_id}"
                                 f" ({url}): {exc or type(exc).__name__}") from None
        if reply.status != 200 or not isinstance(body, dict) or "outputs" not in body:
            detail = body.get("error") if isinstance(body, dict) else body
            raise InferenceError(f"{allocation.model_id} on host {allocation.host_id}:"
                                 f" HTTP {reply.status}: {detail}")
        return body["outputs"]
