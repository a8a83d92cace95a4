"""The arbiter's rules (streams/arbitration/arbiter.py), decided one command at a time: every
conflict kind, every strategy, aging, fairness, queues, timeouts and the bad input it
refuses. `Arbiter` below decides and applies, as the processor does."""

from __future__ import annotations

import json

import pytest

from streams.arbitration import fairness
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
from streams.arbitration.conflicts import detect, granted_within_capacity
from streams.arbitration.policy import PolicyError, parse_policy, policy_from, policy_json
from streams.decider import Message, Rejection
from streams.timers import TimerCancelled, TimerScheduled


class Arbiter:
    """One pool's arbiter: decide, apply, remember the decisions."""

    def __init__(self, now: int = 1_000_000) -> None:
        self.state = ARBITER.initial_state("default")
        self.now = now
        self.events: list[Message] = []
        self.times: list[int] = []

    def send(self, command: Message, *, at: int | None = None) -> list[Message]:
        if at is not None:
            self.now = at
        events = ARBITER.decide(self.state, command, self.now)
        for event in events:
            self.state = ARBITER.evolve(self.state, event, self.now)
        self.events.extend(events)
        self.times.extend(self.now for _ in events)
        return list(events)

    def decided(self, command: Message, **options) -> dict[str, RequestDecided]:
        return {e.request_id: e for e in self.send(command, **options)
                if isinstance(e, RequestDecided)}

    def submit(self, request_id: str, model_id: str = "m", at: int | None = None,
               **fields) -> RequestDecided:
        return self.decided(SubmitRequest(request_id, model_id, **fields), at=at)[request_id]

    def policy(self, **settings) -> None:
        self.send(SetArbitrationPolicy(json.dumps(settings)))


@pytest.fixture
def arb() -> Arbiter:
    a = Arbiter()
    a.send(DescribeModel("m", slots=1))
    a.send(ObserveModel("m", 1000, 2000, True))
    return a


def test_a_request_with_no_conflict_is_granted_at_once(arb) -> None:
    decision = arb.submit("r1", tenant="a")
    assert (decision.outcome, decision.granted_model) == ("granted", "m")
    assert "no conflict" in decision.rationale
    assert not any(isinstance(e, TimerScheduled) for e in arb.events)


def test_contention_queues_and_a_release_grants_the_next(arb) -> None:
    arb.submit("r1")
    queued = arb.submit("r2", timeout_ms=60_000)
    assert queued.outcome == "queued" and queued.position == 0
    assert queued.conflict_kinds == ["model_contention"]
    assert "1 slot" in queued.conflicts[0] and "slot of m were free" in queued.counterfactual
    assert any(isinstance(e, TimerScheduled) for e in arb.events)
    granted = arb.decided(ReleaseRequest("r1"), at=arb.now + 3000)
    assert granted["r2"].outcome == "granted" and granted["r2"].waited_ms == 3000
    assert isinstance(arb.events[-1], TimerCancelled)
    assert granted_within_capacity(arb.state)


def test_higher_priority_is_served_first_and_aging_lifts_the_low(arb) -> None:
    arb.policy(aging_per_s=10, aging_cap=1000)
    arb.submit("holder")
    arb.submit("low", priority=-1000)
    arb.submit("high", priority=100, at=arb.now + 1000)
    assert arb.decided(ReleaseRequest("holder"))["high"].outcome == "granted"
    # 200 s later the BACKGROUND request has aged to the cap (-1000 + 1000 = 0) but a new
    # NORMAL one ranks equal at best: the older goes first
    arb.submit("normal", priority=0, at=arb.now + 200_000)
    assert arb.decided(ReleaseRequest("high"))["low"].outcome == "granted"


def test_queue_strategy_is_first_come_first_served(arb) -> None:
    arb.policy(default_strategy="queue")
    arb.submit("holder")
    arb.submit("first", priority=-1000)
    arb.submit("second", priority=1000)
    assert arb.decided(ReleaseRequest("holder"))["first"].outcome == "granted"


def test_round_robin_alternates_tenants(arb) -> None:
    arb.policy(default_strategy="round_robin")
    arb.submit("holder", tenant="a")
    for i in range(3):
        arb.submit(f"a{i}", tenant="a")
    arb.submit("b0", tenant="b")
    order = []
    holder = "holder"
    for _ in range(3):
        granted = [r for r, e in arb.decided(ReleaseRequest(holder)).items()
                   if e.outcome == "granted"]
        order += granted
        holder = granted[0]
    assert order == ["b0", "a0", "a1"]


