"""The pool's live Prometheus metrics (streams.metrics), from its events.

`PoolMetrics` is a projector observer (`Projector(observers=...)`): it sees each pool event
once, when the projector archives it, never on a replay. It reads the decoded records as
they are (no event objects, no decider), so it costs a dict lookup per event:
* allocation latency: AllocationQueued -> ModelAllocated (envelope times) for a miss, 0 for
  a hit; a miss queued before this process started is counted but not timed;
* load time (ModelLoaded.load_ms), hits, misses, evictions, transitions by from/to/reason;
* memory per host: the `pool_hosts` rows of the hosts a batch touched, read after the
  projector committed them, so the gauge is the view's number, never a second count.
A duplicated event in the log (same pool sequence again) is skipped.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from sqlalchemy import Engine, select, tuple_

from projections.pool import PoolView
from projections.runtime import FreshEvents, live_tables
from streams import metrics
from streams.archive import Entry
from streams.pool.topics import POOL_EVENTS

PENDING_LIMIT = 100_000  # queued allocations remembered for their latency
_HOST_EVENTS = frozenset({"pit.pool.HostRegistered", "pit.pool.ModelPlaced",
                          "pit.pool.ModelLoaded", "pit.pool.ModelLoadFailed",
                          "pit.pool.ModelUnloaded", "pit.pool.HostDown"})


class PoolMetrics:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.hosts = live_tables(PoolView())["pool_hosts"]
        self.fresh = FreshEvents(POOL_EVENTS)
        self.queued_at: OrderedDict[str, int] = OrderedDict()  # request id -> queued at ms
        self._hit = metrics.POOL_ALLOCATION_SECONDS.labels("true")
        self._miss = metrics.POOL_ALLOCATION_SECONDS.labels("false")
        self._set_hosts(None)  # every host's memory as projected so far

    def __call__(self, entries: Sequence[Entry]) -> None:
        touched: set[tuple[str, str]] = set()
        for name, record, envelope in self.fresh(entries):
            pool_id = envelope["entity_key"]
            self._observe(name, record, envelope["occurred_at"])
            if name in _HOST_EVENTS or (name == "pit.pool.ModelTransitioned"
                                        and "host" in record["metadata"]):
                touched.add((pool_id, record.get("host_id") or record["metadata"]["host"]))
        if touched:
            self._set_hosts(touched)

    def _observe(self, name: str, record: dict, at_ms: int) -> None:
        if name == "pit.pool.ModelAllocated":
            if record["cache_hit"]:
                metrics.POOL_CACHE_HITS.inc()
                self._hit.observe(0.0)
            elif (queued := self.queued_at.pop(record["request_id"], None)) is not None:
                self._miss.observe(max(0, at_ms - queued) / 1000)
        elif name == "pit.pool.AllocationQueued":
            metrics.POOL_CACHE_MISSES.inc()
            self.queued_at[record["request_id"]] = at_ms
            if len(self.queued_at) > PENDING_LIMIT:
                self.queued_at.popitem(last=False)
        elif name == "pit.pool.AllocationFailed":
            self.queued_at.pop(record["request_id"], None)
        elif name == "pit.pool.ModelTransitioned":
            metrics.POOL_TRANSITIONS.labels(record["from_state"], record["to_state"],
                                            record["reason"]).inc()
        elif name == "pit.pool.ModelLoaded":
            metrics.POOL_LOAD_SECONDS.observe(record["load_ms"] / 1000)
        elif name == "pit.pool.ModelEvicted":
            metrics.POOL_EVICTIONS.inc()

    def _set_hosts(self, keys: set[tuple[str, str]] | None) -> None:
        hosts = self.hosts
        stmt = select(hosts.c.pool_id, hosts.c.host_id, hosts.c.resident_mb,
                      hosts.c.memory_budget_mb)
        if keys is not None:
            stmt = stmt.where(tuple_(hosts.c.pool_id, hosts.c.host_id).in_(sorted(keys)))
        with self.engine.connect() as conn:
            for pool_id, host_id, resident_mb, budget_mb in conn.execute(stmt):
                metrics.POOL_HOST_MEMORY_MB.labels(pool_id, host_id).set(resident_mb)
                metrics.POOL_HOST_BUDGET_MB.labels(pool_id, host_id).set(budget_mb)
