"""Retention policies (seed M3.5.1-M3.5.3): the rules, the value score, and the evaluation of
every item of a store under them. Pure: no I/O, no clock (time arrives as `now_ms`).

A retention document (YAML or JSON, set by command so a replay knows which one was in force)
holds the policies and the settings they share:

    policies:
      - name: keep-releases
        priority: 100            # 0-255, the seed's u8
        rules: [{type: KeepTagged, tags: [release]}]
      - name: age-out
        priority: 10
        rules:
          - {type: MaxAge, days: 90, action: archive}
          - {type: MinAccessCount, count: 20}
    value: {half_life_days: 30, weights: {recency: 0.3, frequency: 0.25, ...}}
    tiers: {warm_after_days: 30, warm_below: 0.35}
    trash_days: 7
    orphan_grace_hours: 24
    plan_ttl_hours: 24
    schedule: {cron: "0 3 * * *", window_minutes: 120, apply: false}

What each rule says of an item (nothing, or a verdict with its reason):
* `MaxAge {days, action}`: idle (since last stored or read) longer than `days` -> `action`
  (delete, the default, or archive);
* `MaxTotalSize {bytes, action}`: while the store's bytes exceed `bytes`, the lowest-valued
  items that no keep rule of the same policy holds -> `action` (archive by default);
* `MinAccessCount {count}`: read at least `count` times -> keep;
* `MinQualityScore {score}`: quality at least `score` -> keep;
* `KeepTagged {tags}`: carries one of `tags` -> keep;
* `PreserveTrainingData {preserve, tags}`: training data (tagged one of `tags`, default
  "training") and everything it derives from (its lineage ancestors) -> keep. The lineage
  is traced from the tags of every enabled preserve rule together, and also protects an
  orphan blob that training data derives from, whatever the policies say.

How verdicts compose (the issue's rule, made total):
* within a policy, keep beats everything (a keep rule is an exception to the policy's
  reclaiming rules: "delete after 90 days unless read 20 times"); of its reclaiming rules
  that fire, delete beats archive (the later phase: "archive after 30 days, delete after
  365" is one policy);
* across policies, the highest-priority policy that says anything decides; at equal
  priority the most conservative verdict wins (keep, then archive, then delete);
* a legal hold keeps, before any policy; an item no policy speaks for is kept;
* a blob nothing references (an orphan) is deleted once older than the grace period;
* content removed from the catalog (`ArtifactRemoved`, per address: every name and version
  of it goes with it) is treated as an orphan past its grace period - deleted, the removal
  being the owner's word - unless a hold keeps it, training data derives from it, or an
  artifact still cataloged derives from it or holds it (lineage): then it is kept;
* a node output in the DAG's blob store (not an artifact: no policy speaks for it) is kept
  while a workflow using it runs and `dag_output_days` after the last one ended, then
  deleted.
A kept item still in the hot tier moves to warm when idle `warm_after_days` and valued below
`warm_below`, and one in warm or cold comes back to hot once it is used again (idle less than
that, valued at least that); an archived one goes to cold. Delete means the trash first
(see manager.py).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams.documents import choice, flag, load_document, mapping, number, unknown_keys
from streams.errors import PitError

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MAX_DAYS = 100 * 365.0


class Action(enum.StrEnum):
    KEEP = "keep"
    ARCHIVE = "archive"
    DELETE = "delete"


# The more conservative verdict wins a tie: keep, then archive, then delete.
_CAUTION = {Action.KEEP: 2, Action.ARCHIVE: 1, Action.DELETE: 0}


ARTIFACT, DAG_OUTPUT = "artifact", "dag_output"  # what an item is (Item.kind)


class Tier(enum.StrEnum):
    HOT = "hot"
    WARM = "warm"
    COLD = "cold"


# Storage prices per GiB and month, stated here because the savings figure rests on them.
TIER_PRICE_PER_GIB = {Tier.HOT: 1.0, Tier.WARM: 0.5, Tier.COLD: 0.15}


class RetentionError(PitError):
    """An invalid retention document; `problems` lists every one."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid retention policy: " + "; ".join(problems))
        self.problems = problems


