"""Arbitration's live Prometheus metrics (streams.metrics), from its events.

`ArbitrationMetrics` is a projector observer: it sees each arbitration event once, when the
projector archives it, never on a replay. Decisions are counted by outcome, strategy and
first conflict; a grant after waiting observes its wait. The queue lengths by priority level
and the Gini are the view's numbers (`projections.arbitration.status`), read after the
projector committed a batch that decided something in that pool.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine

from projections.arbitration import status
from projections.runtime import FreshEvents
from streams import metrics
from streams.arbitration.policy import Priority
from streams.arbitration.topics import ARBITRATION_EVENTS
from streams.archive import Entry


class ArbitrationMetrics:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.fresh = FreshEvents(ARBITRATION_EVENTS)

    def __call__(self, entries: Sequence[Entry]) -> None:
        touched: dict[str, int] = {}  # pool -> the latest decision time in the batch
        for name, record, envelope in self.fresh(entries):
            if name != "pit.arbitration.RequestDecided":
                continue
            conflict = record["conflict_kinds"][0] if record["conflict_kinds"] else "none"
            metrics.ARBITRATION_DECISIONS.labels(record["outcome"], record["strategy"] or "none",
                                                 conflict).inc()
            if record["outcome"] == "granted" and record["waited_ms"] > 0:
                metrics.ARBITRATION_WAIT_SECONDS.observe(record["waited_ms"] / 1000)
            touched[envelope["entity_key"]] = envelope["occurred_at"]
        for pool_id, now_ms in touched.items():
            found = status(self.engine, pool_id, now_ms)
            if found is None:
                continue
            for level in Priority:
                metrics.ARBITRATION_QUEUE.labels(pool_id, level.name).set(
                    len(found["queues"].get(level.name, ())))
            metrics.ARBITRATION_GINI.labels(pool_id).set(found["gini"])