def test_weighted_random_is_reproducible(arb) -> None:
    def run() -> list[str]:
        a = Arbiter()
        a.send(DescribeModel("m", slots=1))
        a.send(ObserveModel("m", 1000, 2000, True))
        a.policy(default_strategy="weighted_random", tenants={"a": 1, "b": 8})
        a.submit("holder", tenant="a")
        for i in range(6):
            a.submit(f"a{i}", tenant="a")
            a.submit(f"b{i}", tenant="b")
        order, holder = [], "holder"
        for _ in range(8):
            granted = [r for r, e in a.decided(ReleaseRequest(holder)).items()
                       if e.outcome == "granted"]
            order += granted
            holder = granted[0]
        return order
    first = run()
    assert first == run()
    assert sum(r.startswith("b") for r in first) > sum(r.startswith("a") for r in first)


def test_collaborative_offers_an_equivalent_model(arb) -> None:
    arb.policy(default_strategy="collaborative")
    arb.send(DescribeModel("twin", slots=2))
    arb.send(ObserveModel("twin", 500, 100, True))
    arb.send(DescribeModel("m", slots=1, equivalents=["twin"]))
    arb.submit("r1")
    offer = arb.submit("r2")
    assert (offer.outcome, offer.granted_model) == ("granted", "twin")
    assert "counter-offer" in offer.rationale


def test_memory_pressure_queues_a_cold_model_until_a_host_frees_memory() -> None:
    a = Arbiter()
    a.send(ObserveHost("h1", 4000, 1000))
    a.send(ObserveModel("big", 3000, 5000, False))
    decision = a.submit("r1", "big")
    assert decision.outcome == "queued" and decision.conflict_kinds == ["memory_pressure"]
    assert decision.wait_estimate_ms >= 5000  # its load time counts
    assert "MB more were free" in decision.counterfactual
    assert a.decided(ObserveHost("h1", 4000, 4000))["r1"].outcome == "granted"


def test_a_model_bigger_than_every_host_is_denied_resource_unavailable() -> None:
    a = Arbiter()
    a.send(ObserveHost("h1", 4000, 4000))
    a.send(ObserveModel("huge", 9000, 5000, False))
    decision = a.submit("r1", "huge")
    assert (decision.outcome, decision.reason) == ("denied", "resource_unavailable")
    assert "9000 MB" in decision.counterfactual


def test_cpu_saturation_defers_and_the_timer_reconsiders(arb) -> None:
    arb.send(ReportUtilisation("runner-1", 0.95))
    decision = arb.submit("r1")
    assert decision.outcome == "deferred" and decision.delay_ms == 5000
    timer = next(e for e in arb.events if isinstance(e, TimerScheduled)
                 and "reconsider" in e.timer_id)
    arb.send(ReportUtilisation("runner-1", 0.2))
    request = arb.state.requests["r1"]
    again = arb.decided(ReconsiderRequest("r1", request.seq, 1), at=timer.due_at_ms)
    assert again["r1"].outcome == "granted"


def test_a_silent_source_stops_counting_and_a_live_one_is_heard_each_half_ttl(arb) -> None:
    arb.policy(utilisation_ttl_s=60)
    assert arb.send(ReportUtilisation("runner-1", 0.95))  # the first report is an event
    assert not arb.send(ReportUtilisation("runner-1", 0.95), at=arb.now + 29_000)
    assert arb.send(ReportUtilisation("runner-1", 0.95), at=arb.now + 1_000)  # half the TTL
    assert arb.submit("r1").outcome == "deferred"
    # the runner was killed: a minute after its last report it no longer holds grants back
    request = arb.state.requests["r1"]
    again = arb.decided(ReconsiderRequest("r1", request.seq, 1), at=arb.now + 60_001)
    assert again["r1"].outcome == "granted"


def test_cost_limit_denies_cost_exceeded(arb) -> None:
    arb.policy(cost_limits={"a": {"limit": 1.0, "window_s": 60}})
    arb.send(DescribeModel("m", slots=0, cost_per_call=0.6))
    assert arb.submit("r1", tenant="a").outcome == "granted"
    denied = arb.submit("r2", tenant="a")
    assert (denied.outcome, denied.reason) == ("denied", "cost_exceeded")
    assert "spend 0.6" in denied.rationale
    # the window moves on: the spend leaves it
    assert arb.submit("r3", tenant="a", at=arb.now + 61_000).outcome == "granted"


