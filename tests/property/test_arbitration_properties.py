"""Properties of the arbiter (streams/arbitration/arbiter.py) under random command
sequences: a few tenants and models (some with slots, some cold), hosts whose free memory
changes, CPU reports, cost limits, random policies, submissions, releases, cancels, timers.

* conflicts found equal a brute-force reference computed from the raw request list and the
  facts (no false negatives, no false positives), for `detect` and for `would_conflict`;
* the same inputs give the same decisions (decide is deterministic);
* folding evolve over the events, through the Avro codec, reproduces the state;
* no grant ever exceeds a model's slots;
* under aging, every request of a random finite trace ends - granted, denied, cancelled or
  timed out - once the grants are released: none waits forever.
"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import Codec
from schemas.registry import EmbeddedRegistry
from streams.arbitration.arbiter import (
    ARBITER,
    CancelRequest,
    DescribeModel,
    ExpireRequest,
    ObserveHost,
    ObserveModel,
    ReconsiderRequest,
    ReleaseRequest,
    ReportUtilisation,
    RequestDecided,
    SetArbitrationPolicy,
    SubmitRequest,
)
from streams.arbitration.conflicts import detect, granted_within_capacity, would_conflict
from streams.arbitration.policy import ConflictKind
from streams.arbitration.state import DEFERRED, GRANTED, WAITING, ArbiterState, Request
from streams.decider import Message, Rejection, from_record, to_record
from streams.timers import TimerScheduled

CODEC = Codec(EmbeddedRegistry())
TENANTS = ("a", "b", "c")
MODELS = ("m1", "m2", "m3")
K = ConflictKind

policies = st.fixed_dictionaries({}, optional={
    "default_strategy": st.sampled_from(["priority", "round_robin", "queue",
                                         "weighted_random", "collaborative"]),
    "tenants": st.just({"a": 1, "b": 2, "c": 4}),
    "cost_limits": st.just({"a": {"limit": 2.0, "window_s": 30}}),
    "memory_threshold": st.sampled_from([0.5, 0.9, 1.0]),
    "cpu_threshold": st.sampled_from([0.5, 0.9]),
    "utilisation_ttl_s": st.sampled_from([5, 60]),  # the 7 s steps outlive a report of 5
    "max_queue": st.integers(1, 6),
    "max_pending_per_tenant": st.integers(1, 8),
})

commands = st.one_of(
    st.builds(SubmitRequest, st.sampled_from([f"r{i}" for i in range(12)]),
              st.sampled_from(MODELS), st.sampled_from(TENANTS),
              st.sampled_from([-1000, -100, 0, 100, 1000]),
              timeout_ms=st.sampled_from([-1, 0, 5_000])),
    st.builds(ReleaseRequest, st.sampled_from([f"r{i}" for i in range(12)])),
    st.builds(CancelRequest, st.sampled_from([f"r{i}" for i in range(12)])),
    st.builds(DescribeModel, st.sampled_from(MODELS), st.integers(0, 3),
              cost_per_call=st.sampled_from([0.0, 0.5, 1.5]),
              equivalents=st.sampled_from([[], ["m2"], ["m3"]])),
    st.builds(ObserveModel, st.sampled_from(MODELS), st.sampled_from([500, 2000, 5000]),
              st.just(1000), st.booleans()),
    st.builds(ObserveHost, st.sampled_from(["h1", "h2"]), st.just(6000),
              st.sampled_from([0, 1000, 3000, 6000]), st.booleans()),
    st.builds(ReportUtilisation, st.sampled_from(["h1", "runner"]),
              st.sampled_from([0.1, 0.6, 0.95])),
    policies.map(lambda p: SetArbitrationPolicy(json.dumps(p))),
)


class Run:
    """Decide and apply; fire due timers as the timer service would."""

    def __init__(self) -> None:
        self.state: ArbiterState = ARBITER.initial_state("default")
        self.now = 1_000_000
        self.events: list[tuple[Message, int]] = []
        self.timers: dict[str, tuple[int, Message]] = {}

    def send(self, command: Message) -> list[Message]:
        try:
            events = ARBITER.decide(self.state, command, self.now)
        except Rejection as rejection:
            assert rejection.reason
            return []
        again = ARBITER.decide(self.state, command, self.now)
        assert list(again) == list(events), "decide is not deterministic"
        handed = events.state  # what a processor starts from: the decision's own copy
        for event in events[events.applied:]:
            handed = ARBITER.evolve(handed, event, self.now)
        for event in events:
            self.state = ARBITER.evolve(self.state, event, self.now)
            self.events.append((event, self.now))
            if isinstance(event, TimerScheduled):
                target = ARBITER.command_type(event.command_type)
                self.timers[event.timer_id] = (event.due_at_ms, from_record(
                    target, json.loads(event.command_json)))
            elif type(event).__name__ == "TimerCancelled":
                self.timers.pop(event.timer_id, None)
        assert handed == self.state
        assert granted_within_capacity(self.state)
        return list(events)

    def tick(self, ms: int) -> None:
        self.now += ms
        for timer_id, (due, command) in sorted(self.timers.items(), key=lambda t: t[1][0]):
            if due <= self.now and timer_id in self.timers:
                del self.timers[timer_id]
                self.send(command)


def _setup(run: Run) -> None:
    for model in MODELS:
        run.send(ObserveModel(model, 1000, 1000, model != "m3"))
    run.send(DescribeModel("m1", 1))


def brute_force(state: ArbiterState, now: int) -> list[tuple]:
    """The conflicts among pending requests, recounted from the raw request list."""
    pending = [r for r in state.requests.values() if r.status in (WAITING, DEFERRED)]
    granted = [r for r in state.requests.values() if r.status == GRANTED]
    found: list[tuple] = []
    for model_id in sorted({r.model_id for r in pending}):
        model = state.models.get(model_id)
        asking = sorted(r.request_id for r in pending if r.model_id == model_id)
        held = sum(1 for r in granted if r.granted_model == model_id)
        if model is not None and model.slots and held + len(asking) > model.slots:
            found.append((K.MODEL_CONTENTION, model_id, tuple(asking)))
    hosts = [h for h in state.hosts.values() if h.alive]
    promised = sum(r.promised_mb for r in granted
                   if state.models[r.granted_model].hot is False
                   and r.granted_model in state.promised)
    need: dict[str, int] = {}
    for r in pending:
        model = state.models[r.model_id]
        already = model.hot or any(g.granted_model == r.model_id for g in granted
                                   if g.promised_mb) or r.model_id in state.promised
        need[r.model_id] = 0 if already else model.memory_mb
    if len(state.hosts) and sum(need.values()):
        available = state.policy.memory_threshold * sum(h.free_mb for h in hosts) - promised
        most = max((h.free_mb for h in hosts), default=0)
        if sum(need.values()) > available or max(need.values()) > most:
            found.append((K.MEMORY_PRESSURE, "", tuple(sorted(
                r.request_id for r in pending if need[r.model_id]))))
    if pending and brute_cpu(state, now) >= state.policy.cpu_threshold:
        found.append((K.CPU_SATURATION, "", tuple(sorted(r.request_id for r in pending))))
    for tenant in sorted({r.tenant for r in pending}):
        limit = state.policy.cost_limits.get(tenant)
        if limit is None:
            continue
        since = now - int(limit.window_s * 1000)
        spent = sum(c for at, c in state.spend.get(tenant, ()) if at > since)
        over = sorted(r.request_id for r in pending if r.tenant == tenant and (
            spent >= limit.limit or spent + state.models[r.model_id].cost_per_call
            > limit.limit))
        if over:
            found.append((K.COST_LIMIT, tenant, tuple(over)))
    return found


def brute_cpu(state: ArbiterState, now: int) -> float:
    """The busiest source heard from within the time to live (a silent one died)."""
    fresh = [u for source, u in state.utilisation.items()
             if now - state.reported_at[source] <= state.policy.utilisation_ttl_s * 1000]
    return max(fresh, default=0)


def brute_would(state: ArbiterState, request: Request, now: int) -> set:
    model = state.models[request.model_id]
    kinds = set()
    held = sum(1 for r in state.requests.values()
               if r.status == GRANTED and r.granted_model == request.model_id)
    if model.slots and held >= model.slots:
        kinds.add(K.MODEL_CONTENTION)
    cold = not model.hot and request.model_id not in state.promised
    hosts = [h for h in state.hosts.values() if h.alive]
    if cold and model.memory_mb and len(state.hosts):
        available = state.policy.memory_threshold * sum(h.free_mb for h in hosts) - sum(
            state.promised.values())
        if model.memory_mb > available or model.memory_mb > max(
                (h.free_mb for h in hosts), default=0):
            kinds.add(K.MEMORY_PRESSURE)
    if brute_cpu(state, now) >= state.policy.cpu_threshold:
        kinds.add(K.CPU_SATURATION)
    limit = state.policy.cost_limits.get(request.tenant)
    if limit is not None:
        spent = state.spent(request.tenant, now)
        if spent >= limit.limit or spent + model.cost_per_call > limit.limit:
            kinds.add(K.COST_LIMIT)
    return kinds


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(commands, st.sampled_from([0, 100, 2_000, 7_000])), max_size=40))
def test_conflicts_equal_a_brute_force_recount(steps) -> None:
    run = Run()
    _setup(run)
    for command, wait in steps:
        run.send(command)
        run.tick(wait)
        found = [(c.kind, c.subject, c.requests) for c in detect(run.state, run.now)]
        assert found == brute_force(run.state, run.now)
        for model_id in MODELS:
            probe = Request("probe", model_id, "a", 0, 0.5, (), "", "", 0, run.now,
                            run.state.seq)
            kinds = {c.kind for c in would_conflict(run.state, probe, run.now)}
            assert kinds == brute_would(run.state, probe, run.now), model_id


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(commands, st.sampled_from([0, 100, 2_000, 7_000])), max_size=40))
def test_replaying_the_events_through_avro_reproduces_the_state(steps) -> None:
    run = Run()
    _setup(run)
    for command, wait in steps:
        run.send(command)
        run.tick(wait)
    state = ARBITER.initial_state("default")
    for event, at in run.events:
        decoded = CODEC.decode(CODEC.encode(event.avro_name, {
            "envelope": {"event_id": "e", "event_type": event.type_name,
                         "entity_key": "default", "sequence": 1, "correlation_id": "c",
                         "causation_id": "c", "occurred_at": at, "producer": "test"},
            **to_record(event)}))
        state = ARBITER.evolve(state, from_record(type(event), decoded.record), at)
    assert state == run.state


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(TENANTS), st.sampled_from(MODELS[:2]),
                          st.sampled_from([-1000, -100, 0, 100, 1000]),
                          st.sampled_from([0, 50, 500])), min_size=1, max_size=40),
       policies.filter(lambda p: "cost_limits" not in p))
def test_under_aging_no_request_waits_forever(trace, policy) -> None:
    run = Run()
    _setup(run)
    run.send(SetArbitrationPolicy(json.dumps({**policy, "default_timeout_s": 0})))
    submitted = []
    for i, (tenant, model, priority, gap) in enumerate(trace):
        if run.send(SubmitRequest(f"t{i}", model, tenant, priority, timeout_ms=0)):
            submitted.append(f"t{i}")
        run.tick(gap)
    # Capacity comes back (CPU calm, hosts free); every grant is held a while and released.
    run.send(ReportUtilisation("h1", 0.1))
    run.send(ReportUtilisation("runner", 0.1))
    for _ in range(10 * len(trace) + 10):
        granted = sorted(r.request_id for r in run.state.requests.values()
                         if r.status == GRANTED)
        if not granted and not run.timers:
            break
        for request_id in granted:
            run.send(ReleaseRequest(request_id))
        run.tick(1_000)
    ended = {e.request_id for e, _ in run.events if isinstance(e, RequestDecided)
             and e.outcome in ("granted", "denied")}
    assert not [r for r in run.state.requests.values() if r.status in (WAITING, DEFERRED)]
    assert set(submitted) <= ended | {e.request_id for e, _ in run.events
                                      if type(e).__name__ in ("RequestCancelled",
                                                              "RequestTimedOut")}


def test_timers_fire_the_commands_they_name() -> None:
    run = Run()
    _setup(run)
    run.send(ReportUtilisation("h1", 0.95))
    run.send(SubmitRequest("r", "m1", "a", timeout_ms=10_000))
    kinds = {type(c).__name__ for _, c in run.timers.values()}
    assert kinds == {"ExpireRequest", "ReconsiderRequest"}
    assert all(isinstance(c, ExpireRequest | ReconsiderRequest) for _, c in run.timers.values())
