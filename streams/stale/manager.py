"""The Stale Manager's decider (issue 13, seed M3.5): what to keep, move, archive or delete
among a store's content, and the plans, trash and schedule that carry it out safely. Pure:
time arrives as `now_ms`; the bytes are moved and purged by the worker (worker.py), which
reports back. One entity per store (key = store id, "default"), as the catalog.

What it knows of the content comes as `ObserveArtifacts` commands from the catalog observer
(observer.py: the artifact catalog's events folded, and blobs nothing references), so a
replay sees exactly what each decision saw.

Rules (written down where the issue leaves them open):
* Policy: `SetRetentionPolicy` carries a YAML/JSON document (policy.py), refused with every
  problem listed; accepted, it is `RetentionPolicySet` with the canonical document and a
  version number. A schedule in it sets the next run's durable timer.
* Holds: `PlaceHold` keeps an item out of every delete and archive until `ReleaseHold`.
* Plan: `PlanCleanup` evaluates every item not in the trash, purged or moving, and lists the
  ones to change: delete (to the trash), archive (to cold), warm (to warm), promote (back to
  hot: used again) - with the reason,
  the deciding rule, the bytes, the item's revision and its value score (so the views show
  the value that ranked it without evaluating anything). `PlanComputed` then the items in
  `PlanItemsListed` chunks of PLAN_CHUNK (events stay far below 1 MiB). A plan expires
  after the document's `plan_ttl_hours`.
* Apply: `ApplyPlan` confirms a plan (unknown, expired, or already applied/applying: refused)
  and carries it out in batches of APPLY_BATCH; each batch's `PlanProgressed` records the
  cursor, and the next batch is a durable timer due at once, so an apply interrupted by a
  crash resumes where it stopped. An item is done only if it is exactly as planned: same
  revision (the observer bumps an item's revision when it changes, and its ancestors' when
  a descendant changes, since lineage protects ancestors), same policy version, no hold, not
  trashed or moving; otherwise `ItemSkipped` says why. So what is deleted is exactly the
  confirmed plan's items that are still eligible, never another.
* Delete is `ItemTrashed`: the content stays where it is, readable, for `trash_days`, then
  the purge timer's `PurgeItem` makes it `ItemPurged` (the worker deletes the bytes, then
  `ReportPurged`). `RestoreItems` (an address or a whole plan) brings trashed items back;
  a purged item cannot be restored, and says so.
* Tier moves: `TierMoveRequested`; the worker copies, verifies, then deletes the source and
  reports `ReportTierMoved` (-> `TierMoved`) or `ReportTierMoveFailed` (the item stays
  where it was, readable).
* Schedule: `RunSchedule` (its timer) plans - and applies, if the schedule says so - unless
  it fires later than `window_minutes` after its due time (pit up was down through the
  off-peak window): then `RunSkipped`. Either way the next run's timer is set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from streams.blobs import is_address
from streams.decider import Decided, Decider, Decision, Message, Rejection, Rules, copy_with
from streams.persistent import PMap
from streams.stale.policy import (
    ARTIFACT,
    DAG_OUTPUT,
    DAY_MS,
    DEFAULT_RETENTION,
    HOUR_MS,
    Action,
    Evaluator,
    Item,
    RetentionError,
    Tier,
    parse_retention,
    retention_from,
    retention_json,
)
from streams.stale.topics import STALE_COMMANDS, STALE_EVENTS
from streams.timers import TIMER_EVENTS, schedule_timer

DEFAULT_STORE = "default"
PLAN_CHUNK = 2_000
APPLY_BATCH = 500
MAX_OBSERVED = 1_000  # items per ObserveArtifacts


class _StoreMessage(Message):
    key_field = "store_id"


# --- commands ---------------------------------------------------------------------------------
# Lists of items travel as Avro arrays of records (plain dicts here): see OBSERVED_FIELDS.

OBSERVED_FIELDS = ("address", "size", "stored_at", "last_used_at", "accesses", "quality",
                   "tags", "parents", "names", "stores", "orphan", "removed", "kind")


@dataclass(frozen=True)
class ObserveArtifacts(_StoreMessage):
    """What the catalog (or the blob store) says of some items now."""
    avro_name = "pit.stale.ObserveArtifacts"
    items: list[dict[str, Any]]
    forget: list[str] = field(default_factory=list)  # orphans no longer there
    store_id: str = DEFAULT_STORE


@dataclass(frozen=True)
class SetRetentionPolicy(_StoreMessage):
    avro_name = "pit.stale.SetRetentionPolicy"
    document: str
    store_id: str = DEFAULT_STORE


@dataclass(frozen=True)
class PlaceHold(_StoreMessage):
    avro_name = "pit.stale.PlaceHold"
    address: str
    reason: str = ""
    store_id: str = DEFAULT_STORE


@dataclass(frozen=True)
class ReleaseHold(_StoreMessage):
    avro_name = "pit.stale.ReleaseHold"
    address: str
    store_id: str = DEFAULT_STORE


@dataclass(frozen=True)
class PlanCleanup(_StoreMessage):
    avro_name = "pit.stale.PlanCleanup"
    plan_id: str
    store_id: str = DEFAULT_STORE


@dataclass(frozen=True)
class ApplyPlan(_StoreMessage):
    avro_name = "pit.stale.ApplyPlan"
    plan_id: str
    store_id: str = DEFAULT_STORE


@dataclass(frozen=True)
class ContinueApply(_StoreMessage):
    """Sent by an apply's own timer: the next batch."""
    avro_name = "pit.stale.ContinueApply"
    plan_id: str
    cursor: int
    store_id: str = DEFAULT_STORE


