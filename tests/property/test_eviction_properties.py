"""Properties of the eviction rule (streams/pool/eviction.py) and of its ceiling.

* Belady's MIN gets as many hits as the best of every eviction choice, brute-forced on
  tiny traces with instant loads. With loads that take time it is not always optimal (a
  delayed hit: the example below) but gets at least as many hits as LRU and as the
  predictive rule, whatever the predictions, on small random traces (without
  prewarming, which MIN does not do).
* `least_likely` orders the idle models by probability, then least recently used.
* In the pool decider, a demand eviction takes the host's least likely idle model and
  never one that is allocated or loading; a prewarm displaces only when its probability
  beats the victim's; and the choices are a pure function of the log: folding the events
  again and deciding the same command gives the same events.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.decider import Message, Rejection
from streams.pool.eviction import belady_min, least_likely
from streams.pool.lifecycle import ModelState
from streams.pool.pool import (
    AllocateModel,
    ModelEvicted,
    PoolState,
    PredictionsRecorded,
    RegisterHost,
    RegisterModel,
    ReleaseModel,
    ReportModelLoaded,
    WarmModel,
    decide,
    evolve,
    initial_state,
)
from streams.pool.prewarm_bench import LruPool
from streams.pool.trace import Request

T0 = 1_700_000_000_000
MODELS = ["a", "b", "c", "d", "e", "f"]


@st.composite
def traces(draw: st.DrawFn, models: int, max_size: int) -> list[Request]:
    gaps = draw(st.lists(st.integers(0, 20), min_size=1, max_size=max_size))
    names = draw(st.lists(st.sampled_from(MODELS[:models]), min_size=len(gaps),
                          max_size=len(gaps)))
    at, out = 0, []
    for gap, name in zip(gaps, names, strict=True):
        at += gap
        out.append(Request(at, name))
    return out


def best_hits(trace: list[Request], capacity: int, load_ms: int) -> int:
    """Every eviction choice tried: the most hits any demand-loading pool gets."""
    def go(i: int, ready: dict[str, int]) -> int:
        if i == len(trace):
            return 0
        model, at = trace[i].model_id, trace[i].at_ms
        if model in ready:
            return (ready[model] <= at) + go(i + 1, ready)
        loaded = {**ready, model: at + load_ms}
        if len(loaded) <= capacity:
            return go(i + 1, loaded)
        return max(go(i + 1, {m: r for m, r in loaded.items() if m != out}) for out in loaded)
    return go(0, {})


@settings(max_examples=150, deadline=None)
@given(traces(4, 8), st.integers(1, 3))
def test_min_is_the_best_of_every_eviction_choice(trace: list[Request], capacity: int) -> None:
    assert sum(belady_min(trace, capacity, 0)) == best_hits(trace, capacity, 0)


def test_with_loads_min_can_miss_the_optimum_by_a_delayed_hit() -> None:
    """Why MIN is the ceiling of eviction, not a proof: a loads at 0 and b comes while
    it loads; keeping b (next useful request sooner) costs a's reload two misses."""
    trace = [Request(0, "a"), Request(0, "a"), Request(0, "b"), Request(5, "b"),
             Request(5, "a"), Request(5, "a")]
    assert sum(belady_min(trace, 1, 5)) == 1
    assert best_hits(trace, 1, 5) == 2


@settings(max_examples=200, deadline=None)
@given(traces(6, 40), st.integers(1, 4), st.sampled_from([0, 5, 30]),
       st.dictionaries(st.sampled_from(MODELS), st.floats(0.0, 1.0), max_size=6))
def test_min_beats_lru_and_the_predictive_rule(trace: list[Request], capacity: int,
                                               load_ms: int, predicted: dict[str, float]
                                               ) -> None:
    optimal = sum(belady_min(trace, capacity, load_ms))
    for likelihood in (None, lambda _: predicted):
        pool = LruPool(capacity, load_ms, likelihood=likelihood)
        hits = sum(pool.request(r.model_id, r.at_ms) for r in trace)
        assert hits <= optimal