# --- what a policy looks at -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Item:
    """One stored content, as the Stale Manager knows it (from the catalog's events, or a
    blob the catalog never heard of: an orphan)."""

    address: str
    size: int
    stored_at: int                  # ms, first cataloged (an orphan: first seen)
    last_used_at: int               # ms, the later of its last store and its last read
    accesses: int = 0
    quality: float | None = None
    tags: tuple[str, ...] = ()
    parents: tuple[str, ...] = ()   # what it derives from or belongs to (lineage)
    names: tuple[str, ...] = ()     # the names it is a version of
    stores: int = 1                 # how often the same content was stored (dedup)
    orphan: bool = False
    removed: bool = False           # taken out of the catalog (its blob stays until purged)
    # "artifact" (the Artifact Store's content) or "dag_output" (a node output in the DAG's
    # blob store, streams/blobs.py: `last_used_at` is when the last workflow using it ended)
    kind: str = ARTIFACT

    def idle_days(self, now_ms: int) -> float:
        return max(0, now_ms - self.last_used_at) / DAY_MS


# --- rules ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str
    rule: str  # "<policy>/<rule type>", or "hold", "orphan", "default"


@dataclass(frozen=True)
class MaxAge:
    days: float
    action: Action = Action.DELETE

    def due_in_days(self, item: Item, now_ms: int) -> float:
        return self.days - item.idle_days(now_ms)


@dataclass(frozen=True)
class MaxTotalSize:
    bytes: int
    action: Action = Action.ARCHIVE


@dataclass(frozen=True)
class MinAccessCount:
    count: int


@dataclass(frozen=True)
class MinQualityScore:
    score: float


@dataclass(frozen=True)
class KeepTagged:
    tags: tuple[str, ...]


@dataclass(frozen=True)
class PreserveTrainingData:
    preserve: bool = True
    tags: tuple[str, ...] = ("training",)


Rule = MaxAge | MaxTotalSize | MinAccessCount | MinQualityScore | KeepTagged | PreserveTrainingData
RULE_TYPES: dict[str, type] = {cls.__name__: cls for cls in (
    MaxAge, MaxTotalSize, MinAccessCount, MinQualityScore, KeepTagged, PreserveTrainingData)}


@dataclass(frozen=True)
class Policy:
    name: str
    rules: tuple[Rule, ...]
    priority: int = 0
    enabled: bool = True


@dataclass(frozen=True)
class ValueWeights:
    recency: float = 0.3
    frequency: float = 0.25
    quality: float = 0.15
    training: float = 0.2
    uniqueness: float = 0.1


@dataclass(frozen=True)
class Schedule:
    cron: str
    window_minutes: int = 120  # a run that could not start within this is skipped
    apply: bool = False        # apply the plan too (the schedule is the confirmation)


@dataclass(frozen=True)
class Retention:
    """A whole retention document."""

    policies: tuple[Policy, ...] = ()
    weights: ValueWeights = field(default_factory=ValueWeights)
    half_life_days: float = 30.0       # recency halves every this many idle days
    frequency_saturation: int = 1000   # reads at which frequency reaches 1
    warm_after_days: float = 30.0
    warm_below: float = 0.35
    trash_days: float = 7.0
    orphan_grace_hours: float = 24.0
    plan_ttl_hours: float = 24.0
    dag_output_days: float = 30.0      # a node output is kept this long after its workflows end
    schedule: Schedule | None = None


DEFAULT_RETENTION = Retention()


# --- reading a document -----------------------------------------------------------------------