@dataclass(frozen=True)
class RestoreItems(_StoreMessage):
    """Bring trashed items back: `target` is an address or a plan id."""
    avro_name = "pit.stale.RestoreItems"
    target: str
    store_id: str = DEFAULT_STORE


@dataclass(frozen=True)
class PurgeItem(_StoreMessage):
    """Sent by a trashed item's timer when its grace period ends."""
    avro_name = "pit.stale.PurgeItem"
    address: str
    trash_seq: int
    store_id: str = DEFAULT_STORE


@dataclass(frozen=True)
class RunSchedule(_StoreMessage):
    """Sent by the schedule's timer."""
    avro_name = "pit.stale.RunSchedule"
    due_at: int
    store_id: str = DEFAULT_STORE


@dataclass(frozen=True)
class ReportTierMoved(_StoreMessage):
    avro_name = "pit.stale.ReportTierMoved"
    address: str
    tier: str
    stored_bytes: int
    store_id: str = DEFAULT_STORE


@dataclass(frozen=True)
class ReportTierMoveFailed(_StoreMessage):
    avro_name = "pit.stale.ReportTierMoveFailed"
    address: str
    tier: str
    error: str
    store_id: str = DEFAULT_STORE


@dataclass(frozen=True)
class ReportPurged(_StoreMessage):
    avro_name = "pit.stale.ReportPurged"
    address: str
    freed_bytes: int
    store_id: str = DEFAULT_STORE


# --- events ---------------------------------------------------------------------------------
# Keyed by the plan's id, or the item's address as `stale:<address>` on Kafka (so `pit audit
# <address>` still names the catalog's story of it, as the arbiter does for models).

class _AboutItem(Message):
    @property
    def entity_key(self) -> str:
        return f"stale:{getattr(self, self.key_field)}"

@dataclass(frozen=True)
class ArtifactsObserved(Message):
    avro_name = "pit.stale.ArtifactsObserved"
    key_field = "store_id"
    items: list[dict[str, Any]]       # as observed, only those that changed
    revised: list[str]                # every item whose revision goes up (they and ancestors)
    forget: list[str] = field(default_factory=list)
    store_id: str = DEFAULT_STORE


@dataclass(frozen=True)
class RetentionPolicySet(Message):
    avro_name = "pit.stale.RetentionPolicySet"
    key_field = "store_id"
    document: str  # canonical JSON (policy.retention_json)
    version: int
    next_run_at: int | None = None
    store_id: str = DEFAULT_STORE


@dataclass(frozen=True)
class HoldPlaced(_AboutItem):
    avro_name = "pit.stale.HoldPlaced"
    key_field = "address"
    address: str
    reason: str


