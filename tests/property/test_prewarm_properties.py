"""Properties of every predictor and of the engine, under any sequence of observations:
probabilities in [0, 1], ranked, at most k, and the same observations give the same answers.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.pool.prewarm import (
    MINUTE_MS,
    PeriodicPredictor,
    Predictor,
    PrewarmEngine,
    RecencyFrequencyPredictor,
    TimeBasedPredictor,
    WorkflowPredictor,
)

FACTORIES = {
    "time": TimeBasedPredictor,
    "periodic": PeriodicPredictor,
    "workflow": WorkflowPredictor,
    "recency": RecencyFrequencyPredictor,
    "engine": PrewarmEngine,
}

models = st.sampled_from([f"m{i}" for i in range(12)])
runs = st.one_of(st.none(), st.sampled_from([f"wf{i}/r{j}" for i in range(3) for j in range(4)]))
# gaps up to three days, so decay, rebasing and day buckets are all exercised
steps = st.lists(st.tuples(st.integers(0, 3 * 24 * 60).map(lambda m: m * MINUTE_MS // 7),
                           models, runs), max_size=60)


def replay(predictor: Predictor, observations) -> list[list[tuple[str, float]]]:
    answers, t = [], 0
    for gap, model, run in observations:
        t += gap
        predictor.observe(model, t, run)
        answers.append(predictor.predict(t, 5))
        if isinstance(predictor, PrewarmEngine):
            predictor.decide(t, hot={model})
    return answers


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(sorted(FACTORIES)), observations=steps, k=st.integers(0, 15),
       later=st.integers(0, 10 * 24 * 60 * MINUTE_MS))
def test_predictions_are_probabilities_ranked_and_at_most_k(name, observations, k, later):
    predictor = FACTORIES[name]()
    replay(predictor, observations)
    now = sum(gap for gap, _, _ in observations) + later
    ranked = predictor.predict(now, k)
    assert len(ranked) <= k
    assert all(0.0 <= p <= 1.0 for _, p in ranked)
    assert [p for _, p in ranked] == sorted((p for _, p in ranked), reverse=True)
    assert len({m for m, _ in ranked}) == len(ranked)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(sorted(FACTORIES)), observations=steps)
def test_same_observations_same_predictions(name, observations):
    assert replay(FACTORIES[name](), observations) == replay(FACTORIES[name](), observations)


@settings(max_examples=40, deadline=None)
@given(observations=steps, evict=st.lists(models, max_size=10))
def test_engine_score_is_consistent(observations, evict):
    engine = PrewarmEngine(load_ms=5_000, horizon_ms=5 * MINUTE_MS)
    t = 0
    for i, (gap, model, run) in enumerate(observations):
        t += gap
        engine.observe(model, t, run)
        for decision in engine.decide(t, hot={model}):
            assert 0.0 <= decision.probability <= 1.0
            assert decision.model_id != model
        if i < len(evict):
            engine.evicted(evict[i], t)
    stats = engine.stats()
    assert stats.correct_predictions + stats.wrong_predictions <= stats.predictions_made
    assert stats.cold_starts_avoided <= stats.correct_predictions
    assert 0.0 <= stats.accuracy <= 1.0
