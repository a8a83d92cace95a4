"""`pit stale simulate`: what a candidate retention document would do, day by day, next to
the one in force - pure, deterministic, and writing nothing.

From the recorded state (the items with their recorded reads, tiers, holds and trash), both
documents are projected forward one day at a time: each day every item still live is
evaluated at that day's time, and what the day's plan would move, archive or delete leaves
the hot tier (deleted bytes are freed once their trash days have passed). Reads after today
are unknown, so none are assumed: the projection is the upper bound of what ages out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streams.stale.manager import StaleState
from streams.stale.policy import DAY_MS, Action, Evaluator, Retention, Tier, storage_cost


@dataclass(frozen=True)
class Day:
    day: int
    warmed: int
    archived: int
    deleted: int
    bytes_freed: int          # by the deletes purged so far (trash days passed)
    storage_cost: float       # per month, at the tier prices (policy.TIER_PRICE_PER_GIB)


def project(state: StaleState, retention: Retention, days: int, now_ms: int) -> list[Day]:
    items = {a: i for a, i in state.items.items()
             if a not in state.trash and a not in state.purged}
    tiers: dict[str, Tier] = dict(state.tiers.items())
    holds = dict(state.holds.items())
    deleted_on: dict[str, int] = {}
    out = []
    for day in range(1, days + 1):
        at = now_ms + day * DAY_MS
        live = {a: i for a, i in items.items() if a not in deleted_on}
        evaluator = Evaluator(retention, live, holds, at, tiers)
        warmed = archived = deleted = 0
        for evaluation in evaluator.evaluate_all():
            tier = tiers.get(evaluation.address, Tier.HOT)
            if evaluation.action is Action.DELETE:
                deleted_on[evaluation.address] = day
                deleted += 1
            elif evaluation.target is not None and evaluation.target != tier:
                tiers[evaluation.address] = evaluation.target
                if evaluation.target is Tier.COLD:
                    archived += 1
                else:
                    warmed += 1
        purged = {a for a, d in deleted_on.items() if day - d >= retention.trash_days}
        sizes = {t: 0 for t in Tier}
        for address, item in items.items():
            if address not in purged:
                sizes[tiers.get(address, Tier.HOT)] += item.size
        out.append(Day(day, warmed, archived, deleted,
                       sum(items[a].size for a in purged), storage_cost(sizes)))
    return out


def simulate(state: StaleState, candidate: Retention, days: int, now_ms: int
             ) -> dict[str, Any]:
    return {"days": days,
            "current": [d.__dict__ for d in project(state, state.retention, days, now_ms)],
            "candidate": [d.__dict__ for d in project(state, candidate, days, now_ms)]}


def simulation_lines(found: dict[str, Any]) -> list[str]:
    lines = ["day  | current: warm  archive  delete  freed MiB  cost/month"
             " | candidate: warm  archive  delete  freed MiB  cost/month"]
    for now, new in zip(found["current"], found["candidate"], strict=True):
        cells = []
        for d in (now, new):
            cells.append(f"{d['warmed']:>6} {d['archived']:>8} {d['deleted']:>7}"
                         f" {d['bytes_freed'] / 2 ** 20:>10.1f} {d['storage_cost']:>11.4f}")
        lines.append(f"{now['day']:>4} | {cells[0]}          | {cells[1]}")
    return lines