def test_a_full_queue_denies_its_lowest_ranked(arb) -> None:
    arb.policy(max_queue=2)
    arb.submit("holder")
    arb.submit("q1", priority=0)
    arb.submit("q2", priority=-100)
    decided = arb.decided(SubmitRequest("q3", "m", priority=100))
    assert decided["q2"].outcome == "denied" and decided["q2"].reason == "lower_priority"
    assert decided["q3"].outcome == "queued"
    last = arb.submit("q4", priority=-1000)
    assert (last.outcome, last.reason) == ("denied", "lower_priority")


def test_a_tenant_with_too_many_pending_is_rate_limited(arb) -> None:
    arb.policy(max_pending_per_tenant=1)
    arb.submit("holder", tenant="a")
    arb.submit("q1", tenant="a")
    limited = arb.submit("q2", tenant="a")
    assert (limited.outcome, limited.reason) == ("denied", "rate_limited")


def test_a_waiting_request_times_out_and_a_stale_timer_does_nothing(arb) -> None:
    arb.submit("holder")
    arb.submit("r1", timeout_ms=1000)
    seq = arb.state.requests["r1"].seq
    assert arb.send(ExpireRequest("holder", arb.state.requests["holder"].seq)) == []
    timed_out = arb.send(ExpireRequest("r1", seq), at=arb.now + 1000)
    assert [type(e).__name__ for e in timed_out] == ["RequestTimedOut"]
    assert "r1" not in arb.state.requests and arb.state.waiting("m") == 0


def test_cancel_and_release_refuse_what_does_not_apply(arb) -> None:
    arb.submit("holder")
    arb.submit("r1")
    with pytest.raises(Rejection, match="release it instead"):
        arb.send(CancelRequest("holder"))
    with pytest.raises(Rejection, match="never granted"):
        arb.send(ReleaseRequest("r1"))
    with pytest.raises(Rejection, match="unknown request"):
        arb.send(ReleaseRequest("nobody"))
    arb.send(CancelRequest("r1"))
    assert arb.state.waiting("m") == 0


@pytest.mark.parametrize(("command", "reason"), [
    (SubmitRequest("r", "nope"), "unknown model"),
    (SubmitRequest("r", "m", priority=20_000), "outside"),
    (SubmitRequest("r", "m", scores={"business_value": 1.5}), r"within \[0, 1\]"),
    (SubmitRequest("r", "m", scores={"vibes": 0.5}), "unknown score"),
    (SubmitRequest("r", "m", scores={"user_impact": float("nan")}), "finite"),
    (ObserveHost("h", -1, 0), "budget_mb"),
    (ObserveHost("h", 10, 20), "exceeds its budget"),
    (ReportUtilisation("h", float("inf")), "finite"),
    (DescribeModel("m", slots=1, cost_per_call=-1.0), "within 0"),
    (DescribeModel("m", slots=1, cost_per_second=1e300), "within 0"),
    (SubmitRequest("r", "m", timeout_ms=(1 << 63) - 1), "timeout_ms"),
    (SetArbitrationPolicy('{"tenants": {"a": -1}, "bogus": 1}'), "bogus.*tenants.a|tenants.a"),
])
def test_bad_input_is_rejected_with_a_reason_and_changes_nothing(arb, command, reason) -> None:
    before = arb.state
    with pytest.raises(Rejection, match=reason):
        arb.send(command)
    assert arb.state == before


def test_a_closed_policy_refuses_unknown_tenants(arb) -> None:
    arb.policy(tenants={"a": 1}, closed=True)
    with pytest.raises(Rejection, match="unknown tenant 'z'"):
        arb.send(SubmitRequest("r", "m", tenant="z"))


def test_a_resubmitted_request_id_is_refused_while_live(arb) -> None:
    arb.submit("r1")
    with pytest.raises(Rejection, match="already submitted"):
        arb.send(SubmitRequest("r1", "m"))


def test_the_decision_carries_scores_and_the_tenants_defaults(arb) -> None:
    arb.policy(tenant_scores={"a": {"business_value": 1.0}},
               score_weights={"business_value": 3, "user_impact": 1, "cost_efficiency": 0,
                              "learning_value": 0})
    decision = arb.submit("r1", tenant="a", scores={"user_impact": 0.2})
    assert decision.score == pytest.approx((3 * 1.0 + 0.2) / 4)
    assert decision.score_breakdown["business_value"] == pytest.approx(0.75)


def test_fairness_correction_favours_the_tenant_below_its_share(arb) -> None:
    arb.policy(tenants={"a": 1, "b": 1})
    holder = "h0"
    arb.submit(holder, tenant="a")
    for i in range(1, 4):  # a is granted three times in a row (b asks for nothing)
        arb.submit(f"h{i}", tenant="a")
        arb.send(ReleaseRequest(holder))
        holder = f"h{i}"
    arb.submit("a-next", tenant="a")
    arb.submit("b-next", tenant="b", at=arb.now + 1)  # later, same priority
    assert arb.decided(ReleaseRequest(holder))["b-next"].outcome == "granted"


