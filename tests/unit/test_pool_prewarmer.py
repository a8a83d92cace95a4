"""The prewarmer's pure part (streams/pool/prewarmer.py `PoolPrewarmer`): pool events in,
WarmModel decisions out, statistics from what the log shows.

`Pool` below writes the events the pool decider writes for requests, loads and unloads,
and acts on the prewarmer's decisions as the pool does on an accepted WarmModel (or not,
as on a rejected one). Time is event time: workflow runs 40-80 minutes apart, steps 30 s
apart, so only the workflow pattern is strong enough to act on.
"""

from __future__ import annotations

import itertools

from streams.pool.lifecycle import ModelState, ModelTransitioned
from streams.pool.lifecycle import TransitionReason as R
from streams.pool.pool import (
    AllocationQueued,
    HostDown,
    ModelAllocated,
    ModelEvicted,
    ModelPlaced,
    ModelUnloaded,
    UnloadRequested,
)
from streams.pool.prewarm import MINUTE_MS, PrewarmEngine
from streams.pool.prewarmer import Decision, PoolPrewarmer

Cold, Warming, Hot, Cooling, Failed = ModelState
T0 = 1_800_000_000_000
GAPS_MIN = [41, 67, 53, 78, 47, 62, 58, 71]  # irregular: no timer for the periodic predictor
STEP_MS = 30_000


class Pool:
    """Writes pool events into a PoolPrewarmer; loads what it decides unless `act` is off."""

    def __init__(self, prewarmer: PoolPrewarmer | None = None, *, act: bool = True) -> None:
        self.prewarmer = prewarmer or PoolPrewarmer("default")
        self.act = act
        self.states: dict[str, ModelState] = {}
        self.log: list[tuple[object, int]] = []
        self.decisions: list[Decision] = []
        self._ids = itertools.count()

    def emit(self, event, at_ms: int) -> None:
        self.log.append((event, at_ms))
        for decision in self.prewarmer.apply(event, at_ms):
            self.decided(decision)

    def decided(self, decision: Decision) -> None:
        self.decisions.append(decision)
        if self.act and self.states.get(decision.model_id, Cold) is Cold:
            self.load(decision.model_id, decision.at_ms, R.PREDICTIVE_PREWARM)

    def move(self, model_id: str, target: ModelState, reason: R, at_ms: int) -> None:
        source = self.states.get(model_id, Cold)
        self.states[model_id] = target
        self.emit(ModelTransitioned(model_id, source, target, reason, 0), at_ms)

    def load(self, model_id: str, at_ms: int, reason: R) -> None:
        self.emit(ModelPlaced(model_id, "h1", 100, reason), at_ms)
        self.move(model_id, Warming, reason, at_ms)
        self.move(model_id, Hot, reason, at_ms)

    def request(self, model_id: str, at_ms: int, run: str = "") -> bool:
        """One allocation; True when it was a cache hit."""
        request_id = f"r{next(self._ids)}"
        if self.states.get(model_id, Cold) is Hot:
            self.emit(ModelAllocated(request_id, model_id, "t", "h1", True, "", run), at_ms)
            return True
        self.emit(AllocationQueued(request_id, model_id, "t", run), at_ms)
        self.load(model_id, at_ms, R.USER_REQUEST)
        self.emit(ModelAllocated(request_id, model_id, "t", "h1", False, "", run), at_ms)
        return False

    def unload(self, model_id: str, at_ms: int) -> None:
        if self.states.get(model_id) is Hot:
            self.move(model_id, Cooling, R.SCHEDULED_COOLDOWN, at_ms)
            self.emit(UnloadRequested(model_id, "h1", R.SCHEDULED_COOLDOWN), at_ms)
            self.emit(ModelUnloaded(model_id, "h1"), at_ms)
            self.move(model_id, Cold, R.SCHEDULED_COOLDOWN, at_ms)

    def run(self, number: int, at_ms: int, chain=("A", "B", "C")) -> list[bool]:
        """One workflow run, then everything is unloaded again; the hits per step."""
        hits = [self.request(m, at_ms + i * STEP_MS, f"wf/r{number}")
                for i, m in enumerate(chain)]
        for m in chain:
            self.unload(m, at_ms + len(chain) * STEP_MS)
        return hits


def run_times(n: int) -> list[int]:
    times, t = [], T0
    for gap in GAPS_MIN[:n]:
        times.append(t)
        t += gap * MINUTE_MS
    return times


def learn(pool: Pool, runs: int = 5) -> int:
    """`runs` runs of A -> B -> C; returns the start of the next one."""
    times = run_times(runs + 1)
    for number, at in enumerate(times[:-1]):
        pool.run(number, at)
    return times[-1]


def decided_for(pool: Pool, model_id: str, since_ms: int) -> list[Decision]:
    return [d for d in pool.decisions if d.model_id == model_id and d.at_ms >= since_ms]


