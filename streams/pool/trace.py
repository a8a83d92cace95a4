"""A seeded, replayable workload of model requests, to measure the pool and prewarming on.

Why a generator and not a recorded log: the issue asks for prewarming to be measured on a
workload with known structure, and a seed makes every run (and every test) see the same
requests. `generate_trace(seed)` is a pure function of its arguments: no wall clock, all
randomness from `random.Random(seed)`.

The workload (every knob is a field of `TraceConfig`):

* **Zipf popularity.** Standalone requests pick a model by rank with weight `1 / rank**zipf_s`
  over a per-phase ranking of the `models` models.
* **Daily cycle.** Arrival intensity follows `1 + day_amplitude * cos(2*pi*(h - peak_hour)/24)`
  (h = hour of day), so nights are quiet and afternoons busy. On top of that, a share
  `hourly_share` of standalone requests go to `hourly_models` "scheduled" models, each used
  mainly in its own window of `hourly_window_h` hours every day (reports, batch jobs);
  they come from the less popular half of the ranking, so outside their hours they are rare.
* **Recurring workflows.** A share `workflow_share` of all requests come from runs of
  `workflows` fixed model chains (A -> B -> C ...), `chain_min`..`chain_max` steps long,
  chosen by Zipf(`workflow_zipf_s`). Chain models are drawn outside the `chain_skip_top`
  most popular models (pipelines use specialised models). Steps of one run are
  `step_gap_ms` apart (uniform), the time the previous step takes. Every request of a run
  carries the run's id, `"<workflow>/r<run>"`; `workflow_name` recovers the workflow.
* **Periodic jobs.** `periodic_jobs` timer-driven jobs each call one model every `period`
  (drawn from `period_ms`, fixed per job) with `period_jitter_ms` of jitter, as cron jobs
  and pollers do. Their models come from the less popular half of the ranking too (a model
  a timer calls is seldom also called by hand, though Zipf still sends it some requests).
* **Pattern shift.** At `shift_at` (a fraction of the trace) the popularity ranking is
  redrawn and the workflow chains and periodic jobs are replaced by new ones. Scheduled
  models keep their hours unless `shift_hourly` is set.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from dataclasses import dataclass, field, replace

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


@dataclass(frozen=True, slots=True)
class Request:
    at_ms: int
    model_id: str
    workflow_id: str | None = None


@dataclass(frozen=True)
class TraceConfig:
    """The knobs of the workload; the defaults are the benchmark's trace."""
    seed: int = 7
    models: int = 200
    days: int = 4
    requests_per_day: int = 12_000
    zipf_s: float = 1.1                 # popularity skew of standalone requests
    day_amplitude: float = 0.6          # 0 = flat day, 1 = silent at the trough
    peak_hour: float = 14.0
    workflow_share: float = 0.6         # fraction of requests issued by workflow runs
    workflows: int = 16                 # workflow definitions per phase
    workflow_zipf_s: float = 1.0        # how unevenly runs spread over the workflows
    chain_min: int = 3
    chain_max: int = 5
    chain_skip_top: int = 10            # chains avoid the most popular models
    step_gap_ms: tuple[int, int] = (15_000, 90_000)
    hourly_share: float = 0.1           # of standalone requests, to scheduled models
    hourly_models: int = 24
    hourly_window_h: int = 3
    periodic_jobs: int = 16
    period_ms: tuple[int, int] = (20 * 60_000, 120 * 60_000)
    period_jitter_ms: int = 60_000
    shift_at: float = 0.5               # fraction of the trace where the pattern changes
    shift_hourly: bool = False


@dataclass(frozen=True)
class Phase:
    """One regime of the workload: before or after the shift."""
    start_ms: int
    ranking: tuple[str, ...]                     # most popular first
    chains: dict[str, tuple[str, ...]]           # workflow name -> model chain
    hourly: dict[str, int] = field(default_factory=dict)   # model -> first hour of window
    jobs: tuple[tuple[str, int, int], ...] = ()   # (model, period, first call), periodic


@dataclass(frozen=True)
class TracePlan:
    config: TraceConfig
    phases: tuple[Phase, Phase]

    @property
    def shift_ms(self) -> int:
        return self.phases[1].start_ms

    @property
    def end_ms(self) -> int:
        return self.config.days * DAY_MS

    def phase_at(self, at_ms: int) -> Phase:
        return self.phases[1] if at_ms >= self.shift_ms else self.phases[0]


def model_name(index: int) -> str:
    return f"m{index:03d}"


def workflow_name(workflow_id: str) -> str:
    """The workflow a run id belongs to: "wf03b/r000042" -> "wf03b"."""
    return workflow_id.split("/", 1)[0]


def intensity(at_ms: int, config: TraceConfig) -> float:
    """Relative arrival rate at a time of day; averages 1 over a day."""
    hour = (at_ms % DAY_MS) / HOUR_MS
    return 1.0 + config.day_amplitude * math.cos(2 * math.pi * (hour - config.peak_hour) / 24)


