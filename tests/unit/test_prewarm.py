"""The seeded trace has the structure it promises; predictors learn it and follow its shift;
the engine keeps consistent score. Small traces keep this fast; `pit bench` runs the full one.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from streams.pool.prewarm import (
    HOUR_MS,
    MINUTE_MS,
    PeriodicPredictor,
    Predictor,
    PrewarmEngine,
    RecencyFrequencyPredictor,
    TimeBasedPredictor,
    WarmDecision,
    WorkflowPredictor,
)
from streams.pool.prewarm_bench import LruPool, bench_prewarm, bench_second_trace, simulate
from streams.pool.trace import DAY_MS, generate_trace, trace_plan, workflow_name

SMALL = {"days": 4, "requests_per_day": 4000}


@pytest.fixture(scope="module")
def trace():
    return generate_trace(11, **SMALL)


@pytest.fixture(scope="module")
def plan():
    return trace_plan(11, **SMALL)


# --- the trace ------------------------------------------------------------------------------

def test_same_seed_same_trace_other_seed_other_trace(trace):
    assert generate_trace(11, **SMALL) == trace
    assert generate_trace(12, **SMALL) != trace
    assert [r.at_ms for r in trace] == sorted(r.at_ms for r in trace)
    assert trace[0].at_ms >= 0 and trace[-1].at_ms < SMALL["days"] * DAY_MS


def test_zipf_skew_top_tenth_of_models_takes_most_standalone_requests(trace, plan):
    first_half = [r for r in trace if r.at_ms < plan.shift_ms and r.workflow_id is None]
    counts = Counter(r.model_id for r in first_half)
    top = sum(n for _, n in counts.most_common(plan.config.models // 10))
    assert top / len(first_half) > 0.5
    assert counts.most_common(1)[0][0] == plan.phases[0].ranking[0]


def test_daily_cycle_is_visible(trace):
    by_hour = Counter((r.at_ms % DAY_MS) // HOUR_MS for r in trace)
    busiest, quietest = max(by_hour.values()), min(by_hour.values())
    assert busiest > 2.5 * quietest
    assert max(by_hour, key=by_hour.__getitem__) in range(11, 18)  # peak_hour = 14


def test_scheduled_models_are_used_mainly_in_their_hours(trace, plan):
    window = plan.config.hourly_window_h
    chained = {m for chain in plan.phases[0].chains.values() for m in chain}
    scheduled = [(m, h) for m, h in plan.phases[0].hourly.items() if m not in chained]
    assert len(scheduled) >= 10
    for model, start in scheduled:
        hours = [(r.at_ms % DAY_MS) // HOUR_MS for r in trace
                 if r.model_id == model and r.at_ms < plan.shift_ms]
        inside = sum((h - start) % 24 < window for h in hours)
        assert inside > 0.5 * len(hours), model


def test_workflow_sequences_recur_as_fixed_chains(trace, plan):
    runs: dict[str, list[str]] = defaultdict(list)
    for r in trace:
        if r.workflow_id is not None:
            runs[r.workflow_id].append(r.model_id)
    per_workflow = Counter(workflow_name(run) for run in runs)
    chains = {**plan.phases[0].chains, **plan.phases[1].chains}
    assert per_workflow.most_common(1)[0][1] > 50  # the same chain, again and again
    complete = [run for run, models in runs.items()
                if len(models) == len(chains[workflow_name(run)])]
    assert len(complete) > 0.95 * len(runs)
    assert all(tuple(runs[run]) == chains[workflow_name(run)] for run in complete)


def test_the_shift_changes_top_models_and_workflows(trace, plan):
    def top(requests):
        counts = Counter(r.model_id for r in requests if r.workflow_id is None)
        return {m for m, _ in counts.most_common(10)}

    before = top(r for r in trace if r.at_ms < plan.shift_ms)
    after = top(r for r in trace if r.at_ms >= plan.shift_ms)
    assert len(before & after) <= 3
    names_before = {workflow_name(r.workflow_id) for r in trace
                    if r.workflow_id and r.at_ms < plan.shift_ms - HOUR_MS}
    names_after = {workflow_name(r.workflow_id) for r in trace
                   if r.workflow_id and r.at_ms > plan.shift_ms + HOUR_MS}
    assert names_before and names_after and not names_before & names_after


def test_periodic_jobs_call_on_their_period(trace, plan):
    model, period, _ = plan.phases[0].jobs[0]
    jitter = plan.config.period_jitter_ms
    calls = [r.at_ms for r in trace if r.model_id == model and r.at_ms < plan.shift_ms]
    on_beat = sum(any(abs(b - a - period) <= 2 * jitter for b in calls) for a in calls)
    assert on_beat > 0.8 * (plan.shift_ms // period)


# --- the predictors -------------------------------------------------------------------------

def all_predictors() -> list[Predictor]:
    return [TimeBasedPredictor(), PeriodicPredictor(), WorkflowPredictor(),
            RecencyFrequencyPredictor(), PrewarmEngine()]


@pytest.mark.parametrize("predictor", all_predictors(), ids=lambda p: p.name)
def test_every_predictor_has_the_one_interface(predictor):
    assert isinstance(predictor, Predictor)
    assert predictor.predict(0, 5) == []
    predictor.observe("m1", 1_000, "wf/r1")
    predictor.observe("m2", 2_000, "wf/r1")
    ranked = predictor.predict(3_000, 5)
    assert len(ranked) <= 5 and all(0.0 <= p <= 1.0 for _, p in ranked)


def test_workflow_predictor_learns_the_chain_and_forgets_it_when_it_changes():
    wf = WorkflowPredictor(half_life_ms=HOUR_MS)
    t = 0
    for run in range(20):
        for step, model in enumerate(["A", "B", "C"]):
            wf.observe(model, t + step * 30_000, f"w/r{run}")
        t += 5 * MINUTE_MS
    wf.observe("A", t, "w/r99")
    assert [m for m, _ in wf.predict(t, 1)] == ["B"]
    assert dict(wf.predict(t, 5))["B"] > 0.8
    for run in range(100, 130):  # the chain becomes A -> D
        t += 5 * MINUTE_MS
        wf.observe("A", t, f"w/r{run}")
        wf.observe("D", t + 30_000, f"w/r{run}")
    wf.observe("A", t + HOUR_MS, "w/r200")
    assert [m for m, _ in wf.predict(t + HOUR_MS, 1)] == ["D"]


def test_time_based_predictor_warms_the_models_of_the_coming_hour():
    tb = TimeBasedPredictor()
    for day in range(3):
        for minute in range(0, 60, 3):
            tb.observe("nine-oclock", day * DAY_MS + 9 * HOUR_MS + minute * MINUTE_MS)
            tb.observe("noon", day * DAY_MS + 12 * HOUR_MS + minute * MINUTE_MS)
    ten_to_nine = 3 * DAY_MS + 9 * HOUR_MS - 3 * MINUTE_MS
    ranked = tb.predict(ten_to_nine, 2)
    assert ranked[0][0] == "nine-oclock" and ranked[0][1] > 0.7
    assert "noon" not in dict(ranked)


def test_periodic_predictor_finds_a_timer_among_ad_hoc_calls():
    pp = PeriodicPredictor()
    period = 47 * MINUTE_MS
    for beat in range(12):
        pp.observe("cron", beat * period + (beat % 3) * 20_000)
        if beat % 4 == 1:
            pp.observe("cron", beat * period + 13 * MINUTE_MS)  # an ad-hoc call
    last = 11 * period
    assert "cron" not in dict(pp.predict(last + 20 * MINUTE_MS, 5))
    assert dict(pp.predict(last + period - 2 * MINUTE_MS, 5)).get("cron", 0) > 0.6


def test_recency_frequency_ranks_by_decayed_use():
    rf = RecencyFrequencyPredictor()
    for i in range(50):
        rf.observe("often", i * MINUTE_MS)
    for i in range(50, 60):
        rf.observe("lately", i * MINUTE_MS)
    assert [m for m, _ in rf.predict(60 * MINUTE_MS, 2)] == ["often", "lately"]
    for i in range(60, 300):
        rf.observe("lately", i * MINUTE_MS)
    assert rf.predict(300 * MINUTE_MS, 1)[0][0] == "lately"


# --- the engine -----------------------------------------------------------------------------

def test_engine_decides_only_for_cold_models_and_scores_its_decisions():
    engine = PrewarmEngine(load_ms=1_000, horizon_ms=5 * MINUTE_MS)
    t = 0
    for run in range(30):  # deciding while learning: that is how it learns whom to trust
        engine.observe("A", t, f"w/r{run}")
        engine.decide(t, hot={"A"})
        engine.observe("B", t + 20_000, f"w/r{run}")
        t += 10 * MINUTE_MS
    engine.observe("A", t, "w/r100")
    assert engine.decide(t, hot={"A", "B"}) == []
    [decision] = [d for d in engine.decide(t, hot={"A"}) if d.model_id == "B"]
    assert isinstance(decision, WarmDecision) and decision.reason == "workflow"
    assert decision.model_id not in {d.model_id for d in engine.decide(t + 1, hot={"A"})}
    made = engine.stats().predictions_made
    engine.observe("B", t + 20_000, "w/r100")
    stats = engine.stats()
    assert stats.correct_predictions >= 1 and stats.cold_starts_avoided >= 1
    assert stats.predictions_made == made


def test_a_prewarm_evicted_before_its_request_is_wrong():
    engine = PrewarmEngine(predictors=[WorkflowPredictor()], threshold=0.3)
    for run in range(10):
        engine.observe("A", run * MINUTE_MS, f"w/r{run}")
        engine.observe("B", run * MINUTE_MS + 1_000, f"w/r{run}")
    engine.observe("A", HOUR_MS, "w/x")
    assert [d.model_id for d in engine.decide(HOUR_MS, hot={"A"})] == ["B"]
    engine.evicted("B", HOUR_MS + 10)
    engine.observe("B", HOUR_MS + 20, "w/x")
    stats = engine.stats()
    assert (stats.wrong_predictions, stats.correct_predictions) == (1, 0)


def test_engine_statistics_are_consistent_over_a_replay(trace):
    engine = PrewarmEngine(load_ms=10_000)
    result = simulate(trace, capacity=40, load_ms=10_000, engine=engine)
    stats = result.stats
    assert stats is not None and stats.predictions_made > 100
    assert stats.correct_predictions + stats.wrong_predictions <= stats.predictions_made
    assert 0 <= stats.pending <= stats.predictions_made
    assert stats.cold_starts_avoided <= stats.correct_predictions
    assert stats.models_prewarmed == stats.predictions_made == result.prewarm_loads
    assert stats.accuracy == stats.correct_predictions / stats.predictions_made
    assert result.hits + result.cold_starts == result.requests == len(trace)
    assert sum(w.made for w in result.windows) == stats.predictions_made
    assert sum(w.correct for w in result.windows) == stats.correct_predictions


def test_accuracy_recovers_after_the_shift(trace, plan):
    engine = PrewarmEngine(load_ms=10_000)
    result = simulate(trace, capacity=40, load_ms=10_000, engine=engine,
                      window_ms=6 * HOUR_MS)

    def accuracy(lo: int, hi: int) -> float:
        slots = [w for w in result.windows if lo <= w.start_ms < hi]
        return sum(w.correct for w in slots) / max(1, sum(w.made for w in slots))

    shift = plan.shift_ms
    settled = accuracy(DAY_MS, shift)
    recovered = accuracy(shift + 12 * HOUR_MS, plan.end_ms)
    assert settled > 0.6
    assert recovered > 0.6 and recovered > settled - 0.1


def test_lru_pool_counts_loading_models_as_cold():
    evicted = []
    pool = LruPool(2, 100, lambda m, t: evicted.append(m))
    assert pool.request("a", 0) is False
    assert pool.request("a", 50) is False      # still loading
    assert pool.request("a", 100) is True
    pool.load("b", 100)
    pool.request("a", 150)
    pool.load("c", 200)                         # b is least recently used
    assert evicted == ["b"]


def test_bench_reports_the_issue_keys():
    figures = bench_prewarm(seed=3, requests_per_day=1500, days=2)
    for key in ("pool_hit_rate", "prewarm_accuracy", "prewarm_cold_start_reduction",
                "prewarm_predict_ms", "pool_hit_rate_vs_optimal", "pool_hit_rate_optimal"):
        assert key in figures
    assert 0.0 <= figures["prewarm_accuracy"] <= 1.0
    assert figures["cold_starts_optimal"] <= figures["cold_starts_without"]
    second = bench_second_trace(functions=40, days=2)
    for key in ("pool_hit_rate_second_trace", "prewarm_cold_start_reduction_second_trace",
                "pool_hit_rate_vs_optimal_second_trace"):
        assert key in second