def _rule(problems: list[str], where: str, data: Any) -> Rule | None:
    data = mapping(problems, where, data)
    kind = data.get("type")
    if kind not in RULE_TYPES:
        problems.append(f"{where}.type: {kind!r} is not one of {', '.join(RULE_TYPES)}")
        return None
    fields = {"type", *(f.name for f in dataclasses.fields(RULE_TYPES[kind]))}
    unknown_keys(problems, f"{where}.", data, fields)
    action = lambda default: choice(problems, f"{where}.action", Action,  # noqa: E731
                                    data.get("action", default))
    match kind:
        case "MaxAge":
            rule: Rule = MaxAge(number(problems, f"{where}.days", data.get("days"), 0, MAX_DAYS),
                                action(Action.DELETE))
        case "MaxTotalSize":
            rule = MaxTotalSize(int(number(problems, f"{where}.bytes", data.get("bytes"), 0,
                                           2.0 ** 63 - 1)), action(Action.ARCHIVE))
        case "MinAccessCount":
            rule = MinAccessCount(int(number(problems, f"{where}.count", data.get("count"), 0,
                                             2.0 ** 63 - 1)))
        case "MinQualityScore":
            rule = MinQualityScore(number(problems, f"{where}.score", data.get("score"), 0, 1))
        case "KeepTagged":
            rule = KeepTagged(_tags(problems, f"{where}.tags", data.get("tags")))
        case _:
            rule = PreserveTrainingData(
                flag(problems, f"{where}.preserve", data.get("preserve", True)),
                _tags(problems, f"{where}.tags", data.get("tags", ["training"])))
    if isinstance(rule, MaxAge | MaxTotalSize) and rule.action is Action.KEEP:
        problems.append(f"{where}.action: {kind} archives or deletes, not keep")
    return rule


def _tags(problems: list[str], where: str, value: Any) -> tuple[str, ...]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(t, str) and t.strip() for t in value)):
        problems.append(f"{where}: expected a non-empty list of tags, got {value!r}")
        return ()
    return tuple(sorted(set(value)))


def _policy(problems: list[str], where: str, data: Any) -> Policy:
    data = mapping(problems, where, data)
    unknown_keys(problems, f"{where}.", data, {"name", "rules", "priority", "enabled"})
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append(f"{where}.name: a policy needs a name, got {name!r}")
        name = str(name)
    where = f"policies[{name}]"
    rules = data.get("rules")
    if not isinstance(rules, list) or not rules:
        problems.append(f"{where}.rules: expected a non-empty list of rules")
        rules = []
    parsed = tuple(rule for i, raw in enumerate(rules)
                   if (rule := _rule(problems, f"{where}.rules[{i}]", raw)) is not None)
    priority = int(number(problems, f"{where}.priority", data.get("priority", 0), 0, 255))
    enabled = flag(problems, f"{where}.enabled", data.get("enabled", True))
    return Policy(name, parsed, priority, enabled)


def _schedule(problems: list[str], data: Any) -> Schedule:
    from croniter import croniter  # the cron grammar, from a library that keeps it

    data = mapping(problems, "schedule", data)
    unknown_keys(problems, "schedule.", data, {"cron", "window_minutes", "apply"})
    cron = data.get("cron")
    if not isinstance(cron, str) or not croniter.is_valid(cron):
        problems.append(f"schedule.cron: {cron!r} is not a cron expression "
                        "(five fields, e.g. \"0 3 * * *\")")
        cron = "0 3 * * *"
    window = int(number(problems, "schedule.window_minutes", data.get("window_minutes", 120),
                        1, 7 * 24 * 60))
    return Schedule(cron, window, flag(problems, "schedule.apply", data.get("apply", False)))


_SETTINGS = {"policies", "value", "tiers", "trash_days", "orphan_grace_hours", "plan_ttl_hours",
             "dag_output_days", "schedule"}