def _zipf_cumulative(n: int, s: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (rank ** s) for rank in range(1, n + 1)))


def _pick(rng: random.Random, cumulative: list[float]) -> int:
    return bisect.bisect_right(cumulative, rng.random() * cumulative[-1])


def _make_phase(rng: random.Random, config: TraceConfig, start_ms: int, tag: str,
                hourly: dict[str, int] | None) -> Phase:
    names = [model_name(i) for i in range(config.models)]
    rng.shuffle(names)
    ranking = tuple(names)
    pool = list(ranking[config.chain_skip_top:])
    chains = {}
    for w in range(config.workflows):
        length = rng.randint(config.chain_min, config.chain_max)
        chains[f"wf{w:02d}{tag}"] = tuple(rng.sample(pool, length))
    rare = list(ranking[config.models // 2:])
    if hourly is None:
        scheduled = rng.sample(rare, min(config.hourly_models, len(rare)))
        hourly = {m: (i * 24) // max(1, len(scheduled)) for i, m in enumerate(scheduled)}
    rare = [m for m in rare if m not in hourly]
    jobs = []
    for model in rng.sample(rare, min(config.periodic_jobs, len(rare))):
        period = rng.randint(*config.period_ms)
        jobs.append((model, period, start_ms + rng.randint(0, period)))
    return Phase(start_ms, ranking, chains, hourly, tuple(jobs))


def trace_plan(seed: int = 7, **knobs: object) -> TracePlan:
    """The structure the trace is drawn from (rankings, chains, scheduled hours)."""
    config = replace(TraceConfig(), seed=seed, **knobs)  # type: ignore[arg-type]
    rng = random.Random(f"plan:{config.seed}")
    shift_ms = int(config.days * DAY_MS * config.shift_at)
    first = _make_phase(rng, config, 0, "a", None)
    second = _make_phase(rng, config, shift_ms, "b",
                         None if config.shift_hourly else first.hourly)
    return TracePlan(config, (first, second))


def _arrivals(rng: random.Random, per_day: float, config: TraceConfig) -> list[int]:
    """Non-homogeneous Poisson arrivals following the daily cycle (thinning)."""
    peak = 1.0 + config.day_amplitude
    mean_gap = DAY_MS / (per_day * peak)
    end, t = config.days * DAY_MS, 0.0
    out: list[int] = []
    while True:
        t += rng.expovariate(1.0 / mean_gap)
        if t >= end:
            return out
        if rng.random() * peak < intensity(int(t), config):
            out.append(int(t))


def _standalone(rng: random.Random, plan: TracePlan, at_ms: int,
                zipf: list[float]) -> str:
    config, phase = plan.config, plan.phase_at(at_ms)
    if phase.hourly and rng.random() < config.hourly_share:
        hour = (at_ms % DAY_MS) // HOUR_MS
        active = [m for m, start in phase.hourly.items()
                  if (hour - start) % 24 < config.hourly_window_h]
        if active:
            return rng.choice(sorted(active))
    return phase.ranking[_pick(rng, zipf)]


def generate_trace(seed: int = 7, models: int = 200, days: int = 4,
                   requests_per_day: int = 12_000, **knobs: object) -> list[Request]:
    """The requests of the workload, ordered by time (ties keep generation order).

    Same arguments, same list. Extra keyword arguments set other `TraceConfig` knobs.
    """
    plan = trace_plan(seed, models=models, days=days, requests_per_day=requests_per_day,
                      **knobs)
    config = plan.config
    rng = random.Random(f"trace:{config.seed}")
    zipf = _zipf_cumulative(config.models, config.zipf_s)
    requests = [Request(t, _standalone(rng, plan, t, zipf))
                for t in _arrivals(rng, requests_per_day * (1 - config.workflow_share), config)]

    mean_len = (config.chain_min + config.chain_max) / 2
    run_starts = _arrivals(rng, requests_per_day * config.workflow_share / mean_len, config)
    wf_zipf = _zipf_cumulative(config.workflows, config.workflow_zipf_s)
    for run, start in enumerate(run_starts):
        chains = plan.phase_at(start).chains
        name = sorted(chains)[_pick(rng, wf_zipf)]
        run_id, at = f"{name}/r{run:06d}", start
        for model in chains[name]:
            if at >= plan.end_ms:
                break
            requests.append(Request(at, model, run_id))
            at += rng.randint(*config.step_gap_ms)
    for index, phase in enumerate(plan.phases):
        end = plan.shift_ms if index == 0 else plan.end_ms
        for model, period, first in phase.jobs:
            at = first
            while at < end:
                jitter = rng.randint(-config.period_jitter_ms, config.period_jitter_ms)
                if at + jitter >= phase.start_ms:
                    requests.append(Request(at + jitter, model))
                at += period
    requests.sort(key=lambda r: r.at_ms)
    return requests