def test_after_recurring_runs_the_next_step_is_prewarmed_when_the_first_is_requested():
    pool = Pool()
    start = learn(pool)
    before = len(pool.decisions)
    pool.prewarmer.advance(start - 1)  # the quiet hour before the run decides nothing for B
    assert not decided_for(pool, "B", start - 40 * MINUTE_MS)

    assert pool.request("A", start, "wf/r-next") is False  # A itself is a cold start
    warmed = decided_for(pool, "B", start)
    assert [(d.at_ms, d.reason) for d in warmed] == [(start, "workflow")]
    assert warmed[0].probability >= 0.6
    assert pool.states["B"] is Hot  # acted on: loaded before it is requested
    assert pool.request("B", start + STEP_MS, "wf/r-next") is True

    stats = pool.prewarmer.stats()
    assert stats.predictions_made == len(pool.decisions) > before
    assert stats.correct_predictions >= 1 and stats.cold_starts_avoided >= 1
    assert stats.models_prewarmed == stats.predictions_made  # every decision was acted on


def test_only_cold_unplaced_models_are_prewarmed():
    hot = Pool()
    start = learn(hot)
    hot.load("B", start - MINUTE_MS, R.USER_REQUEST)  # B is already Hot
    hot.request("A", start, "wf/r-next")
    assert not decided_for(hot, "B", start)

    placed = Pool()
    start = learn(placed)
    placed.emit(ModelPlaced("B", "h1", 100, R.USER_REQUEST), start - MINUTE_MS)  # waiting
    placed.request("A", start, "wf/r-next")
    assert not decided_for(placed, "B", start)
    placed.emit(HostDown("h1", ["B"]), start + 1)  # its host is gone: Cold and free again
    placed.request("A", start + 2 * STEP_MS, "wf/r-again")
    assert decided_for(placed, "B", start)


def test_a_decision_not_acted_on_is_a_prediction_but_not_a_prewarm():
    pool = Pool(act=False)  # every WarmModel rejected: no ModelPlaced follows
    start = learn(pool)
    pool.request("A", start, "wf/r-next")
    assert decided_for(pool, "B", start)
    assert pool.request("B", start + STEP_MS, "wf/r-next") is False
    pool.prewarmer.advance(start + STEP_MS + pool.prewarmer.confirm_ms + pool.prewarmer.tick_ms)

    stats = pool.prewarmer.stats()  # B's decision, and C's that no ModelPlaced confirmed
    assert stats.predictions_made >= 1 and stats.correct_predictions >= 1
    assert stats.models_prewarmed == 0 and stats.cold_starts_avoided == 0


def test_a_prewarmed_model_evicted_before_its_request_is_a_wrong_prediction():
    pool = Pool()
    start = learn(pool)
    pool.request("A", start, "wf/r-next")
    assert pool.states["B"] is Hot
    wrong = pool.prewarmer.stats().wrong_predictions
    pool.emit(ModelEvicted("B", "h1"), start + 1)
    pool.unload("B", start + 1)
    assert pool.prewarmer.stats().wrong_predictions == wrong + 1


class CountingEngine(PrewarmEngine):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def decide(self, now_ms, hot=(), k=None):
        self.calls += 1
        return super().decide(now_ms, hot, k)


def test_ticks_often_while_busy_every_minute_when_quiet():
    engine = CountingEngine()
    prewarmer = PoolPrewarmer("default", engine, tick_ms=1_000, idle_tick_ms=MINUTE_MS)
    pool = Pool(prewarmer)
    pool.request("A", T0)
    engine.calls = 0
    prewarmer.advance(T0 + 24 * 60 * MINUTE_MS)  # a quiet day
    busy, quiet = engine.horizon_ms // 1_000, (24 * 60 - 10)
    assert busy <= engine.calls <= busy + quiet + 2
    engine.calls = 0
    pool.request("A", prewarmer.now_ms + 500)  # a request: decide now, then every second
    prewarmer.advance(prewarmer.now_ms + 5_000)
    assert 5 <= engine.calls <= 7


def test_the_clock_never_runs_back():
    prewarmer = PoolPrewarmer("default")
    prewarmer.advance(T0)
    prewarmer.apply(AllocationQueued("r1", "A", "t", ""), T0 + 5_000)
    prewarmer.apply(AllocationQueued("r2", "A", "t", ""), T0 + 1_000)  # another partition's
    assert prewarmer.now_ms == T0 + 5_000


def test_replaying_the_log_remakes_the_same_decisions_and_statistics():
    live = Pool()
    start = learn(live, runs=6)
    live.run(99, start)
    assert live.decisions

    replayed = PoolPrewarmer("default")
    decisions = [d for event, at in live.log for d in replayed.apply(event, at)]
    assert decisions == live.decisions
    assert replayed.stats() == live.prewarmer.stats()