@given(st.lists(st.sampled_from(MODELS), unique=True),
       st.dictionaries(st.sampled_from(MODELS), st.sampled_from([0.0, 0.3, 0.3, 0.9])))
def test_least_likely_orders_by_probability_then_recency(idle: list[str],
                                                         predicted: dict[str, float]) -> None:
    order = least_likely(idle, predicted)
    assert sorted(order) == sorted(idle)
    keys = [(predicted.get(m, 0.0), idle.index(m)) for m in order]
    assert keys == sorted(keys)


Log = list[tuple[Message, int]]


def apply(state: PoolState, command: Message, now: int, log: Log) -> PoolState:
    for event in decide(state, command, now):
        state = evolve(state, event, now)
        log.append((event, now))
    return state


def full_pool(slots: int, busy: set[str], loading: set[str], log: Log) -> PoolState:
    """One host full with MODELS[:slots]: `busy` ones allocated, `loading` ones Warming."""
    state = apply(initial_state("default"), RegisterHost("h", 100 * slots, slots), T0, log)
    for m in MODELS:
        state = apply(state, RegisterModel(m, f"py://{m}", 100, 10), T0, log)
    for i, m in enumerate(MODELS[:slots]):
        state = apply(state, AllocateModel(f"w-{m}", m, "t"), T0 + i, log)
        if m not in loading:
            state = apply(state, ReportModelLoaded("h", m, 10, 100), T0 + i, log)
            if m not in busy:
                state = apply(state, ReleaseModel(f"w-{m}"), T0 + i, log)
    return state


def fold(log: Log) -> PoolState:
    state = initial_state("default")
    for event, at_ms in log:
        state = evolve(state, event, at_ms)
    return state


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_the_decider_evicts_the_least_likely_idle_model_and_replays(data: st.DataObject
                                                                     ) -> None:
    slots = data.draw(st.integers(2, 5))
    loaded = MODELS[:slots]
    busy = set(data.draw(st.lists(st.sampled_from(loaded), max_size=2)))
    loading = set(data.draw(st.lists(st.sampled_from(loaded), max_size=1))) - busy
    log: Log = []
    state = full_pool(slots, busy, loading, log)
    scores = data.draw(st.dictionaries(st.sampled_from(MODELS),
                                       st.sampled_from([0.1, 0.5, 0.5, 0.8]), min_size=1))
    cold = MODELS[slots:]
    gain = data.draw(st.sampled_from([0.05, 0.5, 0.7, 0.99]))
    warm = WarmModel(data.draw(st.sampled_from(cold)), gain, "test", scores=scores)
    idle = [m for _, m in state.hosts["h"].idle]
    assert set(idle) == set(loaded) - busy - loading
    try:
        events = decide(state, warm, T0 + 100)
    except Rejection:
        events = []
        assert not idle  # without a candidate it cannot even weigh a displacement
    victims = [e.model_id for e in events if isinstance(e, ModelEvicted)]
    if idle:
        recorded = [e for e in events if isinstance(e, PredictionsRecorded)]
        assert len(recorded) == 1 and recorded[0].reason
        first = least_likely(idle, scores)[0]
        worth = gain > scores.get(first, 0.0)
        assert victims == ([first] if worth else [])
        assert recorded[0].victim == (first if worth else "")
    for event in events:
        state = evolve(state, event, T0 + 100)
        log.append((event, T0 + 100))
    # A demand miss now evicts by the recorded scores, and never a busy or loading model.
    request = AllocateModel("demand", data.draw(st.sampled_from(cold)), "t")
    try:
        demand = decide(state, request, T0 + 200)
    except Rejection:
        return
    evicted = [e.model_id for e in demand if isinstance(e, ModelEvicted)]
    for m in evicted:
        model = state.models[m]
        assert model.state is ModelState.HOT and not model.allocations
    if evicted and state.predicted:
        candidates = [m for _, m in state.hosts["h"].idle]
        assert evicted == least_likely(candidates, state.predicted)[:len(evicted)]
    # The log alone gives the same state and so the same choices.
    replayed = fold(log)
    assert replayed == state
    assert decide(replayed, request, T0 + 200) == demand