@dataclass(frozen=True)
class HoldReleased(_AboutItem):
    avro_name = "pit.stale.HoldReleased"
    key_field = "address"
    address: str


PLAN_ITEM_FIELDS = ("address", "action", "target", "reason", "rule", "size", "revision",
                    "tier", "value")


@dataclass(frozen=True)
class PlanComputed(Message):
    avro_name = "pit.stale.PlanComputed"
    key_field = "plan_id"
    plan_id: str
    policy_version: int
    expires_at: int
    items: int
    delete_bytes: int
    archive_bytes: int
    warm_bytes: int
    evaluated: int
    scheduled: bool = False
    promote_bytes: int = 0  # back to the hot tier


@dataclass(frozen=True)
class PlanItemsListed(Message):
    avro_name = "pit.stale.PlanItemsListed"
    key_field = "plan_id"
    plan_id: str
    items: list[dict[str, Any]]  # PLAN_ITEM_FIELDS


@dataclass(frozen=True)
class PlanApplyStarted(Message):
    avro_name = "pit.stale.PlanApplyStarted"
    key_field = "plan_id"
    plan_id: str


@dataclass(frozen=True)
class ItemTrashed(_AboutItem):
    avro_name = "pit.stale.ItemTrashed"
    key_field = "address"
    address: str
    plan_id: str
    purge_at: int
    trash_seq: int


@dataclass(frozen=True)
class TierMoveRequested(_AboutItem):
    avro_name = "pit.stale.TierMoveRequested"
    key_field = "address"
    address: str
    plan_id: str
    source: str
    target: str


@dataclass(frozen=True)
class ItemSkipped(_AboutItem):
    avro_name = "pit.stale.ItemSkipped"
    key_field = "address"
    address: str
    plan_id: str
    reason: str


@dataclass(frozen=True)
class PlanProgressed(Message):
    avro_name = "pit.stale.PlanProgressed"
    key_field = "plan_id"
    plan_id: str
    cursor: int
    total: int
    trashed: int
    moved: int
    skipped: int
    bytes_freed: int  # bytes trashed so far (freed when purged)


@dataclass(frozen=True)
class PlanApplied(Message):
    avro_name = "pit.stale.PlanApplied"
    key_field = "plan_id"
    plan_id: str
    trashed: int
    moved: int
    skipped: int
    bytes_freed: int


@dataclass(frozen=True)
class ItemRestored(_AboutItem):
    avro_name = "pit.stale.ItemRestored"
    key_field = "address"
    address: str
    plan_id: str


@dataclass(frozen=True)
class ItemPurged(_AboutItem):
    avro_name = "pit.stale.ItemPurged"
    key_field = "address"
    address: str
    plan_id: str
    size: int
    orphan: bool = False
    kind: str = ARTIFACT  # where its bytes are: the artifact store, or the DAG's blob store


@dataclass(frozen=True)
class BytesPurged(_AboutItem):
    avro_name = "pit.stale.BytesPurged"
    key_field = "address"
    address: str
    freed_bytes: int


@dataclass(frozen=True)
class TierMoved(_AboutItem):
    avro_name = "pit.stale.TierMoved"
    key_field = "address"
    address: str
    source: str
    target: str
    stored_bytes: int


@dataclass(frozen=True)
class TierMoveFailed(_AboutItem):
    avro_name = "pit.stale.TierMoveFailed"
    key_field = "address"
    address: str
    target: str
    error: str


@dataclass(frozen=True)
class ScheduledRun(Message):
    """A scheduled run: the plan it made, or why it was skipped; and when the next one is."""
    avro_name = "pit.stale.ScheduledRun"
    key_field = "store_id"
    due_at: int
    plan_id: str           # "" when skipped
    skipped_reason: str
    next_run_at: int | None = None
    store_id: str = DEFAULT_STORE


# --- state ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PlanItem:
    address: str
    action: Action
    target: str      # "trash", "cold", "warm" or "hot"
    reason: str
    rule: str
    size: int
    revision: int
    tier: str        # where it was when planned
    value: float = 0.0  # its value score when planned (policy.value_of), for the views


