"""A second, independent workload shaped like a serverless platform's invocations.

The first trace (`streams/pool/trace.py`) was written next to the predictors, so a figure
measured only on it proves little. This one follows what "Serverless in the Wild" (Shahrad
et al., ATC 2020) reports of Azure Functions in 2019, and shares no code or knob with it:

* **Heavy-tailed popularity.** Each function's mean daily invocations is log-normal
  (`rate_sigma` wide, in natural log), so a few functions take most invocations and many
  are invoked a handful of times a day or less (the paper: the top fifth of the
  applications make over 99% of the invocations; 45% are invoked at most once an hour).
* **Timers.** A share `timer_share` of the functions is timer-triggered: one invocation
  every `period`, a cron-like period drawn from `timer_periods_ms`, at a fixed phase, with
  at most `timer_jitter_ms` of scheduling delay (the paper: timer inter-arrival times have
  a coefficient of variation near 0).
* **Bursty HTTP.** The others are HTTP-triggered: bursts start as a Poisson process that
  follows a daily cycle, and a burst is a geometric number of calls (mean `burst_mean`)
  `burst_gap_ms` apart on average (the paper: most HTTP functions' inter-arrival CV is
  above 1).

`generate_serverless_trace(seed)` is a pure function of its arguments: all randomness
comes from `random.Random`, seeded from them. Requests carry no workflow id.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from streams.pool.trace import DAY_MS, HOUR_MS, Request

MINUTE_MS = 60_000


@dataclass(frozen=True)
class ServerlessConfig:
    """The knobs of the workload; the defaults are the benchmark's second trace."""
    seed: int = 2019
    functions: int = 200
    days: int = 3
    rate_median_per_day: float = 8.0     # median function's mean invocations per day
    rate_sigma: float = 3.0              # log-normal spread of the daily rates
    max_rate_per_day: float = 1_500.0    # the busiest functions' cap
    timer_share: float = 0.3
    timer_periods_ms: tuple[int, ...] = (5 * MINUTE_MS, 10 * MINUTE_MS, 15 * MINUTE_MS,
                                         30 * MINUTE_MS, HOUR_MS, 2 * HOUR_MS,
                                         6 * HOUR_MS, DAY_MS)
    timer_jitter_ms: int = 2_000
    burst_mean: float = 3.0
    burst_gap_ms: int = 5_000
    day_amplitude: float = 0.5
    peak_hour: float = 15.0


@dataclass(frozen=True)
class Function:
    function_id: str
    trigger: str            # "timer" | "http"
    rate_per_day: float     # mean invocations a day
    period_ms: int = 0      # timers only
    phase_ms: int = 0       # timers only: the first due time


def function_name(index: int) -> str:
    return f"f{index:04d}"


def plan_functions(seed: int = 2019, **knobs: object) -> tuple[Function, ...]:
    """The functions of the workload: trigger, popularity and, for timers, the schedule.

    A timer's period is the listed one nearest its drawn rate, so timers, too, span
    rarely to often invoked functions.
    """
    config = replace(ServerlessConfig(), seed=seed, **knobs)  # type: ignore[arg-type]
    rng = random.Random(f"functions:{config.seed}")
    functions = []
    for index in range(config.functions):
        rate = min(config.max_rate_per_day,
                   config.rate_median_per_day * math.exp(rng.gauss(0.0, config.rate_sigma)))
        name = function_name(index)
        if rng.random() < config.timer_share:
            period = min(config.timer_periods_ms, key=lambda p: abs(math.log(DAY_MS / p / rate)))
            functions.append(Function(name, "timer", DAY_MS / period, period,
                                      rng.randrange(period)))
        else:
            functions.append(Function(name, "http", rate))
    return tuple(functions)


def _daily(at_ms: float, config: ServerlessConfig) -> float:
    hour = (at_ms % DAY_MS) / HOUR_MS
    return 1.0 + config.day_amplitude * math.cos(2 * math.pi * (hour - config.peak_hour) / 24)


def _http_calls(rng: random.Random, function: Function, config: ServerlessConfig) -> list[int]:
    """Bursts by thinning a Poisson process at the daily peak rate; calls within a burst."""
    end = config.days * DAY_MS
    peak = 1.0 + config.day_amplitude
    burst_rate = function.rate_per_day / config.burst_mean / DAY_MS * peak  # per ms
    out: list[int] = []
    t = 0.0
    while True:
        t += rng.expovariate(burst_rate)
        if t >= end:
            return out
        if rng.random() * peak >= _daily(t, config):
            continue
        at = t
        while at < end:
            out.append(int(at))
            if rng.random() < 1.0 / config.burst_mean:  # geometric burst length
                break
            at += rng.expovariate(1.0 / config.burst_gap_ms)


def generate_serverless_trace(seed: int = 2019, **knobs: object) -> list[Request]:
    """The invocations of the workload as pool requests, ordered by time."""
    config = replace(ServerlessConfig(), seed=seed, **knobs)  # type: ignore[arg-type]
    rng = random.Random(f"invocations:{config.seed}")
    end = config.days * DAY_MS
    requests = []
    for function in plan_functions(seed, **knobs):
        if function.trigger == "timer":
            due = function.phase_ms
            while due < end:
                requests.append(Request(due + rng.randint(0, config.timer_jitter_ms),
                                        function.function_id))
                due += function.period_ms
        else:
            requests += [Request(at, function.function_id)
                         for at in _http_calls(rng, function, config)]
    requests.sort(key=lambda r: (r.at_ms, r.model_id))
    return requests
