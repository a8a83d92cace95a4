"""Arbitration as a client uses it (`PitClient.arbitration`): submit requests (one, or a
batch: the seed's `arbitrate(requests)`), wait for a grant, release, cancel, set the policy
and tell arbitration about models, hosts and load. Decisions come on
pit.arbitration.events, keyed by request id, which the operations follow from the first
request on."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Unpack

from streams.arbitration.arbiter import (
    UNKNOWN_MODEL,
    CancelRequest,
    DescribeModel,
    ObserveHost,
    ObserveModel,
    ReleaseRequest,
    ReportUtilisation,
    RequestCancelled,
    RequestDecided,
    RequestTimedOut,
    SetArbitrationPolicy,
    SubmitRequest,
)
from streams.arbitration.policy import Policy, parse_policy, policy_from, policy_json
from streams.arbitration.topics import ARBITRATION_EVENTS
from streams.commands import CommandClient, Outcome
from streams.decider import Message, from_record
from streams.errors import PitError, SchemaError
from streams.pool.errors import AllocationError
from streams.pool.lifecycle import DEFAULT_POOL

if TYPE_CHECKING:
    from aiokafka import ConsumerRecord
    from sqlalchemy import Engine

    from streams.commands import SendOptions
    from streams.pool.client import PoolOps

LEARNING_S = 5.0  # how long allocate_model waits for arbitration to learn of a new model


class RequestRejected(PitError):
    """A request the arbiter refused as invalid (not a denial: it was never considered)."""

    def __init__(self, request_id: str, reason: str) -> None:
        super().__init__(f"request {request_id} rejected: {reason}")
        self.reason = reason


_ANSWERS = {cls.avro_name: cls for cls in (RequestDecided, RequestTimedOut, RequestCancelled)}


@dataclass(frozen=True)
class Decision:
    """One arbitration decision on a request, as its submitter sees it."""

    request_id: str
    outcome: str              # granted | queued | deferred | denied | timed_out | cancelled
    model_id: str = ""        # the model granted (an equivalent, for a counter-offer)
    reason: str = ""
    rationale: str = ""
    counterfactual: str = ""
    strategy: str = ""
    position: int = -1
    wait_estimate_ms: int = -1
    delay_ms: int = -1

    @property
    def granted(self) -> bool:
        return self.outcome == "granted"

    @property
    def final(self) -> bool:
        """No later decision follows (granted, denied, timed out or cancelled)."""
        return self.outcome not in ("queued", "deferred")

    @classmethod
    def of(cls, event: Message) -> Decision:
        if isinstance(event, RequestDecided):
            return cls(event.request_id, event.outcome, event.granted_model, event.reason,
                       event.rationale, event.counterfactual, event.strategy, event.position,
                       event.wait_estimate_ms, event.delay_ms)
        if isinstance(event, RequestTimedOut):
            return cls(event.request_id, "timed_out",
                       rationale=f"timed out after {event.waited_ms / 1000:.1f} s waiting")
        assert isinstance(event, RequestCancelled)
        return cls(event.request_id, "cancelled", rationale=event.reason)


@dataclass(frozen=True)
class Ask:
    """One request of a batch (`arbitrate`)."""

    model_id: str
    tenant: str = "default"
    priority: int = 0
    scores: Mapping[str, float] | None = None
    request_id: str | None = None
    timeout: float | None = None   # seconds; None: the policy's default, 0: none
    requester: str = ""
    workflow_id: str = ""


class ArbitrationOps:
    """Per client: the requests awaiting decisions."""

    def __init__(self, client: CommandClient, pool: PoolOps | None = None) -> None:
        """`pool`: the pool's operations `allocate_model` allocates with (default: the
        client's own, `client.pool`, which a PitClient has)."""
        self.client = client
        self.pool = pool
        self._watched: dict[str, asyncio.Queue[Decision]] = {}  # request id -> its decisions
        self._events: asyncio.Future | None = None
        self._engine: Engine | None = None  # the views, for a request submitted before

    async def _follow(self) -> None:
        if self._events is None:
            self._events = asyncio.ensure_future(self.client.tail(ARBITRATION_EVENTS,
                                                                  self._on_event))
        await asyncio.shield(self._events)

    def _on_event(self, message: ConsumerRecord) -> None:
        request_id = message.key.decode() if message.key else ""
        queue = self._watched.get(request_id)
        if queue is None:
            return
        try:
            decoded = self.client.codec.decode(message.value)
        except SchemaError:
            return
        answer = _ANSWERS.get(decoded.name)
        if answer is not None:
            queue.put_nowait(Decision.of(from_record(answer, decoded.record)))

    async def submit(self, model_id: str, *, tenant: str = "default", priority: int = 0,
                     scores: Mapping[str, float] | None = None, request_id: str | None = None,
                     timeout: float | None = None, requester: str = "",
                     workflow_id: str = "", pool_id: str = DEFAULT_POOL,
                     answer_within: float = 10.0) -> Decision:
        """Submit a request; returns its first decision (granted, queued, deferred or
        denied). A rejected request (bad input) raises PitError with the reason."""
        return (await self.arbitrate([Ask(model_id, tenant, priority, scores, request_id,
                                          timeout, requester, workflow_id)],
                                     pool_id=pool_id, answer_within=answer_within))[0]

    async def arbitrate(self, asks: Iterable[Ask], *, pool_id: str = DEFAULT_POOL,
                        answer_within: float = 10.0) -> list[Decision]:
        """The seed's `arbitrate(requests)`: every request submitted at once, one decision
        each, in the order given. A rejected one is a `denied` decision with the reason."""
        await self._follow()
        asks = list(asks)
        ids = [ask.request_id or str(uuid.uuid4()) for ask in asks]
        for request_id in ids:
            self._watched.setdefault(request_id, asyncio.Queue())
        commands = [SubmitRequest(rid, ask.model_id, ask.tenant, ask.priority,
                                  dict(ask.scores or {}), ask.requester, ask.workflow_id,
                                  -1 if ask.timeout is None else int(ask.timeout * 1000),
                                  pool_id) for rid, ask in zip(ids, asks, strict=True)]
        outcomes = await asyncio.gather(*(self.client.send(c, command_id=f"submit/{c.request_id}",
                                                           timeout=answer_within)
                                          for c in commands))
        decisions = []
        for request_id, outcome in zip(ids, outcomes, strict=True):
            if outcome.accepted and outcome.duplicate:  # decided before: its last decision
                self._watched.pop(request_id, None)
                decisions.append(await self._recorded(request_id, pool_id, answer_within))
                continue
            if not outcome.accepted:
                self._watched.pop(request_id, None)
                if len(asks) == 1:
                    raise RequestRejected(request_id, outcome.reason or "")
                decisions.append(Decision(request_id, "denied", reason="policy_violation",
                                          rationale=outcome.reason or ""))
                continue
            decision = await self._next(request_id, answer_within)
            if decision.final:
                self._watched.pop(request_id, None)
            decisions.append(decision)
        return decisions

    async def _recorded(self, request_id: str, pool_id: str, timeout: float) -> Decision:
        """The last decision on a request submitted before, from the views (which may lag
        the log by a moment)."""
        from projections.arbitration import request
        from streams.sql import connect

        if self._engine is None:
            self._engine = connect(self.client.settings.db_url)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            found = await asyncio.to_thread(request, self._engine, request_id, pool_id)
            if found and found["decisions"]:
                last = found["decisions"][-1]
                outcome = found["state"] if found["state"] in (
                    "timed_out", "cancelled") else last["outcome"]
                return Decision(request_id, outcome, last["granted_model"], last["reason"],
                                last["rationale"], last["counterfactual"], last["strategy"],
                                last["position"], last["wait_estimate_ms"], last["delay_ms"])
            if asyncio.get_running_loop().time() > deadline:
                raise PitError(f"request {request_id} was submitted before, but its decision"
                               f" is not in the views within {timeout:g}s")
            await asyncio.sleep(0.05)

    async def _next(self, request_id: str, timeout: float) -> Decision:
        try:
            return await asyncio.wait_for(self._watched[request_id].get(), timeout)
        except TimeoutError:
            raise PitError(f"no decision on request {request_id} within {timeout:g}s (is"
                           " `pit up` running?)") from None

    async def wait_granted(self, decision: Decision, timeout: float = 60.0) -> Decision:
        """Wait until a queued or deferred request is granted; AllocationError when it is
        denied, times out or is cancelled instead, or `timeout` passes (it stays queued)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not decision.final:
            remaining = max(0.0, deadline - asyncio.get_running_loop().time())
            try:
                decision = await asyncio.wait_for(
                    self._watched[decision.request_id].get(), remaining)
            except TimeoutError:
                raise AllocationError(
                    f"request {decision.request_id} still {decision.outcome} after"
                    f" {timeout:g}s; it stays queued until cancelled") from None
        self._watched.pop(decision.request_id, None)
        if not decision.granted:
            raise AllocationError(f"request {decision.request_id} {decision.outcome}"
                                  f"{f' ({decision.reason})' if decision.reason else ''}:"
                                  f" {decision.rationale}")
        return decision

    async def allocate_model(self, model_id: str, requester: str, *, tenant: str = "default",
                             priority: int = 0, scores: Mapping[str, float] | None = None,
                             request_id: str | None = None, workflow_id: str = "",
                             pool_id: str = DEFAULT_POOL, timeout: float = 30.0) -> Any:
        """A model allocation admitted by arbitration: the request waits its turn (at most
        `timeout` seconds: its durable timeout is the same), then the pool allocates the
        model granted (an equivalent, on a counter-offer) under the same request id.
        Raises AllocationError with the reason when it is refused, denied or times out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        learning = loop.time() + min(timeout, LEARNING_S)
        while True:
            try:
                decision = await self.submit(model_id, tenant=tenant, priority=priority,
                                             scores=scores, request_id=request_id,
                                             timeout=timeout, requester=requester,
                                             workflow_id=workflow_id, pool_id=pool_id)
                break
            except RequestRejected as exc:
                # A model registered a moment ago: the pool observer tells arbitration of it
                # shortly after the pool decided it. Anything else is final.
                if not exc.reason.startswith(UNKNOWN_MODEL) or loop.time() > learning:
                    raise AllocationError(f"allocation of {model_id} refused by arbitration:"
                                          f" {exc.reason}") from None
                await asyncio.sleep(0.1)
            except PitError as exc:
                raise AllocationError(f"allocation of {model_id} refused by arbitration:"
                                      f" {exc}") from None
        decision = await self.wait_granted(decision, max(0.0, deadline - loop.time()))
        try:
            allocation = await self._pool().allocate_model(
                decision.model_id, requester, request_id=decision.request_id,
                workflow_id=workflow_id, pool_id=pool_id,
                timeout=max(0.1, deadline - loop.time()))
        except (AllocationError, PitError):
            await self.release(decision.request_id, pool_id=pool_id)
            raise
        return allocation

    async def release_model(self, request_id: str, *, pool_id: str = DEFAULT_POOL,
                            **options: Unpack[SendOptions]) -> Outcome:
        """Release an allocation made by `allocate_model`: in the pool, then its grant (a
        `command_id` given becomes `<command_id>/pool` and `<command_id>/grant`, one each)."""
        pool_options, grant_options = options.copy(), options.copy()
        command_id = options.get("command_id")
        if command_id:
            pool_options["command_id"] = f"{command_id}/pool"
            grant_options["command_id"] = f"{command_id}/grant"
        pool = await self._pool().release_model(request_id, pool_id=pool_id, **pool_options)
        granted = await self.release(request_id, pool_id=pool_id, **grant_options)
        return pool if not pool.accepted else granted

    def _pool(self) -> PoolOps:
        return self.pool or self.client.pool  # type: ignore[attr-defined]

    async def release(self, request_id: str, *, pool_id: str = DEFAULT_POOL,
                      **options: Unpack[SendOptions]) -> Outcome:
        return await self.client.send(ReleaseRequest(request_id, pool_id), **options)

    async def cancel(self, request_id: str, reason: str = "", *, pool_id: str = DEFAULT_POOL,
                     **options: Unpack[SendOptions]) -> Outcome:
        return await self.client.send(CancelRequest(request_id, reason, pool_id), **options)

    async def set_policy(self, policy: Policy | Mapping[str, Any] | str, *,
                         pool_id: str = DEFAULT_POOL, **options: Unpack[SendOptions]) -> Outcome:
        """Set the policy (a Policy, its plain data, or YAML/JSON text); PolicyError listing
        every problem before anything is sent."""
        if isinstance(policy, str):
            policy = parse_policy(policy)
        elif not isinstance(policy, Policy):
            policy = policy_from(json.loads(json.dumps(policy)))
        return await self.client.send(SetArbitrationPolicy(policy_json(policy), pool_id),
                                      **options)

    async def describe_model(self, model_id: str, *, slots: int = 0,
                             cost_per_second: float = 0.0, cost_per_call: float = 0.0,
                             equivalents: Iterable[str] = (), pool_id: str = DEFAULT_POOL,
                             **options: Unpack[SendOptions]) -> Outcome:
        return await self.client.send(DescribeModel(model_id, slots, cost_per_second,
                                                    cost_per_call, list(equivalents), pool_id),
                                      **options)

    async def observe_model(self, model_id: str, memory_mb: int, load_ms: int, hot: bool, *,
                            pool_id: str = DEFAULT_POOL,
                            **options: Unpack[SendOptions]) -> Outcome:
        return await self.client.send(ObserveModel(model_id, memory_mb, load_ms, hot, pool_id),
                                      **options)

    async def observe_host(self, host_id: str, budget_mb: int, free_mb: int,
                           alive: bool = True, *, pool_id: str = DEFAULT_POOL,
                           **options: Unpack[SendOptions]) -> Outcome:
        return await self.client.send(ObserveHost(host_id, budget_mb, free_mb, alive, pool_id),
                                      **options)

    async def report_utilisation(self, source: str, utilisation: float, *,
                                 pool_id: str = DEFAULT_POOL,
                                 **options: Unpack[SendOptions]) -> Outcome:
        return await self.client.send(ReportUtilisation(source, utilisation, pool_id),
                                      **options)


def allocation_ops(client: CommandClient) -> tuple[PoolOps, ArbitrationOps]:
    """The pool's operations and arbitration's, wired to each other on a bare CommandClient
    that routes the pool's and the arbiter's commands: what a PitClient has as `.pool` and
    `.arbitration` (a runner, the CLI and the bench use these)."""
    from streams.pool.client import PoolOps

    pool = PoolOps(client)
    arbitration = ArbitrationOps(client, pool=pool)
    pool.arbitration = arbitration
    return pool, arbitration