@dataclass(frozen=True, slots=True)
class Plan:
    plan_id: str
    created_at: int
    expires_at: int
    policy_version: int
    scheduled: bool = False
    items: tuple[PlanItem, ...] = ()
    status: str = "planned"   # planned -> applying -> applied
    cursor: int = 0
    trashed: int = 0
    moved: int = 0
    skipped: int = 0
    bytes_freed: int = 0
    applied_at: int | None = None


@dataclass(frozen=True, slots=True)
class Trashed:
    plan_id: str
    trashed_at: int
    purge_at: int
    seq: int


@dataclass(frozen=True, slots=True)
class StaleState:
    store_id: str
    items: PMap[str, Item] = field(default_factory=PMap)
    revisions: PMap[str, int] = field(default_factory=PMap)
    tiers: PMap[str, Tier] = field(default_factory=PMap)     # items not in the hot tier
    holds: PMap[str, str] = field(default_factory=PMap)
    plans: PMap[str, Plan] = field(default_factory=PMap)
    trash: PMap[str, Trashed] = field(default_factory=PMap)
    purged: PMap[str, int] = field(default_factory=PMap)     # address -> when
    moving: PMap[str, str] = field(default_factory=PMap)     # address -> target tier
    document: str = ""                                       # "" : the default retention
    policy_version: int = 0
    next_run_at: int | None = None
    last_run_at: int | None = None
    last_plan: str = ""
    trash_seq: int = 0

    @property
    def retention(self) -> Any:
        return retention_from_json(self.document)

    def evaluator(self, now_ms: int) -> Evaluator:
        """The evaluation of every live item (not trashed, purged or moving) at `now_ms`."""
        live = {a: i for a, i in self.items.items()
                if a not in self.trash and a not in self.purged and a not in self.moving}
        return Evaluator(self.retention, live, dict(self.holds.items()), now_ms,
                         dict(self.tiers.items()))


_RETENTIONS: dict[str, Any] = {}


def retention_from_json(document: str) -> Any:
    """The Retention of a canonical document, parsed once per document."""
    if not document:
        return DEFAULT_RETENTION
    found = _RETENTIONS.get(document)
    if found is None:
        found = _RETENTIONS[document] = parse_retention(document)
    return found


def initial_state(store_id: str) -> StaleState:
    return StaleState(store_id)


def item_of(record: dict[str, Any]) -> Item:
    return Item(record["address"], record["size"], record["stored_at"], record["last_used_at"],
                record["accesses"], record["quality"], tuple(record["tags"]),
                tuple(record["parents"]), tuple(record["names"]), record["stores"],
                record["orphan"], record["removed"], record.get("kind", ARTIFACT))


def item_record(item: Item) -> dict[str, Any]:
    return {"address": item.address, "size": item.size, "stored_at": item.stored_at,
            "last_used_at": item.last_used_at, "accesses": item.accesses,
            "quality": item.quality, "tags": list(item.tags), "parents": list(item.parents),
            "names": list(item.names), "stores": item.stores, "orphan": item.orphan,
            "removed": item.removed, "kind": item.kind}


def _plan_item(record: dict[str, Any]) -> PlanItem:
    return PlanItem(record["address"], Action(record["action"]), record["target"],
                    record["reason"], record["rule"], record["size"], record["revision"],
                    record["tier"], record.get("value", 0.0))


# --- evolve -----------------------------------------------------------------------------------

def _with_plan(s: StaleState, plan_id: str, **changes: Any) -> PMap[str, Plan]:
    return s.plans.set(plan_id, copy_with(s.plans[plan_id], **changes))


