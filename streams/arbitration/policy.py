"""The arbitration policy (seed M3.4): which strategy resolves which conflict, the
thresholds that make a conflict, tenants and their weights, aging, scoring and limits.

A policy is data, set by command (`SetArbitrationPolicy`, an event once accepted), so a
replay or a simulation decides under the policy that was in force. `parse_policy` reads
YAML or JSON and lists every problem at once; `policy_json` is the canonical form the
events carry (sorted keys), so equal policies are equal records.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from streams.documents import choice, flag, load_document, mapping, number, unknown_keys
from streams.errors import PitError


class Priority(enum.IntEnum):
    """The seed's levels; any integer in between is a valid priority too."""

    CRITICAL = 1000
    HIGH = 100
    NORMAL = 0
    LOW = -100
    BACKGROUND = -1000


MIN_PRIORITY, MAX_PRIORITY = -10_000, 10_000


class ConflictKind(enum.StrEnum):
    MODEL_CONTENTION = "model_contention"
    MEMORY_PRESSURE = "memory_pressure"
    CPU_SATURATION = "cpu_saturation"
    COST_LIMIT = "cost_limit"


class Strategy(enum.StrEnum):
    PRIORITY = "priority"              # highest effective priority first (aging, fairness)
    ROUND_ROBIN = "round_robin"        # tenants take turns
    QUEUE = "queue"                    # first come, first served
    WEIGHTED_RANDOM = "weighted_random"  # by tenant weight, seeded from the request ids
    COLLABORATIVE = "collaborative"    # a counter-offer (an equivalent model) before waiting


class DenialReason(enum.StrEnum):
    LOWER_PRIORITY = "lower_priority"            # a full queue keeps the higher ranked
    RESOURCE_UNAVAILABLE = "resource_unavailable"  # it could never fit
    COST_EXCEEDED = "cost_exceeded"
    RATE_LIMITED = "rate_limited"                # the tenant has too many requests waiting
    POLICY_VIOLATION = "policy_violation"


SCORE_DIMENSIONS = ("business_value", "user_impact", "cost_efficiency", "learning_value")


class PolicyError(PitError):
    """An invalid policy; `problems` lists every one."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid arbitration policy: " + "; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class CostLimit:
    limit: float       # spend allowed per window
    window_s: float


@dataclass(frozen=True)
class Policy:
    default_strategy: Strategy = Strategy.PRIORITY
    strategies: Mapping[ConflictKind, Strategy] = field(default_factory=dict)
    memory_threshold: float = 0.9   # cold models may take this fraction of free memory
    cpu_threshold: float = 0.9      # no new grant while any reported utilisation is above
    cpu_defer_s: float = 5.0        # a request deferred for CPU is reconsidered after this
    utilisation_ttl_s: float = 60.0  # a source silent this long no longer counts (it died)
    # Tenants and their weights; with `closed`, a tenant not listed is refused.
    tenants: Mapping[str, float] = field(default_factory=dict)
    default_weight: float = 1.0
    closed: bool = False
    cost_limits: Mapping[str, CostLimit] = field(default_factory=dict)  # per tenant
    aging_per_s: float = 10.0       # priority points a waiting request gains per second
    aging_cap: float = 1000.0       # ... up to this many (BACKGROUND reaches NORMAL)
    aging_step: float = 50.0        # ... in whole steps of this many (0: continuously)
    fairness_window_s: float = 300.0
    score_weights: Mapping[str, float] = field(
        default_factory=lambda: {d: 1.0 for d in SCORE_DIMENSIONS})
    # Per tenant, the scores a request that gives none takes.
    tenant_scores: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    max_queue: int = 1000           # waiting requests per model; beyond, the lowest ranked goes
    max_pending_per_tenant: int = 10_000
    default_timeout_s: float = 300.0

    def strategy(self, kind: ConflictKind) -> Strategy:
        return self.strategies.get(kind, self.default_strategy)

    def weight(self, tenant: str) -> float:
        return self.tenants.get(tenant, self.default_weight)

    def scores_of(self, tenant: str, given: Mapping[str, float]) -> dict[str, float]:
        """The request's scores: what it gave, else its tenant's defaults, else 0.5."""
        defaults = self.tenant_scores.get(tenant, {})
        return {d: given.get(d, defaults.get(d, 0.5)) for d in SCORE_DIMENSIONS}

    def score(self, scores: Mapping[str, float]) -> float:
        """The weighted sum, normalised by the weights' total, so it lies in [0, 1]."""
        total = sum(self.score_weights.values())
        if total <= 0:
            return 0.0
        return sum(self.score_weights.get(d, 0.0) * scores[d] for d in SCORE_DIMENSIONS) / total


