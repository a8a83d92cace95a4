"""The Stale Manager's views (issue 13), from pit.stale.events alone, and the readers of them
(`pit stale ...`, the API, the client and the metrics query these).

`stale` (tables `stale_items`, `stale_plans`, `stale_plan_items`, `stale_stores`):
* stale_items: one row per store and artifact address the Stale Manager heard of - as last
  observed (size, times, reads, orphan, removed from the catalog), its tier (hot, warm,
  cold), its state (live, moving, trashed, purged), its legal hold, the last plan that
  listed it and what that plan said (action, target, reason, rule), the plan that last
  trashed it and when, its purge time while in the trash, when it was purged, and
  `value_score`: its value when that last plan was made (null if no plan listed it yet).
  `observed` is false for an address known only by a hold, or an orphan the blob store no
  longer has (the decider forgot it). Why the value at the last plan and not now: a value
  decays with every idle hour, so a live one is computed, never an event - plans carry the
  value they ranked by, and `pit stale explain` computes today's with its breakdown;
* stale_plans: one row per plan - its totals as computed, its status (planned, applying,
  applied), the apply's cursor and counters, and its times;
* stale_plan_items: every item of every plan, in plan order (`position`), its value score
  when planned (`value_score`), and what the apply did with it: pending, trashed, moving,
  moved, move_failed or skipped (with why);
* stale_stores: per store the retention document in force and its version, the schedule's
  next and last run, the last plan, and running totals - items and bytes per tier of the
  live items, moving, trash, purged, holds, bytes freed - kept as each item changes, so
  `status` and the bytes gauge read one row, never the 100,000 items.

Why the totals are kept, not counted: a status is asked for often (`pit stale status`, the
metrics after every batch), and a store holds 100,000s of items. Each item change moves
its weight (`_weight`) from the totals it left to those it joins, as the pool view keeps
its hosts' memory.

Every column comes from the events (times are the envelopes' occurred_at), so `pit replay
stale` reproduces the tables. A store's events carry its monotonic envelope sequence; the
view remembers the last one applied per store, so a duplicated event in the log changes
nothing. A batch loads the rows its events touch (by key, IN lookups), changes them in
memory and writes them back once (projections/rows.py): no event costs a table scan.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    func,
    inspect,
    select,
)

from projections.rows import Rows
from projections.runtime import View, constraint_name, index_name, live_tables
from schemas.codec import Decoded
from streams.log import LogRecord
from streams.sql import Long
from streams.stale.manager import DEFAULT_STORE
from streams.stale.topics import STALE_EVENTS

log = logging.getLogger(__name__)

_ADDRESS = String(80)
_ID = String(255)
_PREFIX = "pit.stale."
TIERS = ("hot", "warm", "cold")

# Per store, the totals an item's weight counts into (stale_stores columns).
_TOTALS = (*(f"{tier}_{what}" for tier in TIERS for what in ("items", "bytes")),
           "moving_items", "moving_bytes", "trash_items", "trash_bytes", "purged_items",
           "holds")

# The events the view applies (the timer events on the same topic change none of its rows).
_EVENTS = frozenset(_PREFIX + name for name in (
    "ArtifactsObserved", "RetentionPolicySet", "HoldPlaced", "HoldReleased", "PlanComputed",
    "PlanItemsListed", "PlanApplyStarted", "ItemTrashed", "TierMoveRequested", "ItemSkipped",
    "PlanProgressed", "PlanApplied", "ItemRestored", "ItemPurged", "BytesPurged", "TierMoved",
    "TierMoveFailed", "ScheduledRun"))
# Events about one item: its row is loaded for them.
_ABOUT_ITEM = frozenset(_PREFIX + name for name in (
    "HoldPlaced", "HoldReleased", "ItemTrashed", "TierMoveRequested", "ItemRestored",
    "ItemPurged", "TierMoved", "TierMoveFailed"))
# Events that name a plan's item and change its outcome.
_OUTCOMES = frozenset(_PREFIX + name for name in ("ItemTrashed", "TierMoveRequested",
                                                  "ItemSkipped"))
# Events that change a plan's row: it is loaded for them.
_PLAN_EVENTS = frozenset({"PlanItemsListed", "PlanApplyStarted", "PlanProgressed",
                          "PlanApplied"})
ANALYZE_AFTER = 1_000  # rows added to a table before PostgreSQL is asked to analyze it
_COUNTERS = ("cursor", "trashed", "moved", "skipped", "bytes_freed")


def _weight(row: dict[str, Any]) -> dict[str, int]:
    """What an item adds to its store's totals: a live item that is observed counts in its
    tier (as the decider's evaluator sees it), a moving, trashed or purged one in those, a
    held one in the holds."""
    weight: dict[str, int] = {}
    state = row["state"]
    if state == "live":
        if row["observed"]:
            weight[f"{row['tier']}_items"], weight[f"{row['tier']}_bytes"] = 1, row["size"]
    elif state == "moving":
        weight["moving_items"], weight["moving_bytes"] = 1, row["size"]
    elif state == "trashed":
        weight["trash_items"], weight["trash_bytes"] = 1, row["size"]
    else:
        weight["purged_items"] = 1
    if row["held"]:
        weight["holds"] = 1
    return weight


class StaleView(View):
    name = "stale"
    topics = (STALE_EVENTS,)
    table_names = ("stale_items", "stale_plans", "stale_plan_items", "stale_stores")

    def __init__(self) -> None:
        # Per table: rows added by this process, and how many there were at its last ANALYZE
        # (a hint only: a restart starts over, autovacuum still runs).
        self._added: dict[str, int] = {}
        self._analyzed: dict[str, int] = {}

    def define(self, metadata: MetaData, suffix: str = "", token: str = "") -> dict[str, Table]:
        items = Table(
            "stale_items" + suffix, metadata,
            Column("store_id", _ID, nullable=False),
            Column("address", _ADDRESS, nullable=False),
            Column("observed", Boolean, nullable=False),
            Column("size", Long, nullable=False),
            Column("stored_at", Long, nullable=False),
            Column("last_used_at", Long, nullable=False),
            Column("accesses", Long, nullable=False),
            Column("quality", Float),
            Column("orphan", Boolean, nullable=False),
            Column("removed", Boolean, nullable=False),
            Column("tier", String(8), nullable=False),
            Column("state", String(16), nullable=False),
            Column("held", Boolean, nullable=False),
            Column("hold_reason", Text, nullable=False),
            Column("plan_id", _ID, nullable=False),      # the last plan that listed it
            Column("action", String(16), nullable=False),
            Column("target", String(8), nullable=False),
            Column("reason", Text, nullable=False),
            Column("rule", _ID, nullable=False),
            Column("value_score", Float),            # its value when that plan was made
            Column("moving_to", String(8), nullable=False),  # "" unless moving
            Column("moving_plan", _ID, nullable=False),      # the plan that asked the move
            Column("trashed_by", _ID, nullable=False),       # the last plan that trashed it
            Column("trashed_at", Long),                      # and when
            Column("purge_at", Long),                        # while in the trash
            Column("purged_at", Long),
            Column("updated_at", Long, nullable=False),
            PrimaryKeyConstraint("store_id", "address",
                                 name=constraint_name("pk", "stale_items", token)),
        )
        plans = Table(
            "stale_plans" + suffix, metadata,
            Column("store_id", _ID, nullable=False),
            Column("plan_id", _ID, nullable=False),
            Column("created_at", Long, nullable=False),
            Column("expires_at", Long, nullable=False),
            Column("policy_version", Long, nullable=False),
            Column("scheduled", Boolean, nullable=False),
            Column("items", Long, nullable=False),
            Column("listed", Long, nullable=False),     # items listed so far (next position)
            Column("delete_bytes", Long, nullable=False),
            Column("archive_bytes", Long, nullable=False),
            Column("warm_bytes", Long, nullable=False),
            Column("promote_bytes", Long, nullable=False),
            Column("evaluated", Long, nullable=False),
            Column("status", String(16), nullable=False),
            Column("cursor", Long, nullable=False),
            Column("trashed", Long, nullable=False),
            Column("moved", Long, nullable=False),
            Column("skipped", Long, nullable=False),
            Column("bytes_freed", Long, nullable=False),
            Column("apply_started_at", Long),
            Column("applied_at", Long),
            PrimaryKeyConstraint("store_id", "plan_id",
                                 name=constraint_name("pk", "stale_plans", token)),
            Index(index_name("stale_plans", "created", token), "store_id", "created_at"),
        )
        plan_items = Table(
            "stale_plan_items" + suffix, metadata,
            Column("store_id", _ID, nullable=False),
            Column("plan_id", _ID, nullable=False),
            Column("address", _ADDRESS, nullable=False),   # once per plan
            Column("position", Long, nullable=False),
            Column("action", String(16), nullable=False),
            Column("target", String(8), nullable=False),
            Column("reason", Text, nullable=False),
            Column("rule", _ID, nullable=False),
            Column("size", Long, nullable=False),
            Column("tier", String(8), nullable=False),     # where it was when planned
            Column("revision", Long, nullable=False),
            Column("value_score", Float, nullable=False),  # its value score when planned
            Column("outcome", String(16), nullable=False),
            Column("outcome_reason", Text, nullable=False),  # why skipped, or the move failed
            PrimaryKeyConstraint("store_id", "plan_id", "address",
                                 name=constraint_name("pk", "stale_plan_items", token)),
            Index(index_name("stale_plan_items", "position", token), "store_id", "plan_id",
                  "position"),
        )
        stores = Table(
            "stale_stores" + suffix, metadata,
            Column("store_id", _ID, nullable=False),
            Column("policy_version", Long, nullable=False),
            Column("document", Text, nullable=False),      # "": the default retention
            Column("next_run_at", Long),
            Column("last_run_at", Long),
            Column("last_run_skipped", Text, nullable=False),  # why the last run made no plan
            Column("last_plan", _ID, nullable=False),
            *(Column(name, Long, nullable=False) for name in _TOTALS),
            Column("bytes_freed", Long, nullable=False),   # reported purged (BytesPurged)
            Column("last_sequence", Long, nullable=False),
            Column("updated_at", Long, nullable=False),
            PrimaryKeyConstraint("store_id", name=constraint_name("pk", "stale_stores", token)),
        )
        return {"stale_items": items, "stale_plans": plans, "stale_plan_items": plan_items,
                "stale_stores": stores}

    def apply_batch(self, conn: Connection, tables: dict[str, Table],
                    events: Sequence[tuple[Decoded, LogRecord]]) -> None:
        selected = [(d.name, d.record) for d, _ in events if d.name in _EVENTS]
        if not selected:
            return
        stores = Rows(tables["stale_stores"], ("store_id",))
        stores.load(conn, {(record["envelope"]["entity_key"],) for _, record in selected})
        last = {key[0]: row["last_sequence"] for key, row in stores.rows.items()}
        fresh = []
        for name, record in selected:
            envelope = record["envelope"]
            store_id, sequence = envelope["entity_key"], envelope["sequence"]
            if sequence <= last.get(store_id, 0):
                continue  # the same event again (a duplicate in the log): already applied
            last[store_id] = sequence
            fresh.append((name[len(_PREFIX):], record, store_id, sequence,
                          envelope["occurred_at"]))
        if not fresh:
            return
        batch = _StaleBatch(conn, tables, stores, fresh)
        for name, record, store_id, sequence, at_ms in fresh:
            batch.apply(name, record, store_id, sequence, at_ms)
        added = batch.write(conn)
        if conn.dialect.name == "postgresql":
            self._analyze_grown(conn, tables, added)
        if batch.unknown:
            log.warning("stale view: %d events named plans or items it never saw (the log it"
                        " read began later); `pit replay stale` rebuilds it from the archive",
                        batch.unknown)


    def _analyze_grown(self, conn: Connection, tables: dict[str, Table],
                       added: dict[str, int]) -> None:
        """ANALYZE each table that doubled (by at least ANALYZE_AFTER rows) since its last one.

        Why: without statistics PostgreSQL takes a table that just grew by a plan of 100,000
        items for a small one, and finds a plan's item by address through the position index
        (the whole plan scanned per row: an apply slows down as it goes). A plan is usually
        applied at once, long before autovacuum analyzes the table; doubling keeps the
        ANALYZEs to a handful however large the store grows."""
        preparer = conn.dialect.identifier_preparer
        for table in tables.values():
            total = self._added.get(table.name, 0) + added.get(table.name, 0)
            self._added[table.name] = total
            before = self._analyzed.get(table.name, 0)
            if total - before >= max(ANALYZE_AFTER, before):
                conn.exec_driver_sql(f"ANALYZE {preparer.format_table(table)}")
                self._analyzed[table.name] = total


_Fresh = tuple[str, dict[str, Any], str, int, int]  # name, record, store, sequence, at


class _StaleBatch:
    """One batch of stale events applied to the rows it touches."""

    def __init__(self, conn: Connection, tables: dict[str, Table], stores: Rows,
                 fresh: list[_Fresh]) -> None:
        self.stores = stores
        self.items = Rows(tables["stale_items"], ("store_id", "address"))
        self.plans = Rows(tables["stale_plans"], ("store_id", "plan_id"))
        self.plan_items = Rows(tables["stale_plan_items"], ("store_id", "plan_id", "address"))
        self.unknown = 0  # events about plans or items without a row: skipped
        item_keys: set[tuple[str, str]] = set()
        plan_keys: set[tuple[str, str]] = set()
        outcome_keys: set[tuple[str, str, str]] = set()
        for name, record, store_id, _, _ in fresh:
            full = _PREFIX + name
            if name == "ArtifactsObserved":
                item_keys.update((store_id, i["address"]) for i in record["items"])
                item_keys.update((store_id, a) for a in record["forget"])
            elif name == "PlanItemsListed":
                item_keys.update((store_id, i["address"]) for i in record["items"])
            elif full in _ABOUT_ITEM:
                item_keys.add((store_id, record["address"]))
            if name in _PLAN_EVENTS:
                plan_keys.add((store_id, record["plan_id"]))
            if full in _OUTCOMES:
                outcome_keys.add((store_id, record["plan_id"], record["address"]))
        self.items.load(conn, item_keys)
        self.plans.load(conn, plan_keys)
        # A reported move names no plan: it is the plan that asked it, the item's
        # `moving_plan` as stored or as a TierMoveRequested earlier in this batch sets it.
        asked = {key: row["moving_plan"] for key, row in self.items.rows.items()}
        for name, record, store_id, _, _ in fresh:
            key = (store_id, record.get("address", ""))
            if name == "TierMoveRequested":
                asked[key] = record["plan_id"]
            elif name in ("TierMoved", "TierMoveFailed") and asked.get(key):
                outcome_keys.add((store_id, asked[key], key[1]))
        self.plan_items.load(conn, outcome_keys)

    def write(self, conn: Connection) -> dict[str, int]:
        """Write the rows back; how many rows each table gained."""
        added = {}
        for rows in (self.stores, self.items, self.plans, self.plan_items):
            added[rows.table.name] = len(rows.dirty - rows.stored)
            rows.write(conn)
        return added

    # --- helpers ------------------------------------------------------------------------------

    def item(self, store_id: str, address: str, at_ms: int, **changes: Any) -> None:
        """Change an item (a row for it if none), and its store's totals to match."""
        key = (store_id, address)
        if key in self.items.rows:
            row = self.items.changed(key)
        else:
            row = self.items.add(
                key, observed=False, size=0, stored_at=0, last_used_at=0, accesses=0,
                quality=None, orphan=False, removed=False, tier="hot", state="live",
                held=False, hold_reason="", plan_id="", action="", target="", reason="",
                rule="", value_score=None, moving_to="", moving_plan="", trashed_by="",
                trashed_at=None, purge_at=None, purged_at=None, updated_at=at_ms)
        before = _weight(row)
        row.update(changes, updated_at=at_ms)
        after = _weight(row)
        if before != after:
            store = self.stores.changed((store_id,))
            for name, amount in before.items():
                store[name] -= amount
            for name, amount in after.items():
                store[name] += amount

    def plan(self, store_id: str, plan_id: str) -> dict[str, Any] | None:
        """The plan's row to change, or None (counted) when the view never saw it computed."""
        key = (store_id, plan_id)
        if key in self.plans.rows:
            return self.plans.changed(key)
        self.unknown += 1
        return None

    def outcome(self, store_id: str, plan_id: str, address: str, outcome: str,
                reason: str = "") -> None:
        key = (store_id, plan_id, address)
        if key in self.plan_items.rows:
            self.plan_items.changed(key).update(outcome=outcome, outcome_reason=reason)
        else:
            self.unknown += 1

    # --- the events ---------------------------------------------------------------------------

    def apply(self, name: str, record: dict[str, Any], store_id: str, sequence: int,
              at_ms: int) -> None:
        if (store_id,) not in self.stores.rows:
            self.stores.add((store_id,), policy_version=0, document="", next_run_at=None,
                            last_run_at=None, last_run_skipped="", last_plan="",
                            **dict.fromkeys(_TOTALS, 0), bytes_freed=0, last_sequence=0,
                            updated_at=at_ms)
        store = self.stores.changed((store_id,))
        store["last_sequence"], store["updated_at"] = sequence, at_ms
        address = record.get("address", "")
        if name == "ArtifactsObserved":
            self.observed(record, store_id, at_ms)
        elif name == "RetentionPolicySet":
            store.update(document=record["document"], policy_version=record["version"],
                         next_run_at=record["next_run_at"])
        elif name == "HoldPlaced":
            self.item(store_id, address, at_ms, held=True, hold_reason=record["reason"])
        elif name == "HoldReleased":
            self.item(store_id, address, at_ms, held=False, hold_reason="")
        elif name == "PlanComputed":
            self.computed(record, store_id, at_ms)
        elif name == "PlanItemsListed":
            self.listed(record, store_id, at_ms)
        elif name == "PlanApplyStarted":
            if (plan := self.plan(store_id, record["plan_id"])) is not None:
                plan.update(status="applying", apply_started_at=at_ms)
        elif name == "ItemTrashed":
            self.item(store_id, address, at_ms, state="trashed", trashed_by=record["plan_id"],
                      trashed_at=at_ms, purge_at=record["purge_at"])
            self.outcome(store_id, record["plan_id"], address, "trashed")
        elif name == "TierMoveRequested":
            self.item(store_id, address, at_ms, state="moving", moving_to=record["target"],
                      moving_plan=record["plan_id"])
            self.outcome(store_id, record["plan_id"], address, "moving")
        elif name == "ItemSkipped":
            self.outcome(store_id, record["plan_id"], address, "skipped", record["reason"])
        elif name in ("PlanProgressed", "PlanApplied"):
            if (plan := self.plan(store_id, record["plan_id"])) is not None:
                plan.update({k: record[k] for k in _COUNTERS if k in record})
                if name == "PlanApplied":
                    plan.update(status="applied", applied_at=at_ms)
        elif name == "ItemRestored":
            self.item(store_id, address, at_ms, state="live", purge_at=None)
        elif name == "ItemPurged":
            self.item(store_id, address, at_ms, state="purged", purge_at=None,
                      purged_at=at_ms)
        elif name == "BytesPurged":
            store["bytes_freed"] += record["freed_bytes"]
        elif name in ("TierMoved", "TierMoveFailed"):
            self.moved(name, record, store_id, at_ms)
        elif name == "ScheduledRun":
            store.update(next_run_at=record["next_run_at"], last_run_at=at_ms,
                         last_run_skipped=record["skipped_reason"])

    def observed(self, record: dict[str, Any], store_id: str, at_ms: int) -> None:
        for observed in record["items"]:
            address = observed["address"]
            changes = {name: observed[name] for name in (
                "size", "stored_at", "last_used_at", "accesses", "quality", "orphan",
                "removed")}
            row = self.items.get((store_id, address))
            if row is not None and row["state"] == "purged" \
                    and observed["last_used_at"] > row["purged_at"]:
                changes.update(state="live", purged_at=None)  # stored again since the purge
            self.item(store_id, address, at_ms, observed=True, **changes)
        for address in record["forget"]:
            self.item(store_id, address, at_ms, observed=False)

    def computed(self, record: dict[str, Any], store_id: str, at_ms: int) -> None:
        self.plans.add((store_id, record["plan_id"]), created_at=at_ms,
                       expires_at=record["expires_at"],
                       policy_version=record["policy_version"],
                       scheduled=record["scheduled"], items=record["items"], listed=0,
                       delete_bytes=record["delete_bytes"],
                       archive_bytes=record["archive_bytes"], warm_bytes=record["warm_bytes"],
                       promote_bytes=record["promote_bytes"], evaluated=record["evaluated"],
                       status="planned", **dict.fromkeys(_COUNTERS, 0), apply_started_at=None,
                       applied_at=None)
        self.stores.changed((store_id,))["last_plan"] = record["plan_id"]

    def listed(self, record: dict[str, Any], store_id: str, at_ms: int) -> None:
        plan_id = record["plan_id"]
        plan = self.plan(store_id, plan_id)
        if plan is None:
            return
        position = plan["listed"]
        for listed in record["items"]:
            address = listed["address"]
            self.plan_items.add((store_id, plan_id, address), position=position,
                                action=listed["action"], target=listed["target"],
                                reason=listed["reason"], rule=listed["rule"],
                                size=listed["size"], tier=listed["tier"],
                                revision=listed["revision"],
                                value_score=listed["value"], outcome="pending",
                                outcome_reason="")
            position += 1
            self.item(store_id, address, at_ms, plan_id=plan_id, action=listed["action"],
                      target=listed["target"], reason=listed["reason"], rule=listed["rule"],
                      value_score=listed["value"])
        plan["listed"] = position

    def moved(self, name: str, record: dict[str, Any], store_id: str, at_ms: int) -> None:
        address = record["address"]
        row = self.items.get((store_id, address))
        plan_id = row["moving_plan"] if row is not None else ""
        if name == "TierMoved":
            self.item(store_id, address, at_ms, state="live", tier=record["target"],
                      moving_to="", moving_plan="")
            self.outcome(store_id, plan_id, address, "moved")
        else:  # the item stays where it was, readable
            self.item(store_id, address, at_ms, state="live", moving_to="", moving_plan="")
            self.outcome(store_id, plan_id, address, "move_failed", record["error"])


# --- readers --------------------------------------------------------------------------------

def _tables() -> dict[str, Table]:
    return live_tables(StaleView())


def projected(engine: Engine) -> bool:
    return inspect(engine).has_table("stale_stores")


def _empty_status(store_id: str) -> dict[str, Any]:
    return {"store_id": store_id, "policy_version": 0, "document": "", "sequence": 0,
            "tiers": {tier: {"items": 0, "bytes": 0} for tier in TIERS},
            "moving_items": 0, "moving_bytes": 0, "trash_items": 0, "trash_bytes": 0,
            "purged_items": 0, "holds": 0, "bytes_freed": 0, "next_run_at": None,
            "last_run_at": None, "last_run_skipped": "", "last_plan": "", "plans": {}}


def status(engine: Engine, store_id: str = DEFAULT_STORE) -> dict[str, Any]:
    """A store at a glance: items and bytes per tier (live items: not moving, trashed or
    purged), moving, trash, purged, holds, bytes freed, the policy version and document,
    the next and last run, the last plan, plans by status. All zero before any event
    (`sequence` 0)."""
    found = _empty_status(store_id)
    if not projected(engine):
        return found
    tables = _tables()
    stores, plans = tables["stale_stores"], tables["stale_plans"]
    with engine.connect() as conn:
        row = conn.execute(select(stores).where(stores.c.store_id == store_id)
                           ).mappings().first()
        if row is None:
            return found
        by_status: dict[str, int] = dict(conn.execute(select(plans.c.status, func.count()).where(
            plans.c.store_id == store_id).group_by(plans.c.status)).all())
    found.update({name: row[name] for name in (
        "policy_version", "document", "moving_items", "moving_bytes", "trash_items",
        "trash_bytes", "purged_items", "holds", "bytes_freed", "next_run_at", "last_run_at",
        "last_run_skipped", "last_plan")})
    found["sequence"] = row["last_sequence"]
    found["tiers"] = {tier: {"items": row[f"{tier}_items"], "bytes": row[f"{tier}_bytes"]}
                      for tier in TIERS}
    found["plans"] = by_status
    return found


def tier_bytes(engine: Engine) -> dict[str, int]:
    """Bytes of live items per tier, over every store (the `pit_stale_bytes` gauge)."""
    totals = dict.fromkeys(TIERS, 0)
    if not projected(engine):
        return totals
    stores = _tables()["stale_stores"]
    with engine.connect() as conn:
        row = conn.execute(select(*(func.coalesce(func.sum(stores.c[f"{tier}_bytes"]), 0)
                                    for tier in TIERS))).one()
    return {tier: int(value) for tier, value in zip(TIERS, row, strict=True)}


def plan(engine: Engine, plan_id: str, *, store_id: str = DEFAULT_STORE, limit: int = 50,
         offset: int = 0) -> dict[str, Any] | None:
    """A plan: its totals, status and progress, and `item_rows`: `limit` of its items from
    `offset`, in plan order, each with its outcome. None if unknown."""
    if not projected(engine):
        return None
    tables = _tables()
    plans, items = tables["stale_plans"], tables["stale_plan_items"]
    with engine.connect() as conn:
        row = conn.execute(select(plans).where(plans.c.store_id == store_id,
                                               plans.c.plan_id == plan_id)).mappings().first()
        if row is None:
            return None
        found = dict(row)
        found["item_rows"] = [] if limit <= 0 else [dict(r) for r in conn.execute(
            select(items).where(items.c.store_id == store_id, items.c.plan_id == plan_id)
            .order_by(items.c.position).offset(offset).limit(limit)).mappings()]
    found["limit"], found["offset"] = limit, offset
    return found


def plans(engine: Engine, limit: int = 20, *, store_id: str = DEFAULT_STORE
          ) -> list[dict[str, Any]]:
    """A store's plans, newest first (without their items)."""
    if not projected(engine):
        return []
    table = _tables()["stale_plans"]
    with engine.connect() as conn:
        return [dict(row) for row in conn.execute(
            select(table).where(table.c.store_id == store_id)
            .order_by(table.c.created_at.desc(), table.c.plan_id.desc()).limit(limit)
        ).mappings()]


def item(engine: Engine, address: str, *, store_id: str = DEFAULT_STORE
         ) -> dict[str, Any] | None:
    """An item's row: as last observed, its tier, state, hold, trash times, and what the
    last plan that listed it said. None if the Stale Manager never heard of it."""
    if not projected(engine):
        return None
    table = _tables()["stale_items"]
    with engine.connect() as conn:
        row = conn.execute(select(table).where(table.c.store_id == store_id,
                                               table.c.address == address)).mappings().first()
    return dict(row) if row is not None else None
