"""`pit bench stale`: the Stale Manager's figures (issue 13). Benchmarks report; they do not
assert.

On the seeded corpus of corpus.py (100,000 artifacts, two years of a Pit) under its
`BENCH_POLICY`, with some legal holds placed on items the policy would otherwise delete:
* `stale_eval_ms_per_artifact`: an `Evaluator` built over the whole store and every item
  evaluated, per item;
* `stale_observe_s_100k` and `stale_plan_s_100k`: the decider, as `pit up` runs it, told of
  the store in `ObserveArtifacts` of at most 1,000 items, then a `PlanCleanup` over all of
  it (decide and evolve);
* `stale_storage_savings` and `stale_bytes_savings_hot`: the plan applied once (`ApplyPlan`
  and its batches) - trashed bytes count as freed (purged after the trash days), archived
  ones at the cold price, warmed ones at the warm price (policy.TIER_PRICE_PER_GIB);
* `stale_wrongly_deleted`: items the apply trashed that a brute-force reference (`must_keep`,
  written apart from the Evaluator, from the document's stated semantics) says must be kept:
  the figure that has to be 0;
* `stale_migrate_mib_per_s` and `stale_cold_restore_64k_ms`: the storage tiers' own measure
  (`measure_tiers`) on a temporary directory and a cold bucket on moto's S3 server, started
  here in process; None, said on stderr, when moto (a dev dependency) is missing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import yaml

from streams.component import bench_note
from streams.config import Settings
from streams.decider import Message
from streams.errors import PitError
from streams.stale.corpus import BENCH_POLICY, NOW_MS, corpus
from streams.stale.manager import (
    MAX_OBSERVED,
    STALE,
    ApplyPlan,
    ContinueApply,
    ItemTrashed,
    ObserveArtifacts,
    PlaceHold,
    PlanCleanup,
    SetRetentionPolicy,
    StaleState,
    TierMoveRequested,
    item_record,
)
from streams.stale.policy import (
    DAY_MS,
    HOUR_MS,
    Evaluator,
    Item,
    Tier,
    parse_retention,
    storage_cost,
)

HOLDS = 50
_TIER_KEYS = ("stale_migrate_mib_per_s", "stale_cold_restore_64k_ms")


# --- the reference ----------------------------------------------------------------------------

def must_keep(document: Mapping[str, Any], items: Sequence[Item], holds: Mapping[str, str],
              now_ms: int) -> set[str]:
    """The addresses a retention document (plain data, as written) must keep, item by item and
    by brute force - written from policy.py's module docstring, not from the Evaluator, to
    check it: held; an orphan that training data derives from, or within its grace; else by
    the highest priority at which an enabled policy's rule says anything of the item, kept if
    any rule said keep there, or if no rule spoke at all. Content removed from the catalog
    is kept only as a held one, one training data derives from, or one a cataloged item
    derives from or belongs to."""
    by_address = {item.address: item for item in items}

    def ancestors(address: str, found: set[str]) -> set[str]:
        item = by_address.get(address)  # a parent may be gone from the store
        for parent in item.parents if item is not None else ():
            if parent not in found:
                found.add(parent)
                ancestors(parent, found)
        return found

    def lineage(tags: set[str]) -> set[str]:
        """Items tagged one of `tags`, and every ancestor of them."""
        found: set[str] = set()
        for item in items:
            if tags.intersection(item.tags):
                found.add(item.address)
                ancestors(item.address, found)
        return found

    policies = [p for p in document.get("policies", []) if p.get("enabled", True)]
    preserve = {id(rule): lineage(set(rule.get("tags", ["training"])))
                for p in policies for rule in p["rules"]
                if rule["type"] == "PreserveTrainingData" and rule.get("preserve", True)}
    # An orphan training data derives from stays (lineage outranks "unreferenced"), whichever
    # preserving rule names its tags - or "training" when none does.
    preserved = set().union(*preserve.values()) if preserve else lineage({"training"})
    grace_ms = document.get("orphan_grace_hours", 24.0) * HOUR_MS

    def says(rule: Mapping[str, Any], item: Item) -> str | None:
        kind = rule["type"]
        if kind == "MaxAge":
            idle_days = max(0, now_ms - item.last_used_at) / DAY_MS
            return rule.get("action", "delete") if idle_days > rule["days"] else None
        if kind == "MinAccessCount":
            return "keep" if item.accesses >= rule["count"] else None
        if kind == "MinQualityScore":
            return "keep" if item.quality is not None and item.quality >= rule["score"] \
                else None
        if kind == "KeepTagged":
            return "keep" if set(rule["tags"]) & set(item.tags) else None
        if kind == "PreserveTrainingData":
            return "keep" if id(rule) in preserve and item.address in preserve[id(rule)] \
                else None
        raise PitError(f"the reference does not know {kind} (it ranks items by value)")

    referenced = {p for item in items if not item.removed for p in item.parents}
    kept = set()
    for item in items:
        if item.address in holds:
            kept.add(item.address)
        elif item.removed and not item.orphan:
            if item.address in preserved or item.address in referenced:
                kept.add(item.address)
        elif item.orphan:
            if item.address in preserved or now_ms - item.stored_at < grace_ms:
                kept.add(item.address)
        else:
            level, keep = None, False
            for policy in sorted(policies, key=lambda p: -p.get("priority", 0)):
                if level is not None and policy.get("priority", 0) < level:
                    break
                verdicts = [v for rule in policy["rules"] if (v := says(rule, item))]
                if verdicts:
                    level = policy.get("priority", 0)
                    keep = keep or "keep" in verdicts
            if level is None or keep:
                kept.add(item.address)
    return kept


# --- the measures -------------------------------------------------------------------------

def bench_holds(items: Sequence[Item], now_ms: int, count: int = HOLDS,
                seed: int = 7) -> dict[str, str]:
    """Legal holds on `count` items, most of them idle over a year (what the policy would
    delete, so the holds have something to stop), chosen without asking the Evaluator."""
    rng = random.Random(seed)
    stale = [i.address for i in items if not i.orphan and i.idle_days(now_ms) > 365]
    rest = [i.address for i in items]
    chosen = rng.sample(stale, min(len(stale), count * 4 // 5))
    chosen += rng.sample(rest, min(len(rest), count - len(chosen)))
    return {address: f"case {n}" for n, address in enumerate(sorted(set(chosen)))}


def bench_evaluation(items: Sequence[Item], holds: Mapping[str, str],
                     now_ms: int) -> dict[str, float]:
    retention = parse_retention(BENCH_POLICY)
    store = {item.address: item for item in items}
    started = time.perf_counter()
    evaluated = Evaluator(retention, store, holds, now_ms, {}).evaluate_all()
    elapsed_ms = (time.perf_counter() - started) * 1000
    return {"stale_eval_ms_per_artifact": round(elapsed_ms / len(evaluated), 5)}


def _do(state: StaleState, command: Message, now_ms: int
        ) -> tuple[StaleState, Sequence[Message]]:
    events = STALE.decide(state, command, now_ms)
    for event in events:
        state = STALE.evolve(state, event, now_ms)
    return state, events


def bench_decider(items: Sequence[Item], holds: Mapping[str, str],
                  now_ms: int) -> dict[str, Any]:
    """Observe, plan and apply once through the decider; the figures, and what was trashed."""
    state = STALE.initial_state("default")
    state, _ = _do(state, SetRetentionPolicy(BENCH_POLICY), now_ms)
    for address, reason in holds.items():
        state, _ = _do(state, PlaceHold(address, reason), now_ms)
    # Records built beforehand: reading the catalog is the observer's work, not the decider's.
    observations = [ObserveArtifacts([item_record(i) for i in items[start:start + MAX_OBSERVED]])
                    for start in range(0, len(items), MAX_OBSERVED)]
    started = time.perf_counter()
    for observation in observations:
        state, _ = _do(state, observation, now_ms)
    observe_s = time.perf_counter() - started
    bench_note(f"observed {len(state.items):,} items in {observe_s:.2f} s")

    started = time.perf_counter()
    state, _ = _do(state, PlanCleanup("bench"), now_ms)
    plan_s = time.perf_counter() - started
    plan = state.plans["bench"]
    bench_note(f"planned {len(plan.items):,} changes over {len(state.items):,} items in "
               f"{plan_s:.2f} s")

    trashed: set[str] = set()
    moved: dict[str, str] = {}
    command: Message = ApplyPlan("bench")
    while True:  # the batches' timers, fired at once
        state, events = _do(state, command, now_ms)
        trashed |= {e.address for e in events if isinstance(e, ItemTrashed)}
        moved |= {e.address: e.target for e in events if isinstance(e, TierMoveRequested)}
        plan = state.plans["bench"]
        if plan.status == "applied":
            break
        command = ContinueApply("bench", plan.cursor)
    bench_note(f"applied: {plan.trashed:,} trashed, {plan.moved:,} moves, {plan.skipped:,} "
               "skipped")

    before = {Tier.HOT: sum(i.size for i in items)}  # everything starts hot
    after = {Tier.HOT: 0, Tier.WARM: 0, Tier.COLD: 0}
    for item in items:
        if item.address not in trashed:  # trashed bytes are purged after the trash days
            after[Tier(moved.get(item.address, Tier.HOT.value))] += item.size
    return {"stale_observe_s_100k": round(observe_s, 3),
            "stale_plan_s_100k": round(plan_s, 3),
            "stale_storage_savings": round(1 - storage_cost(after) / storage_cost(before), 4),
            "stale_bytes_savings_hot": round(1 - after[Tier.HOT] / before[Tier.HOT], 4),
            "stale_items": len(state.items),
            "stale_plan_items": len(plan.items),
            "trashed": trashed}


# --- the storage tiers ---------------------------------------------------------------------

_DUMMY_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
              "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def _dummy_aws_credentials() -> Iterator[None]:
    """moto accepts any credentials; boto3 wants some. Set for the measure, then restored."""
    saved = {name: os.environ.get(name) for name in _DUMMY_AWS}
    os.environ.update(_DUMMY_AWS)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def bench_tiers(mib: int = 64, restores: int = 9) -> dict[str, float | None]:
    """`measure_tiers` on a temporary hot and warm directory and a bucket on moto's S3 server
    (in process, on a free port)."""
    missing: dict[str, float | None] = dict.fromkeys(_TIER_KEYS)
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        bench_note("storage tiers: moto (a dev dependency) is not installed, so no S3 "
                   "endpoint for a cold tier: not measured")
        return missing
    from streams.stale.tier_bench import measure_tiers
    from streams.stale.tiers import tiered_store

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not a line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        with _dummy_aws_credentials(), tempfile.TemporaryDirectory() as scratch:
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="pit-bench-cold")
            tiered = tiered_store(Settings.from_env({
                "PIT_DATA_DIR": scratch, "PIT_STALE_COLD_BUCKET": "pit-bench-cold",
                "PIT_STALE_COLD_ENDPOINT_URL": endpoint}))
            figures: dict[str, float | None] = {
                key: round(value, 2)
                for key, value in measure_tiers(tiered, mib=mib, restores=restores).items()}
    finally:
        server.stop()
    bench_note(f"storage tiers ({mib} MiB to cold on moto's S3): moved at"
               f" {figures['stale_migrate_mib_per_s']} MiB/s, a 64 KiB artifact read back from"
               f" cold in {figures['stale_cold_restore_64k_ms']} ms")
    return figures


# --- the whole -------------------------------------------------------------------------------

def bench_policy_figures(n: int = 100_000, seed: int = 7,
                         now_ms: int = NOW_MS) -> dict[str, Any]:
    """Every figure but the tiers', on a corpus of `n` items."""
    started = time.perf_counter()
    items = corpus(n, seed, now_ms)
    holds = bench_holds(items, now_ms, seed=seed)
    bench_note(f"corpus of {n:,} items and {len(holds)} holds in "
               f"{time.perf_counter() - started:.1f} s")
    figures: dict[str, Any] = bench_evaluation(items, holds, now_ms)
    bench_note(f"evaluation: {figures['stale_eval_ms_per_artifact']} ms per artifact")
    decided = bench_decider(items, holds, now_ms)
    trashed = decided.pop("trashed")
    kept = must_keep(yaml.safe_load(BENCH_POLICY), items, holds, now_ms)
    figures |= decided
    figures["stale_wrongly_deleted"] = len(trashed & kept)
    bench_note(f"{len(trashed):,} trashed, {len(kept):,} the reference keeps, "
               f"{figures['stale_wrongly_deleted']} of them trashed")
    return figures


async def bench_stale(_settings: Settings, *, n: int = 100_000,
                      tier_mib: int = 64) -> dict[str, Any]:
    figures = bench_policy_figures(n)
    figures |= await asyncio.to_thread(bench_tiers, tier_mib)
    return figures