def test_detect_lists_contention_among_the_pending(arb) -> None:
    arb.submit("r1")
    arb.submit("r2")
    arb.submit("r3")
    found = detect(arb.state, arb.now)
    assert [(c.kind.value, c.requests) for c in found] == [
        ("model_contention", ("r2", "r3"))]


def test_policies_parse_from_yaml_list_every_problem_and_round_trip() -> None:
    policy = parse_policy("default_strategy: queue\ntenants: {a: 1, b: 4}\n"
                          "strategies: {memory_pressure: priority}\n")
    assert policy_from(json.loads(policy_json(policy))) == policy
    with pytest.raises(PolicyError) as raised:
        parse_policy("default_strategy: fastest\nmax_queue: 0\ncpu_threshold: 2\n")
    assert len(raised.value.problems) == 3


def test_gini_and_deviation() -> None:
    assert fairness.gini([1, 1, 1, 1]) == 0
    assert fairness.gini([0, 0, 0, 4]) == pytest.approx(0.75)
    weights = {"a": 1.0, "b": 3.0}
    assert fairness.deviation({"a": 25, "b": 75}, weights) == 0
    assert fairness.deviation({"a": 50, "b": 50}, weights) == pytest.approx(1.0)
    assert fairness.normalised_gini({"a": 25, "b": 75}, weights) == 0


def test_the_observer_tells_what_a_cold_model_could_get_on_each_host() -> None:
    from streams.arbitration.observer import changes, facts
    from streams.pool.pool import (
        POOL,
        AllocateModel,
        RegisterHost,
        RegisterModel,
        ReleaseModel,
        ReportModelLoaded,
    )

    state, now = POOL.initial_state("default"), 1_000
    for command in (RegisterHost("h1", 1000, 4), RegisterModel("a", "python:x:a", 300, 50),
                    RegisterModel("b", "python:x:b", 500, 80), AllocateModel("r1", "a", "me")):
        for event in POOL.decide(state, command, now):
            state = POOL.evolve(state, event, now)
    found = facts(state)
    assert found.hosts["h1"] == (1000, 700, True)  # a is loading: kept
    assert found.models["a"] == (300, 50, False)
    told = changes("default", None, found)
    assert [type(c).__name__ for c in told] == ["ObserveModel", "ObserveModel", "ObserveHost"]
    for command in (ReportModelLoaded("h1", "a", 40, 250), ReleaseModel("r1")):
        for event in POOL.decide(state, command, now):
            state = POOL.evolve(state, event, now)
    later = facts(state)
    assert later.models["a"] == (250, 40, True)  # measured
    assert later.hosts["h1"] == (1000, 1000, True)  # idle Hot: the pool would evict it
    assert [(type(c).__name__, c.model_id if hasattr(c, "model_id") else c.host_id)
            for c in changes("default", found, later)] == [("ObserveModel", "a"),
                                                           ("ObserveHost", "h1")]


def test_simulate_re_decides_the_recorded_stream_under_another_policy() -> None:
    from streams.arbitration.policy import parse_policy
    from streams.arbitration.simulate import simulate, simulation_lines

    recorded = Arbiter()
    recorded.send(DescribeModel("m", slots=1))
    recorded.send(ObserveModel("m", 1000, 2000, True))
    recorded.policy(default_strategy="queue")
    recorded.submit("a1", tenant="a")
    for i in range(2, 6):  # a floods the queue first; b asks once, later
        recorded.submit(f"a{i}", tenant="a", at=recorded.now + 10)
    recorded.submit("b1", tenant="b", at=recorded.now + 10)
    holder = "a1"
    for nxt in ("a2", "a3"):
        recorded.send(ReleaseRequest(holder), at=recorded.now + 1000)
        holder = nxt
    log = list(zip(recorded.events, recorded.times, strict=True))
    under_fairness = parse_policy("default_strategy: priority\ntenants: {a: 1, b: 1}\n")
    found = simulate(log, under_fairness)
    assert found == simulate(log, under_fairness)  # deterministic
    b = found["tenants"]["b"]
    assert (b["actual"]["granted"], b["simulated"]["granted"]) == (0, 1)
    assert [found["tenants"]["a"][side]["granted"] for side in ("actual", "simulated")] == [3, 1]
    assert "b (weight 1): granted 0 -> 1" in "\n".join(simulation_lines(found))