def retention_from(data: Any) -> Retention:
    """A Retention of plain data; RetentionError listing every problem."""
    problems: list[str] = []
    data = mapping(problems, "document", data)
    unknown_keys(problems, "", data, _SETTINGS)
    values: dict[str, Any] = {}
    raw = data.get("policies", [])
    if not isinstance(raw, list):
        problems.append("policies: expected a list of policies")
        raw = []
    policies = tuple(_policy(problems, f"policies[{i}]", p) for i, p in enumerate(raw))
    names = [p.name for p in policies]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"policies: the name {name!r} is used more than once")
    values["policies"] = policies
    value = mapping(problems, "value", data.get("value", {}))
    unknown_keys(problems, "value.", value, {"half_life_days", "frequency_saturation",
                                             "weights"})
    if "half_life_days" in value:
        values["half_life_days"] = number(problems, "value.half_life_days",
                                          value["half_life_days"], 0.01, MAX_DAYS)
    if "frequency_saturation" in value:
        values["frequency_saturation"] = int(number(
            problems, "value.frequency_saturation", value["frequency_saturation"], 1, 1e12))
    if "weights" in value:
        weights = mapping(problems, "value.weights", value["weights"])
        known = set(ValueWeights.__dataclass_fields__)
        unknown_keys(problems, "value.weights.", weights, known)
        chosen = {k: number(problems, f"value.weights.{k}", w, 0, 1e6)
                  for k, w in weights.items() if k in known}
        values["weights"] = ValueWeights(**chosen)
        if sum(chosen.values()) <= 0 and len(chosen) == len(known):
            problems.append("value.weights: at least one weight must be positive")
    tiers = mapping(problems, "tiers", data.get("tiers", {}))
    unknown_keys(problems, "tiers.", tiers, {"warm_after_days", "warm_below"})
    if "warm_after_days" in tiers:
        values["warm_after_days"] = number(problems, "tiers.warm_after_days",
                                           tiers["warm_after_days"], 0, MAX_DAYS)
    if "warm_below" in tiers:
        values["warm_below"] = number(problems, "tiers.warm_below", tiers["warm_below"], 0, 1)
    for name, high in (("trash_days", 365.0), ("orphan_grace_hours", 24 * 365.0),
                       ("plan_ttl_hours", 24 * 365.0), ("dag_output_days", MAX_DAYS)):
        if name in data:
            values[name] = number(problems, name, data[name], 0, high)
    if data.get("schedule") is not None:
        values["schedule"] = _schedule(problems, data["schedule"])
    if problems:
        raise RetentionError(problems)
    return Retention(**values)


def parse_retention(text: str) -> Retention:
    """A retention document from YAML or JSON text; RetentionError listing every problem."""
    problems: list[str] = []
    data = load_document(text, problems)
    if problems:
        raise RetentionError(problems)
    return retention_from(data)


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "__dataclass_fields__"):
        fields = {k: _plain(getattr(value, k)) for k in value.__dataclass_fields__}
        return {"type": type(value).__name__, **fields} if type(value).__name__ in RULE_TYPES \
            else fields
    return value


def retention_json(retention: Retention) -> str:
    """The canonical JSON of a document (what the event carries): `retention_from` of it
    gives the same Retention."""
    plain = _plain(retention)
    out = {"policies": plain["policies"],
           "value": {"half_life_days": plain["half_life_days"],
                     "frequency_saturation": plain["frequency_saturation"],
                     "weights": plain["weights"]},
           "tiers": {"warm_after_days": plain["warm_after_days"],
                     "warm_below": plain["warm_below"]},
           "trash_days": plain["trash_days"], "orphan_grace_hours": plain["orphan_grace_hours"],
           "plan_ttl_hours": plain["plan_ttl_hours"], "dag_output_days": plain["dag_output_days"],
           "schedule": plain["schedule"]}
    return json.dumps(out, sort_keys=True, separators=(",", ":"))


# --- value ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Value:
    """An item's value in [0, 1]: the weighted mean of its components, each in [0, 1]."""

    total: float
    recency: float
    frequency: float
    quality: float
    training: float
    uniqueness: float

    def components(self) -> dict[str, float]:
        return {"recency": self.recency, "frequency": self.frequency, "quality": self.quality,
                "training": self.training, "uniqueness": self.uniqueness}


def value_of(item: Item, retention: Retention, now_ms: int, *, training: bool,
             derivable: bool) -> Value:
    """* recency: halves every `half_life_days` idle;
    * frequency: log-scaled reads, 1 at `frequency_saturation`;
    * quality: the catalog's score (0.5 when unknown);
    * training: 1 for training data and what it derives from, else 0;
    * uniqueness: content held nowhere else is 1; content that can be derived again from
      parents still stored counts half, and content stored under several names or stores
      (deduplicated) shares its value among them (1/sqrt(stores))."""
    weights = retention.weights
    recency = 0.5 ** (item.idle_days(now_ms) / retention.half_life_days)
    frequency = min(1.0, math.log1p(item.accesses) / math.log1p(retention.frequency_saturation))
    quality = 0.5 if item.quality is None else item.quality
    trained = 1.0 if training else 0.0
    uniqueness = (0.5 if derivable else 1.0) / math.sqrt(max(1, item.stores))
    total_weight = (weights.recency + weights.frequency + weights.quality + weights.training
                    + weights.uniqueness)
    total = (weights.recency * recency + weights.frequency * frequency
             + weights.quality * quality + weights.training * trained
             + weights.uniqueness * uniqueness) / total_weight if total_weight else 0.0
    return Value(total, recency, frequency, quality, trained, uniqueness)