def evolve(s: StaleState, event: Message, at_ms: int) -> StaleState:
    match event:
        case ArtifactsObserved():
            items, revisions, purged = s.items, s.revisions, s.purged
            for record in event.items:
                item = item_of(record)
                items = items.set(item.address, item)
                if item.address in purged and item.last_used_at > purged[item.address]:
                    purged = purged.delete(item.address)  # stored again since the purge
            for address in event.forget:
                items = items.delete(address) if address in items else items
            for address in event.revised:
                revisions = revisions.set(address, revisions.get(address, 0) + 1)
            return copy_with(s, items=items, revisions=revisions, purged=purged)
        case RetentionPolicySet():
            return copy_with(s, document=event.document, policy_version=event.version,
                             next_run_at=event.next_run_at)
        case HoldPlaced(address=address, reason=reason):
            return copy_with(s, holds=s.holds.set(address, reason))
        case HoldReleased(address=address):
            return copy_with(s, holds=s.holds.delete(address))
        case PlanComputed():
            plan = Plan(event.plan_id, at_ms, event.expires_at, event.policy_version,
                        event.scheduled)
            return copy_with(s, plans=s.plans.set(event.plan_id, plan), last_plan=event.plan_id)
        case PlanItemsListed(plan_id=plan_id):
            listed = tuple(_plan_item(r) for r in event.items)
            return copy_with(s, plans=_with_plan(s, plan_id,
                                                 items=s.plans[plan_id].items + listed))
        case PlanApplyStarted(plan_id=plan_id):
            return copy_with(s, plans=_with_plan(s, plan_id, status="applying"))
        case ItemTrashed(address=address):
            return copy_with(s, trash=s.trash.set(address, Trashed(
                event.plan_id, at_ms, event.purge_at, event.trash_seq)),
                trash_seq=max(s.trash_seq, event.trash_seq))
        case TierMoveRequested(address=address, target=target):
            return copy_with(s, moving=s.moving.set(address, target))
        case PlanProgressed(plan_id=plan_id):
            return copy_with(s, plans=_with_plan(
                s, plan_id, cursor=event.cursor, trashed=event.trashed, moved=event.moved,
                skipped=event.skipped, bytes_freed=event.bytes_freed))
        case PlanApplied(plan_id=plan_id):
            return copy_with(s, plans=_with_plan(s, plan_id, status="applied",
                                                 applied_at=at_ms))
        case ItemRestored(address=address):
            return copy_with(s, trash=s.trash.delete(address))
        case ItemPurged(address=address):
            return copy_with(s, trash=s.trash.delete(address) if address in s.trash else s.trash,
                             purged=s.purged.set(address, at_ms))
        case TierMoved(address=address, target=target):
            tiers = (s.tiers.delete(address) if address in s.tiers else s.tiers) \
                if target == Tier.HOT else s.tiers.set(address, Tier(target))
            return copy_with(s, tiers=tiers, moving=s.moving.delete(address))
        case TierMoveFailed(address=address):
            return copy_with(s, moving=s.moving.delete(address))
        case ScheduledRun():
            return copy_with(s, next_run_at=event.next_run_at, last_run_at=at_ms)
    return s  # BytesPurged, ItemSkipped and the timer events change nothing here


# --- decide -----------------------------------------------------------------------------------

class _Decision(Decision[StaleState]):
    __slots__ = ()


def _address(value: str) -> str:
    if not is_address(value):
        raise Rejection(f"{value!r} is not an artifact address (expected sha256:<64 hex digits>)")
    return value


def _observed(record: dict[str, Any]) -> Item:
    item = item_of(record)
    _address(item.address)
    for name in ("size", "stored_at", "last_used_at", "accesses", "stores"):
        if getattr(item, name) < 0:
            raise Rejection(f"{item.address}: {name} must not be negative, got "
                            f"{getattr(item, name)}")
    if item.last_used_at < item.stored_at:
        raise Rejection(f"{item.address}: last used ({item.last_used_at}) before it was stored"
                        f" ({item.stored_at})")
    if item.kind not in (ARTIFACT, DAG_OUTPUT):
        raise Rejection(f"{item.address}: kind {item.kind!r} is neither {ARTIFACT} nor"
                        f" {DAG_OUTPUT}")
    if item.quality is not None and not 0.0 <= item.quality <= 1.0:
        raise Rejection(f"{item.address}: quality {item.quality} is outside [0, 1]")
    for parent in item.parents:
        _address(parent)
    return item


def _ancestors(items: Any, addresses: Iterable[str]) -> set[str]:
    todo, seen = list(addresses), set(addresses)
    while todo:
        item = items.get(todo.pop())
        for parent in item.parents if item is not None else ():
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


