"""The Stale Manager's live Prometheus metrics, from its events.

`StaleMetrics` is a projector observer: it sees each stale event once, when the projector
archives it, never on a replay.
* `pit_stale_items_total{decision}`: items planned (PlanItemsListed), by what the plan
  decided for them: delete (to the trash), archive (to cold), warm, promote (back to hot);
* `pit_stale_bytes_freed_total`: bytes the worker reported purged (BytesPurged);
* `pit_stale_run_seconds`: how long an apply ran, PlanApplyStarted to PlanApplied, by the
  events' times; the start is read from the view (`stale_plans.apply_started_at`), so an
  apply that began before this process started is timed too;
* `pit_stale_bytes{tier}`: bytes of the live items per tier, over every store - the view's
  running totals (`projections.stale.tier_bytes`), read after the projector committed a
  batch with stale events, and once on start, so a restart shows them at once.

The metrics live here, not in streams/metrics.py, with the only code that feeds them; like
every metric an observer feeds, in `streams.metrics.PROJECTED`.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import Engine, select, tuple_

from projections.runtime import FreshEvents, live_tables
from projections.stale import StaleView, projected, tier_bytes
from streams.archive import Entry
from streams.metrics import PROJECTED
from streams.stale.topics import STALE_EVENTS

STALE_BYTES = Gauge("pit_stale_bytes", "Bytes of live items (not moving, trashed or purged)"
                    " per tier, over every store", ["tier"], registry=PROJECTED)
STALE_ITEMS = Counter("pit_stale_items_total", "Items listed in cleanup plans, by decision:"
                      " delete, archive, warm, promote (back to hot)", ["decision"],
                      registry=PROJECTED)
STALE_BYTES_FREED = Counter("pit_stale_bytes_freed_total",
                            "Bytes the worker reported purged (BytesPurged)", registry=PROJECTED)
STALE_MOVE_FAILURES = Counter("pit_stale_move_failures_total",
                              "Tier moves the worker reported failed (TierMoveFailed), by target",
                              ["target"], registry=PROJECTED)
STALE_RUN_SECONDS = Histogram(
    "pit_stale_run_seconds", "How long a plan's apply ran, PlanApplyStarted to PlanApplied"
    " (event times)",
    buckets=(0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
             21600.0), registry=PROJECTED)

DECISION_OF = {"trash": "delete", "cold": "archive", "warm": "warm", "hot": "promote"}
_CHUNK = 500


class StaleMetrics:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.fresh = FreshEvents(STALE_EVENTS)
        self._set_bytes()  # the totals as projected so far

    def __call__(self, entries: Sequence[Entry]) -> None:
        seen = False
        applied: dict[tuple[str, str], int] = {}  # (store, plan) -> applied at
        for name, record, envelope in self.fresh(entries):
            seen = True
            if name == "pit.stale.PlanItemsListed":
                for listed in record["items"]:
                    STALE_ITEMS.labels(DECISION_OF.get(listed["target"], listed["target"])
                                       ).inc()
            elif name == "pit.stale.BytesPurged":
                STALE_BYTES_FREED.inc(record["freed_bytes"])
            elif name == "pit.stale.TierMoveFailed":
                STALE_MOVE_FAILURES.labels(record["target"]).inc()
            elif name == "pit.stale.PlanApplied":
                applied[(envelope["entity_key"], record["plan_id"])] = envelope["occurred_at"]
        if applied:
            self._time_runs(applied)
        if seen:
            self._set_bytes()

    def _time_runs(self, applied: dict[tuple[str, str], int]) -> None:
        plans = live_tables(StaleView())["stale_plans"]
        keys = sorted(applied)
        started: dict[tuple[str, str], int | None] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(keys), _CHUNK):
                stmt = select(plans.c.store_id, plans.c.plan_id, plans.c.apply_started_at).where(
                    tuple_(plans.c.store_id, plans.c.plan_id).in_(keys[start:start + _CHUNK]))
                started.update(((s, p), at) for s, p, at in conn.execute(stmt))
        for key, applied_at in applied.items():
            if (began := started.get(key)) is not None:
                STALE_RUN_SECONDS.observe(max(0, applied_at - began) / 1000)

    def _set_bytes(self) -> None:
        if not projected(self.engine):
            return
        for tier, total in tier_bytes(self.engine).items():
            STALE_BYTES.labels(tier).set(total)