DEFAULT_POLICY = Policy()


_FIELDS = {f for f in Policy.__dataclass_fields__}


def policy_from(data: Any) -> Policy:
    """A Policy of plain data (parsed YAML/JSON); PolicyError listing every problem."""
    problems: list[str] = []
    data = mapping(problems, "policy", data)
    unknown_keys(problems, "", data, _FIELDS)
    values: dict[str, Any] = {}
    if "default_strategy" in data:
        values["default_strategy"] = choice(problems, "default_strategy", Strategy,
                                           data["default_strategy"])
    if "strategies" in data:
        values["strategies"] = {
            choice(problems, f"strategies: {k}", ConflictKind, k):
                choice(problems, f"strategies.{k}", Strategy, v)
            for k, v in mapping(problems, "strategies", data["strategies"]).items()}
    for name, low, high in (("memory_threshold", 0.0, 1.0), ("cpu_threshold", 0.0, 1.0),
                            ("cpu_defer_s", 0.001, 86_400.0),
                            ("utilisation_ttl_s", 1.0, 86_400.0),
                            ("default_weight", 0.001, 1e6),
                            ("aging_per_s", 0.0, 1e6), ("aging_cap", 0.0, 1e6),
                            ("aging_step", 0.0, 1e6),
                            ("fairness_window_s", 1.0, 30 * 86_400.0),
                            ("default_timeout_s", 0.0, 30 * 86_400.0),
                            ("max_queue", 1, 1_000_000),
                            ("max_pending_per_tenant", 1, 1_000_000)):
        if name in data:
            value = number(problems, name, data[name], low, high)
            values[name] = int(value) if name.startswith("max_") else value
    if "closed" in data:
        values["closed"] = flag(problems, "closed", data["closed"])
    if "tenants" in data:
        values["tenants"] = {str(t): number(problems, f"tenants.{t}", w, 0.001, 1e6)
                             for t, w in mapping(problems, "tenants", data["tenants"]).items()}
    if "cost_limits" in data:
        limits = {}
        for tenant, limit in mapping(problems, "cost_limits", data["cost_limits"]).items():
            limit = mapping(problems, f"cost_limits.{tenant}", limit)
            limits[str(tenant)] = CostLimit(
                number(problems, f"cost_limits.{tenant}.limit", limit.get("limit"), 0, 1e12),
                number(problems, f"cost_limits.{tenant}.window_s", limit.get("window_s"),
                        1, 365 * 86_400))
        values["cost_limits"] = limits
    if "score_weights" in data:
        weights = mapping(problems, "score_weights", data["score_weights"])
        for unknown in sorted(set(weights) - set(SCORE_DIMENSIONS)):
            problems.append(f"score_weights.{unknown}: unknown dimension"
                            f" (known: {', '.join(SCORE_DIMENSIONS)})")
        values["score_weights"] = {
            d: number(problems, f"score_weights.{d}", weights.get(d, 1.0), 0, 1e6)
            for d in SCORE_DIMENSIONS}
    if "tenant_scores" in data:
        tenant_scores = {}
        for tenant, scores in mapping(problems, "tenant_scores", data["tenant_scores"]).items():
            scores = mapping(problems, f"tenant_scores.{tenant}", scores)
            for unknown in sorted(set(scores) - set(SCORE_DIMENSIONS)):
                problems.append(f"tenant_scores.{tenant}.{unknown}: unknown dimension")
            tenant_scores[str(tenant)] = {
                d: number(problems, f"tenant_scores.{tenant}.{d}", v, 0, 1)
                for d, v in scores.items() if d in SCORE_DIMENSIONS}
        values["tenant_scores"] = tenant_scores
    if values.get("closed") and not values.get("tenants"):
        problems.append("closed: a closed policy must list its tenants")
    if problems:
        raise PolicyError(problems)
    return Policy(**values)


def parse_policy(text: str) -> Policy:
    """A policy from YAML or JSON text (JSON is YAML); PolicyError listing every problem."""
    problems: list[str] = []
    data = load_document(text, problems)
    if problems:
        raise PolicyError(problems)
    return policy_from(data)


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value


def policy_json(policy: Policy) -> str:
    """The canonical JSON of a policy: what `PolicySet` carries and `policy show` prints."""
    return json.dumps(_plain(asdict(policy)), sort_keys=True, separators=(",", ":"))