# --- evaluation -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Evaluation:
    """What the policies decide for one item, and why."""

    address: str
    action: Action
    target: Tier | None        # where it should be if kept or archived; None: deleted
    reason: str
    rule: str
    value: Value
    next_change: str = ""      # "eligible for archive in 12 days", when one is due


def training_set(items: Mapping[str, Item], tags: Iterable[str]) -> frozenset[str]:
    """Training data (tagged one of `tags`) and every ancestor of it in the lineage."""
    wanted = set(tags)
    todo = [a for a, item in items.items() if wanted.intersection(item.tags)]
    seen = set(todo)
    while todo:
        item = items.get(todo.pop())
        for parent in item.parents if item is not None else ():
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return frozenset(seen)


class Evaluator:
    """Evaluates every item of a store under one document at one instant. Built once per
    (items, holds, document, now) - the whole-store facts (training lineage, values, the
    MaxTotalSize evictions) are computed on construction and shared by every item's
    evaluation, which is what makes a plan over 100,000 items cheap; `evaluate` caches.
    The cache lives as long as the Evaluator, one snapshot: every verdict depends on `now`,
    so nothing computed for one plan is valid for the next (README: "Evaluation")."""

    def __init__(self, retention: Retention, items: Mapping[str, Item],
                 holds: Mapping[str, str], now_ms: int, tiers: Mapping[str, Tier]) -> None:
        self.retention, self.items, self.holds, self.now = retention, items, holds, now_ms
        self.tiers = tiers
        self.policies = sorted((p for p in retention.policies if p.enabled),
                               key=lambda p: (-p.priority, p.name))
        preserve = {t for p in self.policies for r in p.rules
                    if isinstance(r, PreserveTrainingData) and r.preserve for t in r.tags}
        self.training = training_set(items, preserve or ("training",))
        self.values = {a: value_of(i, retention, now_ms, training=a in self.training,
                                   derivable=any(p in items for p in i.parents))
                       for a, i in items.items()}
        # content a cataloged (not removed) item derives from or belongs to: a removed item
        # among these is still referenced, so not unreferenced content
        self.referenced = frozenset(p for i in items.values() if not i.removed
                                    for p in i.parents)
        self._evicted: dict[tuple[str, int], frozenset[str]] = {}
        self._cache: dict[str, Evaluation] = {}

    def ranked(self) -> list[str]:
        """Addresses by value, lowest first; ties by address (deterministic)."""
        return sorted(self.items, key=lambda a: (self.values[a].total, a))

    def evaluate(self, address: str) -> Evaluation:
        found = self._cache.get(address)
        if found is None:
            found = self._cache[address] = self._evaluate(self.items[address])
        return found

    def evaluate_all(self) -> list[Evaluation]:
        return [self.evaluate(a) for a in sorted(self.items)]

    def deletable(self) -> list[str]:
        """The seed's `get_deletable`: addresses the policies delete, sorted."""
        return [e.address for e in self.evaluate_all() if e.action is Action.DELETE]

    def archivable(self) -> list[str]:
        """The seed's `get_archivable`: addresses the policies archive, sorted."""
        return [e.address for e in self.evaluate_all() if e.action is Action.ARCHIVE]

    # --- one item ---

    def _evaluate(self, item: Item) -> Evaluation:
        value = self.values[item.address]
        verdict, next_change = self._verdict(item)
        tier = self.tiers.get(item.address, Tier.HOT)
        if verdict.action is Action.DELETE:
            target = None
        elif item.kind == DAG_OUTPUT:
            target = tier  # node outputs stay in the DAG's blob store: no tiers there
        elif verdict.action is Action.ARCHIVE:
            target = Tier.COLD
        elif (tier is Tier.HOT and verdict.rule != "hold"
              and item.idle_days(self.now) >= self.retention.warm_after_days
              and value.total < self.retention.warm_below):
            target = Tier.WARM
            verdict = Verdict(Action.KEEP, f"{verdict.reason}; idle "
                              f"{item.idle_days(self.now):.0f} days and valued "
                              f"{value.total:.2f} < {self.retention.warm_below:g}: warm tier",
                              verdict.rule)
        elif (tier is not Tier.HOT and verdict.rule != "hold"
              and item.idle_days(self.now) < self.retention.warm_after_days
              and value.total >= self.retention.warm_below):
            target = Tier.HOT  # read again since it moved: back where reads are cheap
            verdict = Verdict(Action.KEEP, f"{verdict.reason}; used "
                              f"{item.idle_days(self.now):.0f} days ago and valued "
                              f"{value.total:.2f}: back to the hot tier", verdict.rule)
        else:
            target = tier
        return Evaluation(item.address, verdict.action, target, verdict.reason, verdict.rule,
                          value, next_change)

    def _verdict(self, item: Item) -> tuple[Verdict, str]:
        hold = self.holds.get(item.address)
        if hold is not None:
            return Verdict(Action.KEEP, f"legal hold: {hold or 'no reason given'}", "hold"), ""
        if item.kind == DAG_OUTPUT and not item.orphan:
            days, idle = self.retention.dag_output_days, item.idle_days(self.now)
            if idle > days:
                return Verdict(Action.DELETE, f"node output of workflows that ended {idle:.1f}"
                               f" days ago (kept {days:g})", "dag_outputs"), ""
            return (Verdict(Action.KEEP, f"node output of a workflow that ended {idle:.1f} days"
                            " ago" if item.last_used_at < self.now else
                            "node output of a workflow still running", "dag_outputs"),
                    f"eligible for delete in {_span(days - idle, 'days')}")
        if (item.orphan or item.removed) and item.address in self.training:
            # lineage outranks "unreferenced"
            return Verdict(Action.KEEP, "training data derives from it (lineage)",
                           "lineage"), ""
        if item.removed and not item.orphan:
            # Removal is per address in the catalog, so no other name or version still holds
            # this content; a cataloged artifact deriving from it or holding it does.
            if item.address in self.referenced:
                return Verdict(Action.KEEP, "removed from the catalog, but a cataloged "
                               "artifact derives from it or holds it (lineage)", "lineage"), ""
            return Verdict(Action.DELETE, "removed from the catalog: nothing cataloged "
                           "references it", "removed"), ""
        if item.orphan:
            grace = self.retention.orphan_grace_hours
            age_h = (self.now - item.stored_at) / HOUR_MS
            if age_h < grace:
                return (Verdict(Action.KEEP, f"orphan blob seen {age_h:.1f} h ago, within the "
                                f"{grace:g} h grace (an upload may be in flight)", "orphan"),
                        f"eligible for delete in {_span(grace - age_h, 'hours')}")
            return Verdict(Action.DELETE, f"orphan blob: nothing references it for "
                           f"{age_h:.1f} h (grace {grace:g} h)", "orphan"), ""
        decided: list[Verdict] = []
        priority = None
        # the MaxAge phases still to come: (days, action, priority of their policy, policy)
        upcoming: list[tuple[float, str, int, str]] = []
        for policy in self.policies:
            if priority is not None and policy.priority < priority:
                break
            due: list[tuple[float, str]] = []
            verdicts = [v for rule in policy.rules
                        if (v := self._rule(policy, rule, item, due)) is not None]
            upcoming += [(days, action, policy.priority, policy.name) for days, action in due]
            if verdicts:
                priority = policy.priority
                decided.append(_within_policy(verdicts))
        if not decided or priority is None:
            return Verdict(Action.KEEP, "no policy applies", "default"), _next(upcoming)
        verdict = max(decided, key=lambda v: _CAUTION[v.action])
        if verdict.action is Action.ARCHIVE:
            # What can still change an archive: a delete phase of its own policy (within a
            # policy delete beats archive) or of a higher-priority one (at equal priority
            # the archive, more cautious, wins).
            deciding = verdict.rule.rsplit("/", 1)[0]
            return verdict, _next([u for u in upcoming if u[1] == Action.DELETE.value and (
                u[3] == deciding or u[2] > priority)])
        if verdict.action is Action.KEEP:
            # a keep rule's facts (tags, reads, quality, lineage) do not age: only a
            # higher-priority policy's phase can overrule it
            return verdict, _next([u for u in upcoming if u[2] > priority])
        return verdict, ""

    def _rule(self, policy: Policy, rule: Rule, item: Item,
              upcoming: list[tuple[float, str]]) -> Verdict | None:
        name = f"{policy.name}/{type(rule).__name__}"
        match rule:
            case MaxAge(days=days, action=action):
                idle = item.idle_days(self.now)
                if idle > days:
                    return Verdict(action, f"idle {idle:.1f} days > {days:g}", name)
                upcoming.append((days - idle, action.value))
            case MaxTotalSize(bytes=budget, action=action):
                if item.address in self._evictions(policy, budget):
                    return Verdict(action, f"store over {human_bytes(budget)}: among the lowest "
                                   f"valued ({self.values[item.address].total:.3f})", name)
            case MinAccessCount(count=count):
                if item.accesses >= count:
                    return Verdict(Action.KEEP, f"read {item.accesses} times >= {count}", name)
            case MinQualityScore(score=score):
                if item.quality is not None and item.quality >= score:
                    return Verdict(Action.KEEP, f"quality {item.quality:.2f} >= {score:g}",
                                   name)
            case KeepTagged(tags=tags):
                hit = sorted(set(tags).intersection(item.tags))
                if hit:
                    return Verdict(Action.KEEP, f"tagged {', '.join(hit)}", name)
            case PreserveTrainingData(preserve=True, tags=tags):
                if set(tags).intersection(item.tags):
                    return Verdict(Action.KEEP, "training data", name)
                if item.address in self.training:
                    return Verdict(Action.KEEP, "training data derives from it (lineage)",
                                   name)
        return None

    def _evictions(self, policy: Policy, budget: int) -> frozenset[str]:
        """What `MaxTotalSize(budget)` of `policy` evicts: the lowest valued items that no
        keep rule of the policy (or a hold) holds, until the rest fits the budget."""
        key = (policy.name, budget)
        if key not in self._evicted:
            total = sum(i.size for i in self.items.values())
            evicted = []
            keeps = [r for r in policy.rules if not isinstance(r, MaxAge | MaxTotalSize)]
            for address in self.ranked():
                if total <= budget:
                    break
                item = self.items[address]
                if address in self.holds or any(
                        self._rule(policy, r, item, []) is not None for r in keeps):
                    continue
                evicted.append(address)
                total -= item.size
            self._evicted[key] = frozenset(evicted)
        return self._evicted[key]