def _on_observe(d: _Decision, c: ObserveArtifacts) -> None:
    if len(c.items) > MAX_OBSERVED:
        raise Rejection(f"{len(c.items)} items in one observation, more than {MAX_OBSERVED}")
    if not c.items and not c.forget:
        raise Rejection("nothing observed: no items and nothing to forget")
    changed = []
    for record in c.items:
        item = _observed(record)
        if d.state.items.get(item.address) != item:
            changed.append(item)
    forget = sorted(a for a in set(c.forget) if _address(a) in d.state.items
                    and d.state.items[a].orphan)
    if not changed and not forget:
        return
    revised = _ancestors(d.state.items, [i.address for i in changed] + forget)
    # a changed item's new parents too: it may now protect them
    revised |= _ancestors(d.state.items, [p for i in changed for p in i.parents])
    d.emit(ArtifactsObserved([item_record(i) for i in changed], sorted(revised), forget))


def _next_run(retention: Any, after_ms: int) -> int | None:
    if retention.schedule is None:
        return None
    from datetime import UTC, datetime

    from croniter import croniter

    start = datetime.fromtimestamp(after_ms / 1000, tz=UTC)
    return int(croniter(retention.schedule.cron, start).get_next(datetime).timestamp() * 1000)


def _schedule_run(d: _Decision, due_at: int | None) -> None:
    if due_at is not None:
        d.emit(schedule_timer(f"stale/{d.state.store_id}/run/{due_at}", due_at,
                              RunSchedule(due_at, d.state.store_id), STALE))


def _on_policy(d: _Decision, c: SetRetentionPolicy) -> None:
    try:
        retention = parse_retention(c.document)
    except RetentionError as exc:
        raise Rejection(str(exc)) from None
    document = retention_json(retention)
    assert retention_from_json(document) == retention  # the canonical form round-trips
    if document == d.state.document:
        return
    next_run, before = _next_run(retention, d.now), d.state.next_run_at
    d.emit(RetentionPolicySet(document, d.state.policy_version + 1, next_run, d.state.store_id))
    if next_run != before:
        _schedule_run(d, next_run)


def _on_hold(d: _Decision, c: PlaceHold) -> None:
    _address(c.address)
    if d.state.holds.get(c.address) != c.reason:
        d.emit(HoldPlaced(c.address, c.reason))


def _on_release_hold(d: _Decision, c: ReleaseHold) -> None:
    if _address(c.address) not in d.state.holds:
        raise Rejection(f"{c.address} has no hold")
    d.emit(HoldReleased(c.address))


def _plan(d: _Decision, plan_id: str, scheduled: bool) -> None:
    if not plan_id or plan_id in d.state.plans:
        raise Rejection(f"plan id {plan_id!r} is empty or already used")
    s = d.state
    evaluator = s.evaluator(d.now)
    items: list[dict[str, Any]] = []
    sizes = {"trash": 0, "cold": 0, "warm": 0, "hot": 0}
    for evaluation in evaluator.evaluate_all():
        tier = s.tiers.get(evaluation.address, Tier.HOT)
        if evaluation.action is Action.DELETE:
            target = "trash"
        elif evaluation.target is not None and evaluation.target != tier:
            target = evaluation.target.value
        else:
            continue
        item = evaluator.items[evaluation.address]
        sizes[target] += item.size
        items.append({"address": item.address, "action": evaluation.action.value,
                      "target": target, "reason": evaluation.reason, "rule": evaluation.rule,
                      "size": item.size, "revision": s.revisions.get(item.address, 0),
                      "tier": tier.value, "value": evaluation.value.total})
    ttl_ms = int(s.retention.plan_ttl_hours * HOUR_MS)
    d.emit(PlanComputed(plan_id, s.policy_version, d.now + ttl_ms, len(items), sizes["trash"],
                        sizes["cold"], sizes["warm"], len(evaluator.items), scheduled,
                        sizes["hot"]))
    for start in range(0, len(items), PLAN_CHUNK):
        d.emit(PlanItemsListed(plan_id, items[start:start + PLAN_CHUNK]))


def _on_plan(d: _Decision, c: PlanCleanup) -> None:
    _plan(d, c.plan_id, scheduled=False)


