"""What the arbiter of one pool knows (the decider's state, streams/arbitration/arbiter.py):
the policy in force, what it has been told of models, hosts and load, and every live
request - waiting, deferred or granted. Ended requests leave it.

The facts about capacity arrive as commands (`ObserveModel`, `ObserveHost`,
`ReportUtilisation`) and become events, so a replay decides on exactly what the decision
saw; the arbiter never reads another component's state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streams.arbitration.fairness import Window
from streams.arbitration.policy import DEFAULT_POLICY, ConflictKind, Policy
from streams.persistent import PMap

WAITING, DEFERRED, GRANTED = "waiting", "deferred", "granted"


@dataclass(frozen=True, slots=True)
class ModelFacts:
    model_id: str
    memory_mb: int = 0
    load_ms: int = 0
    hot: bool = False
    slots: int = 0                 # concurrent grants it serves; 0: unlimited
    cost_per_second: float = 0.0   # of a grant held
    cost_per_call: float = 0.0     # of a grant made
    equivalents: tuple[str, ...] = ()  # models that serve its requests as well


@dataclass(frozen=True, slots=True)
class HostFacts:
    host_id: str
    budget_mb: int
    free_mb: int   # what the host can still take: its budget less the models it must keep
    alive: bool = True


@dataclass(frozen=True, slots=True)
class Request:
    request_id: str
    model_id: str
    tenant: str
    priority: int
    score: float
    scores: tuple[tuple[str, float], ...]
    requester: str
    workflow_id: str
    timeout_ms: int
    submitted_at: int
    seq: int                        # arrival order within the pool
    status: str = ""                # WAITING, DEFERRED or GRANTED once decided
    waiting_on: ConflictKind | None = None
    granted_model: str = ""         # the model granted: the one asked for, or an equivalent
    granted_at: int = 0
    promised_mb: int = 0            # memory its grant promised a cold model
    deferrals: int = 0


# (tenant, priority, its waiting request ids oldest first, when its head became head)
Bucket = tuple[str, int, tuple[str, ...], int]


@dataclass(frozen=True, slots=True)
class Stats:
    submitted: int = 0
    granted: int = 0
    queued: int = 0
    deferred: int = 0
    denied: int = 0
    cancelled: int = 0
    timed_out: int = 0
    released: int = 0
    wait_total_ms: int = 0          # of the requests granted after waiting
    waited: int = 0


@dataclass(frozen=True, slots=True)
class ArbiterState:
    pool_id: str
    policy: Policy = DEFAULT_POLICY
    models: PMap[str, ModelFacts] = field(default_factory=PMap)
    hosts: PMap[str, HostFacts] = field(default_factory=PMap)
    utilisation: PMap[str, float] = field(default_factory=PMap)  # source -> 0..1
    reported_at: PMap[str, int] = field(default_factory=PMap)  # source -> its last report, ms
    requests: PMap[str, Request] = field(default_factory=PMap)   # live: decided, not ended
    # model -> its waiting requests, in buckets of one tenant and priority, each oldest first
    queues: PMap[str, tuple[Bucket, ...]] = field(default_factory=PMap)
    in_use: PMap[str, int] = field(default_factory=PMap)       # model -> grants held
    promised: PMap[str, int] = field(default_factory=PMap)     # cold model -> MB promised
    pending: PMap[str, int] = field(default_factory=PMap)      # tenant -> waiting + deferred
    spend: PMap[str, tuple[tuple[int, float], ...]] = field(default_factory=PMap)  # tenant
    window: Window = field(default_factory=lambda: Window(300_000))
    holds: PMap[str, tuple[int, float]] = field(default_factory=PMap)  # model -> (n, mean ms)
    last_tenant: str = ""           # round robin: whose turn was last
    seq: int = 0                    # requests submitted: the arrival order
    stats: Stats = Stats()

    @property
    def promised_mb(self) -> int:
        return sum(self.promised.values())

    def waiting(self, model_id: str) -> int:
        return sum(len(ids) for _, _, ids, _ in self.queues.get(model_id, ()))

    def free_mb(self) -> tuple[int, int]:
        """(free memory over the alive hosts, the most on any one), as last observed."""
        free = [h.free_mb for h in self.hosts.values() if h.alive]
        return sum(free), max(free, default=0)

    def spent(self, tenant: str, now_ms: int) -> float:
        limit = self.policy.cost_limits.get(tenant)
        if limit is None:
            return 0.0
        since = now_ms - int(limit.window_s * 1000)
        return sum(cost for at, cost in self.spend.get(tenant, ()) if at > since)

    def mean_hold_ms(self, model_id: str) -> float | None:
        """How long a grant of the model was held, on average (None before any release)."""
        found = self.holds.get(model_id)
        return found[1] if found else None


def initial_state(pool_id: str) -> ArbiterState:
    return ArbiterState(pool_id)