def _within_policy(verdicts: list[Verdict]) -> Verdict:
    """One policy's verdict: a keep if any rule keeps, else the latest phase that fired
    (delete over archive), the first rule of it on a tie."""
    keeps = [v for v in verdicts if v.action is Action.KEEP]
    if keeps:
        return keeps[0]
    return min(verdicts, key=lambda v: _CAUTION[v.action])


def _next(upcoming: list[tuple[float, str, int, str]]) -> str:
    """The soonest of the phases still to come, as `explain` says it."""
    if not upcoming:
        return ""
    days, action, _, _ = min(upcoming)
    return f"eligible for {action} in {_span(days, 'days')}"


def _span(amount: float, unit: str) -> str:
    amount = max(0.0, amount)
    if unit == "days" and amount < 1:
        return f"{amount * 24:.0f} hours"
    return f"{amount:.0f} {unit}" if amount >= 1 else f"{amount * 60:.0f} minutes"


def human_bytes(n: float) -> str:
    """1536 -> "1.5 KiB": sizes as people read them."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def storage_cost(sizes_by_tier: Mapping[Tier, int]) -> float:
    """Monthly cost of the bytes in each tier at TIER_PRICE_PER_GIB."""
    return sum(TIER_PRICE_PER_GIB[t] * b / 2 ** 30 for t, b in sizes_by_tier.items())


def evaluations(retention: Retention, items: Mapping[str, Item], holds: Mapping[str, str],
                now_ms: int, tiers: Mapping[str, Tier],
                only: Sequence[str] | None = None) -> list[Evaluation]:
    """Every item's evaluation (or only those named), by address."""
    evaluator = Evaluator(retention, items, holds, now_ms, tiers)
    return [evaluator.evaluate(a) for a in (sorted(items) if only is None else only)]