def _plan_of(d: _Decision, plan_id: str) -> Plan:
    plan = d.state.plans.get(plan_id)
    if plan is None:
        raise Rejection(f"no plan {plan_id!r}")
    return plan


def _on_apply(d: _Decision, c: ApplyPlan) -> None:
    plan = _plan_of(d, c.plan_id)
    if plan.status == "applied":
        raise Rejection(f"plan {c.plan_id} was already applied")
    if plan.status == "applying":
        raise Rejection(f"plan {c.plan_id} is being applied ({plan.cursor} of "
                        f"{len(plan.items)} items done)")
    if d.now > plan.expires_at:
        raise Rejection(f"plan {c.plan_id} expired {(d.now - plan.expires_at) / HOUR_MS:.1f} h "
                        "ago: plan again")
    d.emit(PlanApplyStarted(c.plan_id))
    _apply_batch(d, c.plan_id)


def _on_continue(d: _Decision, c: ContinueApply) -> None:
    plan = _plan_of(d, c.plan_id)
    if plan.status != "applying" or plan.cursor != c.cursor:
        return  # a timer for a batch already done
    _apply_batch(d, c.plan_id)


def _still_planned(s: StaleState, plan: Plan, planned: PlanItem) -> str:
    """Why `planned` may not be carried out now ("" if it may)."""
    address = planned.address
    if address not in s.items:
        return "no longer known"
    if address in s.holds:
        return f"legal hold placed since the plan: {s.holds[address] or 'no reason given'}"
    if address in s.trash or address in s.purged:
        return "already deleted"
    if address in s.moving:
        return "being moved to another tier"
    if s.policy_version != plan.policy_version:
        return (f"the retention policy changed since the plan (version {plan.policy_version}"
                f" -> {s.policy_version})")
    if s.revisions.get(address, 0) != planned.revision:
        return "changed since the plan (read, stored again, or its lineage grew)"
    if s.tiers.get(address, Tier.HOT).value != planned.tier:
        return "moved to another tier since the plan"
    return ""


def _apply_batch(d: _Decision, plan_id: str) -> None:
    plan = d.state.plans[plan_id]
    trashed, moved, skipped, freed = plan.trashed, plan.moved, plan.skipped, plan.bytes_freed
    end = min(len(plan.items), plan.cursor + APPLY_BATCH)
    trash_days = d.state.retention.trash_days
    for planned in plan.items[plan.cursor:end]:
        why = _still_planned(d.state, plan, planned)
        if why:
            d.emit(ItemSkipped(planned.address, plan_id, why))
            skipped += 1
        elif planned.target == "trash":
            seq = d.state.trash_seq + 1
            purge_at = d.now + int(trash_days * DAY_MS)
            d.emit(ItemTrashed(planned.address, plan_id, purge_at, seq))
            d.emit(schedule_timer(f"stale/{d.state.store_id}/purge/{seq}", purge_at,
                                  PurgeItem(planned.address, seq, d.state.store_id), STALE))
            trashed += 1
            freed += planned.size
        else:
            d.emit(TierMoveRequested(planned.address, plan_id, planned.tier, planned.target))
            moved += 1
    d.emit(PlanProgressed(plan_id, end, len(plan.items), trashed, moved, skipped, freed))
    if end < len(plan.items):
        d.emit(schedule_timer(f"stale/{d.state.store_id}/apply/{plan_id}/{end}", d.now,
                              ContinueApply(plan_id, end, d.state.store_id), STALE))
    else:
        d.emit(PlanApplied(plan_id, trashed, moved, skipped, freed))


def _on_restore(d: _Decision, c: RestoreItems) -> None:
    s = d.state
    if c.target in s.plans:
        addresses = sorted(a for a, t in s.trash.items() if t.plan_id == c.target)
        if not addresses:
            raise Rejection(f"nothing of plan {c.target} is in the trash")
    elif is_address(c.target):
        if c.target in s.purged:
            raise Rejection(f"{c.target} was purged: its bytes are gone and cannot be restored")
        if c.target not in s.trash:
            raise Rejection(f"{c.target} is not in the trash")
        addresses = [c.target]
    else:
        raise Rejection(f"{c.target!r} is neither a plan id nor an artifact address")
    for address in addresses:
        d.emit(ItemRestored(address, s.trash[address].plan_id))


