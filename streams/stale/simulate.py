"""`pit stale simulate`: what a candidate retention document would have done, day by day over
the recorded history, next to the one in force - pure, deterministic, and writing nothing.

The replay (`replay`): from the Stale Manager's state as it was `days` days ago, each day the
recorded observations of that day are applied - the reads, new stores, removals and new
items the catalog observer reported (`ArtifactsObserved`), and the holds placed and released
- and then every item still live is evaluated at the end of the day under the document, and
what that day's plan would move, archive or delete is carried out in the simulation: a read
recorded after an item was archived brings it back to hot the next day, as a real plan
would, and a deleted item's bytes are freed once its trash days have passed. Each document
gets its own replay of the same records, so the two differ only by their decisions.

Why the past `days`, not the next: reads are only known once recorded. A projection forward
would have to assume no reads at all (every idle item ages out), which says more about the
assumption than about the policy; the recorded reads are what the issue asks to replay.
`project` with no records is that forward projection, kept for a store with no history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from streams.decider import Message
from streams.stale.manager import (
    ArtifactsObserved,
    HoldPlaced,
    HoldReleased,
    RetentionPolicySet,
    StaleState,
    item_of,
    retention_from_json,
)
from streams.stale.policy import DAY_MS, Action, Evaluator, Item, Retention, Tier, storage_cost


@dataclass(frozen=True)
class Day:
    day: int
    warmed: int               # hot -> warm
    promoted: int             # back to hot (used again since it moved)
    archived: int
    deleted: int
    bytes_freed: int          # by the deletes purged so far (trash days passed)
    storage_cost: float       # per month, at the tier prices (policy.TIER_PRICE_PER_GIB)


def project(state: StaleState, retention: Retention, days: int, start_ms: int,
            recorded: Sequence[tuple[int, Message]] = ()) -> list[Day]:
    """Day 1 ends at `start_ms` + one day. `recorded`: (at, event) of the Stale Manager's
    events after `start_ms`, in order; those that tell what happened to the content (not what
    a plan did) are applied as their day comes."""
    items: dict[str, Item] = {a: i for a, i in state.items.items()
                              if a not in state.trash and a not in state.purged}
    tiers: dict[str, Tier] = dict(state.tiers.items())
    holds = dict(state.holds.items())
    deleted_on: dict[str, int] = {}
    pending = list(recorded)
    out = []
    for day in range(1, days + 1):
        at = start_ms + day * DAY_MS
        while pending and pending[0][0] <= at:
            _, event = pending.pop(0)
            _record(event, items, holds)
        live = {a: i for a, i in items.items() if a not in deleted_on}
        evaluator = Evaluator(retention, live, holds, at, tiers)
        warmed = promoted = archived = deleted = 0
        for evaluation in evaluator.evaluate_all():
            tier = tiers.get(evaluation.address, Tier.HOT)
            if evaluation.action is Action.DELETE:
                deleted_on[evaluation.address] = day
                deleted += 1
            elif evaluation.target is not None and evaluation.target != tier:
                tiers[evaluation.address] = evaluation.target
                if evaluation.target is Tier.COLD:
                    archived += 1
                elif evaluation.target is Tier.HOT:
                    promoted += 1
                else:
                    warmed += 1
        purged = {a for a, d in deleted_on.items() if day - d >= retention.trash_days}
        sizes = {t: 0 for t in Tier}
        for address, item in items.items():
            if address not in purged:
                sizes[tiers.get(address, Tier.HOT)] += item.size
        out.append(Day(day, warmed, promoted, archived, deleted,
                       sum(items[a].size for a in purged), storage_cost(sizes)))
    return out


def _record(event: Message, items: dict[str, Item], holds: dict[str, str]) -> None:
    """One recorded event applied to the simulation: the content's story (observations,
    holds); what the real plans did is the simulation's own to decide, so it is ignored."""
    match event:
        case ArtifactsObserved():
            for record in event.items:  # a simulated delete stays deleted (as the trash)
                items[record["address"]] = item_of(record)
            for address in event.forget:
                items.pop(address, None)
        case HoldPlaced(address=address, reason=reason):
            holds[address] = reason
        case HoldReleased(address=address):
            holds.pop(address, None)


def in_force(state: StaleState, recorded: Sequence[tuple[int, Message]]) -> Retention:
    """The document in force after the records: the last one set among them, else the
    state's. Both replays compare against today's policy, not each day's."""
    documents = [e.document for _, e in recorded if isinstance(e, RetentionPolicySet)]
    return retention_from_json(documents[-1]) if documents else state.retention


def simulate(state: StaleState, candidate: Retention, days: int, start_ms: int,
             recorded: Sequence[tuple[int, Message]] = ()) -> dict[str, Any]:
    """The document in force and `candidate`, each replayed over the same records from the
    same state."""
    current = in_force(state, recorded)
    return {"days": days, "start": start_ms, "recorded_events": len(recorded),
            "current": [asdict(d) for d in project(state, current, days, start_ms, recorded)],
            "candidate": [asdict(d) for d in project(state, candidate, days, start_ms,
                                                     recorded)]}


def simulation_lines(found: dict[str, Any]) -> list[str]:
    lines = ["day  | current: warm  hot  archive  delete  freed MiB  cost/month"
             " | candidate: warm  hot  archive  delete  freed MiB  cost/month"]
    for now, new in zip(found["current"], found["candidate"], strict=True):
        cells = []
        for d in (now, new):
            cells.append(f"{d['warmed']:>6} {d['promoted']:>4} {d['archived']:>8}"
                         f" {d['deleted']:>7} {d['bytes_freed'] / 2 ** 20:>10.1f}"
                         f" {d['storage_cost']:>11.4f}")
        lines.append(f"{now['day']:>4} | {cells[0]}          | {cells[1]}")
    return lines
