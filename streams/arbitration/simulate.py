"""What-if (`pit arbitration simulate --policy new.yaml [--since T]`): the recorded request
stream re-decided under another policy, deterministically, writing nothing.

From a pool's recorded events it rebuilds the inputs the arbiter saw - the facts
(`ModelDescribed`, `ModelObserved`, `HostObserved`, `UtilisationReported`), every
submission and cancellation at its time - and runs them through a fresh arbiter with the
other policy in force throughout, in virtual time: its own timers fire when due, and a
grant is released after as long as the real one was held (the mean of the recorded holds
for a request that was never granted for real; never, for one still held). It covers the
record's time and no more. Requests from `since_ms` on are replayed; the facts from the
beginning.

Both sides are summed up per tenant (grants, denials, timeouts, cancellations, mean and
longest wait), with the Gini of weight-normalised grants under the new policy's weights.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from streams.arbitration import fairness
from streams.arbitration.arbiter import (
    ARBITER,
    CancelRequest,
    DescribeModel,
    GrantReleased,
    HostObserved,
    ModelDescribed,
    ModelObserved,
    ObserveHost,
    ObserveModel,
    ReleaseRequest,
    ReportUtilisation,
    RequestCancelled,
    RequestDecided,
    RequestSubmitted,
    RequestTimedOut,
    SetArbitrationPolicy,
    SubmitRequest,
    UtilisationReported,
)
from streams.arbitration.policy import Policy, policy_json
from streams.decider import Message, Rejection
from streams.timers import TimerCancelled, TimerScheduled


@dataclass
class TenantFigures:
    granted: int = 0
    denied: int = 0
    timed_out: int = 0
    cancelled: int = 0
    waits_ms: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        waits = self.waits_ms
        return {"granted": self.granted, "denied": self.denied, "timed_out": self.timed_out,
                "cancelled": self.cancelled,
                "mean_wait_ms": round(sum(waits) / len(waits)) if waits else 0,
                "max_wait_ms": max(waits, default=0)}


def _figures(events: Iterable[tuple[Message, int]], tenants: dict[str, str]
             ) -> dict[str, TenantFigures]:
    found: dict[str, TenantFigures] = {}
    for event, _at in events:
        match event:
            case RequestSubmitted():
                tenants[event.request_id] = event.tenant
                continue
            case RequestDecided(outcome="granted"):
                figures = found.setdefault(event.tenant, TenantFigures())
                figures.granted += 1
                figures.waits_ms.append(event.waited_ms)
            case RequestDecided(outcome="denied"):
                found.setdefault(event.tenant, TenantFigures()).denied += 1
            case RequestTimedOut():
                found.setdefault(tenants[event.request_id], TenantFigures()).timed_out += 1
            case RequestCancelled():
                found.setdefault(tenants[event.request_id], TenantFigures()).cancelled += 1
    return found


def _fact_command(event: Message, pool_id: str) -> Message | None:
    match event:
        case ModelDescribed():
            return DescribeModel(event.model_id, event.slots, event.cost_per_second,
                                 event.cost_per_call, list(event.equivalents), pool_id)
        case ModelObserved():
            return ObserveModel(event.model_id, event.memory_mb, event.load_ms, event.hot,
                                pool_id)
        case HostObserved():
            return ObserveHost(event.host_id, event.budget_mb, event.free_mb, event.alive,
                               pool_id)
        case UtilisationReported():
            return ReportUtilisation(event.source, event.utilisation, pool_id)
    return None


def simulate(recorded: list[tuple[Message, int]], policy: Policy, pool_id: str = "default",
             since_ms: int = 0) -> dict[str, Any]:
    """`recorded`: the pool's events with their times, in log order. Returns both sides'
    figures per tenant and their Gini."""
    holds = {e.request_id: e.held_ms for e, _ in recorded if isinstance(e, GrantReleased)}
    granted_for_real = {e.request_id for e, _ in recorded
                        if isinstance(e, RequestDecided) and e.outcome == "granted"}
    mean_hold = round(sum(holds.values()) / len(holds)) if holds else 10_000
    inputs: list[tuple[int, int, Message]] = []  # (time, order, command)
    for order, (event, at) in enumerate(recorded):
        command = _fact_command(event, pool_id)
        if command is None and at >= since_ms:
            if isinstance(event, RequestSubmitted):
                command = SubmitRequest(event.request_id, event.model_id, event.tenant,
                                        event.priority, dict(event.scores), event.requester,
                                        event.workflow_id, event.timeout_ms, pool_id)
            elif isinstance(event, RequestCancelled):
                command = CancelRequest(event.request_id, event.reason, pool_id)
        if command is not None:
            inputs.append((at, order, command))
    state = ARBITER.initial_state(pool_id)
    start = inputs[0][0] if inputs else 0
    state = _apply(state, SetArbitrationPolicy(policy_json(policy), pool_id), start)[0]
    heap = list(inputs)
    heapq.heapify(heap)
    order = len(recorded)
    events: list[tuple[Message, int]] = []
    cancelled_timers: set[str] = set()
    end = recorded[-1][1] if recorded else 0  # the simulation covers the record's time
    while heap and heap[0][0] <= end:
        at, _, command = heapq.heappop(heap)
        state, emitted = _apply(state, command, at)
        for event in emitted:
            events.append((event, at))
            if isinstance(event, TimerScheduled) and event.timer_id not in cancelled_timers:
                fired = ARBITER.command_type(event.command_type)
                if fired is not None:
                    order += 1
                    heapq.heappush(heap, (event.due_at_ms, order, _command(fired, event)))
            elif isinstance(event, TimerCancelled):
                cancelled_timers.add(event.timer_id)
            elif isinstance(event, RequestDecided) and event.outcome == "granted":
                real = holds.get(event.request_id)
                if real is None and event.request_id in granted_for_real:
                    continue  # still held at the end of the record: never released
                order += 1
                heapq.heappush(heap, (at + (real if real is not None else mean_hold), order,
                                      ReleaseRequest(event.request_id, pool_id)))
    weights = dict(policy.tenants)
    tenants: dict[str, str] = {}
    in_window = [(e, at) for e, at in recorded if at >= since_ms
                 or not isinstance(e, RequestSubmitted | RequestDecided)]
    actual = _figures(in_window, tenants)
    simulated = _figures(events, tenants)
    names = sorted(set(actual) | set(simulated) | set(weights))
    weights = {t: policy.weight(t) for t in names}
    return {
        "pool_id": pool_id, "since_ms": since_ms, "policy": json.loads(policy_json(policy)),
        "tenants": {t: {"actual": actual.get(t, TenantFigures()).summary(),
                        "simulated": simulated.get(t, TenantFigures()).summary(),
                        "weight": weights[t]} for t in names},
        "gini": {"actual": fairness.normalised_gini(
                     {t: f.granted for t, f in actual.items()}, weights),
                 "simulated": fairness.normalised_gini(
                     {t: f.granted for t, f in simulated.items()}, weights)},
    }


def _command(cls: type[Message], timer: TimerScheduled) -> Message:
    from streams.decider import from_record

    return from_record(cls, json.loads(timer.command_json))


def _apply(state: Any, command: Message, at: int) -> tuple[Any, list[Message]]:
    try:
        events = list(ARBITER.decide(state, command, at))
    except Rejection:
        return state, []  # e.g. a cancel of a request the simulation had granted
    for event in events:
        state = ARBITER.evolve(state, event, at)
    return state, events


def simulation_lines(found: dict[str, Any]) -> list[str]:
    lines = [f"pool {found['pool_id']}: the recorded requests re-decided under the new policy"
             " (actual -> simulated)"]
    for tenant, row in found["tenants"].items():
        a, s = row["actual"], row["simulated"]
        lines.append(
            f"  {tenant} (weight {row['weight']:g}): granted {a['granted']} -> {s['granted']},"
            f" denied {a['denied']} -> {s['denied']}, timed out {a['timed_out']} ->"
            f" {s['timed_out']}, mean wait {a['mean_wait_ms'] / 1000:.1f} ->"
            f" {s['mean_wait_ms'] / 1000:.1f} s, longest {a['max_wait_ms'] / 1000:.1f} ->"
            f" {s['max_wait_ms'] / 1000:.1f} s")
    gini = found["gini"]
    lines.append(f"  Gini {gini['actual']:.3f} -> {gini['simulated']:.3f}")
    return lines