def _on_purge(d: _Decision, c: PurgeItem) -> None:
    trashed = d.state.trash.get(c.address)
    if trashed is None or trashed.seq != c.trash_seq:
        return  # restored (or trashed again later) before the grace period ended
    item = d.state.items.get(c.address)
    d.emit(ItemPurged(c.address, trashed.plan_id, item.size if item else 0,
                      bool(item and item.orphan), item.kind if item else ARTIFACT))


def _on_run(d: _Decision, c: RunSchedule) -> None:
    retention = d.state.retention
    if retention.schedule is None or c.due_at != d.state.next_run_at:
        return  # a run of a schedule since replaced
    next_run = _next_run(retention, max(d.now, c.due_at))
    late_ms = d.now - c.due_at
    if late_ms > retention.schedule.window_minutes * 60_000:
        d.emit(ScheduledRun(c.due_at, "", f"fired {late_ms / 60_000:.0f} minutes late, past "
                            f"the {retention.schedule.window_minutes}-minute window", next_run,
                            d.state.store_id))
    else:
        plan_id = f"scheduled-{c.due_at}"
        d.emit(ScheduledRun(c.due_at, plan_id, "", next_run, d.state.store_id))
        _plan(d, plan_id, scheduled=True)
        if retention.schedule.apply and d.state.plans[plan_id].items:
            d.emit(PlanApplyStarted(plan_id))
            _apply_batch(d, plan_id)
    _schedule_run(d, next_run)


def _on_moved(d: _Decision, c: ReportTierMoved) -> None:
    target = d.state.moving.get(_address(c.address))
    if target is None:
        return  # reported again after a restart: already recorded
    if c.tier != target:
        raise Rejection(f"{c.address} was to move to {target}, not {c.tier}")
    d.emit(TierMoved(c.address, d.state.tiers.get(c.address, Tier.HOT).value, target,
                     c.stored_bytes))


def _on_move_failed(d: _Decision, c: ReportTierMoveFailed) -> None:
    if d.state.moving.get(_address(c.address)) is not None:
        d.emit(TierMoveFailed(c.address, c.tier, c.error))


def _on_purged(d: _Decision, c: ReportPurged) -> None:
    if _address(c.address) not in d.state.purged:
        raise Rejection(f"{c.address} was not purged")
    d.emit(BytesPurged(c.address, c.freed_bytes))


_RULES: Rules[_Decision] = Rules("the stale manager", "store_id", {
    ObserveArtifacts: _on_observe,
    SetRetentionPolicy: _on_policy,
    PlaceHold: _on_hold,
    ReleaseHold: _on_release_hold,
    PlanCleanup: _on_plan,
    ApplyPlan: _on_apply,
    ContinueApply: _on_continue,
    RestoreItems: _on_restore,
    PurgeItem: _on_purge,
    RunSchedule: _on_run,
    ReportTierMoved: _on_moved,
    ReportTierMoveFailed: _on_move_failed,
    ReportPurged: _on_purged,
})


def decide(state: StaleState, command: Message, now_ms: int) -> Decided:
    return _RULES.decide(_Decision(state, now_ms, evolve), command)


COMMANDS = _RULES.commands
EVENTS = (ArtifactsObserved, RetentionPolicySet, HoldPlaced, HoldReleased, PlanComputed,
          PlanItemsListed, PlanApplyStarted, ItemTrashed, TierMoveRequested, ItemSkipped,
          PlanProgressed, PlanApplied, ItemRestored, ItemPurged, BytesPurged, TierMoved,
          TierMoveFailed, ScheduledRun, *TIMER_EVENTS)

STALE: Decider[StaleState] = Decider(
    name="stale",
    command_topic=STALE_COMMANDS,
    event_topic=STALE_EVENTS,
    commands=COMMANDS,
    events=EVENTS,
    initial_state=initial_state,
    decide=decide,
    evolve=evolve,
    entity_of=attrgetter("store_id"),
)

__all__ = ["STALE", "retention_from", "retention_from_json"]
