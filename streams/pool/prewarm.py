"""Predictive prewarming (seed M3.1.4): predictors of the next models, and the engine.

Every predictor answers the same question, so their answers can be combined: *what is the
probability that this model is requested within the next `horizon_ms`?* They learn from
usage (`observe`) and forget with exponential decay, so they follow a pattern that changes.

Pure code, as the deciders are: time is an argument in milliseconds (calls must come in
non-decreasing time), there is no randomness, and the same observations give the same
predictions. Decayed counts are stored scaled by `exp(t / tau)` against a reference time so
an observation touches one number; the scale is folded in when reading, and rebased before
it can overflow.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
MINUTE_MS = 60_000
_REBASE = 40.0  # rebase scaled counts once exp() of this much has accumulated


@runtime_checkable
class Predictor(Protocol):
    """Learns from usage; ranks models by the probability they are requested soon."""
    name: str

    def observe(self, model_id: str, at_ms: int, workflow_id: str | None = None) -> None: ...

    def predict(self, now_ms: int, k: int) -> list[tuple[str, float]]: ...


def _decay_rate(half_life_ms: float) -> float:
    return math.log(2) / half_life_ms


def _top(scores: Iterable[tuple[str, float]], k: int) -> list[tuple[str, float]]:
    """Highest probability first; ties by model id so the order is deterministic."""
    ranked = heapq.nsmallest(k, ((-p, m) for m, p in scores if p > 0.0))
    return [(m, -neg) for neg, m in ranked]


class _Scored:
    """`predict` from `scores`: the engine reads the unsorted scores, callers the ranking."""

    def scores(self, now_ms: int) -> dict[str, float]:
        raise NotImplementedError

    def predict(self, now_ms: int, k: int) -> list[tuple[str, float]]:
        return _top(self.scores(now_ms).items(), k)


class _Decayed:
    """A family of counters that all decay with one half-life (lazy, scaled storage)."""

    def __init__(self, half_life_ms: float) -> None:
        self.rate = _decay_rate(half_life_ms)
        self.ref_ms: int | None = None
        self.tables: list[dict] = []                       # nested dicts of stored values
        self.rebasers: list[Callable[[float], None]] = []  # other storage to rescale

    def weight(self, at_ms: int) -> float:
        """The stored increment for one event at `at_ms`."""
        if self.ref_ms is None:
            self.ref_ms = at_ms
        exponent = (at_ms - self.ref_ms) * self.rate
        if exponent > _REBASE:
            shrink = math.exp(-exponent)
            for table in self.tables:
                _scale(table, shrink)
            for rebase in self.rebasers:
                rebase(shrink)
            self.ref_ms, exponent = at_ms, 0.0
        return math.exp(exponent)

    def factor(self, now_ms: int) -> float:
        """Multiply a stored value by this to get its decayed value at `now_ms`."""
        return 0.0 if self.ref_ms is None else math.exp(-(now_ms - self.ref_ms) * self.rate)


def _scale(table: dict, by: float) -> None:
    for key, value in table.items():
        if isinstance(value, dict):
            _scale(value, by)
        else:
            table[key] = value * by


class TimeBasedPredictor(_Scored):
    """Time-of-day usage: a decayed request-rate histogram per model and per hour of day.

    The rate of model m in bucket b is its decayed request count there over the decayed time
    observed in b (plus a prior, so one early request is not read as a high rate). It looks
    at the bucket `lead_ms` ahead, so models of the coming hour warm before it starts.
    Periodic usage is `PeriodicPredictor`: a separate predictor so that the engine can trust
    each as far as it has earned (see `PrewarmEngine`).
    """

    name = "time"

    def __init__(self, *, horizon_ms: int = 10 * MINUTE_MS, period_ms: int = DAY_MS,
                 bucket_ms: int = HOUR_MS, half_life_ms: int = 2 * DAY_MS,
                 lead_ms: int = 5 * MINUTE_MS, prior_ms: int = HOUR_MS // 2) -> None:
        self.horizon_ms, self.period_ms, self.bucket_ms = horizon_ms, period_ms, bucket_ms
        self.lead_ms, self.prior_ms = lead_ms, prior_ms
        self._decay = _Decayed(half_life_ms)
        self._buckets: list[dict[str, float]] = [{} for _ in range(period_ms // bucket_ms)]
        self._decay.tables.extend(self._buckets)
        self._first_ms: int | None = None

    def _bucket(self, at_ms: int) -> int:
        return (at_ms % self.period_ms) // self.bucket_ms

    def observe(self, model_id: str, at_ms: int, workflow_id: str | None = None) -> None:
        if self._first_ms is None:
            self._first_ms = at_ms
        counts = self._buckets[self._bucket(at_ms)]
        counts[model_id] = counts.get(model_id, 0.0) + self._decay.weight(at_ms)

    def _exposure(self, bucket: int, now_ms: int) -> float:
        """Decayed milliseconds of bucket `bucket` seen between the first event and now."""
        if self._first_ms is None:
            return 0.0
        rate = self._decay.rate
        offset = bucket * self.bucket_ms
        start = now_ms - ((now_ms - offset) % self.period_ms)  # latest occurrence start
        total = 0.0
        while start + self.bucket_ms > self._first_ms:
            lo, hi = max(start, self._first_ms), min(start + self.bucket_ms, now_ms)
            if hi > lo:
                total += (math.exp(-(now_ms - hi) * rate) - math.exp(-(now_ms - lo) * rate)) / rate
            if (now_ms - start) * rate > 12:  # older occurrences weigh < 1e-5
                break
            start -= self.period_ms
        return total

    def scores(self, now_ms: int) -> dict[str, float]:
        bucket = self._bucket(now_ms + self.lead_ms)
        counts = self._buckets[bucket]
        if not counts:
            return {}
        scale = -self.horizon_ms * self._decay.factor(now_ms) / (
            self._exposure(bucket, now_ms) + self.prior_ms)
        exp = math.exp
        return {m: 1.0 - exp(c * scale) for m, c in counts.items()}


class PeriodicPredictor(_Scored):
    """Periodic usage: models called on a timer (cron jobs, pollers, scheduled reports).

    Per model it keeps the last `window` call times and, after each call, picks the best
    hypothesis "every `period`, in step with `anchor`": candidate periods are gaps between
    recent calls, candidate anchors the latest calls (so an ad-hoc extra call does not
    break a schedule). A hypothesis scores the share of due times in the window that got a
    call within `tolerance` of the period (a multiple of the true period finds the same
    calls but fewer due times, a fraction of it finds empty due times, so both score lower).
    A hypothesis needs `min_beats` confirmed beats, and at least a `purity` share of the
    calls before the anchor on its beats: a timer's calls nearly all are, a random caller's
    are not (a frequent random caller is the recency predictor's business).
    That share is the probability it predicts, from `lead_ms` before the next due time
    (plus twice the observed jitter); the lead is short because a prewarm made long before
    its call may be evicted again before the call comes. Timer-driven
    models are the rare ones an LRU pool has always evicted by their next call, and the
    easiest to foresee.
    """

    name = "periodic"

    def __init__(self, *, horizon_ms: int = 10 * MINUTE_MS, tolerance: float = 0.05,
                 min_period_ms: int = 5 * MINUTE_MS, window: int = 10,
                 lead_ms: int = 3 * MINUTE_MS, min_beats: int = 2, purity: float = 0.6) -> None:
        self.horizon_ms, self.tolerance, self.min_period_ms = horizon_ms, tolerance, min_period_ms
        self.lead_ms = min(lead_ms, horizon_ms)
        self.min_beats, self.purity = min_beats, purity
        self._calls: dict[str, deque[int]] = {}
        # model -> (anchor, period, probability, slack, first due time, warn from)
        self._best: dict[str, tuple[int, float, float, float, float, float]] = {}
        self.window = window

    def observe(self, model_id: str, at_ms: int, workflow_id: str | None = None) -> None:
        calls = self._calls.setdefault(model_id, deque(maxlen=self.window))
        calls.append(at_ms)
        if len(calls) >= 3:
            best = self._fit(list(calls))
            if best is None:
                self._best.pop(model_id, None)
            else:
                anchor, period, share, jitter = best
                slack = 2.0 * jitter + 1.0
                due = anchor + period
                self._best[model_id] = (anchor, period, share, slack, due, self._warn(due, slack))

    def _fit(self, calls: list[int]) -> tuple[int, float, float, float] | None:
        best, best_key = None, (0.0, 0)
        n = len(calls)
        for a in range(n - 1, max(0, n - 4), -1):
            anchor = calls[a]
            for b in range(a - 1, max(-1, a - 5), -1):
                period = anchor - calls[b]
                if period < self.min_period_ms:
                    continue
                tol = self.tolerance * period
                beats = int((anchor - calls[0] + tol) // period)
                hit, offsets = set(), 0.0
                for t in calls[:a]:
                    k = round((anchor - t) / period)
                    off = abs(anchor - t - k * period)
                    if k >= 1 and off <= tol and k not in hit:
                        hit.add(k)
                        offsets += off
                # purity: a timer's calls are nearly all on the beat; a random caller's are not
                if len(hit) < self.min_beats or len(hit) < self.purity * (a - 1):
                    continue
                share = len(hit) / (beats + 0.5)  # +0.5: a short record proves a little less
                key = (share, -period)
                if key > best_key:
                    best_key = key
                    best = (anchor, float(period), share, offsets / max(1, len(hit)))
        return best

    def _warn(self, due: float, slack: float) -> float:
        return due - min(self.lead_ms + slack, self.horizon_ms - slack)

    def scores(self, now_ms: int) -> dict[str, float]:
        out = {}
        for model, (anchor, period, share, slack, due, warn) in self._best.items():
            if now_ms < warn:
                continue
            if now_ms > due + slack:  # that call did not come: look at the next due time
                due = anchor + math.ceil((now_ms - slack - anchor) / period) * period
                warn = self._warn(due, slack)
                self._best[model] = (anchor, period, share, slack, due, warn)
                if now_ms < warn:
                    continue
            out[model] = share
        return out


class WorkflowPredictor(_Scored):
    """Which model follows which inside a workflow run: a decayed first-order Markov chain.

    `workflow_id` names one run. For every run active in the last `run_ttl_ms`, it predicts
    the successors of the run's latest model, and (discounted) the step after that, so a
    slow load can start two steps early. P(b | a) = transitions a->b over visits of a, so a
    chain's last step, which has no successor, predicts nothing.
    """

    name = "workflow"

    def __init__(self, *, half_life_ms: int = DAY_MS, run_ttl_ms: int = 10 * MINUTE_MS,
                 lookahead: float = 0.9, prior: float = 0.5) -> None:
        self.run_ttl_ms, self.lookahead, self.prior = run_ttl_ms, lookahead, prior
        self._decay = _Decayed(half_life_ms)
        self._visits: dict[str, float] = {}
        self._next: dict[str, dict[str, float]] = {}
        self._decay.tables.extend([self._visits, self._next])
        self._runs: OrderedDict[str, tuple[str, int]] = OrderedDict()  # run -> (last, at)

    def observe(self, model_id: str, at_ms: int, workflow_id: str | None = None) -> None:
        self._expire(at_ms)
        if workflow_id is None:
            return
        weight = self._decay.weight(at_ms)
        previous = self._runs.pop(workflow_id, None)
        if previous is not None:
            successors = self._next.setdefault(previous[0], {})
            successors[model_id] = successors.get(model_id, 0.0) + weight
        self._visits[model_id] = self._visits.get(model_id, 0.0) + weight
        self._runs[workflow_id] = (model_id, at_ms)

    def _expire(self, now_ms: int) -> None:
        while self._runs:
            run, (_, at) = next(iter(self._runs.items()))
            if at >= now_ms - self.run_ttl_ms:
                return
            del self._runs[run]

    def successors(self, model_id: str, now_ms: int) -> dict[str, float]:
        """P(next model | current model), from the decayed counts."""
        nexts = self._next.get(model_id)
        if not nexts:
            return {}
        scale = self._decay.factor(now_ms)
        total = self._visits[model_id] + self.prior / scale
        return {m: c / total for m, c in nexts.items()}

    def scores(self, now_ms: int) -> dict[str, float]:
        miss: dict[str, float] = {}  # model -> probability that no active run needs it
        cutoff = now_ms - self.run_ttl_ms
        for last, at in self._runs.values():
            if at < cutoff:
                continue
            for nxt, p in self.successors(last, now_ms).items():
                miss[nxt] = miss.get(nxt, 1.0) * (1.0 - p)
                for after, q in self.successors(nxt, now_ms).items():
                    miss[after] = miss.get(after, 1.0) * (1.0 - self.lookahead * p * q)
        return {m: 1.0 - q for m, q in miss.items()}


class RecencyFrequencyPredictor(_Scored):
    """Decayed request rate per model, blending a short memory (recency) and a long one.

    P(requested within the horizon) = 1 - exp(-rate * horizon), treating arrivals as
    Poisson at the blended rate.
    """

    name = "recency"

    def __init__(self, *, horizon_ms: int = 10 * MINUTE_MS,
                 short_half_life_ms: int = 30 * MINUTE_MS, long_half_life_ms: int = 12 * HOUR_MS,
                 recency_weight: float = 0.5) -> None:
        self.horizon_ms, self.recency_weight = horizon_ms, recency_weight
        self._short, self._long = _Decayed(short_half_life_ms), _Decayed(long_half_life_ms)
        self._counts: dict[str, list[float]] = {}  # model -> [short, long] (scaled)
        self._short.rebasers.append(lambda by: self._rescale(0, by))
        self._long.rebasers.append(lambda by: self._rescale(1, by))
        self._first_ms: int | None = None

    def _rescale(self, column: int, by: float) -> None:
        for row in self._counts.values():
            row[column] *= by

    def observe(self, model_id: str, at_ms: int, workflow_id: str | None = None) -> None:
        if self._first_ms is None:
            self._first_ms = at_ms
        counts = self._counts.setdefault(model_id, [0.0, 0.0])
        counts[0] += self._short.weight(at_ms)
        counts[1] += self._long.weight(at_ms)

    def _per_ms(self, decay: _Decayed, now_ms: int) -> float:
        """Stored count -> rate per ms: decayed count over decayed elapsed time."""
        assert self._first_ms is not None
        span = (1.0 - math.exp(-(now_ms - self._first_ms) * decay.rate)) / decay.rate
        return decay.factor(now_ms) / max(span, MINUTE_MS)

    def scores(self, now_ms: int) -> dict[str, float]:
        if self._first_ms is None:
            return {}
        w = self.recency_weight
        a = -w * self._per_ms(self._short, now_ms) * self.horizon_ms
        b = -(1.0 - w) * self._per_ms(self._long, now_ms) * self.horizon_ms
        exp = math.exp
        return {m: 1.0 - exp(a * s + b * lg) for m, (s, lg) in self._counts.items()}


# --- the engine -------------------------------------------------------------------------------

@dataclass(frozen=True)
class WarmDecision:
    """Prewarm `model_id` now: predicted to be requested within the horizon."""
    model_id: str
    probability: float
    reason: str          # the predictor that contributed most


@dataclass(frozen=True)
class PrewarmStats:
    predictions_made: int       # WarmDecisions emitted
    correct_predictions: int    # ... whose model was requested within the horizon, unevicted
    wrong_predictions: int      # ... that expired or were evicted first
    models_prewarmed: int       # decisions the caller acted on (made - skipped)
    cold_starts_avoided: int    # correct, and requested after the load had finished
    weights: dict[str, float]   # current trust in each predictor

    @property
    def pending(self) -> int:
        return self.predictions_made - self.correct_predictions - self.wrong_predictions

    @property
    def accuracy(self) -> float:
        """Correct over made: a still-pending prediction counts against it."""
        return self.correct_predictions / self.predictions_made if self.predictions_made else 0.0


@dataclass
class _Pending:
    at_ms: int
    deadline_ms: int
    loaded: bool = True


class _Calibration:
    """How far to trust a predictor: its recent hits over the hits it promised.

    Each resolved shadow prediction adds its probability to `promised` and 1 or 0 to `hits`
    (both decayed over about `memory` resolutions). A predictor that says 0.9 and is right
    half the time gets a factor of about 0.55; one that is right as often as it says gets 1.
    """

    def __init__(self, memory: float, prior: float = 0.5, strength: float = 4.0) -> None:
        self.keep = 1.0 - 1.0 / memory
        self.hits, self.promised = prior * strength, strength

    def record(self, hit: bool, probability: float) -> None:
        self.hits = self.hits * self.keep + (1.0 if hit else 0.0)
        self.promised = self.promised * self.keep + probability

    @property
    def value(self) -> float:
        return self.hits / self.promised


class PrewarmEngine:
    """Combines predictors, decides what to prewarm, and keeps score.

    Each predictor's probability is weighted by its calibration w_i (recent hit rate over
    the probability it claimed; see `_Calibration`) and the engine takes the largest,
    p = max_i min(1, w_i * p_i). Not a noisy-OR: the predictors see overlapping evidence (a
    popular model is popular to all three), so multiplying their misses would count it
    twice. To learn w_i, each predictor's own confident (>= threshold) predictions for cold
    models are followed in the shadow and scored like real ones, so a predictor whose
    pattern went stale loses its say until it has learnt the new one.

    A decision is *correct* when its model is requested within `horizon_ms` of the decision
    and before the pool evicts it (the caller reports evictions with `evicted`). A correct
    decision avoided a cold start when the request came `load_ms` or more after it, i.e.
    after the prewarm load finished (or, when the caller says, found the model loaded).
    """

    name = "engine"

    def __init__(self, predictors: Sequence[Predictor] | None = None, *,
                 horizon_ms: int = 10 * MINUTE_MS, load_ms: int = 10_000,
                 threshold: float = 0.6, max_decisions: int = 4,
                 weight_memory: float = 200.0) -> None:
        self.predictors = list(predictors) if predictors is not None else default_predictors(
            horizon_ms)
        self.horizon_ms, self.load_ms = horizon_ms, load_ms
        self.threshold, self.max_decisions = threshold, max_decisions
        self._rates = {p.name: _Calibration(weight_memory) for p in self.predictors}
        self._pending: dict[str, _Pending] = {}
        self._deadlines: deque[tuple[int, str, int]] = deque()   # (deadline, model, at)
        self._shadow: dict[str, dict[str, float]] = {p.name: {} for p in self.predictors}
        self._shadow_deadlines: deque[tuple[int, str, str]] = deque()
        self._made = self._correct = self._wrong = self._skipped = self._avoided = 0

    # -- learning and scoring ---------------------------------------------------------------

    def observe(self, model_id: str, at_ms: int, workflow_id: str | None = None,
                ready: bool | None = None) -> None:
        """A request for `model_id`. `ready`: whether it found the model loaded (a live
        pool knows: its cache hit); None judges that by `load_ms`."""
        self._expire(at_ms)
        pending = self._pending.pop(model_id, None)
        if pending is not None:
            self._correct += 1
            if ready is None:
                ready = at_ms - pending.at_ms >= self.load_ms
            if pending.loaded and ready:
                self._avoided += 1
        for name, shadow in self._shadow.items():
            claimed = shadow.pop(model_id, None)
            if claimed is not None:
                self._rates[name].record(True, claimed)
        for predictor in self.predictors:
            predictor.observe(model_id, at_ms, workflow_id)

    def evicted(self, model_id: str, at_ms: int) -> None:
        """The pool dropped `model_id`: a prewarm still waiting for its request failed."""
        if self._pending.pop(model_id, None) is not None:
            self._wrong += 1

    def skipped(self, model_id: str) -> None:
        """The caller did not act on a decision; it is still judged as a prediction."""
        pending = self._pending.get(model_id)
        if pending is not None and pending.loaded:
            pending.loaded = False
            self._skipped += 1

    def _expire(self, now_ms: int) -> None:
        while self._deadlines and self._deadlines[0][0] < now_ms:
            _, model, at = self._deadlines.popleft()
            pending = self._pending.get(model)
            if pending is not None and pending.at_ms == at:
                del self._pending[model]
                self._wrong += 1
        while self._shadow_deadlines and self._shadow_deadlines[0][0] < now_ms:
            _, name, model = self._shadow_deadlines.popleft()
            claimed = self._shadow[name].pop(model, None)
            if claimed is not None:
                self._rates[name].record(False, claimed)

    def weights(self) -> dict[str, float]:
        return {name: rate.value for name, rate in self._rates.items()}

    def _scores(self, predictor: Predictor, now_ms: int) -> dict[str, float]:
        scores = getattr(predictor, "scores", None)
        if scores is not None:
            return scores(now_ms)
        return dict(predictor.predict(now_ms, 1 << 30))

    def _combine(self, now_ms: int, hot: Collection[str], floor: float
                 ) -> tuple[dict[str, tuple[float, str]], list[tuple[str, dict[str, float]]]]:
        """Best calibrated probability per cold model (>= floor), and each one's raw scores."""
        best: dict[str, tuple[float, str]] = {}
        answers = []
        for predictor in self.predictors:
            weight = self._rates[predictor.name].value
            answer = self._scores(predictor, now_ms)
            answers.append((predictor.name, answer))
            if weight <= 0.0:
                continue
            cut = floor / weight
            for model, p in answer.items():
                if p < cut or model in hot:
                    continue
                wp = min(1.0, weight * p)
                if wp > best.get(model, (-1.0, ""))[0]:
                    best[model] = (wp, predictor.name)
        return best, answers

    def probabilities(self, now_ms: int) -> dict[str, float]:
        """Every model's combined probability of a request within the horizon (those with
        none are left out); keeps no score. What eviction ranks idle models by."""
        best, _ = self._combine(now_ms, (), 1e-12)
        return {m: p for m, (p, _) in best.items()}

    def predict(self, now_ms: int, k: int) -> list[tuple[str, float]]:
        """Combined probabilities (the `Predictor` interface); keeps no score."""
        return _top(self.probabilities(now_ms).items(), k)

    def decide(self, now_ms: int, hot: Collection[str] = (),
               k: int | None = None) -> list[WarmDecision]:
        """Prewarm decisions for cold models above the threshold, most likely first.

        `hot` is every model loaded or loading; the caller is expected to load each
        decision (or call `skipped`) and to report evictions.
        """
        self._expire(now_ms)
        k = self.max_decisions if k is None else k
        threshold = self.threshold
        best, answers = self._combine(now_ms, hot, threshold)
        deadline = now_ms + self.horizon_ms
        for name, answer in answers:
            shadow = self._shadow[name]
            for model, p in answer.items():
                if p >= threshold and model not in hot and model not in shadow:
                    shadow[model] = p
                    self._shadow_deadlines.append((deadline, name, model))
        decisions = []
        ranked = _top(((m, p) for m, (p, _) in best.items() if m not in self._pending), k)
        for model, p in ranked:
            decisions.append(WarmDecision(model, p, best[model][1]))
            self._pending[model] = _Pending(now_ms, deadline)
            self._deadlines.append((deadline, model, now_ms))
            self._made += 1
        return decisions

    def stats(self) -> PrewarmStats:
        return PrewarmStats(self._made, self._correct, self._wrong, self._made - self._skipped,
                            self._avoided, self.weights())


def default_predictors(horizon_ms: int = 10 * MINUTE_MS) -> list[Predictor]:
    return [TimeBasedPredictor(horizon_ms=horizon_ms), PeriodicPredictor(horizon_ms=horizon_ms),
            WorkflowPredictor(), RecencyFrequencyPredictor(horizon_ms=horizon_ms)]
